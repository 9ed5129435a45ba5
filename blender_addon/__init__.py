"""The Blender extension: bpy, the standard library and numpy only (see docs/architecture.md).

``register()`` registers one ``classes`` tuple gathered from the modules (preferences,
settings, operators, panels: dependencies first), adds ``Scene.zs_texturing`` and
``ViewLayer.zs_passes``, the render handlers of the ZS passes setting and the save handler
that moves an unsaved file's frames next to it (``temporary_frames``);
``unregister()`` undoes it in reverse order.

The bpy-side modules are imported inside :func:`_gather` rather than at the top, so the
package stays importable without Blender: ``blender_addon.client`` and
``blender_addon.wire`` are plain Python and are used outside Blender too.
"""

from __future__ import annotations

classes: tuple = ()
handlers: tuple = ()  # (bpy.app.handlers list name, function) pairs, added in register()


def _gather_handlers() -> tuple:
    """The app handlers of the modules that follow renders, saves and undo."""
    from . import render_hook, temporary_frames, zs_passes

    return (*zs_passes.HANDLERS, *render_hook.HANDLERS, *temporary_frames.HANDLERS)


def _gather() -> tuple:
    """The classes to register, in dependency order (a PropertyGroup before what points to it)."""
    from . import operators, preferences, properties, ui, ui_passes, zs_passes

    return (*preferences.classes, *properties.classes, *zs_passes.classes, *operators.classes, *ui.lists,
            *ui.classes, *ui_passes.classes)


def register() -> None:
    import bpy

    from .properties import ZS_Settings
    from .zs_passes import ZS_PassesSettings

    global classes, handlers
    classes = _gather()
    for cls in classes:
        bpy.utils.register_class(cls)
    bpy.types.Scene.zs_texturing = bpy.props.PointerProperty(type=ZS_Settings)
    bpy.types.ViewLayer.zs_passes = bpy.props.PointerProperty(type=ZS_PassesSettings)
    handlers = _gather_handlers()
    for name, handler in handlers:
        functions = getattr(bpy.app.handlers, name)
        if handler not in functions:  # a reload must not add it twice
            functions.append(handler)


def unregister() -> None:
    import bpy

    from . import jobs

    global classes, handlers
    # A job still running would write into unregistered properties: stop it first.
    jobs.cancel_active()
    for name, handler in reversed(handlers):
        functions = getattr(bpy.app.handlers, name)
        if handler in functions:
            functions.remove(handler)
    handlers = ()
    if hasattr(bpy.types.ViewLayer, "zs_passes"):
        del bpy.types.ViewLayer.zs_passes
    if hasattr(bpy.types.Scene, "zs_texturing"):
        del bpy.types.Scene.zs_texturing
    for cls in reversed(classes):
        if getattr(cls, "is_registered", False):
            bpy.utils.unregister_class(cls)
    classes = ()
