"""The Model panel in real bpy against a real uvicorn server over real HTTP: the server's
models as a dropdown after Connect, the LoRA list, the reference image whose pixels
travel as ``passes.reference_image``, and the errors before anything renders.

The server runs the session's tiny model with its own data dir, whose ``models/loras/``
holds LoRA files written here in the real format (safetensors with diffusers / PEFT key
names): two for the tiny SD 1.5 UNet's cross-attention and one for SDXL's second text
encoder, so the server lists them with their families (it reads the headers).
"""

from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path

import numpy as np
import pytest

import bpy
from addon_helpers import RecordingLayout, Timers, add_camera, add_monkey
from PIL import Image
from zs_server_helpers import ServerThread, make_settings

from blender_addon import batch, image_pixels, jobs, properties, reference_image, server_models, ui
from blender_addon.client import Client
from blender_addon.errors import CaptureError
from blender_addon.operators import generate, server as server_ops
from blender_addon.wire import protocol

SIZE, STEPS = 64, 2
RING = [(4.0, 0.0, 1.0), (0.0, 4.0, 1.0)]
SD15_LORAS = ("patina.safetensors", "grime.safetensors")
SDXL_LORA = "xl_detail.safetensors"


# ----------------------------------------------------------------------------- fixtures


def write_unet_lora(tiny, path: Path, rank: int = 4) -> None:
    """A LoRA for the tiny UNet's first cross-attention key, diffusers' saved layout
    (``unet.<module>.lora_A/B.weight``); B is zero, so it changes nothing when applied."""
    from safetensors.numpy import save_file

    name, layer = next((name, module) for name, module in tiny.unet.named_modules() if name.endswith("attn2.to_k"))
    save_file({f"unet.{name}.lora_A.weight": np.full((rank, layer.in_features), 0.01, np.float32),
               f"unet.{name}.lora_B.weight": np.zeros((layer.out_features, rank), np.float32)}, str(path))


def write_text_encoder_2_lora(path: Path, rank: int = 4, width: int = 32) -> None:
    """A LoRA of an SDXL second text encoder's first query projection (kohya's names)."""
    from safetensors.numpy import save_file

    key = "lora_te2_text_model_encoder_layers_0_self_attn_q_proj"
    save_file({f"{key}.lora_down.weight": np.zeros((rank, width), np.float32),
               f"{key}.lora_up.weight": np.zeros((width, rank), np.float32)}, str(path))


@pytest.fixture(scope="module")
def model_server(tiny, tmp_path_factory):
    """A real server whose models folder holds the LoRA files (and an empty hub cache). Its
    tiny model is a copy of its own: the LoRAs it loads must not stay on the session's."""
    from zs_core import models

    data = tmp_path_factory.mktemp("zs-models-data")
    loras = data / "models" / "loras"
    loras.mkdir(parents=True)
    for name in SD15_LORAS:
        write_unet_lora(tiny, loras / name)
    write_text_encoder_2_lora(loras / SDXL_LORA)
    hub = tmp_path_factory.mktemp("empty-hub-cache")
    with ServerThread(make_settings(data, hub_cache=str(hub)), models.load("tiny", device="cpu")) as running:
        yield running
    server_models.remember(server_models.Catalog())  # no later test sees this server's lists


@pytest.fixture
def connected(addon, model_server, monkeypatch):
    """The add-on pointed at the server, and Connect pressed (its timer run by hand)."""
    addon.server_url, addon.token = model_server.base_url, model_server.token
    timers = Timers(monkeypatch)
    assert bpy.ops.zs.check_server() == {"FINISHED"}
    timers.run()
    assert server_ops.STATUS.state == "online", server_ops.STATUS.message
    return addon


def listed(server) -> dict:
    """GET /v1/models, straight from the server."""
    return server.client().get("/v1/models").json()


