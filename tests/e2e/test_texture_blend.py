"""End to end through Blender: `zs texture FILE.blend` (in-process and through a real server)
and `zs demo`, checked by reopening the written .blend."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from blender_addon import apply, compat, image_pixels, pass_render  # noqa: E402
from blender_addon.client import Client  # noqa: E402
import zs_cli as cli  # noqa: E402
from zs_core import bake, geometry, images  # noqa: E402
from zs_core.protocol import Passes, Request  # noqa: E402
from blender_scenes import ORIGINAL_COLOUR, digest, save_source  # noqa: E402
from zs_server_helpers import ServerThread, free_port, make_settings  # noqa: E402

METRIC_KEYS = ("views", "steps", "texture_size", "texture_coverage", "bake_residual", "cross_view_disagreement",
               "sampling_seconds", "request", "blend")


@pytest.fixture
def source_blend(tmp_path):
    """Suzanne (she has a UV map) with a material of her own, saved to a .blend."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.mesh.primitive_monkey_add()
    monkey = bpy.context.active_object
    assert [layer.name for layer in monkey.data.uv_layers] == ["UVMap"]
    material = compat.new_material("Original")
    material.node_tree.nodes["Principled BSDF"].inputs["Base Color"].default_value = ORIGINAL_COLOUR
    monkey.data.materials.append(material)
    return save_source(tmp_path, "monkey.blend")


def texture_node(material):
    """The Image Texture node feeding Base Color, and the UV map it reads."""
    shader = apply._principled(material.node_tree)
    (link,) = shader.inputs["Base Color"].links
    node = link.from_node
    (uv_link,) = node.inputs["Vector"].links
    return node, uv_link.from_node.uv_map


def check_textured_blend(out, views: int, view_size: int, texture_size: int) -> dict:
    """Reopen out/textured.blend and check the new material, image and coverage -> numbers."""
    metrics = json.loads((out / "metrics.json").read_text())
    for key in METRIC_KEYS:
        assert key in metrics, key
    assert metrics["views"] == views and metrics["texture_size"] == texture_size

    bpy.ops.wm.open_mainfile(filepath=str(out / "textured.blend"))
    monkey = bpy.data.objects["Suzanne"]
    (slot,) = monkey.material_slots
    assert slot.material.name != "Original"
    original = bpy.data.materials["Original"]  # still there, as it was
    assert tuple(original.node_tree.nodes["Principled BSDF"].inputs["Base Color"].default_value) == \
        pytest.approx(ORIGINAL_COLOUR)
    assert not [node for node in original.node_tree.nodes if node.bl_idname == "ShaderNodeTexImage"]
    node, uv_map = texture_node(slot.material)
    assert uv_map == "UVMap"
    image = node.image
    assert image.filepath.startswith("//zs_textures/") and image.packed_file is None
    texture = image_pixels.image_to_numpy(image)[..., :3]  # loaded through the relative path
    assert texture.shape == (texture_size, texture_size, 3)
    assert np.abs(texture - images.load_png(out / "texture.png")).max() <= 1 / 255 + 1e-6
    assert texture.std() > 0.02

    # Coverage: render the saved rig again; every texel a camera sees is inside the
    # texel mask, and the texture seen through the cameras reproduces the generated views.
    cameras = sorted((obj for obj in bpy.data.objects if obj.type == "CAMERA"), key=lambda obj: obj.name)
    assert len(cameras) == views
    passes = pass_render.render_passes(bpy.context.scene, cameras, [monkey], view_size, view_size,
                                       texture_size=texture_size)
    texel = np.floor(geometry.uv_to_texel(passes.uv[passes.mask], texture_size)).astype(int)
    texel = np.clip(texel, 0, texture_size - 1)
    seen = np.zeros((texture_size, texture_size), bool)
    seen[texel[:, 1], texel[:, 0]] = True
    inside = (seen & passes.texel_mask).sum() / seen.sum()
    assert inside > 0.97
    # One texel per pixel centre is a lower bound of what the bake sees (it projects
    # every texel into the views, so texels finer than the pixels count too).
    coverage = (seen & passes.texel_mask).sum() / passes.texel_mask.sum()
    assert metrics["texture_coverage"] >= coverage - 0.02 and metrics["texture_coverage"] > 0.5
    assert texture[seen].std() > 0.02  # seen texels carry the generated picture, not a fill

    generated = np.stack([images.load_png(out / "views" / f"{i:04d}.png") for i in range(views)])
    mask = passes.mask
    shown = bake.render(texture, passes.uv, mask)
    flipped = bake.render(texture[::-1], passes.uv, mask)
    error = float(np.abs(shown - generated)[mask].mean())
    error_flipped = float(np.abs(flipped - generated)[mask].mean())
    assert error < 0.12 and error < 0.7 * error_flipped
    return {"coverage": coverage, "seen_inside_mask": inside, "view_error": error, "flipped_error": error_flipped}


