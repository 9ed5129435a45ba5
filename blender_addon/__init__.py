"""The Blender extension: bpy, the standard library and numpy only (see docs/architecture.md).

``register()`` registers one ``classes`` tuple gathered from the modules (preferences,
settings, operators, panels: dependencies first) and adds ``Scene.zs_texturing``;
``unregister()`` undoes it in reverse order.

The bpy-side modules are imported inside :func:`_gather` rather than at the top, so the
package stays importable without Blender: ``blender_addon.client`` and
``blender_addon.wire`` are plain Python and are used outside Blender too.
"""

from __future__ import annotations

classes: tuple = ()


def _gather() -> tuple:
    """The classes to register, in dependency order (a PropertyGroup before what points to it)."""
    from . import operators, preferences, properties, ui

    return (*preferences.classes, *properties.classes, *operators.classes, *ui.classes)


def register() -> None:
    import bpy

    from .properties import ZS_Settings

    global classes
    classes = _gather()
    for cls in classes:
        bpy.utils.register_class(cls)
    bpy.types.Scene.zs_texturing = bpy.props.PointerProperty(type=ZS_Settings)


def unregister() -> None:
    import bpy

    from . import jobs

    global classes
    # A job still running would write into unregistered properties: stop it first.
    jobs.cancel_active()
    if hasattr(bpy.types.Scene, "zs_texturing"):
        del bpy.types.Scene.zs_texturing
    for cls in reversed(classes):
        if getattr(cls, "is_registered", False):
            bpy.utils.unregister_class(cls)
    classes = ()