def suzanne_scene():
    """Suzanne with a material "Original" and two selected cameras; 2 steps at 64^2."""
    scene = bpy.context.scene
    monkey = add_monkey()
    material = bpy.data.materials.new("Original")
    monkey.data.materials.append(material)
    cameras = [add_camera(scene, f"Cam {index}", eye) for index, eye in enumerate(RING)]
    for obj in [monkey, *cameras]:
        obj.select_set(True)
    bpy.context.view_layer.objects.active = monkey
    settings = scene.zs_texturing
    settings.prompt, settings.views_source = "rusty metal", "CAMERAS"
    settings.view_size, settings.steps, settings.texture_size = SIZE, STEPS, SIZE
    settings.complete = False  # completion views: tests/addon/test_auto_rig.py
    return monkey, settings


def png_image(path: Path, size=(40, 24), seed: int = 0) -> tuple[bpy.types.Image, np.ndarray]:
    """A random RGBA PNG at ``path`` loaded into Blender -> (image, its RGB bytes (H, W, 3))."""
    width, height = size
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 4), dtype=np.uint8)
    pixels[..., 3] = np.where(pixels[..., 3] > 64, 255, 0)  # alpha must not leak into the colours
    Image.fromarray(pixels, "RGBA").save(path)
    return bpy.data.images.load(str(path)), pixels[..., :3]


def image_state(image: bpy.types.Image) -> dict:
    """Everything about an image that reading it must leave alone."""
    pixels = np.empty(len(image.pixels), np.float32)
    image.pixels.foreach_get(pixels)
    path = Path(bpy.path.abspath(image.filepath)) if image.filepath else None
    return {"name": image.name, "filepath": image.filepath, "source": image.source, "dirty": image.is_dirty,
            "packed": image.packed_file is not None, "users": image.users, "size": tuple(image.size),
            "colorspace": image.colorspace_settings.name, "pixels": hashlib.sha256(pixels.tobytes()).hexdigest(),
            "file": hashlib.sha256(path.read_bytes()).hexdigest() if path and path.is_file() else None}


def snapshot() -> dict:
    kinds = ("objects", "materials", "images", "meshes", "cameras", "collections")
    state = {kind: sorted(item.name for item in getattr(bpy.data, kind)) for kind in kinds}
    state["slots"] = {obj.name: [slot.material.name if slot.material else None for slot in obj.material_slots]
                      for obj in bpy.data.objects}
    return state


def start(settings) -> generate.GenerateSession:
    return generate.GenerateSession(bpy.context.scene, generate.client_from_preferences(bpy.context)).start(
        bpy.context)


