"""Render the exact per-view passes of the wire format with Cycles, and bake texel maps.

One Cycles render per view (or frame) at 1 sample with a ~0 pixel filter, so every pixel
holds the surface hit by the ray through its centre: planar depth, world normal, UV of
the chosen UV map, world position, object index (-> target mask) and, for animation,
motion vectors. A temporary compositor writes them as 32-bit EXRs to a temporary folder
(a 3-component pass and a 1-component pass share an RGBA file: fewer files to write and
load); they are read back with ``bpy.data.images.load`` and the loaded images removed.

Texel maps (world position / normal per texel of the target UV map) come from Cycles
bakes of a temporary frozen copy of each object, so the user's objects, meshes and
materials are never modified.

Conventions found on Blender 5.0 (checked by tests/addon):
- the Depth pass is planar camera depth (-z_cam), not ray length; background 1e10;
- the Position and Normal passes are world space;
- the POSITION bake is world space; the NORMAL bake in OBJECT space is
  ``normalize(inverse(M) @ n_world)`` colour-encoded ``(n + 1) / 2``, so
  ``n_world = normalize(M @ (2c - 1))`` with M the object's 3x3 world matrix;
- baked texels get alpha 1 (unbaked keep the alpha 0 they were filled with): coverage;
- the Vector pass holds (previous - current, current - next) in pixels, x right / y up.

Everything capture changes (render settings, camera, frame, pass indices, render UV
maps, selection) is restored afterwards, also on error. Arrays on the wire are float32
(bool masks), rows top to bottom. Imports: bpy, the standard library and numpy only.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from typing import Callable, Iterable, Iterator, Sequence

import bpy
import numpy as np

from . import capture
from .capture import CaptureError
from .wire import Passes

# on_view(rendered, total): called after each view (or frame) is rendered and read back.
ViewCallback = Callable[[int, int], None]

BACKGROUND_DEPTH = 1e10  # what Cycles writes where no geometry is hit
FILTER_WIDTH = 0.01  # Cycles' smallest pixel filter: the one sample sits on the pixel centre

# Render-layer output -> (File Output socket type, view layer pass flag).
RENDER_PASSES: dict[str, tuple[str, str]] = {
    "Depth": ("FLOAT", "use_pass_z"),
    "Normal": ("VECTOR", "use_pass_normal"),
    "UV": ("VECTOR", "use_pass_uv"),
    "Position": ("VECTOR", "use_pass_position"),
    "Object Index": ("FLOAT", "use_pass_object_index"),
    "Vector": ("RGBA", "use_pass_vector"),  # 4 components: previous and next motion
}


# ----------------------------------------------------------------------------- numpy core


def wrap_uv(uv: np.ndarray, tolerance: float = 1e-4, out: np.ndarray | None = None) -> np.ndarray:
    """UV (..., 2) -> [0, 1] the way a repeating texture reads it (inside values unchanged).

    Values within ``tolerance`` outside the square are rounding noise of an island on
    its border: clamped, not wrapped to the opposite side. Writes into ``out`` (float32,
    may be ``uv`` itself) or a new float32 array, and returns it."""
    if out is None:
        out = np.array(uv, dtype=np.float32)
    elif out is not uv:
        np.copyto(out, uv)
    if out.min(initial=0.0) >= 0.0 and out.max(initial=1.0) <= 1.0:
        return out  # the common case: every UV inside the square
    out[(out < 0.0) & (out > -tolerance)] = 0.0
    out[(out > 1.0) & (out < 1.0 + tolerance)] = 1.0
    outside = (out < 0.0) | (out > 1.0)
    if outside.any():  # rare: only UV islands placed outside the unit square
        out[outside] -= np.floor(out[outside])
    return out


def motion_to_next(vector: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Cycles' Vector pass (H, W, 4) -> motion to the next frame (H, W, 2) float32 as
    [col, row] pixels with rows top to bottom (Blender's y points up)."""
    if out is None:
        out = np.empty(vector.shape[:-1] + (2,), np.float32)
    np.negative(vector[..., 2], out=out[..., 0])
    out[..., 1] = vector[..., 3]
    return out


