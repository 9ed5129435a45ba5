"""Render the exact per-view passes of the wire format with Cycles, and the texel maps.

One Cycles render per view (or frame) at 1 sample with a ~0 pixel filter, so every pixel
holds the surface hit by the ray through its centre: planar depth, world normal, UV of
the chosen UV map, world position, object index (-> target mask) and, for animation,
motion vectors. A temporary compositor writes them as 32-bit EXRs to a temporary folder
(a 3-component pass and a 1-component pass share an RGBA file: fewer files to write and
load); they are read back with ``bpy.data.images.load`` and the loaded images removed.

Texel maps (world position / normal per texel of the target UV map) are rasterised in
UV space from each object's evaluated mesh (:mod:`.texels`), read with ``foreach_get``
from a temporary ``to_mesh`` copy: nothing in the file is created or changed.

Conventions found on Blender 5.0 (checked by tests/addon):
- the Depth pass is planar camera depth (-z_cam), not ray length; background 1e10;
- the Position and Normal passes are world space;
- the Vector pass holds (previous - current, current - next) in pixels, x right / y up.

Everything capture changes (render settings, camera, frame, pass indices, render UV
maps, mode) is restored afterwards, also on error. Arrays on the wire are float32
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

from . import compat, texels, zs_passes
from .camera_projection import camera_matrices
from .datablocks import unique_name
from .errors import CaptureError
from .image_pixels import image_to_numpy
from .scene_evaluation import capture_view_layer, evaluated_depsgraph
from .scene_objects import background_surfaces, unused_pass_indices
from .scene_state import object_mode, preserved_render_settings, render_resolution_modifiers, temporary_pass_index
from .uv_layers import ensure_uv_map, temporary_render_uv
from .wire import Passes, render_passes

# The numpy decoder is shared with the EXR-sequence reader (zs_core/render_passes.py).
BACKGROUND_DEPTH = render_passes.BACKGROUND_DEPTH
allocate_views, decode_view, view_arrays = render_passes.allocate_views, render_passes.decode_view, render_passes.view_arrays

# on_view(rendered, total): called after each view (or frame) is rendered and read back.
ViewCallback = Callable[[int, int], None]

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


# ------------------------------------------------------------------------ public entry


def render_passes(scene: bpy.types.Scene, cameras: Sequence[bpy.types.Object],
                  objects: Sequence[bpy.types.Object], width: int, height: int, uv_map: str | None = None,
                  with_vector: bool = False, texture_size: int | None = None,
                  view_layer=None, on_view: ViewCallback | None = None) -> Passes:
    """Render every camera at the current frame -> validated :class:`Passes`.

    depth (V, H, W), normal / position (V, H, W, 3), uv (V, H, W, 2), mask (V, H, W) bool,
    world_to_camera / projection (V, 4, 4) [, vector (V, H, W, 2)] [, texel_position /
    texel_normal (T, T, 3), texel_mask (T, T) bool with ``texture_size`` T].
    ``uv_map`` None uses each object's active render UV map; an object without the map is
    an error (the flow adds a Smart UV map before the capture where asked).
    ``on_view(rendered, total)`` follows the progress (e.g. a progress bar).
    """
    cameras = list(cameras)
    if not cameras:
        raise CaptureError("no camera to render: add cameras (e.g. build a rig) first")
    frame = scene.frame_current
    return _capture(scene, [(camera, None) for camera in cameras], objects, width, height, uv_map,
                    with_vector, texture_size, view_layer, bake_frame=frame, on_view=on_view)


def render_frame_passes(scene: bpy.types.Scene, camera: bpy.types.Object, objects: Sequence[bpy.types.Object],
                        frames: Iterable[int], width: int, height: int, uv_map: str | None = None,
                        with_vector: bool = True, texture_size: int | None = None,
                        view_layer=None, with_uv: bool = True, on_view: ViewCallback | None = None,
                        background_ids: bool = False) -> Passes:
    """Render one camera at each of ``frames`` -> validated :class:`Passes` (frames first).

    Same arrays as :func:`render_passes`; ``vector`` (F, H, W, 2) is the motion of each
    pixel to the following frame (+1), [col, row] pixels, rows top to bottom. Texel maps,
    when asked, are baked at the first frame. ``with_uv`` False renders no UV pass (the
    objects then need no UV map; ``uv`` is None and texel maps cannot be asked for).
    ``on_view(rendered, total)`` is called after each frame. ``background_ids`` (with
    the UV pass) tells the scene's other UV-mapped meshes apart: ``background_id``
    (F, H, W) int32 numbers them 1.. by name (see :func:`.scene_objects.background_surfaces`),
    and ``uv`` holds their UV on their pixels.
    """
    frames = [int(f) for f in frames]
    if not frames:
        raise CaptureError("no frame to render: the frame range is empty")
    return _capture(scene, [(camera, f) for f in frames], objects, width, height, uv_map,
                    with_vector, texture_size, view_layer, bake_frame=frames[0], with_uv=with_uv,
                    on_view=on_view, background_ids=background_ids and with_uv)


def bake_texel_maps(scene: bpy.types.Scene, objects: Sequence[bpy.types.Object], uv_maps: dict,
                    texture_size: int, view_layer=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World position and normal of every texel of the objects' UV maps, rasterised from
    their evaluated meshes by :func:`texels.rasterize`, with the modifiers as renders use
    them (render levels, render visibility: the surface the passes see).

    ``uv_maps``: object -> UV map name. -> (texel_position (T, T, 3) float32,
    texel_normal (T, T, 3) float32, texel_mask (T, T) bool); texel row 0 is v = 1.
    Normals are the shading normals (smooth, flat or custom, as rendered). Texels no face
    covers stay 0 and out of the mask; where UV islands of several objects overlap, the
    later object wins. Nothing in the file is created or changed.
    """
    size = _checked_size("texture_size", texture_size, 16, 8192)
    position = normal = covered = None
    with render_resolution_modifiers(objects):  # the surface the passes render
        depsgraph = evaluated_depsgraph(scene, view_layer)
        for obj in objects:
            tri_uv, tri_position, tri_normal = _mesh_triangles(obj, depsgraph, uv_maps[obj])
            position, normal, covered = texels.rasterize(tri_uv, tri_position, tri_normal, size, position, normal,
                                                         covered)
    return position, normal, covered  # the restored modifiers re-evaluate on the depsgraph's next use


