"""The "ZS passes" view-layer setting: an ordinary render writes what the sampler needs.

With the setting on for a view layer, every render of it (F12, Ctrl+F12, ``blender -b
shot.blend -a``, a farm node with the extension installed) also writes, per frame, into
the setting's folder:

- ``<layer>_<frame>.exr``: a multilayer OpenEXR (32-bit float) with the Depth, Normal,
  UV, Position, Object Index and Vector passes, from a File Output node the setting adds
  to the scene's compositor (beside the artist's own nodes, which it leaves alone; a scene
  without a compositor gets one that passes the image straight through);
- ``<layer>_<frame>.json``: the sidecar with what pixels cannot say (the camera's
  matrices, the size, the frame rate, the target pass index; ``zs_core/render_passes.py``
  defines it), written for every rendered frame when the render ends (or is cancelled).

The beauty image is not altered: the data passes are extra outputs of the view layer.
What makes the passes unusable (another engine than Cycles, motion blur on, no
compositing, Blender 4.x's three-value vector sockets) is listed in the panel and in every
sidecar, so ``zs animate`` refuses those frames naming the reason instead of guessing.
The passes equal the add-on's own capture where the render samples the pixel centre:
Cycles' pixel filter at its minimum (0.01 px); a wider filter blends the edge pixels of
Normal / UV / Vector over the filter's footprint.

Our own pass capture renders too: :func:`suspended` keeps these handlers quiet meanwhile.
Imports: bpy, the standard library and numpy only.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator

import bpy
from bpy.app.handlers import persistent
from bpy.props import BoolProperty, IntProperty, StringProperty

from . import compat
from .camera_projection import camera_matrices
from .datablocks import unique_name
from .errors import CaptureError
from .wire import render_passes

PASS_FLAGS = {  # Render Layers output -> (File Output socket type, view layer flag)
    "Depth": ("FLOAT", "use_pass_z"),
    "Normal": ("VECTOR", "use_pass_normal"),
    "UV": ("VECTOR", "use_pass_uv"),
    "Position": ("VECTOR", "use_pass_position"),
    "Object Index": ("FLOAT", "use_pass_object_index"),
    "Vector": ("RGBA", "use_pass_vector"),
}
NODE_TAG = "zs_passes_layer"  # custom property naming the view layer a node serves
TREE_TAG = "zs_passes_made"  # on a compositor the setting made (removed with the setting)
EXACT_FILTER_WIDTH = 0.01

_suspended = 0
_rendered: dict[str, list[int]] = {}  # view layer -> frames the current render job rendered


def _retarget(settings, context) -> None:
    """The folder changed: point the File Output node there too."""
    scene = context.scene
    for view_layer in scene.view_layers:
        if view_layer.zs_passes == settings:
            node = file_output(scene, view_layer)
            if node is not None:
                node.directory = settings.folder


class ZS_PassesSettings(bpy.types.PropertyGroup):
    """``ViewLayer.zs_passes``: the setting's state, drawn in the View Layer properties."""

    enabled: BoolProperty(name="ZS Passes", default=False,
                          description="Renders of this view layer also write the ZS passes (set by the Enable / "
                                      "Disable buttons, which add and remove the compositor nodes)")
    folder: StringProperty(name="Folder", default="//zs_passes/", subtype="DIR_PATH", options=compat.BLEND_RELATIVE_PATH,
                           description="Where each frame's EXR and camera sidecar go",
                           update=_retarget)
    target_pass_index: IntProperty(name="Target Pass Index", default=0, min=0, max=32767,
                                   description="The objects whose surface noise and UV sync follow: those with this "
                                               "pass index (Object Properties > Relations). 0: every object")
    restyle_after_render: BoolProperty(
        name="Restyle After Render", default=False,
        description="When an animation render of this view layer completes, send its ZS passes to the server as one "
                    "animation job (the ZS panel's Animation settings) and load the restyled frames as a strip; the "
                    "render itself is not touched")


# ----------------------------------------------------------------------- the setting


