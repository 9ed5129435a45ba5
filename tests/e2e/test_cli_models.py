"""End to end through Blender: `zs texture FILE.blend --model DIR --lora L.safetensors:0.7
--reference-image ref.png --scheduler lcm --steps 4`, in this process and through a real
server whose models folder holds the same model, LoRA and IP-Adapter; and the bad input
that must stop before Blender renders anything (a file that is not an image, a missing
LoRA, an unknown scheduler, a model the server does not have, a hub model not in the cache)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

bpy = pytest.importorskip("bpy")

import zs_cli as cli  # noqa: E402
from adapter_files import write_ip_adapter, write_lora  # noqa: E402
from blender_scenes import ORIGINAL_COLOUR, save_source  # noqa: E402
from blender_addon import compat  # noqa: E402
from zs_core import images, models  # noqa: E402
from zs_core.protocol import Passes  # noqa: E402
from zs_server_helpers import ServerThread, make_settings  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
VIEWS, SIZE, TEXTURE, STEPS = 3, 64, 64, 4
REFERENCE_SIZE = (48, 40)  # width, height
QUICK = 5.0  # seconds: a run stopped by bad input never reaches Blender's render


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny):
    """The tiny model saved as a diffusers folder (with its controlnet/), a LoRA, an
    IP-Adapter (weights + image_encoder/) and a reference PNG."""
    folder = tmp_path_factory.mktemp("cli-models")
    model = models.save(tiny, folder / "tinymodel")
    lora = write_lora(folder / "L.safetensors", tiny, seed=5)
    adapter = write_ip_adapter(folder / "ipa", tiny, seed=6)
    pixels = np.random.default_rng(7).integers(0, 256, (REFERENCE_SIZE[1], REFERENCE_SIZE[0], 3), dtype=np.uint8)
    reference = folder / "ref.png"
    Image.fromarray(pixels).save(reference)
    not_an_image = folder / "notes.png"
    not_an_image.write_text("this is text, not a picture")
    return {"model": model, "lora": lora, "adapter": adapter, "reference": reference, "pixels": pixels,
            "not_an_image": not_an_image}


@pytest.fixture
def source_blend(tmp_path):
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.mesh.primitive_monkey_add()
    material = compat.new_material("Original")
    material.node_tree.nodes["Principled BSDF"].inputs["Base Color"].default_value = ORIGINAL_COLOUR
    bpy.context.active_object.data.materials.append(material)
    return save_source(tmp_path, "monkey.blend")


def texture(source, out, *extra) -> int:
    return cli.main(["texture", str(source), "--object", "Suzanne", "--out", str(out), "--views", str(VIEWS),
                     "--no-top-view", "--no-complete", "--view-size", str(SIZE), "--texture-size", str(TEXTURE), "--seed", "2",
                     "--prompt", "green bronze", *extra])


def views(out: Path) -> np.ndarray:
    return np.stack([images.load_png(out / "views" / f"{index:04d}.png") for index in range(VIEWS)])


def test_model_lora_reference_image_and_few_steps_in_this_process(source_blend, files, tmp_path, capsys):
    out = tmp_path / "out"
    code = texture(source_blend, out, "--model", str(files["model"]), "--lora", f"{files['lora']}:0.7",
                   "--reference-image", str(files["reference"]), "--ip-adapter", str(files["adapter"]),
                   "--scheduler", "lcm", "--steps", str(STEPS))
    err = capsys.readouterr().err
    assert code == 0, err
    assert "reference image 48x40" in err and str(out / "textured.blend") in err
    metrics = json.loads((out / "metrics.json").read_text())
    request = metrics["request"]
    assert (request["scheduler"], request["steps"]) == ("lcm", STEPS)
    assert request["loras"] == f"{files['lora']}:0.7" and request["ip_adapter"] == str(files["adapter"])
    assert metrics["model"] == str(files["model"]) and metrics["views"] == VIEWS
    assert (out / "texture.png").is_file() and (out / "textured.blend").is_file()

    # The same without the LoRA and the reference image: other pictures.
    plain = tmp_path / "plain"
    assert texture(source_blend, plain, "--model", str(files["model"]), "--scheduler", "lcm",
                   "--steps", str(STEPS)) == 0
    assert np.abs(views(out) - views(plain)).mean() > 0.01


@pytest.fixture(scope="module")
def server(tiny, files, tmp_path_factory):
    """A real server whose models folder holds the model, the LoRA and the IP-Adapter."""
    data = tmp_path_factory.mktemp("zs-data")
    shelf = data / "models"
    shutil.copytree(files["model"], shelf / "tinymodel")
    (shelf / "loras").mkdir()
    shutil.copy(files["lora"], shelf / "loras" / "L.safetensors")
    write_lora(shelf / "loras" / "xl.safetensors", models.load("tiny-sdxl", device="cpu"))  # another family
    shutil.copytree(files["adapter"].parent, shelf / "ip_adapters" / "ipa")
    with ServerThread(make_settings(data), tiny) as running:
        yield running


def test_the_same_through_a_server(source_blend, files, tmp_path, server, capsys):
    out = tmp_path / "out"
    code = texture(source_blend, out, "--model", "tinymodel", "--lora", "L.safetensors:0.7",
                   "--reference-image", str(files["reference"]), "--ip-adapter", "ipa", "--scheduler", "lcm",
                   "--steps", str(STEPS), "--server", server.base_url, "--token", server.token)
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    job = metrics["blend"]["job_id"]
    request = json.loads((server.data_dir / "jobs" / job / "request.json").read_text())
    assert (request["model"], request["loras"], request["ip_adapter"]) == ("tinymodel", "L.safetensors:0.7", "ipa")
    # The reference image travelled in the job's passes, pixel for pixel.
    uploaded = Passes.load(server.data_dir / "jobs" / job / "passes.npz")
    np.testing.assert_allclose(uploaded.reference_image, files["pixels"] / 255.0, atol=1e-6)
    assert metrics["model"] == "tinymodel"


# ------------------------------------------------------------------ bad input, before Blender


def stopped_early(code: int, out: Path, started: float) -> None:
    """Exit code 2, no output folder (nothing rendered: the flow creates it), quickly."""
    assert code == 2
    assert not out.exists()
    assert time.perf_counter() - started < QUICK


def test_a_reference_that_is_not_an_image(source_blend, files, tmp_path, capsys):
    started, out = time.perf_counter(), tmp_path / "out"
    code = texture(source_blend, out, "--reference-image", str(files["not_an_image"]))
    stopped_early(code, out, started)
    err = capsys.readouterr().err
    assert f"--reference-image: {files['not_an_image']} is not an image" in err and "Traceback" not in err


def test_a_missing_lora_file(source_blend, files, tmp_path, capsys):
    started, out = time.perf_counter(), tmp_path / "out"
    code = texture(source_blend, out, "--model", str(files["model"]), "--lora", str(tmp_path / "gone.safetensors"))
    stopped_early(code, out, started)
    assert f"{tmp_path / 'gone.safetensors'}: no such LoRA file" in capsys.readouterr().err


def test_an_unknown_scheduler(source_blend, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exited:
        texture(source_blend, out, "--scheduler", "warp-drive")
    assert exited.value.code == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "--scheduler" in err and "'warp-drive'" in err and "lcm" in err


def test_names_the_server_does_not_have(tmp_path, server, capsys):
    connection = ["--server", server.base_url, "--token", server.token]
    jobs_before = sorted(path.name for path in (server.data_dir / "jobs").iterdir())
    for flags, expected, listed in (
            (["--model", "nope"], "--model: 'nope' is not on the server", "'tinymodel'"),
            (["--model", "tinymodel", "--lora", "other.safetensors"], "--lora: 'other.safetensors' is not on the "
                                                                      "server", "'L.safetensors'"),
            (["--model", "tinymodel", "--ip-adapter", "none-such"], "--ip-adapter: 'none-such' is not on the server",
             "'ipa'"),
            (["--model", "tinymodel", "--lora", "xl.safetensors:0.5"], "--lora: the LoRA 'xl.safetensors' is made "
                                                                       "for sdxl models", "'tinymodel' is sd15")):
        started, out = time.perf_counter(), tmp_path / "out"
        stopped_early(texture(_blend(tmp_path), out, *flags, *connection), out, started)
        err = capsys.readouterr().err
        assert expected in err and listed in err, err  # and what the server has, or the model's family
    assert sorted(path.name for path in (server.data_dir / "jobs").iterdir()) == jobs_before  # nothing sent


def _blend(tmp_path: Path) -> Path:
    """A .blend path that exists but is not opened: the checks stop the run first."""
    path = tmp_path / "never-opened.blend"
    path.write_bytes(b"not opened")
    return path


@pytest.mark.slow
def test_a_hub_model_not_in_the_cache_offline(tmp_path):
    """`zs` in a fresh process, the hub offline and an empty cache: one error naming every
    missing file of the model and the ControlNet's default with the `hf download` command,
    before Blender opens the file (it is not even a .blend), no traceback."""
    out = tmp_path / "out"
    environment = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"), PYTHONPATH=str(ROOT))
    environment.pop("HF_HUB_CACHE", None)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "zs_cli", "texture", str(_blend(tmp_path)), "--object", "Suzanne",
                           "--model", "zs-texturing-test/not-cached", "--out", str(out)],
                          capture_output=True, text=True, env=environment, cwd=ROOT, timeout=300)
    seconds = time.perf_counter() - started
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and not out.exists()
    assert done.stderr.startswith("zs texture: error: model:")
    for part in ("model_index.json", "unet/", "vae/", "text_encoder/"):
        assert part in done.stderr
    assert "hf download zs-texturing-test/not-cached" in done.stderr and "huggingface-cli" not in done.stderr
    assert "controlnet:" in done.stderr  # the ControlNet is named too
    print(f"offline error after {seconds:.1f} s (the interpreter, torch and diffusers starting included)")


def test_without_a_connection_the_hub_is_not_retried(tmp_path, monkeypatch, capsys):
    """HF_HUB_OFFLINE not set: the cache is read first and the hub tried once, so a model
    that is in neither fails in seconds (huggingface_hub alone retries for about 23 s)."""
    from zs_cli import preflight

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    started, out = time.perf_counter(), tmp_path / "out"
    code = texture(_blend(tmp_path), out, "--model", "zs-texturing-test/not-anywhere")
    seconds = time.perf_counter() - started
    err = capsys.readouterr().err
    assert code == 2 and not out.exists(), err
    assert "zs-texturing-test/not-anywhere" in err and "Traceback" not in err
    if not preflight.hub_reachable():  # this machine has no connection: the cache's answer, named
        assert "hf download zs-texturing-test/not-anywhere" in err and "cannot be reached" in err
        assert os.environ["HF_HUB_OFFLINE"] == "1"  # and the rest of the run reads the cache only
    assert seconds < QUICK