def _mesh_triangles(obj, depsgraph, uv_map: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``obj``'s evaluated mesh as triangles -> (uv (M, 3, 2) float32, world position
    (M, 3, 3) float64, world shading normal (M, 3, 3) float64) per corner."""
    evaluated = obj.evaluated_get(depsgraph)
    mesh = evaluated.to_mesh(preserve_all_data_layers=True, depsgraph=depsgraph)
    try:
        if not len(mesh.polygons):
            raise CaptureError(f"object {obj.name!r} has no faces to bake")
        layer = mesh.uv_layers.get(uv_map)
        if layer is None:
            raise CaptureError(f"object {obj.name!r} has no UV map {uv_map!r} after its modifiers")
        mesh.calc_loop_triangles()
        count = len(mesh.loop_triangles)
        corner_loops = np.empty(count * 3, np.int32)
        mesh.loop_triangles.foreach_get("loops", corner_loops)
        corner_vertices = np.empty(count * 3, np.int32)
        mesh.loop_triangles.foreach_get("vertices", corner_vertices)
        vertices = np.empty(len(mesh.vertices) * 3, np.float32)
        mesh.vertices.foreach_get("co", vertices)
        uv = np.empty(len(mesh.loops) * 2, np.float32)
        layer.data.foreach_get("uv", uv)
        normals = np.empty(len(mesh.loops) * 3, np.float32)
        mesh.corner_normals.foreach_get("vector", normals)
        smooth = np.empty(count, bool)
        mesh.loop_triangles.foreach_get("use_smooth", smooth)
        matrix = np.array(evaluated.matrix_world, dtype=np.float64)
    finally:
        evaluated.to_mesh_clear()
    rotation = matrix[:3, :3]
    position = (vertices.reshape(-1, 3).astype(np.float64) @ rotation.T + matrix[:3, 3])[corner_vertices]
    position = position.reshape(count, 3, 3)
    # Smooth faces: corner normals (custom ones included), which transform with the inverse
    # transpose and are made unit length before interpolation, as Cycles does (a corner
    # stretched by non-uniform scale must not outweigh the others). Flat faces: each
    # triangle's own normal, as Cycles shades them (a non-planar quad is two planes).
    normal = normals.reshape(-1, 3).astype(np.float64) @ np.linalg.inv(rotation)
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
    normal = normal[corner_loops].reshape(count, 3, 3)
    flat = ~smooth
    facet = np.cross(position[flat, 1] - position[flat, 0], position[flat, 2] - position[flat, 0])
    if np.linalg.det(rotation) < 0:  # a mirrored object turns its triangles inside out
        facet = -facet
    normal[flat] = facet[:, None, :]
    return uv.reshape(-1, 2)[corner_loops].reshape(count, 3, 2), position, normal


# ------------------------------------------------------------------------- the capture


def _capture(scene, shots, objects, width, height, uv_map, with_vector, texture_size, view_layer, bake_frame, with_uv: bool = True, on_view: ViewCallback | None = None,
             background_ids: bool = False) -> Passes:
    """Render ``shots`` [(camera, frame or None)] -> validated Passes; state restored."""
    width = _checked_size("width", width, 8, 16384)
    height = _checked_size("height", height, 8, 16384)
    objects = _checked_objects(objects)
    for camera, _frame in shots:
        if camera is None or camera.type != "CAMERA":
            raise CaptureError(f"{getattr(camera, 'name', camera)!r} is not a camera object")
    view_layer = view_layer or capture_view_layer(scene)
    if not with_uv and texture_size is not None:
        raise CaptureError("texel maps are baked on a UV map: a capture without UV cannot bake them")
    if with_vector and not compat.writes_motion_to_next_frame():
        raise CaptureError(compat.NO_MOTION_TO_NEXT_FRAME)
    uv_maps = {obj: ensure_uv_map(obj, uv_map) for obj in objects} if with_uv else {}
    # Pass indices no other object uses: one for the targets (the mask), one per surface.
    surfaces = background_surfaces(scene, objects) if background_ids else []
    indices = unused_pass_indices(scene, objects + surfaces, 1 + len(surfaces),
                                  evaluated_depsgraph(scene, view_layer))
    marker = indices[0]
    surface_ids = None
    if background_ids:
        surface_ids = np.zeros(indices[-1] + 1, np.int32)
        surface_ids[indices[1:]] = np.arange(1, len(surfaces) + 1)
    names = [n for n in RENDER_PASSES if (with_vector or n != "Vector") and (with_uv or n != "UV")]
    arrays = allocate_views(len(shots), height, width, with_vector, with_uv, background_ids)
    world_to_camera, projection = [], []
    with contextlib.ExitStack() as stack:
        stack.enter_context(preserved_render_settings(scene))
        stack.enter_context(_context_for(scene, view_layer))
        stack.enter_context(object_mode())  # edit-mode changes reach the evaluated mesh
        stack.enter_context(_no_new_render_result())
        stack.enter_context(zs_passes.suspended())  # our renders are not the artist's: no sidecars
        texels = None
        if texture_size is not None:
            scene.frame_set(bake_frame)
            texels = bake_texel_maps(scene, objects, uv_maps, texture_size, view_layer)
        stack.enter_context(temporary_pass_index(objects + surfaces, [marker] * len(objects) + indices[1:]))
        stack.enter_context(temporary_render_uv(uv_maps))
        folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="zs-passes-"))
        _configure_render(scene, view_layer, width, height, names)
        output = stack.enter_context(_pass_compositor(scene, view_layer, names))
        for index, (camera, frame) in enumerate(shots):
            if frame is not None and frame != scene.frame_current:
                scene.frame_set(frame)
            scene.camera = camera
            raw = _render_view(scene, view_layer, output, os.path.join(folder, f"{index:04d}"), names)
            decode_view(raw, marker, arrays, index, surface_ids)
            matrices = camera_matrices(scene, camera, width, height, evaluated_depsgraph(scene, view_layer))
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
    """Cycles at 1 sample, no denoising, a ~0 box filter: exact data passes.

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
    with compat.compositor(scene, unique_name(bpy.data.node_groups, "ZS Passes")) as tree:
        layers = tree.nodes.new("CompositorNodeRLayers")
        layers.scene = scene
        layers.layer = view_layer.name
        output = tree.nodes.new("CompositorNodeOutputFile")
        compat.prepare_file_output(output)
        for file_name, held in file_layout(names).items():
            if len(held) == 1:
                tree.links.new(compat.render_layer_output(layers, held[0]),
                               compat.add_file_output_input(output, RENDER_PASSES[held[0]][0], file_name))
                continue
            join = compat.replace_alpha_node(tree)
            tree.links.new(compat.render_layer_output(layers, held[0]), join.inputs["Image"])
            tree.links.new(compat.render_layer_output(layers, held[1]), join.inputs["Alpha"])
            tree.links.new(join.outputs["Image"], compat.add_file_output_input(output, "RGBA", file_name))
        yield output


def _render_view(scene, view_layer, output, folder: str, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Render the current camera / frame -> name -> (H, W, C) float32, rows top to bottom."""
    os.makedirs(folder, exist_ok=True)
    compat.set_file_output_folder(output, folder + os.sep)
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
        return image_to_numpy(image, contiguous=False)
    finally:
        bpy.data.images.remove(image)