def enable(scene: bpy.types.Scene, view_layer: bpy.types.ViewLayer) -> bpy.types.Node:
    """Turn the setting on: the view layer's data passes and a File Output node in the
    scene's compositor -> that node. Raises CaptureError where it cannot work at all."""
    if not compat.writes_motion_to_next_frame():
        raise CaptureError(compat.NO_MOTION_TO_NEXT_FRAME)
    settings = view_layer.zs_passes
    for _name, (_socket, flag) in PASS_FLAGS.items():
        setattr(view_layer, flag, True)
    tree = scene.compositing_node_group
    if tree is None:
        tree = _pass_through_compositor(scene, view_layer)
    _remove_nodes(tree, view_layer.name)
    layers = tree.nodes.new("CompositorNodeRLayers")
    layers.scene, layers.layer = scene, view_layer.name
    output = tree.nodes.new("CompositorNodeOutputFile")
    output.format.media_type = "MULTI_LAYER_IMAGE"
    output.format.file_format = "OPEN_EXR_MULTILAYER"
    output.format.color_depth = "32"
    output.format.exr_codec = "ZIP"  # lossless
    output.save_as_render = False  # data, not colour
    output.directory = settings.folder
    output.file_name = f"{view_layer.name}_"
    for name, (socket, _flag) in PASS_FLAGS.items():
        output.file_output_items.new(socket, name)
        tree.links.new(compat.render_layer_output(layers, name), output.inputs[name])
    for node, label in ((layers, "ZS Passes (render layers)"), (output, "ZS Passes")):
        node[NODE_TAG] = view_layer.name
        node.name = node.label = f"{label} {view_layer.name}"
    layers.location, output.location = (-300.0, -400.0), (0.0, -400.0)
    settings.enabled = True
    return output


def disable(scene: bpy.types.Scene, view_layer: bpy.types.ViewLayer) -> None:
    """Turn the setting off: its nodes go (and a compositor it made, if nothing else uses
    it); the view layer's passes stay as they are (the artist may use them)."""
    view_layer.zs_passes.enabled = False
    tree = getattr(scene, "compositing_node_group", None)  # 4.x has none: enable() refused there
    if tree is None:
        return
    _remove_nodes(tree, view_layer.name)
    if tree.get(TREE_TAG) and not any(node.get(NODE_TAG) for node in tree.nodes):
        scene.compositing_node_group = None
        if tree.users == 0:
            bpy.data.node_groups.remove(tree)


def problems(scene: bpy.types.Scene, view_layer: bpy.types.ViewLayer) -> list[str]:
    """Why a render of ``view_layer`` would not give usable ZS passes (empty: it would)."""
    found = []
    if not compat.writes_motion_to_next_frame():
        found.append(compat.NO_MOTION_TO_NEXT_FRAME)
        return found
    if scene.render.engine != "CYCLES":
        found.append(f"the render engine is {scene.render.engine}; the UV, Position and Object Index passes need "
                     "Cycles")
    if scene.render.use_motion_blur:
        found.append("motion blur is on; Blender writes no vector pass with motion blur")
    if not scene.render.use_compositing:
        found.append("Post Processing > Compositing is off, so the File Output node never runs")
    if not view_layer.use:
        found.append(f"view layer {view_layer.name!r} is not used for rendering")
    if file_output(scene, view_layer) is None:
        found.append("the ZS Passes nodes are missing from the compositor; press Enable again")
    if view_layer.zs_passes.folder.startswith("//") and not bpy.data.filepath:
        found.append("the folder is relative (//) but the file is not saved; save it or choose an absolute folder")
    return found


def file_output(scene: bpy.types.Scene, view_layer: bpy.types.ViewLayer):
    """The setting's File Output node for ``view_layer``, or None."""
    tree = getattr(scene, "compositing_node_group", None)
    if tree is None:
        return None
    return next((node for node in tree.nodes
                 if node.get(NODE_TAG) == view_layer.name and node.bl_idname == "CompositorNodeOutputFile"), None)


def frame_files(scene: bpy.types.Scene, view_layer: bpy.types.ViewLayer, frame: int) -> tuple[Path, Path]:
    """(EXR, sidecar) paths of ``frame``, as the File Output node names them."""
    folder = Path(bpy.path.abspath(view_layer.zs_passes.folder))
    exr = folder / f"{view_layer.name}_{frame:04d}.exr"
    return exr, exr.with_suffix(render_passes.SIDECAR_SUFFIX)


def sequence_pattern(scene: bpy.types.Scene, view_layer: bpy.types.ViewLayer) -> str:
    """The ``zs animate`` source naming this layer's sequence (``.../<layer>_####.exr``)."""
    return str(Path(bpy.path.abspath(view_layer.zs_passes.folder)) / f"{view_layer.name}_####.exr")


def exact_pixels(scene: bpy.types.Scene) -> bool:
    """Whether the render samples the pixel centres (Cycles' pixel filter at its minimum),
    as the add-on's own capture does."""
    return scene.cycles.filter_width <= EXACT_FILTER_WIDTH + 1e-6