def allocate_views(count: int, height: int, width: int, with_vector: bool = False,
                   with_uv: bool = True, background_ids: bool = False) -> dict[str, np.ndarray]:
    """Zeroed wire arrays for ``count`` views, filled one view at a time by :func:`decode_view`:
    depth (V, H, W) float32, mask (V, H, W) bool, normal / position (V, H, W, 3) float32
    [, uv (V, H, W, 2)] [, vector (V, H, W, 2)] [, background_id (V, H, W) int32, with uv].
    Filling in place avoids a stacking copy."""
    shape = (count, height, width)
    arrays = {"depth": np.zeros(shape, np.float32), "mask": np.zeros(shape, bool)}
    if with_uv:
        arrays["uv"] = np.zeros(shape + (2,), np.float32)
        if background_ids:
            arrays["background_id"] = np.zeros(shape, np.int32)
    arrays["normal"] = np.zeros(shape + (3,), np.float32)
    arrays["position"] = np.zeros(shape + (3,), np.float32)
    if with_vector:
        arrays["vector"] = np.zeros(shape + (2,), np.float32)
    return arrays


def decode_view(raw: dict[str, np.ndarray], marker: int, arrays: dict[str, np.ndarray], index: int,
                surface_ids: np.ndarray | None = None) -> None:
    """One view's EXR pixels (name -> (H, W, C) float32, rows top to bottom) -> view ``index``
    of ``arrays`` (from :func:`allocate_views`, still zero there).

    depth planar, 1e10 where nothing is hit (every object counts: ControlNet sees the
    whole scene); mask where the object index is ``marker``; normal, position and uv on
    target pixels only (0 elsewhere); vector everywhere. A ``background_id`` array is
    filled through ``surface_ids`` (pass index -> background id, 0 for none; indices past
    its end are 0), and uv is kept on those pixels too.
    """
    mask = arrays["mask"][index]
    object_index = raw["Object Index"][..., 0]
    np.less(np.abs(object_index - marker), 0.5, out=mask)
    depth = arrays["depth"][index]
    np.copyto(depth, raw["Depth"][..., 0])
    depth[~(np.isfinite(depth) & (depth < BACKGROUND_DEPTH))] = BACKGROUND_DEPTH
    on = mask[..., None]  # only target pixels carry surface data
    for key, name in (("normal", "Normal"), ("position", "Position")):
        np.copyto(arrays[key][index], raw[name][..., :3], where=on)
    if "background_id" in arrays:
        ids = arrays["background_id"][index]
        lookup = np.zeros(1, np.int32) if surface_ids is None else np.asarray(surface_ids, np.int32)
        pass_index = np.rint(np.nan_to_num(object_index, nan=0.0, posinf=0.0, neginf=0.0)).astype(np.int64)
        pass_index[(pass_index < 0) | (pass_index >= len(lookup))] = 0
        np.take(lookup, pass_index, out=ids)
        ids[mask] = 0
        on = on | (ids > 0)[..., None]
    if "uv" in arrays:
        np.copyto(arrays["uv"][index], raw["UV"][..., :2], where=on)
    if "uv" in arrays:
        wrap_uv(arrays["uv"][index], out=arrays["uv"][index])
    if "vector" in arrays:
        motion_to_next(raw["Vector"], out=arrays["vector"][index])