def finish(session: generate.GenerateSession, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while (state := session.poll()) not in jobs.FINISHED:
        assert time.monotonic() < deadline, f"job still {state}"
        time.sleep(0.02)
    return state


# ----------------------------------------------------------------------- the dropdown


def test_connect_fills_the_model_dropdown_with_the_servers_list(connected, model_server):
    answer = listed(model_server)
    names = [entry["name"] for entry in answer["models"]]
    assert "tiny" in names and answer["default"] == "tiny"
    settings = bpy.context.scene.zs_texturing
    assert settings.model_choice == properties.DEFAULT_CHOICE and settings.model == ""
    items = properties._CHOICE_ITEMS["model"]
    assert [item[0] for item in items] == [properties.DEFAULT_CHOICE, *names]
    assert "(tiny)" in items[0][1]  # "Server Default (tiny)"
    for entry in answer["models"]:  # each entry can be picked, and the request names it
        settings.model_choice = entry["name"]
        assert settings.model == entry["name"] and properties.build_request(settings).model == entry["name"]
        label = next(item[1] for item in properties._CHOICE_ITEMS["model"] if item[0] == entry["name"])
        assert label == f"{entry['name']} ({server_models.family_title(entry['family'])})"
        layout = RecordingLayout()
        ui.ZS_PT_model.draw(type("Panel", (), {"layout": layout})(), bpy.context)
        assert "model_choice" in layout.props and "reference_strength" in layout.props
        assert any(text.startswith(server_models.family_title(entry["family"])) for text in layout.labels)
    with pytest.raises(TypeError, match="not found"):
        settings.model_choice = "no-such-model"  # the dropdown offers only the server's names
    settings.model = "gone-model"  # e.g. a file saved with another server: shown, and flagged
    assert settings.model_choice == "gone-model"
    layout = RecordingLayout()
    ui.ZS_PT_model.draw(type("Panel", (), {"layout": layout})(), bpy.context)
    assert any("'gone-model' is not on the server" in text for text in layout.labels)
    settings.model_choice = properties.DEFAULT_CHOICE
    assert settings.model == "" and "model" not in ui.advanced_properties("TEXTURE")


def test_lora_list_from_the_servers_loras_with_weights_and_families(connected, model_server):
    answer = listed(model_server)
    families = {entry["name"]: entry["family"] for entry in answer["loras"]}
    assert set(families) == {*SD15_LORAS, SDXL_LORA}
    assert families[SDXL_LORA] == "sdxl" and {families[name] for name in SD15_LORAS} == {"sd15"}
    settings = bpy.context.scene.zs_texturing
    for name, weight in zip(SD15_LORAS, (0.7, 0.35)):
        assert bpy.ops.zs.lora_add(lora=name) == {"FINISHED"}
        settings.lora_list[settings.lora_index].weight = weight
    assert settings.loras == "patina.safetensors:0.7|grime.safetensors:0.35"
    assert properties.build_request(settings).loras == settings.loras
    assert server_models.CATALOG.problems("", settings.loras, "") == []

    bpy.ops.zs.lora_add(lora=SDXL_LORA)  # another family than tiny's: flagged in the list
    rows = []
    for entry in settings.lora_list:
        layout = RecordingLayout()
        ui.ZS_UL_loras.draw_item(None, bpy.context, layout, settings, entry, 0, settings, "lora_index", 0)
        rows.append(bool(getattr(layout, "alert", False)))
    assert rows == [False, False, True]
    problem = ui.lora_problem(settings, SDXL_LORA)
    assert "is for SDXL models" in problem and "SD 1.5" in problem
    labels = RecordingLayout()
    ui.ZS_PT_model.draw(type("Panel", (), {"layout": labels})(), bpy.context)
    assert any("xl_detail.safetensors' is for SDXL" in text for text in labels.labels)

    assert bpy.ops.zs.lora_remove() == {"FINISHED"}  # the active (last added) one
    assert [entry.name for entry in settings.lora_list] == list(SD15_LORAS)
    settings.loras = "grime:1.5"  # the text is a view of the list: set, it becomes the list
    assert [(entry.name, round(entry.weight, 6)) for entry in settings.lora_list] == [("grime", 1.5)]
    assert server_models.CATALOG.lora_problem("grime", "") == ""  # the server's names may drop .safetensors
    settings.loras = "grime:9"  # refused (Blender prints the error): the list stays
    assert settings.loras == "grime:1.5"


def test_the_list_and_the_image_survive_saving_and_reopening(addon, tmp_path):
    """The panel's image counts as a user: an image nothing else uses is saved, not dropped."""
    settings = bpy.context.scene.zs_texturing
    settings.loras = "patina.safetensors:0.7|grime"
    settings.reference_image = bpy.data.images.new("Only Here", 32, 32)
    settings.reference_image.pack()
    assert settings.reference_image.users == 1
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "saved.blend"))
    bpy.ops.wm.open_mainfile(filepath=str(tmp_path / "saved.blend"))
    settings = bpy.context.scene.zs_texturing
    assert settings.loras == "patina.safetensors:0.7|grime:1"
    assert settings.reference_image is not None and settings.reference_image.name == "Only Here"
    assert reference_image.read(settings.reference_image).shape == (32, 32, 3)


