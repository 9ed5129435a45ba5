"""End to end: `zs animate FILE.blend` (in-process and through a real server), checked by
reopening the written animated.blend, and `zs animate PASSES.npz` on the animated scene."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from blender_addon import compat, image_pixels  # noqa: E402
from blender_addon.client import Client  # noqa: E402
from blender_scenes import ORIGINAL_COLOUR, digest, moving_cube_shot, save_source  # noqa: E402
import zs_cli as cli  # noqa: E402
from zs_core import images, scene  # noqa: E402
from zs_server_helpers import ServerThread, make_settings  # noqa: E402

SMALL = ["--steps", "2", "--chunk", "2", "--width", "64", "--height", "64"]


@pytest.fixture
def source_blend(tmp_path):
    """The moving cube over frames 1-4 (scene output 128x128), saved to a .blend."""
    moving_cube_shot(frames=4, size=128)
    return save_source(tmp_path, "shot.blend")


def check_animated_blend(out: Path, frames: list[int], size: int, target: str = "Cube",
                         material: str = "Original", colour=ORIGINAL_COLOUR) -> dict:
    """Reopen out/animated.blend: the sequence (camera background + strip) reads the frame
    files through relative paths, the user's material is untouched -> the metrics."""
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["frames"] == len(frames) and metrics["temporal_warp_error"] > 0
    assert metrics["latent_temporal_warp_error"] > 0 and metrics["request"]["kind"] == "animation"
    assert metrics["blend"]["frames"] == [frames[0], frames[-1]] and metrics["blend"]["camera"] == "Camera"
    files = [out / "frames" / f"{index:04d}.png" for index in range(len(frames))]
    pictures = [images.load_png(path) for path in files]
    assert all(picture.shape == (size, size, 3) and picture.std() > 0.01 for picture in pictures)
    assert (out / "contact_sheet.png").is_file()

    bpy.ops.wm.open_mainfile(filepath=str(out / "animated.blend"))
    scene_ = bpy.context.scene
    camera = bpy.data.objects["Camera"]
    (background,) = camera.data.background_images
    image = background.image
    assert camera.data.show_background_images and image.source == "SEQUENCE"
    assert image.filepath == "//frames/0000.png"  # relative to the copy: it travels with the folder
    shown = []
    for frame in frames:
        scene_.frame_set(frame)
        shown.append(Path(image.filepath_from_user(image_user=background.image_user)).resolve())
    assert shown == [path.resolve() for path in files]
    # image.pixels (no image user) holds the first file: the generated frame, as written.
    assert np.abs(image_pixels.image_to_numpy(image)[..., :3] - pictures[0]).max() <= 1 / 255 + 1e-6
    (strip,) = compat.strips(scene_.sequence_editor)
    assert (strip.type, strip.frame_final_start, strip.frame_final_duration) == ("IMAGE", frames[0], len(frames))
    assert strip.directory == "//frames/"
    assert [Path(bpy.path.abspath(strip.directory), strip.strip_elem_from_frame(f).filename).resolve()
            for f in frames] == [path.resolve() for path in files]
    (slot,) = bpy.data.objects[target].material_slots
    assert slot.material.name == material and len(bpy.data.materials) == 1
    assert tuple(slot.material.node_tree.nodes["Principled BSDF"].inputs["Base Color"].default_value) == \
        pytest.approx(colour)
    return metrics


def test_animate_blend_in_process(source_blend, tmp_path, capsys):
    before = digest(source_blend)
    out = tmp_path / "out"
    code = cli.main(["animate", str(source_blend), "--frames", "1-4", "--prompt", "a painted tin toy",
                     "--out", str(out), "--attention", "keyframes", "--keyframes", "first_previous",
                     "--background-sync", "0.8", "--sync-strength", "0.85", "--seed", "5", *SMALL])
    assert code == 0
    err = capsys.readouterr().err
    for shown in ("animated.blend", "frames", "temporal_warp_error", "contact_sheet.png", "metrics.json"):
        assert shown in err, shown
    assert digest(source_blend) == before  # the source file is never written
    metrics = check_animated_blend(out, [1, 2, 3, 4], size=64)
    request = metrics["request"]
    assert (request["attention"], request["keyframes"], request["seed"], request["chunk"]) == \
        ("keyframes", "first_previous", 5, 2)
    assert request["background_sync"] == 0.8 and request["sync_strength"] == 0.85
    print("in-process:", {key: metrics[key] for key in ("temporal_warp_error", "latent_temporal_warp_error",
                                                        "sampling_seconds")})


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    with ServerThread(make_settings(tmp_path_factory.mktemp("zs-data")), tiny) as running:
        yield running


def test_animate_blend_through_a_server_on_the_scene_camera_and_range(source_blend, tmp_path, server):
    out = tmp_path / "out"
    code = cli.main(["animate", str(source_blend), "--prompt", "chalk drawing", "--out", str(out),
                     "--camera", "Camera", "--object", "Cube", "--steps", "2", "--server", server.base_url,
                     "--token", server.token])
    assert code == 0
    metrics = check_animated_blend(out, [1, 2, 3, 4], size=128)  # the scene's range and output size
    assert Client(server.base_url, server.token).status(metrics["blend"]["job_id"])["state"] == "done"
    assert metrics["request"]["attention"] == "tma" and metrics["request"]["noise"] == "surface"


