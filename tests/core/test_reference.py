"""The reference image through IP-Adapter (zs_core/reference.py) on the tiny SD 1.5 and SDXL
models, from IP-Adapter files written in h94's formats: equal to diffusers' own ControlNet
pipeline with the same adapter (and LoRA), gone without a trace from the next job without a
reference image, beside the cross-view attention, and refused clearly when it does not fit
or cannot be found."""

from __future__ import annotations

import copy
import dataclasses
import shutil

import numpy as np
import pytest
from adapter_files import diffusers_images, write_ip_adapter, write_lora
from diffusers.models.attention_processor import AttnProcessor2_0, IPAdapterAttnProcessor2_0

from zs_core import attention, loras, models, noise, reference, sampler, scene
from zs_core.models import ModelLoadError
from zs_core.protocol import ProtocolError, Request

VIEWS, SIZE = 2, 32
MODELS = ("tiny", "tiny-sdxl")
FAMILY = {"tiny": "sd15", "tiny-sdxl": "sdxl"}
LATENTS = noise.iid(VIEWS, (4, SIZE // 8, SIZE // 8), seed=11)


@pytest.fixture(scope="module")
def base():
    """Pristine models, never given an adapter; tests work on deep copies."""
    return {name: models.load(name, device="cpu") for name in MODELS}


@pytest.fixture(scope="module")
def adapters(base, tmp_path_factory):
    """Per model: an IP-Adapter file with its image_encoder/ beside it."""
    folder = tmp_path_factory.mktemp("ip-adapters")
    return {name: write_ip_adapter(folder / name, components) for name, components in base.items()}


@pytest.fixture(scope="module")
def passes():
    """The sphere's views, and a reference image of another size than the views."""
    rows, cols = np.mgrid[0:40, 0:48] / 48.0
    picture = np.stack([rows, cols, 0.5 + 0.5 * np.sin(6 * rows * cols)], axis=-1).astype(np.float32)
    return dataclasses.replace(scene.sphere_scene(views=VIEWS, width=SIZE, height=SIZE), reference_image=picture)


def without_reference(passes):
    return dataclasses.replace(passes, reference_image=None)


def request(ip_adapter="", **fields) -> Request:
    settings = dict(prompt="a brass lamp", negative_prompt="blurry", steps=3, seed=5, noise="iid",
                    attention="self", sync_strength=0.0, guidance_scale=5.0, reference_strength=0.8)
    return Request(ip_adapter=str(ip_adapter), **{**settings, **fields}).validate()


def images(components, req, passes, **kwargs) -> np.ndarray:
    return sampler.sample(components, req, passes, latents=LATENTS, **kwargs).images


@pytest.mark.parametrize("model, scheduler, with_lora", [
    ("tiny", "ddim", False), ("tiny", "lcm", True), ("tiny-sdxl", "ddim", True), ("tiny-sdxl", "lcm", False),
])
def test_equals_diffusers_pipeline_with_the_same_reference_image(base, adapters, passes, tmp_path, model, scheduler,
                                                                  with_lora):
    entries = [(write_lora(tmp_path / "style.safetensors", base[model], seed=4), 0.7)] if with_lora else []
    req = request(adapters[model], scheduler=scheduler)
    ours = copy.deepcopy(base[model])
    loras.apply(ours, entries)
    result = images(ours, req, passes)
    stock = diffusers_images(copy.deepcopy(base[model]), req, passes, LATENTS, loras=entries,
                             ip_adapter=adapters[model])
    np.testing.assert_allclose(result, stock, atol=5e-5, rtol=0)
    assert np.abs(result - images(ours, req, without_reference(passes))).mean() > 1e-3  # the image steers


@pytest.mark.parametrize("model", MODELS)
def test_a_job_without_a_reference_after_one_equals_a_model_that_never_loaded_it(base, adapters, passes, model,
                                                                                  monkeypatch):
    components = copy.deepcopy(base[model])
    req = request(adapters[model])
    never = images(base[model], req, without_reference(passes))
    processors = components.unet.attn_processors
    first = images(components, req, passes)
    np.testing.assert_array_equal(images(components, req, without_reference(passes)), never)
    assert components.unet.encoder_hid_proj is None and components.unet.config.encoder_hid_dim_type is None
    assert all(components.unet.attn_processors[name] is processor for name, processor in processors.items())
    # The next reference job installs it again from memory: no file is read.
    monkeypatch.setattr(reference, "read_weights", lambda path: pytest.fail(f"read {path} again"))
    np.testing.assert_array_equal(images(components, req, passes), first)
    # Strength 0: the adapter's layers add nothing.
    np.testing.assert_array_equal(images(components, request(adapters[model], reference_strength=0.0), passes),
                                  never)


def test_the_adapter_sits_on_cross_attention_beside_the_cross_view_attention(base, adapters, passes):
    components = copy.deepcopy(base["tiny"])
    req = request(adapters["tiny"], attention="extended")
    block = components.unet.down_blocks[0].attentions[0].transformer_blocks[0]
    seen = []
    extended = images(components, req, passes,
                      hooks=[lambda state: seen.append((type(block.attn1.processor), type(block.attn2.processor)))])
    assert seen[0] == (attention.CrossViewAttnProcessor, IPAdapterAttnProcessor2_0)
    assert (type(block.attn1.processor), type(block.attn2.processor)) == (AttnProcessor2_0, IPAdapterAttnProcessor2_0)
    assert np.abs(extended - images(components, req, without_reference(passes))).mean() > 1e-3
    assert np.abs(extended - images(components, request(adapters["tiny"]), passes)).mean() > 1e-3


def test_a_bin_file_loads_as_its_safetensors_twin(base, adapters, passes, tmp_path):
    pickled = write_ip_adapter(tmp_path, base["tiny"], format="bin")  # seed 0, as the fixture's
    results = [images(copy.deepcopy(base["tiny"]), request(path), passes) for path in (adapters["tiny"], pickled)]
    np.testing.assert_array_equal(results[0], results[1])


@pytest.mark.parametrize("model", MODELS)
def test_consistency_methods_run_with_a_lora_and_a_reference_image(base, adapters, passes, tmp_path, model):
    """Surface noise, extended attention and UV sync, few-step LCM, with both adapters."""
    settings = dict(noise="surface", attention="extended", sync_strength=0.8, scheduler="lcm", steps=4)
    components = copy.deepcopy(base[model])
    loras.apply(components, [(write_lora(tmp_path / "style.safetensors", base[model]), 0.8)])
    adapted = sampler.sample(components, request(adapters[model], **settings), passes).images
    plain = sampler.sample(base[model], request(**settings), without_reference(passes)).images
    assert np.isfinite(adapted).all() and adapted.std() > 1e-3
    assert np.abs(adapted - plain).mean() > 1e-3


@pytest.mark.parametrize("model, other", [("tiny", "tiny-sdxl"), ("tiny-sdxl", "tiny")])
def test_an_ip_adapter_for_the_other_family_is_refused_naming_both(base, adapters, passes, model, other):
    components = copy.deepcopy(base[model])
    with pytest.raises(ProtocolError) as error:
        sampler.sample(components, request(adapters[other]), passes, latents=LATENTS)
    message = str(error.value)
    assert error.value.field == "ip_adapter" and str(adapters[other]) in message
    assert f"({FAMILY[other]})" in message and f"({FAMILY[model]})" in message
    assert components.unet.encoder_hid_proj is None  # nothing was installed
    with pytest.raises(ProtocolError, match=rf"\({FAMILY[other]}\).*\({FAMILY[model]}\)"):
        reference.preflight(FAMILY[model], str(adapters[other]))  # from the header alone
    assert reference.preflight(FAMILY[model], str(adapters[model])).weights == adapters[model]


def test_missing_and_unreadable_files_are_named(base, adapters, passes, tmp_path):
    components = copy.deepcopy(base["tiny"])
    lonely = tmp_path / "lonely" / adapters["tiny"].name  # the weights without their image encoder
    lonely.parent.mkdir()
    shutil.copy(adapters["tiny"], lonely)
    garbage = tmp_path / "garbage" / "ip-adapter.safetensors"
    shutil.copytree(adapters["tiny"].parent / "image_encoder", garbage.parent / "image_encoder")
    garbage.write_bytes(b"not a safetensors file")
    notes = tmp_path / "notes.txt"
    notes.write_text("an image of a lamp")
    cases = [(tmp_path / "nowhere.safetensors", "no such file"), (lonely, "its image encoder is missing"),
             (garbage, "not a readable IP-Adapter file"), (notes, "not IP-Adapter weights")]
    for path, expected in cases:
        with pytest.raises(ProtocolError, match=expected) as error:
            reference.unet_conditioning(components, request(path), passes, True)
        assert error.value.field == "ip_adapter" and str(path) in str(error.value)


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """An offline, empty hub cache."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.mark.parametrize("model", MODELS)
def test_the_default_offline_and_missing_names_the_files_and_the_command(base, passes, empty_hub_cache, model):
    components = copy.deepcopy(base[model])
    weights = reference.DEFAULTS[FAMILY[model]]
    encoder = f"{weights.rpartition('/')[0]}/image_encoder"
    with pytest.raises(ModelLoadError) as error:
        sampler.sample(components, request(""), passes, latents=LATENTS)
    message = str(error.value)
    assert message.startswith("ip_adapter:") and str(empty_hub_cache) in message
    assert f"`hf download h94/IP-Adapter {weights} {encoder}/config.json {encoder}/model.safetensors`" in message
    with pytest.raises(ModelLoadError, match="models/ip-adapter-plus_sd15.safetensors"):
        reference.resolve("sd15", "h94/IP-Adapter/models/ip-adapter-plus_sd15.safetensors")


def test_the_default_comes_from_the_hub_cache(base, adapters, passes, empty_hub_cache):
    """The family's default, found in the cache as the hub lays it out, loads offline."""
    snapshot = empty_hub_cache / "models--h94--IP-Adapter" / "snapshots" / ("0" * 40)
    (snapshot / "models").mkdir(parents=True)
    shutil.copy(adapters["tiny"], snapshot / reference.DEFAULTS["sd15"])
    shutil.copytree(adapters["tiny"].parent / "image_encoder", snapshot / "models" / "image_encoder")
    (empty_hub_cache / "models--h94--IP-Adapter" / "refs").mkdir()
    (empty_hub_cache / "models--h94--IP-Adapter" / "refs" / "main").write_text("0" * 40)
    named = images(copy.deepcopy(base["tiny"]), request(adapters["tiny"]), passes)
    np.testing.assert_array_equal(images(copy.deepcopy(base["tiny"]), request(""), passes), named)
    default = reference.resolve("sd15", "")
    assert default.weights == snapshot / reference.DEFAULTS["sd15"]
    assert reference.resolve("sd15", "h94/IP-Adapter") == default  # a hub id: the family's file in it
    assert reference.resolve("sd15", f"h94/IP-Adapter/{reference.DEFAULTS['sd15']}") == default
    assert reference.resolve("sd15", str(adapters["tiny"].parent)).weights == adapters["tiny"]  # a folder
