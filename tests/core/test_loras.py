"""LoRAs through diffusers' loading (zs_core/loras.py) on the tiny SD 1.5 and SDXL models,
from files written in the real formats: equal to diffusers' own ControlNet pipeline with the
same LoRAs, swapped between jobs without reloading, seen by the cross-view attention, and
refused with a clear error when they do not fit."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from adapter_files import diffusers_images, write_lora
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import save_file

from zs_core import attention, families, loras, models, noise, sampler, scene
from zs_core.protocol import ProtocolError, Request

VIEWS, SIZE = 2, 32
MODELS = ("tiny", "tiny-sdxl")


@pytest.fixture(scope="module")
def base():
    """Pristine models, never given a LoRA; tests work on deep copies."""
    return {name: models.load(name, device="cpu") for name in MODELS}


@pytest.fixture(scope="module")
def files(base, tmp_path_factory):
    """Per model: style_a (diffusers format), style_b (kohya format, alpha = rank / 2)."""
    folder = tmp_path_factory.mktemp("loras")
    return {name: dict(a=write_lora(folder / name / "style_a.safetensors", components, seed=0),
                       b=write_lora(folder / name / "style_b.safetensors", components, seed=1, format="kohya"))
            for name, components in base.items()}


@pytest.fixture(scope="module")
def passes():
    return scene.sphere_scene(views=VIEWS, width=SIZE, height=SIZE)


def request(**fields) -> Request:
    settings = dict(prompt="a brass lamp", negative_prompt="blurry", steps=3, seed=5, noise="iid",
                    attention="self", sync_strength=0.0, guidance_scale=5.0)
    return Request(**{**settings, **fields}).validate()


LATENTS = noise.iid(VIEWS, (4, SIZE // 8, SIZE // 8), seed=11)


def images(components, passes, **fields) -> np.ndarray:
    return sampler.sample(components, request(**fields), passes, latents=LATENTS).images


@pytest.mark.parametrize("model, scheduler, names", [
    ("tiny", "ddim", ("a",)), ("tiny", "lcm", ("a", "b")),
    ("tiny-sdxl", "ddim", ("a", "b")), ("tiny-sdxl", "lcm", ("a",)),
])
def test_equals_diffusers_pipeline_with_the_same_loras(base, files, passes, model, scheduler, names):
    entries = [(files[model][name], weight) for name, weight in zip(names, (0.8, 0.6))]
    ours = copy.deepcopy(base[model])
    loras.apply(ours, entries)
    result = images(ours, passes, scheduler=scheduler)
    stock = diffusers_images(copy.deepcopy(base[model]), request(scheduler=scheduler), passes, LATENTS, loras=entries)
    np.testing.assert_allclose(result, stock, atol=5e-5, rtol=0)
    plain = images(base[model], passes, scheduler=scheduler)
    assert np.abs(result - plain).mean() > 1e-3  # the LoRAs do change the images


@pytest.mark.parametrize("model", MODELS)
def test_a_kohya_file_equals_the_diffusers_file_with_the_same_weights(base, passes, tmp_path, model):
    """kohya's names (SDXL: SGM blocks, lora_te1_ / lora_te2_) reach the same layers."""
    kohya = write_lora(tmp_path / "kohya.safetensors", base[model], seed=3, format="kohya", alpha=4)  # scale 1
    ours = write_lora(tmp_path / "diffusers.safetensors", base[model], seed=3)
    results = []
    for path in (kohya, ours):
        components = copy.deepcopy(base[model])
        loras.apply(components, [(path, 1.0)])
        results.append(images(components, passes))
    np.testing.assert_array_equal(results[0], results[1])


def test_weight_zero_and_a_job_without_loras_equal_the_base_model(base, files, passes):
    components = copy.deepcopy(base["tiny"])
    plain = images(components, passes)
    weight = components.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.weight
    loras.apply(components, [(files["tiny"]["a"], 0.0)])
    np.testing.assert_array_equal(images(components, passes), plain)
    loras.apply(components, [(files["tiny"]["a"], 1.0)])
    assert np.abs(images(components, passes) - plain).mean() > 1e-3
    loras.apply(components, [])
    np.testing.assert_array_equal(images(components, passes), plain)
    # PEFT wrapped the layer; the base weight is the same tensor, never reloaded or changed.
    layer = components.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    assert isinstance(layer, BaseTunerLayer) and layer.base_layer.weight is weight


def test_a_swap_equals_a_fresh_load_and_reuses_what_is_loaded(base, files, passes, monkeypatch, tmp_path):
    cls = families.get("sd15").pipeline_class
    calls = []
    original = cls.load_lora_weights
    monkeypatch.setattr(cls, "load_lora_weights", lambda self, *a, **k: calls.append(a[0]) or original(self, *a, **k))
    a, b = files["tiny"]["a"], files["tiny"]["b"]
    components = copy.deepcopy(base["tiny"])
    loras.apply(components, [(a, 0.7)])
    first_a = images(components, passes)
    loras.apply(components, [(b, 0.9)])
    swapped_b = images(components, passes)
    fresh = copy.deepcopy(base["tiny"])
    loras.apply(fresh, [(b, 0.9)])
    np.testing.assert_array_equal(swapped_b, images(fresh, passes))
    loras.apply_request(components, request(loras=f"{a}:0.7"))  # back to A: no file read again
    np.testing.assert_array_equal(images(components, passes), first_a)
    assert calls == [str(a), str(b), str(b)]  # the third: the fresh copy
    # A rewritten file is a new adapter (its size and modification time differ).
    path = write_lora(tmp_path / "style.safetensors", base["tiny"], seed=7)
    before = loras.adapter_name(path)
    assert loras.adapter_name(write_lora(path, base["tiny"], seed=7, rank=2)) != before


