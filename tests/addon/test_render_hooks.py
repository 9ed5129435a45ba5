"""The render-pipeline hooks on the real bpy: the ZS passes view-layer setting (an ordinary
animation render writes multilayer EXRs + camera sidecars equal to the add-on's own
capture, the beauty render unchanged) and Restyle After Render (a real server job from
the render's files, frames loaded as a strip; a failure leaves the render intact)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import bpy
import numpy as np
import pytest

from blender_addon import compat, pass_render, render_hook, zs_passes
from zs_core import exr_sequence, images

from addon_helpers import Timers, add_user_compositor, moving_cube_shot, needs_motion_vectors

FRAMES = 3
SIZE = 32


def exact_cycles_shot(tmp_path: Path):
    """The moving cube over frames 1-3 rendered by Cycles at the pixel centres (1 sample,
    the smallest box filter), the beauty going to tmp/renders/beauty_####.png."""
    scene, cube, camera = moving_cube_shot(frames=FRAMES, size=SIZE, reset=False)
    scene.render.engine = "CYCLES"
    scene.cycles.samples = 1
    scene.cycles.pixel_filter_type = "BOX"
    scene.cycles.filter_width = 0.01
    scene.render.filepath = str(tmp_path / "renders" / "beauty_")
    scene.render.image_settings.file_format = "PNG"
    bpy.context.view_layer.zs_passes.folder = str(tmp_path / "renders" / "zs") + "/"
    return scene, cube, camera


def render_animation() -> None:
    assert bpy.ops.render.render(animation=True) == {"FINISHED"}


@needs_motion_vectors
def test_an_ordinary_render_writes_the_passes_the_capture_gets(addon, tmp_path):
    scene, cube, camera = exact_cycles_shot(tmp_path)
    layer = bpy.context.view_layer
    render_animation()  # the setting off: the beauty alone
    beauty = {path.name: images.load_png(path) for path in sorted((tmp_path / "renders").glob("beauty_*.png"))}
    assert len(beauty) == FRAMES and not (tmp_path / "renders" / "zs").exists()

    assert bpy.ops.zs.enable_passes() == {"FINISHED"}
    assert zs_passes.problems(scene, layer) == []
    render_animation()
    folder = tmp_path / "renders" / "zs"
    assert sorted(path.name for path in folder.iterdir()) == [
        f"ViewLayer_{frame:04d}{suffix}" for frame in range(1, FRAMES + 1) for suffix in (".exr", ".json")]
    for name, picture in beauty.items():  # the render itself is not altered
        assert np.array_equal(images.load_png(tmp_path / "renders" / name), picture), name

    shot = exr_sequence.read_shot(zs_passes.sequence_pattern(scene, layer))
    assert shot.frames == [1, 2, 3] and shot.camera == "Camera" and shot.fps == 24.0
    captured = pass_render.render_frame_passes(scene, camera, [cube], [1, 2, 3], SIZE, SIZE, with_vector=True)
    for name in ("depth", "normal", "position", "uv", "mask", "vector", "world_to_camera", "projection"):
        np.testing.assert_allclose(getattr(shot.passes, name), getattr(captured, name), atol=1e-5, err_msg=name)
    assert shot.passes.mask.any() and (~shot.passes.mask).any() and np.abs(shot.passes.vector).max() > 1
    # The capture itself rendered 3 frames with the setting on: it wrote no sidecar of its own.
    assert len(list(folder.glob("*.json"))) == FRAMES

    card = json.loads((folder / "ViewLayer_0002.json").read_text())
    assert card["frame"] == 2 and card["exact_pixels"] is True and card["problems"] == []


@needs_motion_vectors
def test_a_render_on_the_render_thread_gets_its_sidecars_from_the_main_thread(addon, tmp_path, monkeypatch):
    """In Blender's window render handlers run on the render thread: the sidecars wait for
    a timer (the main thread), which evaluates each frame again and puts the frame back."""
    scene, _cube, _camera = exact_cycles_shot(tmp_path)
    layer = bpy.context.view_layer
    zs_passes.enable(scene, layer)
    render_animation()
    folder = tmp_path / "renders" / "zs"
    written = {path.name: path.read_text() for path in folder.glob("*.json")}
    for name in written:
        (folder / name).unlink()
    scene.frame_set(2)
    timers = Timers(monkeypatch)
    for frame in (1, 2, 3):  # what render_post notes, frame by frame
        scene.frame_current = frame
        zs_passes._on_render_post(scene)
    scene.frame_set(2)
    thread = threading.Thread(target=render_hook._on_render_complete, args=(scene,))
    thread.start()
    thread.join()
    assert len(timers.callbacks) == 1 and not list(folder.glob("*.json"))  # nothing evaluated off the main thread
    timers.run()
    assert {path.name: path.read_text() for path in folder.glob("*.json")} == written
    assert scene.frame_current == 2


