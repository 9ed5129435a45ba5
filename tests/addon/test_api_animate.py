"""blender_addon.api.animate with real bpy: a cube moving over frames 1-4, the tiny model
in-process (the CLI's path) or on a real server; frames come back as a new image sequence
(camera background + Video Sequencer strip); bad input fails before anything renders."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

import bpy
from addon_helpers import data_counts, moving_cube_shot, needs_motion_vectors
from blender_addon import animation, api, batch, compat, image_pixels, pass_render
from blender_addon.errors import CaptureError
from blender_addon.client import Client, ServerError
from blender_addon.wire import ProtocolError
from blender_scenes import add_camera, ORIGINAL_COLOUR
from zs_core import images
from zs_server_helpers import free_port

SMALL = dict(steps=2, chunk=2)

pytestmark = needs_motion_vectors


@pytest.fixture
def shot():
    return moving_cube_shot(frames=4, size=64)


@pytest.fixture
def renders(monkeypatch):
    """Counts pass captures (the real render_frame_passes still runs)."""
    calls = []
    real = pass_render.render_frame_passes

    def counted(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(pass_render, "render_frame_passes", counted)
    return calls


def original_untouched(cube) -> bool:
    material = bpy.data.materials["Original"]
    colour = tuple(material.node_tree.nodes["Principled BSDF"].inputs["Base Color"].default_value)
    return ([slot.material for slot in cube.material_slots] == [material] and len(bpy.data.materials) == 1
            and colour == pytest.approx(ORIGINAL_COLOUR))


def strip_files(strip, frames) -> list[Path]:
    """The file the strip shows at each scene frame."""
    folder = Path(bpy.path.abspath(strip.directory))
    return [(folder / strip.strip_elem_from_frame(frame).filename).resolve() for frame in frames]


def background_files(scene, image, background, frames) -> list[Path]:
    """The file the camera background shows at each scene frame."""
    shown = []
    for frame in frames:
        scene.frame_set(frame)
        shown.append(Path(image.filepath_from_user(image_user=background.image_user)).resolve())
    return shown


def test_in_process_frames_metrics_background_and_strip(shot, sampler, tmp_path):
    scene, cube, camera = shot
    counts = data_counts()
    settings = api.AnimationSettings(prompt="a wooden toy", seed=3, attention="keyframes", keyframes="first_previous",
                                     momentum=0.3, background_sync=0.7, pixel_sync=0.25, **SMALL)
    started = time.perf_counter()
    result = api.animate(None, [cube], "1-4", settings, sampler=sampler, out_dir=tmp_path / "job")
    print(f"api.animate in-process: {time.perf_counter() - started:.2f} s for 4 frames of 64x64, 2 steps")

    (request,) = sampler.requests
    assert request["kind"] == "animation" and request["prompt"] == "a wooden toy" and request["seed"] == 3
    assert (request["attention"], request["keyframes"], request["chunk"]) == ("keyframes", "first_previous", 2)
    assert request["momentum"] == 0.3 and request["background_sync"] == 0.7 and request["pixel_sync"] == 0.25
    assert (request["noise"], request["background_noise"], request["sync_strength"]) == ("surface", "auto", 0.9)
    (captured,) = sampler.passes
    assert captured.views == 4 and (captured.height, captured.width) == (64, 64)
    assert captured.vector is not None and captured.uv is not None and captured.texel_position is None
    # The cube moves right: its mask's centre moves right from frame to frame.
    centres = [np.nonzero(mask)[1].mean() for mask in captured.mask]
    assert all(later > earlier + 3 for earlier, later in zip(centres, centres[1:]))

    frames_dir = tmp_path / "job" / "frames"
    assert result.frame_paths == [frames_dir / f"{index:04d}.png" for index in range(4)]
    assert all(path.is_file() for path in result.frame_paths)
    assert result.metrics == json.loads((tmp_path / "job" / "metrics.json").read_text())
    assert result.metrics["frames"] == 4 and result.metrics["temporal_warp_error"] > 0
    assert (tmp_path / "job" / "contact_sheet.png").is_file()
    assert (result.frames, result.camera, result.job_id) == ([1, 2, 3, 4], camera, None)

    image = result.image
    assert image.source == "SEQUENCE" and image.name == "ZS Animation"
    assert camera.data.show_background_images and list(camera.data.background_images) == [result.background]
    assert result.background.image == image
    assert background_files(scene, image, result.background, [1, 2, 3, 4]) == result.frame_paths
    # The pixels Blender shows are the generated frame's.
    shown = image_pixels.image_to_numpy(image)[..., :3]
    assert np.abs(shown - images.load_png(result.frame_paths[0])).max() <= 1 / 255 + 1e-6

    strip = result.strip
    assert list(compat.strips(scene.sequence_editor)) == [strip] and strip.type == "IMAGE"
    assert (strip.frame_final_start, strip.frame_final_duration, strip.channel) == (1, 4, 1)
    assert strip_files(strip, [1, 2, 3, 4]) == result.frame_paths

    # New datablocks only: one image, the user's material and everything else untouched.
    after = data_counts()
    assert after["images"] == counts["images"] + 1 and {k: v for k, v in after.items() if k != "images"} == \
        {k: v for k, v in counts.items() if k != "images"}
    assert original_untouched(cube)
    assert scene.frame_current == 4  # background_files moved it; capture restores its own changes

    # A second run never replaces the first: a new image, a new background, the next free channel.
    again = api.animate(camera.name, ["Cube"], (1, 4), settings, sampler=sampler, out_dir=tmp_path / "again")
    assert again.image != image and again.image.name == "ZS Animation.001" and image.source == "SEQUENCE"
    assert len(camera.data.background_images) == 2 and again.strip.channel == 2
    assert strip_files(strip, [1, 2, 3, 4]) == result.frame_paths


def test_render_state_is_restored(shot, sampler, tmp_path):
    scene, cube, _camera = shot
    scene.render.engine = "BLENDER_WORKBENCH"
    scene.frame_set(2)
    api.animate(None, [cube], "2-3", api.AnimationSettings(**SMALL), sampler=sampler, out_dir=tmp_path)
    assert scene.render.engine == "BLENDER_WORKBENCH" and scene.frame_current == 2
    assert (scene.render.resolution_x, scene.render.resolution_y) == (64, 64)
    assert compat.strips(scene.sequence_editor)[0].frame_final_start == 2


def test_bad_input_fails_before_rendering(shot, sampler, renders, tmp_path, server):
    scene, cube, camera = shot
    out = tmp_path / "out"
    counts = data_counts()

    def fails(error, match, camera=None, objects=(cube,), frames="1-4", **options):
        settings = api.AnimationSettings(**{**SMALL, **options.pop("settings", {})})
        backend = options or {"sampler": sampler}
        with pytest.raises(error, match=match) as info:
            api.animate(camera, list(objects) if objects is not None else None, frames, settings, out_dir=out,
                        **backend)
        return info.value

    fails(CaptureError, r"frames 0-6: frame\(s\) 0 and 5-6 are outside the frame range 1-4 of scene 'Scene'",
          frames="0-6")
    fails(CaptureError, r"frames 5-9: frame\(s\) 5-9 are outside", frames=range(5, 10))
    fails(CaptureError, "'3-1' ends before it starts", frames="3-1")
    fails(CaptureError, "'1-x' is not a frame range", frames="1-x")
    fails(CaptureError, "'Cube' is not a camera object", camera=cube)
    fails(CaptureError, "camera 'Nobody' does not exist", camera="Nobody")
    stray = bpy.data.objects.new("Stray Camera", bpy.data.cameras.new("Stray Camera"))
    fails(CaptureError, "camera 'Stray Camera' is not in scene 'Scene'", camera=stray)
    scene.camera = None
    fails(CaptureError, "scene 'Scene' has no active camera")
    scene.camera = camera
    fails(ServerError, "cannot reach the ZS server", server=f"http://127.0.0.1:{free_port()}")
    assert fails(ServerError, "token rejected", server=server.base_url, token="wrong").status == 401
    cube.data.uv_layers.remove(cube.data.uv_layers[0])
    fails(CaptureError, "object 'Cube' has no UV map; surface noise and temporal UV sync")
    fails(CaptureError, "object 'Cube' has no UV map", settings={"noise": "fixed"})  # UV sync still on
    fails(CaptureError, "no mesh object to animate", objects=())
    assert fails(ProtocolError, "attention", settings={"attention": "extended"}).field == "attention"
    fails(ProtocolError, "width: 100 is not a multiple of 8", settings={"width": 100})

    assert renders == [] and sampler.requests == [] and not out.exists()
    bpy.data.objects.remove(stray)
    bpy.data.cameras.remove(bpy.data.cameras["Stray Camera"])
    assert data_counts() == counts and (scene.sequence_editor is None or not compat.strips(scene.sequence_editor))
    assert len(camera.data.background_images) == 0 and original_untouched(cube)


def test_a_camera_that_switches_or_hides_during_the_shot_fails_before_rendering(shot, sampler, renders, tmp_path):
    scene, cube, camera = shot
    other = add_camera(scene, "Close Up", (0.0, -3.0, 1.0))
    scene.timeline_markers.new("cut", frame=3).camera = other  # the scene's camera becomes "Close Up" at 3
    scene.timeline_markers.new("start", frame=1).camera = camera
    settings = api.AnimationSettings(**SMALL)
    with pytest.raises(CaptureError, match=r"camera changes during the shot.*'Camera' at the start, "
                                           r"'Close Up' in frame\(s\) 3-4; name the camera"):
        api.animate(None, [cube], "1-4", settings, sampler=sampler, out_dir=tmp_path / "a")
    camera.hide_render = True
    camera.keyframe_insert("hide_render", frame=2)
    camera.hide_render = False
    camera.keyframe_insert("hide_render", frame=1)
    camera.keyframe_insert("hide_render", frame=3)
    with pytest.raises(CaptureError, match=r"camera 'Camera' is disabled in renders in frame\(s\) 2 of the shot"):
        api.animate(camera, [cube], "1-4", settings, sampler=sampler, out_dir=tmp_path / "b")
    assert renders == [] and sampler.requests == [] and scene.frame_current == 1
    result = api.animate(camera, [cube], "3-4", settings, sampler=sampler, out_dir=tmp_path / "c")  # named: fine
    assert len(result.frame_paths) == 2 and renders[0][1] == camera


def test_objects_without_uv_go_without_the_uv_pass_when_nothing_needs_it(shot, sampler, tmp_path):
    scene, cube, _camera = shot
    cube.data.uv_layers.remove(cube.data.uv_layers[0])
    settings = api.AnimationSettings(noise="fixed", sync_strength=0.0, attention="tma", **SMALL)
    result = api.animate(None, None, None, settings, sampler=sampler, out_dir=tmp_path)  # every mesh, scene range
    (captured,) = sampler.passes
    assert captured.uv is None and captured.vector is not None and captured.views == 4
    assert "temporal_warp_error" not in result.metrics  # measured through UV: none here
    assert len(result.frame_paths) == 4 and result.strip.frame_final_duration == 4


def test_server_path_saved_file_and_relative_paths(shot, server, tmp_path):
    scene, cube, camera = shot
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "shot.blend"))
    events = []
    result = api.animate(None, ["Cube"], "2-4", api.AnimationSettings(prompt="clay", **SMALL),
                         server=server.base_url, token=server.token,
                         progress=lambda name, data: events.append((name, data)))
    names = [name for name, _ in events]
    assert names[:3] == ["rendering"] * 3 and names[3:5] == ["submitted", "queued"] and names[-1] == "done"
    assert [data for name, data in events[:3]] == [{"done": i, "total": 3, "unit": "frame"} for i in (1, 2, 3)]
    assert [data["step"] for name, data in events if name == "progress"] == [1, 2]
    assert Client(server.base_url, server.token).status(result.job_id)["state"] == "done"

    # The default folder: //zs_frames/<name>/ next to the saved file.
    out = tmp_path / animation.FRAMES_FOLDER / "ZS_Animation"
    assert result.out_dir == out and result.frame_paths == [out / "frames" / f"{i:04d}.png" for i in range(3)]
    assert result.metrics == json.loads((out / "metrics.json").read_text()) and result.metrics["frames"] == 3
    assert result.image.filepath == "//zs_frames/ZS_Animation/frames/0000.png"
    assert result.strip.directory == "//zs_frames/ZS_Animation/frames/"
    assert (result.strip.frame_final_start, result.strip.frame_final_duration) == (2, 3)
    assert strip_files(result.strip, [2, 3, 4]) == result.frame_paths
    assert background_files(scene, result.image, result.background, [2, 3, 4]) == result.frame_paths
    # The next run gets a folder of its own.
    again = api.animate(None, ["Cube"], "2-4", api.AnimationSettings(**SMALL), server=server.base_url,
                        token=server.token)
    assert again.out_dir == tmp_path / animation.FRAMES_FOLDER / "ZS_Animation_001"
    assert all(path.is_file() for path in result.frame_paths)


def test_batch_animate_main_argv_through_a_server(shot, server, tmp_path, capsys):
    source = tmp_path / "in" / "shot.blend"
    source.parent.mkdir()
    bpy.ops.wm.save_as_mainfile(filepath=str(source))
    out = tmp_path / "out"
    code = batch.animate_main([str(source), "--frames", "1-3", "--prompt", "jade", "--out", str(out),
                               "--server", server.base_url, "--token", server.token, "--steps", "2", "--chunk", "2",
                               "--attention", "keyframes", "--keyframes", "middle"])
    assert code == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert str(out / "animated.blend") in err and "temporal_warp_error" in err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["blend"]["frames"] == [1, 3] and metrics["blend"]["camera"] == "Camera"
    assert metrics["request"]["keyframes"] == "middle" and metrics["frames"] == 3
    with pytest.raises(SystemExit):
        batch.animate_main([str(source), "--frames", "one", "--prompt", "x", "--out", str(out)])
    assert "not a frame range" in capsys.readouterr().err
    assert batch.animate_main([str(source), "--frames", "1-9", "--prompt", "x", "--out", str(tmp_path / "again"),
                               "--server", server.base_url, "--token", server.token]) == 2
    assert "outside the frame range 1-4" in capsys.readouterr().err
    assert not (tmp_path / "again").exists()