def test_least_recently_named_adapters_are_deleted_beyond_the_cap(base, files, monkeypatch, tmp_path):
    monkeypatch.setattr(loras, "MAX_LOADED", 2)
    components = copy.deepcopy(base["tiny"])
    third = write_lora(tmp_path / "style_c.safetensors", base["tiny"], seed=2, text_encoders=False)
    for path in (files["tiny"]["a"], files["tiny"]["b"], third):
        loras.apply(components, [(path, 1.0)])
    kept = {loras.adapter_name(files["tiny"]["b"]), loras.adapter_name(third)}
    assert set(loras.state(components).loaded) == kept
    assert set(components.unet.peft_config) == kept
    assert set(components.text_encoder.peft_config) == {loras.adapter_name(files["tiny"]["b"])}


def test_cross_view_attention_sees_the_lora_projections(base, files, passes):
    """Extended attention with PEFT-wrapped projections == with the LoRA fused into the weights."""
    entries = [(files["tiny"]["a"], 0.7)]
    wrapped = copy.deepcopy(base["tiny"])
    loras.apply(wrapped, entries)
    seen = []

    def look(state):
        attn1 = wrapped.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1
        seen.append((type(attn1.processor), isinstance(attn1.to_q, BaseTunerLayer)))

    extended = sampler.sample(wrapped, request(attention="extended"), passes, latents=LATENTS, hooks=[look]).images
    assert seen[0] == (attention.CrossViewAttnProcessor, True)
    fused = copy.deepcopy(base["tiny"])
    loras.apply(fused, entries)
    pipeline = loras.transient_pipeline(fused)
    pipeline.fuse_lora(components=["unet", "text_encoder"])
    pipeline.unload_lora_weights()  # plain linear layers with the LoRA merged in
    assert not any(isinstance(module, BaseTunerLayer) for module in fused.unet.modules())
    np.testing.assert_allclose(extended, images(fused, passes, attention="extended"), atol=1e-4, rtol=0)
    assert np.abs(extended - images(base["tiny"], passes, attention="extended")).mean() > 1e-3


def test_clear_takes_every_lora_off(base, files, passes):
    components = copy.deepcopy(base["tiny"])
    loras.apply(components, [(files["tiny"]["a"], 1.0), (files["tiny"]["b"], 0.5)])
    loras.clear(components)
    assert not any(isinstance(module, BaseTunerLayer)
                   for part in (components.unet, components.text_encoder) for module in part.modules())
    np.testing.assert_array_equal(images(components, passes), images(base["tiny"], passes))


@pytest.mark.parametrize("model, other", [("tiny", "tiny-sdxl"), ("tiny-sdxl", "tiny")])
def test_a_lora_for_the_other_family_is_refused_naming_both(base, files, tmp_path, model, other):
    families_named = {"tiny": "sd15", "tiny-sdxl": "sdxl"}
    unet_only = write_lora(tmp_path / "unet_only.safetensors", base[other], text_encoders=False)
    components = copy.deepcopy(base[model])
    loras.apply(components, [(files[model]["a"], 1.0)])
    for path in (files[other]["a"], files[other]["b"], unet_only):
        for check, entries in ((loras.apply, [(files[model]["b"], 1.0), (path, 1.0)]),
                               (loras.preflight, [(path, 1.0)])):  # preflight: from the header alone
            with pytest.raises(ProtocolError) as error:
                check(components if check is loras.apply else families_named[model], entries)
            message = str(error.value)
            assert error.value.field == "loras" and str(path) in message
            assert f"({families_named[other]})" in message and f"({families_named[model]})" in message
    loras.preflight(families_named[model], [(files[model]["a"], 1.0), (files[model]["b"], 0.5)])
    # Checked before anything was loaded: the previous job's LoRA alone, still active.
    assert set(components.unet.peft_config) == {loras.adapter_name(files[model]["a"])}
    assert loras.state(components).active == ((loras.adapter_name(files[model]["a"]), 1.0),)


def test_missing_unreadable_and_foreign_files_are_named(base, tmp_path):
    components = copy.deepcopy(base["tiny"])
    empty = tmp_path / "empty"
    empty.mkdir()
    garbage = tmp_path / "broken.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    foreign = tmp_path / "vae.safetensors"
    save_file({"decoder.conv_in.weight": torch.zeros(2, 2)}, str(foreign))
    mismatched = tmp_path / "wide.safetensors"  # right names, wrong widths: not from this model
    save_file({"unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 40),
               "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.zeros(64, 4)},
              str(mismatched))
    cases = [(tmp_path / "nowhere.safetensors", "no such LoRA file"), (garbage, "not a readable LoRA file"),
             (foreign, "does not put LoRAs on"), (mismatched, "takes 64 inputs, the LoRA's 40"),
             (empty, "no weights file")]
    for path, expected in cases:
        with pytest.raises(ProtocolError, match=expected) as error:
            loras.apply(components, [(path, 1.0)])
        assert error.value.field == "loras" and str(path) in str(error.value)
    assert not hasattr(components.unet, "peft_config")
    saved = write_lora(tmp_path / "saved" / loras.DIFFUSERS_WEIGHT_NAME, base["tiny"])  # save_lora_weights' folder
    assert loras.resolve_file(saved.parent) == saved