# ------------------------------------------------------------------------- generate


def test_generate_sends_the_chosen_model_and_loras_to_the_server(connected, model_server):
    """Through the real server: the job it stored names the model and both LoRAs with their
    weights, and it runs them (the LoRA files fit the tiny UNet)."""
    monkey, settings = suzanne_scene()
    settings.model_choice = "tiny"
    for name, weight in zip(SD15_LORAS, (0.7, 0.35)):
        bpy.ops.zs.lora_add(lora=name)
        settings.lora_list[settings.lora_index].weight = weight
    session = start(settings)
    state = finish(session)
    folder = model_server.data_dir / "jobs" / session.job.job_id
    stored = protocol.Request.from_json((folder / "request.json").read_text())
    assert (stored.model, stored.loras, stored.ip_adapter) == ("tiny", "patina.safetensors:0.7|grime.safetensors:0.35",
                                                               "")
    assert (folder / "passes.npz").read_bytes() == session.job.passes_npz
    assert "reference_image" not in np.load(io.BytesIO(session.job.passes_npz)).files
    assert state == "done", session.error
    assert session.apply() == {"FINISHED"}
    session.close()
    assert monkey.material_slots[0].material.name.startswith("Original ZS Texture")


def test_generate_sends_the_reference_images_pixels(connected, model_server, tmp_path):
    monkey, settings = suzanne_scene()
    image, stored = png_image(tmp_path / "look.png")
    settings.reference_image, settings.reference_strength = image, 0.8
    before = image_state(image)

    session = start(settings)
    sent = session.job.request
    assert (sent["reference_strength"], sent["ip_adapter"], sent["model"]) == (0.8, "", "")
    uploaded = np.load(io.BytesIO(session.job.passes_npz))  # what the worker thread uploads
    reference = uploaded["reference_image"]
    assert reference.dtype == np.float32 and reference.shape == (24, 40, 3)  # (H, W, 3), rows top to bottom
    np.testing.assert_allclose(reference, stored / 255.0, atol=1e-6)  # the PNG's values, alpha dropped
    assert uploaded["depth"].shape == (2, SIZE, SIZE)
    state = finish(session)
    print(f"job with a reference image: {state} ({session.error or 'no error'})")
    if session.job.job_id is not None:  # stored byte for byte
        folder = model_server.data_dir / "jobs" / session.job.job_id
        assert (folder / "passes.npz").read_bytes() == session.job.passes_npz
    else:  # refused: only because this server has no IP-Adapter for the model (a 4xx naming ip_adapter)
        assert "refused" in session.error and "ip_adapter" in session.error, session.error
    session.close()
    assert image_state(image) == before  # read, never changed
    assert settings.reference_image == image and monkey.data.materials[0].name == "Original"


@pytest.mark.parametrize("problem", ["missing file", "unknown model", "unknown LoRA", "LoRA family",
                                     "unknown IP-Adapter", "tiny image"])
def test_bad_model_names_and_images_are_errors_before_the_capture(connected, tmp_path, problem):
    _monkey, settings = suzanne_scene()
    image, _ = png_image(tmp_path / "look.png")
    settings.reference_image = image
    expected = {"missing file": f"has no pixels: its file {tmp_path / 'look.png'} is missing",
                "unknown model": "model: model 'no-such-model' is not on the server",
                "unknown LoRA": "loras: LoRA 'nope.safetensors' is not on the server",
                "LoRA family": "LoRA 'xl_detail.safetensors' is for SDXL models; the model the server's "
                               "default (tiny) is SD 1.5",
                "unknown IP-Adapter": "ip_adapter: IP-Adapter 'no-adapter' is not on the server",
                "tiny image": "reference image 'tiny' is 8x8 pixels; each side must be at least 16"}[problem]
    if problem == "missing file":
        (tmp_path / "look.png").unlink()
        image.reload()
    elif problem == "unknown model":
        settings.model = "no-such-model"
    elif problem == "unknown LoRA":
        settings.loras = "nope.safetensors:0.5"
    elif problem == "LoRA family":
        settings.loras = f"{SD15_LORAS[0]}|{SDXL_LORA}:0.8"
    elif problem == "unknown IP-Adapter":
        settings.ip_adapter = "no-adapter"
    else:
        settings.reference_image = bpy.data.images.new("tiny", 8, 8)
    before = snapshot()
    started = time.perf_counter()
    with pytest.raises(generate.GenerateError) as caught:
        start(settings)
    assert expected in str(caught.value)
    assert time.perf_counter() - started < 5.0 and snapshot() == before  # nothing rendered or added
    assert jobs.active() is None or not jobs.active().alive


