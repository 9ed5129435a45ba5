"""An unsaved file's animation frames live in a temporary folder until the file is saved;
then the add-on's save handler moves them next to it (real bpy, real files, real saves).

The frames are written into the flow's own temporary output folder and loaded with
``zs.load_animation``, exactly as the Generate session loads a job's frames; on Blender 5
one test also runs the real Generate (capture, server, sampling) before saving.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

import addon_utils
import bpy
from addon_helpers import moving_cube_shot, needs_motion_vectors

from blender_addon import animation, compat, flow, temporary_frames
from blender_addon.settings import AnimationSettings

FRAMES = 4
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]


def unsaved_shot():
    """The moving-cube shot in a new, never saved file. -> (scene, camera)"""
    scene, _cube, camera = moving_cube_shot(frames=FRAMES, size=64, reset=False)
    assert not bpy.data.filepath
    return scene, camera


def temporary_frames_loaded(scene, camera) -> Path:
    """What an animation Generate leaves in an unsaved file, without the sampling: the
    flow's temporary output folder with frames/NNNN.png (one colour each) and
    metrics.json, loaded with zs.load_animation as the Generate session does -> the folder."""
    generation = flow.AnimationGeneration(scene, AnimationSettings())
    out = generation._output_folder()  # what submit() downloads the job into
    frames = out / "frames"
    frames.mkdir()
    for index, colour in enumerate(COLOURS):
        Image.new("RGB", (16, 8), colour).save(frames / f"{index:04d}.png")
    (out / "metrics.json").write_text("{}")
    assert bpy.ops.zs.load_animation(directory=str(frames), frame_start=1, frame_count=FRAMES,
                                     camera=camera.name, scene=scene.name, name="ZS Animation") == {"FINISHED"}
    return out


def first_pixel(image) -> tuple[int, ...]:
    pixels = np.empty(len(image.pixels), np.float32)
    image.pixels.foreach_get(pixels)
    return tuple(int(round(value * 255)) for value in pixels[:3])


def test_saving_moves_the_frames_next_to_the_file_and_repoints_the_sequence(addon, tmp_path):
    scene, camera = unsaved_shot()
    out = temporary_frames_loaded(scene, camera)
    assert temporary_frames.temporary_output(out / "frames" / "0000.png") == out.resolve()
    image = bpy.data.images["ZS Animation"]
    (strip,) = compat.strips(scene.sequence_editor)
    assert Path(image.filepath).resolve() == (out / "frames" / "0000.png").resolve()  # absolute: no file yet
    (tmp_path / "zs_frames" / "ZS_Animation").mkdir(parents=True)  # taken: never overwritten
    (tmp_path / "zs_frames" / "ZS_Animation" / "keep.txt").write_text("mine")
    bpy.ops.ed.undo_push(message="loaded")
    compat.new_material("Marker").use_fake_user = True
    bpy.ops.ed.undo_push(message="marker")

    blend = tmp_path / "shot.blend"
    assert bpy.ops.wm.save_as_mainfile(filepath=str(blend)) == {"FINISHED"}

    moved = tmp_path / "zs_frames" / "ZS_Animation_001"
    files = [moved / "frames" / f"{index:04d}.png" for index in range(FRAMES)]
    assert all(path.is_file() for path in files) and (moved / "metrics.json").is_file()
    assert (tmp_path / "zs_frames" / "ZS_Animation" / "keep.txt").read_text() == "mine"
    assert not out.exists()  # nothing left in the temporary folder
    assert image.filepath == "//zs_frames/ZS_Animation_001/frames/0000.png"
    assert strip.directory == "//zs_frames/ZS_Animation_001/frames/"
    assert Path(bpy.path.abspath(strip.directory)).resolve() == files[0].parent.resolve()
    assert camera.data.background_images[0].image == image  # the background shows the same image
    image.reload()
    assert tuple(image.size) == (16, 8) and first_pixel(image) == COLOURS[0]
    assert scene.zs_texturing.status == "Moved 4 frames to //zs_frames/ZS_Animation_001/"

    # The undo steps from before the save still hold the temporary paths: they are re-pointed.
    bpy.ops.ed.undo()
    assert "Marker" not in bpy.data.materials
    assert bpy.data.images["ZS Animation"].filepath == "//zs_frames/ZS_Animation_001/frames/0000.png"
    assert compat.strips(bpy.context.scene.sequence_editor)[0].directory == "//zs_frames/ZS_Animation_001/frames/"
    bpy.ops.ed.redo()
    assert bpy.data.images["ZS Animation"].filepath == "//zs_frames/ZS_Animation_001/frames/0000.png"

    # The file on disk holds the new paths too (saved again after the move), and reloads.
    bpy.ops.wm.open_mainfile(filepath=str(blend))
    image = bpy.data.images["ZS Animation"]
    assert image.filepath == "//zs_frames/ZS_Animation_001/frames/0000.png"
    assert compat.strips(bpy.context.scene.sequence_editor)[0].directory == "//zs_frames/ZS_Animation_001/frames/"
    assert tuple(image.size) == (16, 8) and first_pixel(image) == COLOURS[0]
    assert bpy.context.scene.zs_texturing.status.startswith("Moved 4 frames")
    bpy.ops.wm.save_mainfile()  # a later save finds nothing to move
    assert sorted(path.name for path in (tmp_path / "zs_frames").iterdir()) == ["ZS_Animation", "ZS_Animation_001"]


def test_save_copy_leaves_the_frames_until_the_file_itself_is_saved(addon, tmp_path):
    scene, camera = unsaved_shot()
    out = temporary_frames_loaded(scene, camera)
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "copy.blend"), copy=True)
    assert not bpy.data.filepath and (out / "frames" / "0003.png").is_file()  # still unsaved: nothing moves
    assert not (tmp_path / "zs_frames").exists()
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "shot.blend"))
    assert not out.exists() and (tmp_path / "zs_frames" / "ZS_Animation" / "frames" / "0003.png").is_file()


def test_frames_outside_the_temporary_folder_stay_where_they_are(addon, tmp_path):
    scene, camera = unsaved_shot()
    folder = tmp_path / "elsewhere" / "frames"  # an artist's own folder (not one the add-on made)
    folder.mkdir(parents=True)
    for index, colour in enumerate(COLOURS):
        Image.new("RGB", (16, 8), colour).save(folder / f"{index:04d}.png")
    assert bpy.ops.zs.load_animation(directory=str(folder), frame_start=1, camera=camera.name) == {"FINISHED"}
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "shot.blend"))
    assert (folder / "0000.png").is_file() and not (tmp_path / "zs_frames").exists()
    assert Path(bpy.path.abspath(bpy.data.images["ZS Animation"].filepath)).resolve() == (folder / "0000.png").resolve()


def _raise(exc):
    raise exc


def test_the_handler_comes_and_goes_with_the_add_on(scene, tmp_path):
    addon_utils.enable("blender_addon", default_set=True, handle_error=_raise)
    try:
        assert temporary_frames.on_save_post in bpy.app.handlers.save_post
        bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "a.blend"))
        bpy.ops.wm.open_mainfile(filepath=str(tmp_path / "a.blend"))  # persistent: survives loading a file
        assert temporary_frames.on_save_post in bpy.app.handlers.save_post
    finally:
        addon_utils.disable("blender_addon", default_set=True, handle_error=_raise)
    assert temporary_frames.on_save_post not in bpy.app.handlers.save_post
    assert temporary_frames.on_undo_redo not in bpy.app.handlers.undo_post


@needs_motion_vectors
def test_generate_in_an_unsaved_file_then_save_moves_its_frames(addon, server, tmp_path):
    scene, camera = unsaved_shot()
    prefs = bpy.context.preferences.addons["blender_addon"].preferences
    prefs.server_url, prefs.token = server.base_url, server.token
    settings = scene.zs_texturing
    settings.mode, settings.prompt, settings.steps, settings.chunk = "ANIMATION", "a tin toy", 2, 2
    assert bpy.ops.zs.generate() == {"FINISHED"}
    image = bpy.data.images["ZS Animation"]
    out = temporary_frames.temporary_output(Path(image.filepath).resolve())
    assert out is not None and out.parent == Path(tempfile.gettempdir()).resolve()
    assert out.name.startswith(animation.TEMPORARY_PREFIX)

    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "shot.blend"))
    assert not out.exists()
    frames = tmp_path / "zs_frames" / "ZS_Animation" / "frames"
    assert sorted(path.name for path in frames.glob("*.png")) == [f"{index:04d}.png" for index in range(FRAMES)]
    assert image.filepath == "//zs_frames/ZS_Animation/frames/0000.png"
    assert compat.strips(scene.sequence_editor)[0].directory == "//zs_frames/ZS_Animation/frames/"
    image.reload()
    assert tuple(image.size) == (64, 64)
    assert settings.status == "Moved 4 frames to //zs_frames/ZS_Animation/"