def view_arrays(raw: dict[str, np.ndarray], marker: int, with_vector: bool = False,
                with_uv: bool = True, surface_ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """One view's EXR pixels -> its wire arrays (H, W[, C]), as :func:`decode_view` fills
    them (``background_id`` too when ``surface_ids`` is given)."""
    height, width = raw["Depth"].shape[:2]
    arrays = allocate_views(1, height, width, with_vector, with_uv, surface_ids is not None)
    decode_view(raw, marker, arrays, 0, surface_ids)
    return {name: array[0] for name, array in arrays.items()}


def decode_texels(position_rgba: np.ndarray, normal_rgba: np.ndarray, object_to_world: np.ndarray):
    """Baked images (T, T, 4), rows top to bottom -> (position (T, T, 3) world,
    normal (T, T, 3) world unit, covered (T, T) bool); 0 where nothing was baked."""
    covered = position_rgba[..., 3] > 0.5
    rotation = np.asarray(object_to_world, dtype=np.float64)[:3, :3]
    # Undo Blender's object-space conversion n_obj = normalize(inverse(M) @ n_world).
    normal = (2.0 * normal_rgba[..., :3].astype(np.float64) - 1.0) @ rotation.T
    length = np.linalg.norm(normal, axis=-1, keepdims=True)
    normal = np.where(length > 0, normal / np.where(length > 0, length, 1.0), 0.0)
    on = covered[..., None]
    return (np.where(on, position_rgba[..., :3], 0.0).astype(np.float32),
            np.where(on, normal, 0.0).astype(np.float32), covered)


# ------------------------------------------------------------------------ public entry


def render_passes(scene: bpy.types.Scene, cameras: Sequence[bpy.types.Object],
                  objects: Sequence[bpy.types.Object], width: int, height: int, uv_map: str | None = None,
                  with_vector: bool = False, texture_size: int | None = None, smart_uv: bool = False,
                  view_layer=None, on_view: ViewCallback | None = None) -> Passes:
    """Render every camera at the current frame -> validated :class:`Passes`.

    depth (V, H, W), normal / position (V, H, W, 3), uv (V, H, W, 2), mask (V, H, W) bool,
    world_to_camera / projection (V, 4, 4) [, vector (V, H, W, 2)] [, texel_position /
    texel_normal (T, T, 3), texel_mask (T, T) bool with ``texture_size`` T].
    ``uv_map`` None uses each object's active render UV map; ``smart_uv`` adds a new
    Smart UV Project map to objects without one (otherwise they are an error).
    ``on_view(rendered, total)`` follows the progress (e.g. a progress bar).
    """
    cameras = list(cameras)
    if not cameras:
        raise CaptureError("no camera to render: add cameras (e.g. build a rig) first")
    frame = scene.frame_current
    return _capture(scene, [(camera, None) for camera in cameras], objects, width, height, uv_map,
                    with_vector, texture_size, smart_uv, view_layer, bake_frame=frame, on_view=on_view)


def render_frame_passes(scene: bpy.types.Scene, camera: bpy.types.Object, objects: Sequence[bpy.types.Object],
                        frames: Iterable[int], width: int, height: int, uv_map: str | None = None,
                        with_vector: bool = True, texture_size: int | None = None, smart_uv: bool = False,
                        view_layer=None, with_uv: bool = True, on_view: ViewCallback | None = None,
                        background_ids: bool = False) -> Passes:
    """Render one camera at each of ``frames`` -> validated :class:`Passes` (frames first).

    Same arrays as :func:`render_passes`; ``vector`` (F, H, W, 2) is the motion of each
    pixel to the following frame (+1), [col, row] pixels, rows top to bottom. Texel maps,
    when asked, are baked at the first frame. ``with_uv`` False renders no UV pass (the
    objects then need no UV map; ``uv`` is None and texel maps cannot be asked for).
    ``on_view(rendered, total)`` is called after each frame. ``background_ids`` (with
    the UV pass) tells the scene's other UV-mapped meshes apart: ``background_id``
    (F, H, W) int32 numbers them 1.. by name (see :func:`capture.background_surfaces`),
    and ``uv`` holds their UV on their pixels.
    """
    frames = [int(f) for f in frames]
    if not frames:
        raise CaptureError("no frame to render: the frame range is empty")
    return _capture(scene, [(camera, f) for f in frames], objects, width, height, uv_map,
                    with_vector, texture_size, smart_uv, view_layer, bake_frame=frames[0], with_uv=with_uv,
                    on_view=on_view, background_ids=background_ids and with_uv)


def bake_texel_maps(scene: bpy.types.Scene, objects: Sequence[bpy.types.Object], uv_maps: dict,
                    texture_size: int, view_layer=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World position and normal of every texel of the objects' UV maps, by Cycles bakes.

    ``uv_maps``: object -> UV map name. -> (texel_position (T, T, 3) float32,
    texel_normal (T, T, 3) float32, texel_mask (T, T) bool); texel row 0 is v = 1.
    Texels no face covers stay 0 and out of the mask; where UV islands of several
    objects overlap, the later object wins.
    """
    size = _checked_size("texture_size", texture_size, 16, 8192)
    view_layer = view_layer or capture.capture_view_layer(scene)
    position = np.zeros((size, size, 3), np.float32)
    normal = np.zeros((size, size, 3), np.float32)
    covered = np.zeros((size, size), bool)
    with contextlib.ExitStack() as stack:
        stack.enter_context(capture.preserved_render_settings(scene))
        stack.enter_context(capture.preserved_selection(view_layer))
        stack.enter_context(_context_for(scene, view_layer))
        _configure_cycles(scene)
        material, node, images = stack.enter_context(_bake_material(size))
        depsgraph = capture.evaluated_depsgraph(scene, view_layer)
        for obj in objects:
            with _frozen_copy(scene, obj, depsgraph, material) as (proxy, matrix):
                _select_only(view_layer, proxy)
                baked_position = _bake(node, images[0], "POSITION", uv_maps[obj])
                baked_normal = _bake(node, images[1], "NORMAL", uv_maps[obj])
            p, n, c = decode_texels(baked_position, baked_normal, matrix)
            position[c], normal[c] = p[c], n[c]
            covered |= c
    return position, normal, covered


# ------------------------------------------------------------------------- the capture


def _capture(scene, shots, objects, width, height, uv_map, with_vector, texture_size, smart_uv,
             view_layer, bake_frame, with_uv: bool = True, on_view: ViewCallback | None = None,
             background_ids: bool = False) -> Passes:
    """Render ``shots`` [(camera, frame or None)] -> validated Passes; state restored."""
    width = _checked_size("width", width, 8, 16384)
    height = _checked_size("height", height, 8, 16384)
    objects = _checked_objects(objects)
    for camera, _frame in shots:
        if camera is None or camera.type != "CAMERA":
            raise CaptureError(f"{getattr(camera, 'name', camera)!r} is not a camera object")
    view_layer = view_layer or capture.capture_view_layer(scene)
    # A requested Smart UV map is a deliberate, lasting edit: made before the state scope.
    if not with_uv and texture_size is not None:
        raise CaptureError("texel maps are baked on a UV map: a capture without UV cannot bake them")
    uv_maps = ({obj: capture.ensure_uv_map(obj, uv_map, smart_project=smart_uv) for obj in objects}
               if with_uv else {})
    # Pass indices no other object uses: one for the targets (the mask), one per surface.
    surfaces = capture.background_surfaces(scene, objects) if background_ids else []
    indices = capture.unused_pass_indices(scene, objects + surfaces, 1 + len(surfaces),
                                          capture.evaluated_depsgraph(scene, view_layer))
    marker = indices[0]
    surface_ids = None
    if background_ids:
        surface_ids = np.zeros(indices[-1] + 1, np.int32)
        surface_ids[indices[1:]] = np.arange(1, len(surfaces) + 1)
    names = [n for n in RENDER_PASSES if (with_vector or n != "Vector") and (with_uv or n != "UV")]
    arrays = allocate_views(len(shots), height, width, with_vector, with_uv, background_ids)
    world_to_camera, projection = [], []
    with contextlib.ExitStack() as stack:
        stack.enter_context(capture.preserved_render_settings(scene))
        stack.enter_context(_context_for(scene, view_layer))
        stack.enter_context(capture.object_mode())  # bakes need Object Mode; edits are synced
        stack.enter_context(_no_new_render_result())
        texels = None
        if texture_size is not None:
            scene.frame_set(bake_frame)
            texels = bake_texel_maps(scene, objects, uv_maps, texture_size, view_layer)
        stack.enter_context(capture.temporary_pass_index(objects + surfaces,
                                                         [marker] * len(objects) + indices[1:]))
        stack.enter_context(capture.temporary_render_uv(uv_maps))
        folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="zs-passes-"))
        _configure_render(scene, view_layer, width, height, names)
        output = stack.enter_context(_pass_compositor(scene, view_layer, names))
        for index, (camera, frame) in enumerate(shots):
            if frame is not None and frame != scene.frame_current:
                scene.frame_set(frame)
            scene.camera = camera
            raw = _render_view(scene, view_layer, output, os.path.join(folder, f"{index:04d}"), names)
            decode_view(raw, marker, arrays, index, surface_ids)
            matrices = capture.camera_matrices(scene, camera, width, height,
                                               capture.evaluated_depsgraph(scene, view_layer))
            world_to_camera.append(matrices[0])
            projection.append(matrices[1])
            if on_view is not None:
                on_view(index + 1, len(shots))
    passes = Passes(**arrays, world_to_camera=np.stack(world_to_camera), projection=np.stack(projection))
    if texels is not None:
        passes.texel_position, passes.texel_normal, passes.texel_mask = texels
    return passes.validate()


def _checked_size(name: str, value, lowest: int, highest: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lowest <= value <= highest:
        raise CaptureError(f"{name}: expected an integer in [{lowest}, {highest}], got {value!r}")
    return int(value)


def _checked_objects(objects) -> list:
    objects = list(objects)
    if not objects:
        raise CaptureError("no mesh object to texture: select at least one mesh")
    for obj in objects:
        if obj.type != "MESH":
            raise CaptureError(f"object {obj.name!r} is a {obj.type.lower()}, not a mesh")
        if obj.hide_render:
            raise CaptureError(f"object {obj.name!r} is disabled in renders; enable it to capture it")
    return objects


def _configure_cycles(scene) -> None:
    """Cycles at 1 sample, no denoising, a ~0 box filter: exact data passes and bakes.

    Data passes need only the first hit: no light bounces. Persistent data keeps the
    scene's BVH between the views of one capture (the largest saving per extra view)."""
    scene.render.engine = "CYCLES"
    scene.render.use_persistent_data = True
    cycles = scene.cycles
    cycles.samples = 1
    cycles.max_bounces = 0
    cycles.use_adaptive_sampling = False
    cycles.use_denoising = False
    cycles.use_layer_samples = "IGNORE"
    cycles.pixel_filter_type = "BOX"
    cycles.filter_width = FILTER_WIDTH


def _configure_render(scene, view_layer, width: int, height: int, names: Sequence[str]) -> None:
    """Render settings for a pass capture (all recorded by preserved_render_settings)."""
    _configure_cycles(scene)
    render = scene.render
    render.resolution_x, render.resolution_y, render.resolution_percentage = width, height, 100
    render.pixel_aspect_x = render.pixel_aspect_y = 1.0
    render.use_border = False
    render.use_compositing = True
    render.use_sequencer = False
    render.use_motion_blur = False  # blur smears data passes and disables the vector pass
    scene.view_settings.view_transform = "Standard"
    view_layer.use = True
    view_layer.use_pass_combined = False  # shading is not needed: data passes only
    for name, (_socket, flag) in RENDER_PASSES.items():
        setattr(view_layer, flag, name in names)


@contextlib.contextmanager
def _context_for(scene, view_layer) -> Iterator[None]:
    """Operators below run on ``scene`` / ``view_layer`` even when they are not the context's."""
    if bpy.context.scene == scene and bpy.context.view_layer == view_layer:
        yield
    else:
        with bpy.context.temp_override(scene=scene, view_layer=view_layer):
            yield


@contextlib.contextmanager
def _no_new_render_result() -> Iterator[None]:
    """Remove the 'Render Result' image our renders create when there was none before.
    (An existing one keeps its slot but shows the last pass render: rendering overwrites it.)"""
    before = {image.as_pointer() for image in bpy.data.images if image.type == "RENDER_RESULT"}
    try:
        yield
    finally:
        for image in list(bpy.data.images):
            if image.type == "RENDER_RESULT" and image.as_pointer() not in before:
                bpy.data.images.remove(image)


# Files a view's passes are written to: reading an EXR back costs about the same for any
# channel count, so passes share RGBA files where they fit (alpha loaded channel-packed).
PACKED_FILES: dict[str, tuple[str, str]] = {  # file -> (3-component pass in RGB, 1-component pass in A)
    "PositionDepth": ("Position", "Depth"),
    "NormalIndex": ("Normal", "Object Index"),
}


def file_layout(names: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Output file -> the passes it holds, in channel order (packed pairs, then the rest alone)."""
    layout, packed = {}, set()
    for file_name, pair in PACKED_FILES.items():
        if all(name in names for name in pair):
            layout[file_name] = pair
            packed.update(pair)
    layout.update({name: (name,) for name in names if name not in packed})
    return layout


def unpack_file(pixels: np.ndarray, held: tuple[str, ...]) -> dict[str, np.ndarray]:
    """One file's pixels (H, W, 4) -> pass name -> (H, W, C): a packed pair splits into RGB
    and A; a single pass keeps every channel."""
    if len(held) == 1:
        return {held[0]: pixels}
    return {held[0]: pixels[..., :3], held[1]: pixels[..., 3:4]}


@contextlib.contextmanager
def _pass_compositor(scene, view_layer, names: Sequence[str]) -> Iterator[bpy.types.Node]:
    """A temporary compositor: render layers -> File Output (32-bit EXRs, see
    :data:`PACKED_FILES`). Yields the File Output node (set its ``directory`` per view);
    removed on exit."""
    tree = bpy.data.node_groups.new(capture.unique_name(bpy.data.node_groups, "ZS Passes"),
                                    "CompositorNodeTree")
    try:
        layers = tree.nodes.new("CompositorNodeRLayers")
        layers.scene = scene
        layers.layer = view_layer.name
        output = tree.nodes.new("CompositorNodeOutputFile")
        output.format.media_type = "IMAGE"  # before file_format: multilayer is the default
        output.format.file_format = "OPEN_EXR"
        output.format.color_depth = "32"
        output.format.exr_codec = "NONE"  # temporary files: speed over size
        output.format.color_mode = "RGBA"
        output.save_as_render = False  # data, not colour: no view transform
        output.file_name = ""
        for file_name, held in file_layout(names).items():
            if len(held) == 1:
                output.file_output_items.new(RENDER_PASSES[held[0]][0], file_name)
                tree.links.new(layers.outputs[held[0]], output.inputs[file_name])
                continue
            join = tree.nodes.new("CompositorNodeSetAlpha")
            join.inputs["Type"].default_value = "Replace Alpha"
            tree.links.new(layers.outputs[held[0]], join.inputs["Image"])
            tree.links.new(layers.outputs[held[1]], join.inputs["Alpha"])
            output.file_output_items.new("RGBA", file_name)
            tree.links.new(join.outputs["Image"], output.inputs[file_name])
        scene.compositing_node_group = tree
        yield output
    finally:
        bpy.data.node_groups.remove(tree)


def _render_view(scene, view_layer, output, folder: str, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Render the current camera / frame -> name -> (H, W, C) float32, rows top to bottom."""
    os.makedirs(folder, exist_ok=True)
    output.directory = folder + os.sep
    result = bpy.ops.render.render(scene=scene.name, layer=view_layer.name)
    if "FINISHED" not in result:
        raise CaptureError(f"the pass render of camera {scene.camera.name!r} did not finish ({result})")
    raw = {}
    for file_name, held in file_layout(names).items():
        raw.update(unpack_file(_read_exr(_pass_file(folder, file_name)), held))
    return raw


def _pass_file(folder: str, name: str) -> str:
    """The EXR the File Output node wrote for ``name`` (a frame number may be appended)."""
    pattern = re.compile(re.escape(name) + r"\d*\.exr$")
    found = sorted(entry for entry in os.listdir(folder) if pattern.fullmatch(entry))
    if not found:
        raise CaptureError(f"the render wrote no {name!r} pass (found {sorted(os.listdir(folder))})")
    return os.path.join(folder, found[-1])


def _read_exr(path: str) -> np.ndarray:
    """An EXR file -> (H, W, C) float32 rows top to bottom (a view: decode_view copies it);
    the loaded image is removed."""
    image = bpy.data.images.load(path, check_existing=False)
    try:
        image.colorspace_settings.is_data = True  # raw values, no colour conversion
        image.alpha_mode = "CHANNEL_PACKED"  # alpha is data too: never (un)premultiplied
        return capture.image_to_numpy(image, contiguous=False)
    finally:
        bpy.data.images.remove(image)


# --------------------------------------------------------------------------- texel bake


@contextlib.contextmanager
def _bake_material(size: int) -> Iterator[tuple]:
    """A temporary material whose active image node is the bake target, and two float
    images (position, normal). Yields (material, node, (position_image, normal_image));
    all removed on exit."""
    material = bpy.data.materials.new(capture.unique_name(bpy.data.materials, "ZS Bake"))
    images = []
    try:
        if material.node_tree is None:  # Blender < 5 creates the tree on demand
            material.use_nodes = True
        node = material.node_tree.nodes.new("ShaderNodeTexImage")
        material.node_tree.nodes.active = node
        for label in ("Position", "Normal"):
            image = bpy.data.images.new(capture.unique_name(bpy.data.images, f"ZS Bake {label}"),
                                        size, size, alpha=True, float_buffer=True)
            image.colorspace_settings.is_data = True
            images.append(image)
        yield material, node, tuple(images)
    finally:
        for image in images:
            bpy.data.images.remove(image)
        bpy.data.materials.remove(material)


@contextlib.contextmanager
def _frozen_copy(scene, obj, depsgraph, material) -> Iterator[tuple]:
    """A temporary object holding ``obj``'s evaluated mesh (modifiers applied) at its world
    matrix, with only ``material``: bakes never touch the user's object or materials.
    Yields (proxy, object_to_world (4, 4) float64); proxy and mesh removed on exit."""
    evaluated = obj.evaluated_get(depsgraph)
    mesh = bpy.data.meshes.new_from_object(evaluated, preserve_all_data_layers=True, depsgraph=depsgraph)
    proxy = None
    try:
        if not len(mesh.polygons):
            raise CaptureError(f"object {obj.name!r} has no faces to bake")
        mesh.materials.clear()
        mesh.materials.append(material)
        mesh.polygons.foreach_set("material_index", np.zeros(len(mesh.polygons), np.int32))
        proxy = bpy.data.objects.new(capture.unique_name(bpy.data.objects, "ZS Bake Proxy"), mesh)
        matrix = evaluated.matrix_world.copy()
        proxy.matrix_world = matrix
        scene.collection.objects.link(proxy)
        yield proxy, np.array(matrix, dtype=np.float64)
    finally:
        if proxy is not None:
            bpy.data.objects.remove(proxy, do_unlink=True)
        bpy.data.meshes.remove(mesh)


def _select_only(view_layer, obj) -> None:
    for other in view_layer.objects:
        if other is not None and other.select_get(view_layer=view_layer):
            other.select_set(False, view_layer=view_layer)
    obj.select_set(True, view_layer=view_layer)
    view_layer.objects.active = obj


def _bake(node, image, kind: str, uv_map: str) -> np.ndarray:
    """Bake ``kind`` of the selected object into ``image`` -> (T, T, 4) float32, rows top
    to bottom. The image starts all 0 (alpha 0), so unbaked texels keep alpha 0."""
    image.pixels.foreach_set(np.zeros(len(image.pixels), np.float32))
    node.image = image
    result = bpy.ops.object.bake(type=kind, normal_space="OBJECT", normal_r="POS_X", normal_g="POS_Y",
                                 normal_b="POS_Z", margin=0, use_clear=False, uv_layer=uv_map,
                                 use_selected_to_active=False, use_cage=False, target="IMAGE_TEXTURES",
                                 save_mode="INTERNAL", use_split_materials=False, use_automatic_name=False)
    if "FINISHED" not in result:
        raise CaptureError(f"the {kind.lower()} bake did not finish ({result})")
    return capture.image_to_numpy(image)