def test_animate_a_passes_bundle(tmp_path, capsys):
    bundle = tmp_path / "shot.npz"
    scene.animated_scene(frames=4, width=64, height=64).save(bundle)
    out = tmp_path / "out"
    code = cli.main(["animate", str(bundle), "--prompt", "a glass marble", "--out", str(out), "--steps", "2",
                     "--chunk", "2", "--momentum", "0.3", "--background-noise", "dependency", "--pixel-sync", "0.2"])
    assert code == 0
    err = capsys.readouterr().err
    assert f"wrote 4 frames to {out / 'frames'}" in err and "temporal_warp_error" in err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["frames"] == 4 and metrics["temporal_warp_error"] > 0
    assert metrics["request"]["kind"] == "animation" and metrics["request"]["momentum"] == 0.3
    assert metrics["background_noise"] == "dependency" and metrics["request"]["pixel_sync"] == 0.2
    assert [path.name for path in sorted((out / "frames").glob("*.png"))] == [f"{i:04d}.png" for i in range(4)]
    assert (out / "contact_sheet.png").is_file()


def test_bad_input_is_a_clear_error(source_blend, tmp_path, capsys):
    before = digest(source_blend)
    out = tmp_path / "out"
    for frames in ("1-x", "4-1", "1,4"):
        with pytest.raises(SystemExit) as info:
            cli.main(["animate", str(source_blend), "--frames", frames, "--out", str(out)])
        assert info.value.code == 2
        assert f"argument --frames: '{frames}'" in capsys.readouterr().err
    for option, value, words in (("--attention", "extended", "'extended' is for texture jobs"),
                                 ("--width", "100", "100 is not a multiple of 8")):
        with pytest.raises(SystemExit):
            cli.main(["animate", str(source_blend), option, value, "--out", str(out)])
        assert f"argument {option}: {words}" in capsys.readouterr().err

    def fails(*options) -> str:
        assert cli.main(["animate", *options, "--out", str(out), "--steps", "1"]) == 2
        return capsys.readouterr().err

    assert "frame(s) 5-6 are outside the frame range 1-4 of scene 'Scene'" in fails(str(source_blend), "--frames",
                                                                                     "3-6")
    assert "camera 'Nobody' does not exist" in fails(str(source_blend), "--camera", "Nobody")
    assert "object 'Nobody' does not exist" in fails(str(source_blend), "--object", "Nobody")
    bundle = tmp_path / "shot.npz"
    scene.animated_scene(frames=2, width=64, height=64).save(bundle)
    assert "--frames: only for .blend files" in fails(str(bundle), "--frames", "1-2")
    assert "expected a .blend file, a passes bundle (.npz) or an EXR sequence" in fails(str(tmp_path / "shot.txt"))
    assert "does not exist" in fails(str(tmp_path / "missing.blend"))
    assert not out.exists() and digest(source_blend) == before


def test_animation_demo_restyles_the_built_in_shot_in_blender(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--animation", "--out", str(out), "--frames", "1-3", "--size", "64", "--steps", "2"]) == 0
    err = capsys.readouterr().err
    assert "Suzanne in Blender, 3 frames of 64x64" in err and str(out / "animated.blend") in err
    metrics = check_animated_blend(out, [1, 2, 3], 64, target="Suzanne", material="Clay",
                                   colour=(0.6, 0.45, 0.35, 1.0))
    assert metrics["request"]["noise"] == "surface" and metrics["request"]["attention"] == "tma"
    monkey = bpy.data.objects["Suzanne"]
    places = []
    for frame in (1, 3):
        bpy.context.scene.frame_set(frame)
        places.append(tuple(monkey.matrix_world.translation))
    assert places[0] != places[1]  # the shot really moves


def test_animation_demo_without_bpy_runs_the_numpy_shot(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "bpy", None)
    out = tmp_path / "demo"
    assert cli.main(["demo", "--animation", "--out", str(out), "--frames", "1-3", "--size", "64", "--steps", "1"]) == 0
    assert "numpy animated scene" in capsys.readouterr().err
    assert len(list((out / "frames").glob("*.png"))) == 3 and not (out / "animated.blend").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    # background_uv is on by default: the numpy shot has no UV-mapped floor, so the vector pass alone.
    assert metrics["frames"] == 3 and metrics["request"]["background_uv"] is True


def test_animate_blend_syncs_the_floor_through_its_uv(tmp_path, capsys):
    """The demo shot (Suzanne over a UV-mapped floor) with --background-uv: the capture tells
    the floor apart and the job fuses it through its UV; a scene without such meshes goes
    along the vector pass alone (background_uv is on by default)."""
    out = tmp_path / "out"
    assert cli.main(["demo", "--animation", "--background-uv", "--out", str(out), "--frames", "1-3", "--size", "64",
                     "--steps", "2"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["request"]["background_uv"] is True and metrics["frames"] == 3
    assert cli.main(["demo", "--background-uv", "--out", str(tmp_path / "texture")]) == 2  # animation only
    assert "--background-uv is for animation jobs, not texture" in capsys.readouterr().err

    moving_cube_shot(frames=3, size=64)  # a cube alone: no other UV-mapped mesh
    alone = tmp_path / "alone.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(alone))
    assert cli.main(["animate", str(alone), "--background-uv", "--object", "Cube", "--out", str(tmp_path / "alone"),
                     "--steps", "1"]) == 0
    assert json.loads((tmp_path / "alone" / "metrics.json").read_text())["request"]["background_uv"] is True
