"""Scopes that record a piece of scene state, let a capture change it, and restore it on
exit (also on error): render settings (with the camera, frame and compositor), the
selection and active object, Object Mode, modifiers at their render settings, and pass
indices. Imports: bpy, the standard library and numpy only.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import bpy

from .compat import object_fcurves

# Everything capture may change, by owner path relative to the scene.
_SETTINGS: dict[str, tuple[str, ...]] = {
    "render": ("engine", "resolution_x", "resolution_y", "resolution_percentage", "pixel_aspect_x",
               "pixel_aspect_y", "use_border", "use_crop_to_border", "use_compositing", "use_sequencer",
               "film_transparent", "filter_size", "use_motion_blur", "use_persistent_data"),
    "cycles": ("samples", "use_denoising", "filter_width", "pixel_filter_type", "use_adaptive_sampling",
               "use_layer_samples", "max_bounces", "bake_type"),
    "render.bake": ("margin", "margin_type", "use_clear", "use_selected_to_active", "use_cage",
                    "normal_space", "normal_r", "normal_g", "normal_b", "target", "save_mode",
                    "use_split_materials", "use_automatic_name"),
    "view_settings": ("view_transform", "look", "exposure", "gamma"),
}
_VIEW_LAYER_SETTINGS = ("use", "use_pass_combined", "use_pass_z", "use_pass_normal", "use_pass_uv",
                        "use_pass_position", "use_pass_object_index", "use_pass_vector")


def _owner(root, path: str):
    for part in path.split("."):
        root = getattr(root, part)
    return root


def _restore(owner, attribute: str, value) -> None:
    """Set ``owner.attribute`` back if it changed; a deleted datablock is skipped."""
    try:
        if getattr(owner, attribute) != value:
            setattr(owner, attribute, value)
    except ReferenceError:
        pass


@contextlib.contextmanager
def preserved_render_settings(scene: bpy.types.Scene) -> Iterator[None]:
    """Record the render settings capture touches and restore them on exit (also on error).

    Covers engine, resolution (x, y, %), pixel aspect, border, samples, bounces, pixel filter,
    denoising, motion blur, persistent data, compositing (flag and node group), sequencer,
    film transparency, colour management view, bake settings, every view layer's pass
    flags, the scene camera and the current frame.
    """
    saved = []
    for path, attributes in _SETTINGS.items():
        owner = _owner(scene, path)
        saved.extend((owner, name, getattr(owner, name)) for name in attributes if hasattr(owner, name))
    for view_layer in scene.view_layers:
        saved.extend((view_layer, name, getattr(view_layer, name)) for name in _VIEW_LAYER_SETTINGS)
    frame = (scene.frame_current, scene.frame_subframe)
    camera = scene.camera
    try:
        yield
    finally:
        for owner, name, value in reversed(saved):
            _restore(owner, name, value)
        if (scene.frame_current, scene.frame_subframe) != frame:
            scene.frame_set(frame[0], subframe=frame[1])
        # After the frame: camera markers may switch the camera on frame changes.
        _restore(scene, "camera", camera)


@contextlib.contextmanager
def preserved_selection(view_layer: bpy.types.ViewLayer) -> Iterator[None]:
    """Record the selected objects and the active object of ``view_layer``; restore them.

    Restoring walks ``bpy.data.objects``, not ``view_layer.objects``: after a temporary
    object is removed the layer's bases are stale until it resyncs, and touching a stale
    base crashes Blender."""
    active = view_layer.objects.active
    members = {obj.as_pointer(): obj.select_get(view_layer=view_layer)
               for obj in view_layer.objects if obj is not None}
    try:
        yield
    finally:
        for obj in bpy.data.objects:
            wanted = members.get(obj.as_pointer())
            if wanted is None:
                continue  # not in the layer before: made (and removed) inside the scope
            try:
                if obj.select_get(view_layer=view_layer) != wanted:
                    obj.select_set(wanted, view_layer=view_layer)
            except RuntimeError:
                continue  # no longer in this view layer
        try:
            view_layer.objects.active = active
        except ReferenceError:
            view_layer.objects.active = None


@contextlib.contextmanager
def object_mode() -> Iterator[None]:
    """Run in Object Mode (Edit Mode changes are written to the mesh); return the active
    object to its mode afterwards."""
    active = bpy.context.view_layer.objects.active
    mode = active.mode if active is not None else "OBJECT"
    if mode != "OBJECT":
        bpy.ops.object.mode_set(mode="OBJECT")
    try:
        yield
    finally:
        if mode != "OBJECT" and active is not None and bpy.context.view_layer.objects.active == active:
            bpy.ops.object.mode_set(mode=mode)


@contextlib.contextmanager
def render_resolution_modifiers(objects: Sequence[bpy.types.Object]) -> Iterator[None]:
    """Evaluate ``objects`` as a render sees them: each modifier shown in the viewport iff
    it is shown in renders, and Subdivision / Multires at their render levels; restored on
    exit. (The evaluated depsgraph is the viewport's; renders use the render settings.)"""
    saved = []
    try:
        for obj in objects:
            for modifier in obj.modifiers:
                saved.append((modifier, "show_viewport", modifier.show_viewport))
                modifier.show_viewport = modifier.show_render
                if hasattr(modifier, "render_levels") and hasattr(modifier, "levels"):
                    saved.append((modifier, "levels", modifier.levels))
                    modifier.levels = modifier.render_levels
        yield
    finally:
        for modifier, attribute, value in reversed(saved):
            _restore(modifier, attribute, value)


@contextlib.contextmanager
def temporary_pass_index(objects: Sequence[bpy.types.Object], index: int | Sequence[int]) -> Iterator[None]:
    """Give ``objects`` the pass index ``index`` (one for all, or one each) for the object
    index pass, and restore theirs. F-curves and drivers on their pass index are muted
    meanwhile (a frame change would put the animated value back)."""
    indices = [index] * len(objects) if isinstance(index, int) else list(index)
    saved = [(obj, obj.pass_index) for obj in objects]
    curves = [curve for obj in objects for curve in _pass_index_curves(obj)]
    muted = [(curve, curve.mute) for curve in curves]
    try:
        for curve in curves:
            curve.mute = True
        for obj, value in zip(objects, indices):
            obj.pass_index = value
        yield
    finally:
        for obj, value in saved:
            _restore(obj, "pass_index", value)
        for curve, state in muted:
            _restore(curve, "mute", state)


def _pass_index_curves(obj: bpy.types.Object) -> list:
    """The F-curves and drivers that animate ``obj.pass_index``."""
    curves = [curve for curve in object_fcurves(obj) if curve.data_path == "pass_index"]
    if obj.animation_data is not None:
        curves += [driver for driver in obj.animation_data.drivers if driver.data_path == "pass_index"]
    return curves


__all__ = ["preserved_render_settings", "preserved_selection", "object_mode", "render_resolution_modifiers",
           "temporary_pass_index"]