# ------------------------------------------------------------------ reading pixels


def test_any_blender_image_is_read_without_changing_it(scene, tmp_path):
    """A loaded PNG, the same packed with its file gone, a generated image and a float
    image: what each looks like as an sRGB picture (a float image: Blender's own sRGB
    encoding, its Standard view saved to an 8-bit PNG, is the oracle)."""
    image, stored = png_image(tmp_path / "look.png", size=(33, 17), seed=1)
    before = image_state(image)
    np.testing.assert_allclose(reference_image.read(image), stored / 255.0, atol=1e-6)
    assert image_state(image) == before
    image.pack()
    (tmp_path / "look.png").unlink()
    packed = image_state(image)
    np.testing.assert_allclose(reference_image.read(image), stored / 255.0, atol=1e-6)
    assert image_state(image) == packed

    generated = bpy.data.images.new("Grid", 64, 32)
    generated.generated_type = "COLOR_GRID"
    grid = reference_image.read(generated)
    assert grid.shape == (32, 64, 3) and grid.std() > 0.1 and not generated.is_dirty

    linear = np.random.default_rng(2).uniform(0.0, 1.3, (20, 30, 3)).astype(np.float32)
    floating = image_pixels.numpy_to_image("Linear", linear)
    scene.view_settings.view_transform, scene.view_settings.look = "Standard", "None"
    scene.view_settings.exposure, scene.view_settings.gamma, scene.render.dither_intensity = 0.0, 1.0, 0.0
    scene.render.image_settings.file_format, scene.render.image_settings.color_depth = "PNG", "8"
    scene.render.image_settings.color_mode = "RGB"
    floating.save_render(str(tmp_path / "float.png"), scene=scene)
    blender_srgb = np.asarray(Image.open(tmp_path / "float.png"), np.float64) / 255.0
    np.testing.assert_allclose(reference_image.read(floating), blender_srgb, atol=0.51 / 255.0)
    assert np.abs(reference_image.read(floating) - np.clip(linear, 0, 1)).max() > 0.1  # not sent linear


def test_files_arrays_and_sizes(scene, tmp_path):
    _image, stored = png_image(tmp_path / "look.png", size=(20, 18))
    count = len(bpy.data.images)
    np.testing.assert_allclose(reference_image.read(tmp_path / "look.png"), stored / 255.0, atol=1e-6)
    assert len(bpy.data.images) == count  # the file's datablock went again
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(CaptureError, match="notes.png is not an image Blender can read"):
        reference_image.read(tmp_path / "notes.png")
    with pytest.raises(CaptureError, match="is not a file"):
        reference_image.read(tmp_path / "missing.png")
    with pytest.raises(CaptureError, match=r"values must be finite and in \[0, 1\]"):
        reference_image.read(np.full((16, 16, 3), 2.0, np.float32))
    assert reference_image.read(np.full((16, 16, 4), 0.5, np.float32)).shape == (16, 16, 3)

    blocks = np.random.default_rng(3).uniform(0.0, 1.0, (8, 12, 3)).astype(np.float32)
    np.testing.assert_allclose(reference_image.area_resize(blocks, 4, 6),
                               blocks.reshape(4, 2, 6, 2, 3).mean(axis=(1, 3)), atol=1e-6)
    low, high = protocol.REFERENCE_IMAGE_SIDES
    wide = np.random.default_rng(4).uniform(0.0, 1.0, (40, high + 100, 3)).astype(np.float32)
    fitted = reference_image.read(wide)
    assert fitted.shape == (39, high, 3) and abs(float(fitted.mean()) - float(wide.mean())) < 1e-3
    with pytest.raises(CaptureError, match=f"each side must be at least {low}"):
        reference_image.read(np.zeros((low - 1, 64, 3), np.float32))


