"""End to end on the tiny model: `zs demo` and `zs texture` write the documented files, and
the consistency methods beat the per-view baseline on the built-in scene."""

from __future__ import annotations

import json

import numpy as np
import pytest

import zs_cli as cli
from zs_core import images, scene
from zs_core.protocol import Passes

SIZE, VIEWS, TEXTURE, STEPS = 128, 4, 128, 8


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    path = tmp_path_factory.mktemp("bundle") / "passes.npz"
    scene.sphere_scene(views=VIEWS, width=SIZE, height=SIZE, texture_size=TEXTURE).save(path)
    return path


def texture_run(bundle, out, *extra):
    code = cli.main(["texture", str(bundle), "--out", str(out), "--steps", str(STEPS), "--seed", "3",
                     "--prompt", "old red stone", *extra])
    assert code == 0
    return json.loads((out / "metrics.json").read_text())


def test_demo_writes_views_texture_metrics_and_contact_sheet(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--views", "3", "--no-complete", "--size", "64", "--steps", "2",
                     "--texture-size", "64"]) == 0
    for index in range(3):
        view = images.load_png(out / "views" / f"{index:04d}.png")
        assert view.shape == (64, 64, 3) and view.std() > 0.01
    texture = images.load_png(out / "texture.png")
    assert texture.shape == (64, 64, 3) and texture.std() > 0.01
    sheet = images.load_png(out / "contact_sheet.png")
    assert sheet.shape[1] > 3 * 64
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["views"] == 3 and np.isfinite(metrics["cross_view_disagreement"])
    assert metrics["texture_coverage"] > 0.3
    assert str(out / "contact_sheet.png") in capsys.readouterr().err


def test_texture_command_on_a_bundle(bundle, tmp_path):
    metrics = texture_run(bundle, tmp_path / "run", "--texture-size", "256", "--attention", "neighbors")
    texture = images.load_png(tmp_path / "run" / "texture.png")
    assert texture.shape == (256, 256, 3)
    assert metrics["texture_coverage"] > 0.5
    for key in ("cross_view_disagreement", "latent_cross_view_disagreement", "bake_residual"):
        assert np.isfinite(metrics[key])


def test_consistency_methods_beat_the_baseline(bundle, tmp_path):
    baseline = texture_run(bundle, tmp_path / "iid", "--noise", "iid", "--attention", "self", "--sync-strength", "0")
    surface = texture_run(bundle, tmp_path / "surface", "--noise", "surface", "--attention", "self",
                          "--sync-strength", "0")
    synced = texture_run(bundle, tmp_path / "sync", "--noise", "surface", "--attention", "self",
                         "--sync-strength", "1")
    assert surface["latent_cross_view_disagreement"] < baseline["latent_cross_view_disagreement"]
    assert surface["cross_view_disagreement"] < baseline["cross_view_disagreement"]
    assert synced["latent_cross_view_disagreement"] <= 0.1 * baseline["latent_cross_view_disagreement"]
    assert synced["cross_view_disagreement"] < baseline["cross_view_disagreement"]


def test_bad_input_is_one_clear_line(tmp_path, capsys):
    assert cli.main(["texture", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "x")]) == 2
    assert "source:" in capsys.readouterr().err
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not an archive")
    assert cli.main(["texture", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "passes: not a readable .npz" in capsys.readouterr().err


def test_texture_blend_with_auto_cameras(tmp_path, capsys):
    """`zs texture FILE.blend --cameras auto`: cameras chosen from Suzanne's geometry until
    they see 98% of what can be seen from outside; the coverage reaches metrics.json and
    the terminal, and the bundle marks any completion views."""
    pytest.importorskip("bpy")
    from blender_addon import batch

    source = batch.build_demo_scene(tmp_path / "in" / "scene.blend", subdivisions=0)
    common = ["--object", batch.DEMO_OBJECT, "--cameras", "auto", "--view-size", "64", "--texture-size", "64"]
    bundle = tmp_path / "bundle"
    assert cli.main(["texture", str(source), "--out", str(bundle), "--passes-only", *common]) == 0
    assert "auto cameras see" in capsys.readouterr().err
    out = tmp_path / "auto"
    assert cli.main(["texture", str(source), "--out", str(out), "--steps", "2", "--prompt", "jade", *common]) == 0
    err = capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    report = metrics["camera_coverage"]
    assert report["cameras"] == "auto" and report["coverage_main"] >= 0.98 and report["views_main"] <= 12
    assert metrics["views"] == report["views_main"] + report["views_completion"]
    assert metrics["blend"]["cameras"] == [f"ZS Auto {index:02d}" for index in range(report["views_main"])]
    assert f"cameras: {report['views_main']} auto cameras see {100 * report['coverage_main']:.1f}%" in err
    passes = Passes.load(bundle / "passes.npz").validate()
    assert passes.views == metrics["views"]
    flags = passes.completion if passes.completion is not None else np.zeros(passes.views, bool)
    assert flags.tolist() == [False] * report["views_main"] + [True] * report["views_completion"]

