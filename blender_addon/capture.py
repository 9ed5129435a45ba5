"""Blender <-> numpy helpers for capturing a scene.

- cameras -> ``world_to_camera`` / ``projection`` matrices (the renderer's conventions),
- Blender images <-> numpy arrays (rows top to bottom, like the wire format),
- target objects and their UV maps (a missing UV map is an error unless a new Smart UV
  Project layer is explicitly requested),
- context managers that record and restore every piece of scene state capture touches:
  render settings, selection, pass indices, active render UV maps.

The numpy parts (``pixels_to_array`` ...) are kept apart from the bpy translation so they
can be read and tested on their own. Imports: bpy, the standard library and numpy only.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterable, Iterator, Sequence

import bpy
import numpy as np


class CaptureError(ValueError):
    """The scene cannot be captured as asked (the message names the object or setting)."""


# ----------------------------------------------------------------------------- numpy core


def pixels_to_array(flat: np.ndarray, width: int, height: int, channels: int) -> np.ndarray:
    """Blender's flat pixel buffer (bottom row first) -> (H, W, C) float32, top row first."""
    return np.ascontiguousarray(flat.reshape(height, width, channels)[::-1], dtype=np.float32)


def array_to_pixels(array: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C<=4) rows top to bottom -> flat RGBA float32, bottom row first.

    One channel is grey, two fill R and G (B = 0); alpha is 1 unless given.
    """
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or not 1 <= array.shape[2] <= 4:
        raise CaptureError(f"image array: expected shape (H, W) or (H, W, 1..4), got {array.shape}")
    height, width, channels = array.shape
    rgba = np.zeros((height, width, 4), np.float32)
    rgba[..., 3] = 1.0
    if channels == 1:
        rgba[..., :3] = array
    else:
        rgba[..., :channels] = array
    return rgba[::-1].ravel()


def normalised_camera_matrix(camera_to_world: np.ndarray) -> np.ndarray:
    """Drop the scale of a camera's world matrix (4, 4), as Blender's renderers do."""
    matrix = np.array(camera_to_world, dtype=np.float64)
    lengths = np.linalg.norm(matrix[:3, :3], axis=0)
    matrix[:3, :3] /= np.where(lengths > 0, lengths, 1.0)
    return matrix


# --------------------------------------------------------------------------- depsgraph


def capture_view_layer(scene: bpy.types.Scene) -> bpy.types.ViewLayer:
    """The view layer to render: the context's for the context scene, else the first."""
    context = bpy.context
    if context.scene == scene and context.view_layer is not None:
        return context.view_layer
    return scene.view_layers[0]


def evaluated_depsgraph(scene: bpy.types.Scene, view_layer=None) -> bpy.types.Depsgraph:
    """An up-to-date evaluated depsgraph of ``scene`` / ``view_layer``."""
    context = bpy.context
    view_layer = view_layer or capture_view_layer(scene)
    if context.scene == scene and context.view_layer == view_layer:
        return context.evaluated_depsgraph_get()
    depsgraph = view_layer.depsgraph
    depsgraph.update()
    return depsgraph


# ----------------------------------------------------------------------------- cameras


def camera_matrices(scene: bpy.types.Scene, camera: bpy.types.Object, width: int, height: int,
                    depsgraph=None) -> tuple[np.ndarray, np.ndarray]:
    """-> (world_to_camera (4, 4) float32, projection (4, 4) float32) of ``camera`` for a
    ``width`` x ``height`` image, at the scene's current frame.

    ``world_to_camera`` inverts the (scale-free) evaluated world matrix; ``projection`` is
    ``calc_matrix_camera`` with square pixels (capture renders with pixel aspect 1).
    """
    if camera is None or camera.type != "CAMERA":
        raise CaptureError(f"{getattr(camera, 'name', camera)!r} is not a camera object")
    depsgraph = depsgraph or evaluated_depsgraph(scene)
    evaluated = camera.evaluated_get(depsgraph)
    camera_to_world = normalised_camera_matrix(np.array(evaluated.matrix_world, dtype=np.float64))
    projection = np.array(evaluated.calc_matrix_camera(depsgraph, x=int(width), y=int(height),
                                                       scale_x=1.0, scale_y=1.0), dtype=np.float64)
    return np.linalg.inv(camera_to_world).astype(np.float32), projection.astype(np.float32)


def object_fcurves(obj: bpy.types.Object) -> list:
    """An object's F-curves: ``action.fcurves`` before Blender 5.0, the layered action's
    channel bags from 5.0 on."""
    action = obj.animation_data.action if obj.animation_data else None
    if action is None:
        return []
    if hasattr(action, "fcurves"):
        return list(action.fcurves)
    return [curve for layer in action.layers for strip in layer.strips for bag in strip.channelbags
            for curve in bag.fcurves]


# ------------------------------------------------------------------------------ images