def test_texture_blend_in_process(source_blend, tmp_path, capsys):
    before = digest(source_blend)
    out = tmp_path / "out"
    code = cli.main(["texture", str(source_blend), "--object", "Suzanne", "--prompt", "rusty orange metal",
                     "--out", str(out), "--cameras", "6", "--no-complete", "--view-size", "96", "--steps", "3",
                     "--texture-size", "128", "--seed", "1"])
    assert code == 0
    err = capsys.readouterr().err
    assert str(out / "textured.blend") in err and str(out / "texture.png") in err
    assert digest(source_blend) == before  # the source file is never written
    for name in ("textured.blend", "texture.png", "metrics.json", "contact_sheet.png", "views/0005.png"):
        assert (out / name).is_file(), name
    numbers = check_textured_blend(out, views=6, view_size=96, texture_size=128)
    print("in-process:", numbers)


def test_passes_only_writes_a_bundle_that_samples_without_blender(source_blend, tmp_path, capsys):
    before = digest(source_blend)
    bundle = tmp_path / "bundle"
    assert cli.main(["texture", str(source_blend), "--object", "Suzanne", "--passes-only", "--out", str(bundle),
                     "--views", "2", "--no-complete", "--view-size", "64", "--texture-size", "64", "--seed",
                     "4"]) == 0
    assert "zs texture" in capsys.readouterr().err
    passes = Passes.load(bundle / "passes.npz").validate()
    assert passes.views == 2 and passes.texel_position.shape == (64, 64, 3) and passes.mask.any()
    request = Request.from_json((bundle / "request.json").read_text())
    assert (request.kind, request.seed, request.texture_size) == ("texture", 4, 64)
    assert not (bundle / "textured.blend").exists() and digest(source_blend) == before
    assert bpy.data.objects["Suzanne"].material_slots[0].material.name == "Original"  # nothing applied
    out = tmp_path / "sampled"
    assert cli.main(["texture", str(bundle / "passes.npz"), "--out", str(out), "--steps", "1"]) == 0
    assert images.load_png(out / "texture.png").shape == (64, 64, 3)  # the bundle's texel maps' size
    assert cli.main(["texture", str(bundle / "passes.npz"), "--out", str(out), "--view-size", "64"]) == 2
    assert "--view-size: only for .blend files" in capsys.readouterr().err


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    with ServerThread(make_settings(tmp_path_factory.mktemp("zs-data")), tiny) as running:
        yield running


def test_texture_blend_through_a_server(source_blend, tmp_path, server):
    out = tmp_path / "out"
    code = cli.main(["texture", str(source_blend), "--object", "Suzanne", "--prompt", "mossy stone",
                     "--out", str(out), "--cameras", "4", "--no-complete", "--view-size", "64", "--steps", "2",
                     "--texture-size", "64", "--server", server.base_url, "--token", server.token])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    job = metrics["blend"]["job_id"]
    assert Client(server.base_url, server.token).status(job)["state"] == "done"
    numbers = check_textured_blend(out, views=4, view_size=64, texture_size=64)
    print("server:", numbers)


def test_errors_change_nothing(source_blend, tmp_path, capsys):
    before = digest(source_blend)
    out = tmp_path / "out"
    assert cli.main(["texture", str(source_blend), "--object", "Nobody", "--prompt", "x", "--out", str(out)]) == 2
    assert "object 'Nobody' does not exist" in capsys.readouterr().err
    url = f"http://127.0.0.1:{free_port()}"
    assert cli.main(["texture", str(source_blend), "--object", "Suzanne", "--prompt", "x", "--out", str(out),
                     "--server", url, "--token", "t"]) == 2
    assert f"cannot reach the ZS server at {url}" in capsys.readouterr().err
    assert cli.main(["texture", str(source_blend), "--prompt", "x", "--out", str(out)]) == 2
    assert "--object" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exiting:
        cli.main(["texture", str(source_blend), "--object", "Suzanne", "--out", str(out), "--view-size", "100"])
    assert exiting.value.code == 2
    assert "argument --view-size: 100 is not a multiple of 8" in capsys.readouterr().err
    assert not (out / "textured.blend").exists() and not (out / "texture.png").exists()
    assert digest(source_blend) == before


def test_demo_is_the_blender_flow(tmp_path, capfd):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--views", "3", "--no-complete", "--size", "64", "--steps", "2",
                     "--texture-size", "64"]) == 0
    printed = capfd.readouterr()  # the process's own stdout and stderr, as a terminal sees them
    err = printed.err
    for name in ("textured.blend", "texture.png", "contact_sheet.png", "metrics.json", "blender.log"):
        assert (out / name).is_file() and str(out / name) in err, name
    assert "rendering passes" in err and "3/3" in err  # a bar over the rendered views
    # Blender's console lines (a "Saved:" per temporary pass file) went to the log, not the terminal.
    assert "Saved:" not in printed.out and "Saved:" not in err
    assert (out / "blender.log").read_text().count("Saved:") == 3 * 3
    bpy.ops.wm.open_mainfile(filepath=str(out / "textured.blend"))
    node, _ = texture_node(bpy.data.objects["Suzanne"].material_slots[0].material)
    assert image_pixels.image_to_numpy(node.image).std() > 0.02
    assert "Clay" in bpy.data.materials


def test_demo_falls_back_to_numpy_without_bpy(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "bpy", None)  # `import bpy` fails, find_spec says missing
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--views", "2", "--size", "64", "--steps", "1",
                     "--texture-size", "64"]) == 0
    err = capsys.readouterr().err
    assert "bpy) is not installed" in err and "numpy sphere scene" in err
    assert (out / "texture.png").is_file() and not (out / "textured.blend").exists()
