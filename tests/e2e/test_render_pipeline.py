"""End to end: a real `bpy` animation render with the ZS passes setting on, then
`zs animate renders/ViewLayer_####.exr` gives the same frames as `zs animate shot.blend`
(the add-on's own capture) with the same seed; bad sequences are clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

import blender_addon  # noqa: E402
from blender_addon import compat, zs_passes  # noqa: E402
from blender_scenes import moving_cube_shot  # noqa: E402
import zs_cli as cli  # noqa: E402
from zs_core import images  # noqa: E402

pytestmark = pytest.mark.skipif(not compat.writes_motion_to_next_frame(), reason="animations need Blender 5.0+")
SAMPLING = ["--steps", "2", "--chunk", "2", "--seed", "11", "--prompt", "a painted tin toy"]


@pytest.fixture
def registered():
    """The add-on registered (its ViewLayer.zs_passes setting exists), as an installed one is."""
    if not hasattr(bpy.types.ViewLayer, "zs_passes"):
        blender_addon.register()
    yield
    blender_addon.unregister()


def rendered_shot(tmp_path: Path) -> tuple[Path, str]:
    """The moving cube (4 frames, 64x64) saved with ZS passes on, rendered like a farm would
    (Cycles at the pixel centres) -> (the .blend, the EXR sequence pattern)."""
    moving_cube_shot(frames=4, size=64)
    scene, layer = bpy.context.scene, bpy.context.view_layer
    scene.render.engine = "CYCLES"
    scene.cycles.samples = 1
    scene.cycles.pixel_filter_type = "BOX"
    scene.cycles.filter_width = 0.01
    scene.render.filepath = "//renders/beauty_"
    layer.zs_passes.folder = "//renders/"
    source = tmp_path / "shot.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(source))
    zs_passes.enable(scene, layer)
    bpy.ops.wm.save_mainfile()
    assert bpy.ops.render.render(animation=True) == {"FINISHED"}
    return source, zs_passes.sequence_pattern(scene, layer)


def test_zs_animate_on_the_render_equals_the_capture_path(registered, tmp_path, capsys):
    source, pattern = rendered_shot(tmp_path)
    assert pattern == str(tmp_path / "renders" / "ViewLayer_####.exr")
    assert cli.main(["animate", pattern, "--out", str(tmp_path / "from_exr"), *SAMPLING]) == 0
    assert "frames 1-4 of camera 'Camera' from 4 EXR files" in capsys.readouterr().err
    assert cli.main(["animate", str(source), "--out", str(tmp_path / "from_blend"), *SAMPLING]) == 0
    for index in range(4):
        name = f"frames/{index:04d}.png"
        from_exr, from_blend = (images.load_png(tmp_path / run / name) for run in ("from_exr", "from_blend"))
        assert from_exr.std() > 0.01 and np.array_equal(from_exr, from_blend), name
    metrics = {run: json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("from_exr", "from_blend")}
    assert metrics["from_exr"]["temporal_warp_error"] == pytest.approx(metrics["from_blend"]["temporal_warp_error"])
    assert metrics["from_exr"]["request"]["fps"] == 24.0


def test_a_broken_sequence_is_a_clear_error(registered, tmp_path, capsys):
    _source, pattern = rendered_shot(tmp_path)
    renders = tmp_path / "renders"
    out = tmp_path / "out"

    def fails(source, *options) -> str:
        assert cli.main(["animate", str(source), "--out", str(out), *SAMPLING, *options]) == 2
        return capsys.readouterr().err

    assert "--frames: only for .blend files" in fails(pattern, "--frames", "1-2")
    assert "no EXR file matches" in fails(tmp_path / "elsewhere" / "shot_####.exr")
    (renders / "ViewLayer_0003.json").unlink()
    assert "ViewLayer_0003.exr has no camera sidecar ViewLayer_0003.json" in fails(pattern)
    (renders / "ViewLayer_0003.exr").unlink()
    assert "frames must be consecutive" in fails(pattern) and "2 is followed by 4" in fails(pattern)
    gap_free = tmp_path / "first_two"
    gap_free.mkdir()
    for name in ("ViewLayer_0001.exr", "ViewLayer_0001.json", "ViewLayer_0002.exr"):
        shutil.copy(renders / name, gap_free / name)
    (gap_free / "ViewLayer_0002.json").write_text("{\"format\": \"zs-passes\", \"version\": 1}")
    assert "ViewLayer_0002.json: frame: expected an integer, got None" in fails(gap_free / "ViewLayer_####.exr")
    (gap_free / "ViewLayer_0002.exr").write_bytes(b"not an exr")
    shutil.copy(renders / "ViewLayer_0002.json", gap_free / "ViewLayer_0002.json")
    assert "ViewLayer_0002.exr is not a readable OpenEXR file" in fails(gap_free / "ViewLayer_####.exr")
    assert not out.exists()