def test_batch_passes_only_bundles_the_reference_image_and_the_names(scene, tmp_path):
    """The `blender -b` / `zs texture FILE.blend` path: --reference-image, --model and
    --lora land in the bundle (no server: passes-only)."""
    _image, stored = png_image(tmp_path / "look.png", size=(24, 20), seed=5)
    blend = batch.build_demo_scene(tmp_path / "scene.blend", subdivisions=0)
    out = tmp_path / "out"
    code = batch.main([str(blend), "--object", batch.DEMO_OBJECT, "--out", str(out), "--passes-only",
                       "--views", "2", "--no-complete", "--view-size", "64", "--reference-image",
                       str(tmp_path / "look.png"),
                       "--model", "tiny", "--lora", "patina.safetensors:0.7", "--lora", "grime"])
    assert code == 0
    with np.load(out / batch.PASSES_NPZ) as bundle:
        np.testing.assert_allclose(bundle["reference_image"], stored / 255.0, atol=1e-6)
        assert bundle["depth"].shape[0] == 2
    request = protocol.Request.from_json((out / batch.REQUEST_JSON).read_text())
    assert (request.model, request.loras) == ("tiny", "patina.safetensors:0.7|grime")  # as given
    assert batch.main([str(blend), "--object", batch.DEMO_OBJECT, "--out", str(out), "--passes-only",
                       "--reference-image", str(blend)]) == 2  # a .blend is no image: refused before opening


def test_api_texture_takes_the_reference_image(addon, model_server, tmp_path):
    """The script API sends the same request fields and pixels as the panel."""
    from blender_addon import api

    monkey, _settings = suzanne_scene()
    image, stored = png_image(tmp_path / "look.png", size=(30, 16), seed=6)
    sent = {}

    def sampler(request: dict, passes, out_dir):
        sent.update(request=request, reference=passes.reference_image)
        raise RuntimeError("stop after the capture")

    with pytest.raises(RuntimeError, match="stop after the capture"):
        api.texture([monkey], [bpy.data.objects["Cam 0"]], api.TextureSettings(
            prompt="x", steps=STEPS, view_size=SIZE, texture_size=SIZE, model="tiny",
            loras=protocol.format_loras([("patina.safetensors", 0.5)]), reference_strength=1.2,
            ip_adapter="ip-sd15"), sampler=sampler, reference_image=image)
    assert (sent["request"]["model"], sent["request"]["loras"]) == ("tiny", "patina.safetensors:0.5")
    assert (sent["request"]["reference_strength"], sent["request"]["ip_adapter"]) == (1.2, "ip-sd15")
    np.testing.assert_allclose(sent["reference"], stored / 255.0, atol=1e-6)
    # With a server, the names are checked against its lists before anything renders.
    before = snapshot()
    with pytest.raises(protocol.ProtocolError, match="ip_adapter: IP-Adapter 'ip-sd15' is not on the server"):
        api.texture([monkey], [bpy.data.objects["Cam 0"]], api.TextureSettings(ip_adapter="ip-sd15", view_size=SIZE),
                    server=model_server.base_url, token=model_server.token, reference_image=image)
    assert snapshot() == before
    assert Client(model_server.base_url, model_server.token).health()["status"] == "ok"