def image_to_numpy(image: bpy.types.Image, contiguous: bool = True) -> np.ndarray:
    """A Blender image -> (H, W, C) float32, rows top to bottom (C = image.channels).
    ``contiguous`` False returns a row-flipped view (no copy) for callers that copy anyway."""
    width, height = image.size
    channels = image.channels
    if width == 0 or height == 0:
        raise CaptureError(f"image {image.name!r} has no pixels (could not be read)")
    flat = np.empty(width * height * channels, np.float32)
    image.pixels.foreach_get(flat)
    if not contiguous:
        return flat.reshape(height, width, channels)[::-1]
    return pixels_to_array(flat, width, height, channels)


def unique_name(collection, base: str) -> str:
    """``base`` if unused in the bpy.data ``collection``, else ``base.001``, ``base.002`` ..."""
    if base not in collection:
        return base
    index = 1
    while f"{base}.{index:03d}" in collection:
        index += 1
    return f"{base}.{index:03d}"


def numpy_to_image(name: str, array: np.ndarray, non_color: bool = False) -> bpy.types.Image:
    """(H, W[, C]) rows top to bottom -> a NEW float RGBA image datablock.

    Never overwrites an existing image: the name gets a numeric suffix when taken.
    Float pixels are scene linear; pass ``non_color=True`` for data (normals, positions).
    """
    pixels = array_to_pixels(array)
    height, width = np.shape(array)[:2]
    image = bpy.data.images.new(unique_name(bpy.data.images, name), width, height,
                                alpha=True, float_buffer=True)
    if non_color:
        image.colorspace_settings.is_data = True
    image.pixels.foreach_set(pixels)
    image.update()
    return image


# ---------------------------------------------------------------------- target objects


def target_objects(context=None, names: Iterable[str] | None = None) -> list[bpy.types.Object]:
    """The mesh objects to texture: the named ones, or else the context's selected meshes
    (the active object first). Raises :class:`CaptureError` naming what is wrong."""
    if names is not None:
        objects = []
        for name in names:
            obj = bpy.data.objects.get(name)
            if obj is None:
                raise CaptureError(f"object {name!r} does not exist")
            if obj.type != "MESH":
                raise CaptureError(f"object {name!r} is a {obj.type.lower()}, not a mesh")
            objects.append(obj)
    else:
        context = context or bpy.context
        objects = [obj for obj in context.selected_objects if obj.type == "MESH"]
        active = context.active_object
        if active is not None and active in objects:
            objects.remove(active)
            objects.insert(0, active)
    unique = list({obj.as_pointer(): obj for obj in objects}.values())
    if not unique:
        raise CaptureError("no mesh object to texture: select at least one mesh")
    return unique


def has_uv(obj: bpy.types.Object) -> bool:
    """True if ``obj`` is a mesh with at least one UV map."""
    return obj.type == "MESH" and len(obj.data.uv_layers) > 0


def active_render_uv_name(obj: bpy.types.Object) -> str | None:
    """Name of the UV map renders use (the camera icon in the UI), or None."""
    for layer in obj.data.uv_layers:
        if layer.active_render:
            return layer.name
    return obj.data.uv_layers[0].name if len(obj.data.uv_layers) else None


def ensure_uv_map(obj: bpy.types.Object, uv_map: str | None = None, smart_project: bool = False,
                  new_name: str = "ZS UV") -> str:
    """The name of the UV map to capture on ``obj``.

    ``uv_map`` None: the active render UV map. A missing map is an error naming the
    object, unless ``smart_project`` is set: then a NEW layer (``uv_map`` or ``new_name``)
    is added and unwrapped with Smart UV Project; existing layers are never touched.
    """
    if obj.type != "MESH":
        raise CaptureError(f"object {obj.name!r} is not a mesh")
    layers = obj.data.uv_layers
    if uv_map is not None and uv_map in layers:
        return uv_map
    if uv_map is None and len(layers):
        return active_render_uv_name(obj)
    if not smart_project:
        what = f"has no UV map named {uv_map!r}" if uv_map else "has no UV map"
        raise CaptureError(f"object {obj.name!r} {what}; unwrap it or enable Smart UV Project")
    return add_smart_uv_map(obj, uv_map or new_name)