@needs_motion_vectors
def test_the_target_pass_index_picks_the_mask(addon, tmp_path):
    scene, cube, camera = exact_cycles_shot(tmp_path)
    bpy.ops.mesh.primitive_plane_add(size=20.0, location=(0.0, 0.0, -0.6))  # a floor behind the cube
    cube.pass_index = 3
    layer = bpy.context.view_layer
    layer.zs_passes.target_pass_index = 3
    zs_passes.enable(scene, layer)
    render_animation()
    shot = exr_sequence.read_shot(Path(bpy.path.abspath(layer.zs_passes.folder)))
    hit = shot.passes.depth < 1e9
    assert hit.sum() > shot.passes.mask.sum() > 0  # the floor is hit but not a target
    captured = pass_render.render_frame_passes(scene, camera, [cube], [1, 2, 3], SIZE, SIZE, with_vector=True)
    assert np.array_equal(shot.passes.mask, captured.mask)


@needs_motion_vectors
def test_the_setting_leaves_the_artists_compositor_as_it_was(addon, tmp_path):
    scene, _cube, _camera = exact_cycles_shot(tmp_path)
    layer = bpy.context.view_layer
    groups_before = set(bpy.data.node_groups.keys())
    zs_passes.enable(scene, layer)
    made = scene.compositing_node_group
    assert made is not None and made.name not in groups_before  # a pass-through compositor
    zs_passes.disable(scene, layer)
    assert scene.compositing_node_group is None and set(bpy.data.node_groups.keys()) == groups_before

    add_user_compositor(scene)
    theirs = scene.compositing_node_group
    names = sorted(node.name for node in theirs.nodes)
    zs_passes.enable(scene, layer)
    assert scene.compositing_node_group == theirs and zs_passes.file_output(scene, layer) is not None
    zs_passes.enable(scene, layer)  # twice: still one pair of nodes
    assert len(theirs.nodes) == len(names) + 2
    zs_passes.disable(scene, layer)
    assert scene.compositing_node_group == theirs and sorted(node.name for node in theirs.nodes) == names


@needs_motion_vectors
def test_problems_are_named_and_reach_the_sidecar(addon, tmp_path):
    scene, _cube, _camera = exact_cycles_shot(tmp_path)
    layer = bpy.context.view_layer
    zs_passes.enable(scene, layer)
    scene.render.use_motion_blur = True
    assert any("motion blur" in problem for problem in zs_passes.problems(scene, layer))
    render_animation()
    with pytest.raises(Exception, match="motion blur is on"):
        exr_sequence.read_shot(Path(bpy.path.abspath(layer.zs_passes.folder)))
    scene.render.engine = "BLENDER_EEVEE"
    assert any("need Cycles" in problem for problem in zs_passes.problems(scene, layer))


@needs_motion_vectors
def test_restyle_after_render_loads_the_frames_as_a_strip(addon, server, tmp_path):
    addon.server_url, addon.token = server.base_url, server.token
    scene, _cube, _camera = exact_cycles_shot(tmp_path)
    settings = scene.zs_texturing
    settings.mode = "ANIMATION"
    settings.steps, settings.seed = 2, 7
    layer = bpy.context.view_layer
    zs_passes.enable(scene, layer)
    layer.zs_passes.restyle_after_render = True
    render_animation()  # blocking here (background): the job has finished when this returns

    (out,) = (tmp_path / "renders").glob("ZS_Restyle*")  # beside the render output
    frames = sorted((out / "frames").glob("*.png"))
    assert [path.name for path in frames] == [f"{index:04d}.png" for index in range(FRAMES)]
    assert images.load_png(frames[0]).shape == (SIZE, SIZE, 3)
    (strip,) = compat.strips(scene.sequence_editor)
    assert (strip.type, strip.frame_final_start, strip.frame_final_duration) == ("IMAGE", 1, FRAMES)
    assert len(list((tmp_path / "renders").glob("beauty_*.png"))) == FRAMES
    assert "restyled 3 frames" in render_hook.STATUS["text"]


@needs_motion_vectors
def test_a_failed_restyle_leaves_the_render_intact(addon, tmp_path, capsys):
    addon.server_url = "http://127.0.0.1:9"  # nothing listens there
    scene, _cube, _camera = exact_cycles_shot(tmp_path)
    scene.zs_texturing.mode = "ANIMATION"
    layer = bpy.context.view_layer
    zs_passes.enable(scene, layer)
    layer.zs_passes.restyle_after_render = True
    render_animation()
    assert "not restyled" in render_hook.STATUS["text"] and "untouched" in render_hook.STATUS["text"]
    assert "ZS Restyle After Render: not restyled" in capsys.readouterr().out
    assert len(list((tmp_path / "renders").glob("beauty_*.png"))) == FRAMES
    assert len(list((tmp_path / "renders" / "zs").glob("*.exr"))) == FRAMES
    assert not list((tmp_path / "renders").glob("ZS_Restyle*"))
    assert scene.sequence_editor is None or not list(compat.strips(scene.sequence_editor))


@pytest.mark.skipif(compat.writes_motion_to_next_frame(), reason="Blender 4.x only")
def test_blender_4_refuses_the_setting_and_says_why(addon):
    scene, layer = bpy.context.scene, bpy.context.view_layer
    with pytest.raises(RuntimeError, match="re-style animations in Blender 5.0 or newer"):
        bpy.ops.zs.enable_passes()  # an operator's error report is raised when called from Python
    assert not layer.zs_passes.enabled and zs_passes.problems(scene, layer) == [compat.NO_MOTION_TO_NEXT_FRAME]
    assert bpy.ops.zs.disable_passes() == {"FINISHED"}  # harmless where nothing was added