@contextlib.contextmanager
def suspended() -> Iterator[None]:
    """No sidecars while the add-on's own capture renders."""
    global _suspended
    _suspended += 1
    try:
        yield
    finally:
        _suspended -= 1


def _pass_through_compositor(scene, view_layer) -> bpy.types.NodeTree:
    """A compositor for a scene that had none: the render's image straight to the output."""
    tree = bpy.data.node_groups.new(unique_name(bpy.data.node_groups, "ZS Compositing"), "CompositorNodeTree")
    tree.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
    layers = tree.nodes.new("CompositorNodeRLayers")
    layers.scene, layers.layer = scene, view_layer.name
    group_output = tree.nodes.new("NodeGroupOutput")
    group_output.location = (300.0, 0.0)
    tree.links.new(layers.outputs["Image"], group_output.inputs[0])
    tree[TREE_TAG] = True
    scene.compositing_node_group = tree
    return tree


def _remove_nodes(tree, layer_name: str) -> None:
    for node in [node for node in tree.nodes if node.get(NODE_TAG) == layer_name]:
        tree.nodes.remove(node)


def enabled_layers(scene: bpy.types.Scene) -> list[bpy.types.ViewLayer]:
    return [layer for layer in scene.view_layers if layer.zs_passes.enabled and layer.use]


# ------------------------------------------------------------------------ the handlers
# Blender runs render handlers on the render thread while its window is open, where
# evaluating the scene is not safe. So render_post only notes which frame was rendered;
# the sidecars are written on the main thread once the render has ended
# (:func:`write_sidecars`, called by render_hook), evaluating each frame again.


@persistent
def _on_render_init(scene, _depsgraph=None) -> None:
    _rendered.clear()
    if _suspended:
        return
    for view_layer in enabled_layers(scene):
        for problem in problems(scene, view_layer):
            print(f"ZS passes ({view_layer.name}): {problem}")


@persistent
def _on_render_post(scene, _depsgraph=None) -> None:
    """One frame rendered: note it (its EXR is written; the sidecar comes after the render)."""
    if _suspended:
        return
    for view_layer in enabled_layers(scene):
        _rendered.setdefault(view_layer.name, []).append(scene.frame_current)


def write_sidecars(scene: bpy.types.Scene) -> dict[str, list[Path]]:
    """The sidecars of every frame the last render job rendered -> view layer -> their
    paths, in frame order. Main thread only: each frame is evaluated again (then the
    scene's frame is put back). A sidecar that cannot be written is reported and left out."""
    rendered = {name: sorted(set(frames)) for name, frames in _rendered.items()}
    _rendered.clear()
    written: dict[str, list[Path]] = {}
    if not rendered:
        return written
    frame, subframe = scene.frame_current, scene.frame_subframe
    try:
        for name, frames in rendered.items():
            view_layer = scene.view_layers.get(name)
            if view_layer is None:
                continue
            for number in frames:
                scene.frame_set(number)
                try:
                    written.setdefault(name, []).append(write_sidecar(scene, view_layer, number))
                except (OSError, CaptureError) as exc:
                    print(f"ZS passes ({name}): no sidecar for frame {number}: {exc}")
    finally:
        scene.frame_set(frame, subframe=subframe)
    return written


def write_sidecar(scene, view_layer, frame: int) -> Path:
    """Write ``frame``'s sidecar for ``view_layer`` (the scene at that frame) -> its path."""
    render = scene.render
    scale = render.resolution_percentage / 100.0
    width, height = int(render.resolution_x * scale), int(render.resolution_y * scale)
    camera = scene.camera
    found = problems(scene, view_layer)
    if camera is None:
        raise CaptureError("the scene has no camera")
    world_to_camera, projection = camera_matrices(scene, camera, width, height)
    card = render_passes.make_sidecar(frame, camera.name, width, height, world_to_camera, projection,
                                      view_layer.zs_passes.target_pass_index, render.fps / render.fps_base, found,
                                      view_layer=view_layer.name, blender=bpy.app.version_string,
                                      exact_pixels=exact_pixels(scene))
    _exr, path = frame_files(scene, view_layer, frame)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    partial.write_text(json.dumps(card, indent=1), encoding="utf-8")
    os.replace(partial, path)  # a reader never sees half a sidecar
    return path


HANDLERS = (("render_init", _on_render_init), ("render_post", _on_render_post))


classes = (ZS_PassesSettings,)