def add_smart_uv_map(obj: bpy.types.Object, name: str = "ZS UV", angle_limit_deg: float = 66.0,
                     island_margin: float = 0.02) -> str:
    """Add a NEW UV layer to ``obj`` and unwrap it with Smart UV Project -> its name.

    Existing UV layers keep their data and the active one stays active; the selection,
    the active object, the mode and the mesh's element selection / hide flags are restored.
    """
    view_layer = bpy.context.view_layer
    if obj.name not in view_layer.objects:
        raise CaptureError(f"object {obj.name!r} is not in the active view layer; cannot unwrap it")
    mesh = obj.data
    previous_active = mesh.uv_layers.active.name if mesh.uv_layers.active else None
    layer = mesh.uv_layers.new(name=name, do_init=False)
    if layer is None:
        raise CaptureError(f"object {obj.name!r}: cannot add another UV map (limit reached)")
    new_name = layer.name
    mesh.uv_layers.active = layer  # Smart UV Project writes the active layer
    with object_mode(), preserved_selection(view_layer), _preserved_element_flags(mesh):
        for other in view_layer.objects:
            other.select_set(False)
        obj.select_set(True)
        view_layer.objects.active = obj
        try:
            bpy.ops.object.mode_set(mode="EDIT")
        except RuntimeError as exc:
            raise CaptureError(f"object {obj.name!r}: cannot enter Edit Mode to unwrap ({exc})") from None
        try:
            bpy.ops.mesh.reveal(select=True)
            bpy.ops.mesh.select_all(action="SELECT")
            bpy.ops.uv.smart_project(angle_limit=math.radians(angle_limit_deg), island_margin=island_margin)
        finally:
            bpy.ops.object.mode_set(mode="OBJECT")
    # Edit Mode rebuilt the layers: look them up again by name, never reuse old references.
    layers = obj.data.uv_layers
    if previous_active is not None and previous_active in layers:
        layers.active = layers[previous_active]
    return new_name


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
def _preserved_element_flags(mesh: bpy.types.Mesh) -> Iterator[None]:
    """Record and restore the select / hide flags of a mesh's vertices, edges and faces."""
    saved = []
    for elements in (mesh.vertices, mesh.edges, mesh.polygons):
        for flag in ("select", "hide"):
            values = np.empty(len(elements), bool)
            elements.foreach_get(flag, values)
            saved.append((elements, flag, values))
    try:
        yield
    finally:
        for elements, flag, values in saved:
            elements.foreach_set(flag, values)
        mesh.update()


# ------------------------------------------------------------------- scene state scopes

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
    node_group = scene.compositing_node_group
    try:
        yield
    finally:
        for owner, name, value in reversed(saved):
            _restore(owner, name, value)
        if (scene.frame_current, scene.frame_subframe) != frame:
            scene.frame_set(frame[0], subframe=frame[1])
        # After the frame: camera markers may switch the camera on frame changes.
        _restore(scene, "camera", camera)
        _restore(scene, "compositing_node_group", node_group)


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


MAX_PASS_INDEX = 32767  # Blender's limit for Object.pass_index


def background_surfaces(scene: bpy.types.Scene, targets: Sequence[bpy.types.Object]) -> list[bpy.types.Object]:
    """The scene's other mesh objects that render and have a UV map, by name: the surfaces
    an animation capture tells apart (``background_id``) so their UV can tie frames together."""
    skip = {obj.as_pointer() for obj in targets}
    surfaces = [obj for obj in scene.objects if obj.type == "MESH" and not obj.hide_render
                and obj.library is None and obj.as_pointer() not in skip and has_uv(obj)]
    return sorted(surfaces, key=lambda obj: obj.name)[:MAX_PASS_INDEX // 2]


def unused_pass_indices(scene: bpy.types.Scene, objects: Sequence[bpy.types.Object], count: int,
                        depsgraph=None) -> list[int]:
    """``count`` distinct pass indices >= 1 no object outside ``objects`` renders with (so
    the object index pass singles out ``objects`` without touching anyone else's index):
    the scene's objects, and with ``depsgraph`` also every instance it renders
    (collection, particle and geometry-node instances carry their source object's index,
    and the source need not be in the scene)."""
    mine = {obj.as_pointer() for obj in objects}
    taken = {obj.pass_index for obj in scene.objects if obj.as_pointer() not in mine}
    if depsgraph is not None:
        for instance in depsgraph.object_instances:
            if instance.object.original.as_pointer() not in mine:
                taken.add(instance.object.pass_index)
    indices, index = [], 1
    while len(indices) < count:
        if index not in taken:
            indices.append(index)
        index += 1
    if indices[-1] > MAX_PASS_INDEX:
        raise CaptureError(f"the scene's objects use too many pass indices to tell {count} objects apart")
    return indices


@contextlib.contextmanager
def temporary_render_uv(uv_maps: dict) -> Iterator[None]:
    """Make ``uv_maps[obj]`` the active render UV map of each object's mesh (the UV pass
    reads it); restore each mesh's previous render UV map on exit."""
    saved = {}
    for obj, name in uv_maps.items():
        mesh = obj.data
        if mesh.as_pointer() in saved:
            if saved[mesh.as_pointer()][2] != name:
                raise CaptureError(f"object {obj.name!r} shares its mesh with another target but asks "
                                   f"for a different UV map ({name!r})")
            continue
        saved[mesh.as_pointer()] = (mesh, active_render_uv_name(obj), name)
    try:
        for mesh, _previous, name in saved.values():
            mesh.uv_layers[name].active_render = True
        yield
    finally:
        for mesh, previous, _name in saved.values():
            try:
                if previous is not None and previous in mesh.uv_layers:
                    mesh.uv_layers[previous].active_render = True
            except ReferenceError:
                pass
