"""Memory options (zs_core/memory.py): the plan's figures against the real architectures
(built from their published configs on the meta device: no weights, no memory), the
choices it makes and the README's table, then on the tiny model: model CPU offload gives
the views plain sampling gives, VAE slicing and tiling decode, and attention with its
queries in chunks equals one call."""

from __future__ import annotations

import dataclasses
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from zs_core import memory, models, sampler, scene
from zs_core.protocol import Request

ROOT = Path(__file__).resolve().parents[2]
GiB = memory.GiB

# The published configs (stable-diffusion-v1-5's UNet is diffusers' default but for these;
# SDXL base's; the SD VAE's).
SD15_UNET = dict(cross_attention_dim=768, attention_head_dim=8, sample_size=64)
SDXL_UNET = dict(addition_embed_type="text_time", addition_embed_type_num_heads=64, addition_time_embed_dim=256,
                 attention_head_dim=[5, 10, 20], block_out_channels=[320, 640, 1280], cross_attention_dim=2048,
                 down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                 layers_per_block=2, projection_class_embeddings_input_dim=2816, sample_size=128,
                 transformer_layers_per_block=[1, 2, 10], up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                                                          "UpBlock2D"], use_linear_projection=True)
SD_VAE = dict(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
              up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4, layers_per_block=2, sample_size=512)
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, vocab_size=49408)
CLIP_BIG_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                  max_position_embeddings=77, vocab_size=49408, projection_dim=1280, hidden_act="gelu")
VIT_H = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16, image_size=224,
             patch_size=14, projection_dim=1024, hidden_act="gelu")
VIT_BIG_G = dict(hidden_size=1664, intermediate_size=8192, num_hidden_layers=48, num_attention_heads=16,
                 image_size=224, patch_size=14, projection_dim=1280, hidden_act="gelu")
IMAGE_EMBED_WIDTH = {"sd15": 1024, "sdxl": 1280}  # what the IP-Adapter's image projection reads


def count(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


@pytest.fixture(scope="module")
def real():
    """The real architectures on the meta device: family -> (unet, controlnet)."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    with torch.device("meta"):
        built = {}
        for family, config in (("sd15", SD15_UNET), ("sdxl", SDXL_UNET)):
            unet = UNet2DConditionModel(**config)
            built[family] = (unet, ControlNetModel.from_unet(unet))
    return built


def ip_adapter_parameters(unet, embed_width: int) -> int:
    """The plain IP-Adapter: a projection to 4 image tokens (+ LayerNorm) and a key and value
    projection from the text width to each cross-attention layer's width."""
    width = unet.config.cross_attention_dim
    total = embed_width * 4 * width + 4 * width + 2 * width
    return total + sum(2 * width * module.to_k.out_features for name, module in unet.named_modules()
                       if name.endswith("attn2"))


def test_parameter_counts_are_the_real_architectures(real):
    from diffusers import AutoencoderKL
    from transformers import (CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPVisionConfig,
                              CLIPVisionModelWithProjection)

    with torch.device("meta"):
        vae = count(AutoencoderKL(**SD_VAE))
        clip_l = count(CLIPTextModel(CLIPTextConfig(**CLIP_L)))
        clip_big_g = count(CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIG_G)))
        vit_h = count(CLIPVisionModelWithProjection(CLIPVisionConfig(**VIT_H)))
        vit_big_g = count(CLIPVisionModelWithProjection(CLIPVisionConfig(**VIT_BIG_G)))
    for family, (unet, controlnet) in real.items():
        expected = dict(unet=count(unet), controlnet=count(controlnet), vae=vae, text_encoder=clip_l)
        if family == "sdxl":
            expected["text_encoder_2"] = clip_big_g
        assert memory.PARAMETERS[family] == expected
        assert memory.IP_ADAPTER_PARAMETERS[family] == ip_adapter_parameters(unet, IMAGE_EMBED_WIDTH[family])
    assert memory.IMAGE_ENCODER_PARAMETERS == {"sd15": vit_h, "sdxl": vit_big_g}


class PeakBytes(TorchDispatchMode):
    """Bytes of the tensors every op makes, alive at once, at their peak (a storage counts
    until it is freed)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.seen: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in torch.utils._pytree.tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self._add(tensor.untyped_storage())
        return out

    def _add(self, storage) -> None:
        key, size = storage._cdata, storage.nbytes()
        if key in self.seen:
            return
        self.seen.add(key)
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key, size)

    def _free(self, key: int, size: int) -> None:
        self.live -= size
        self.seen.discard(key)


def fused_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
    """What a fused SDPA kernel (flash / memory-efficient) holds: its output, not the scores."""
    return torch.empty_like(query)


@pytest.mark.slow
def test_activation_figures_are_a_trace_of_the_real_architectures(real, monkeypatch):
    """ControlNet + UNet of each family, and the VAE's decode, traced in fp16 on the meta
    device at a small size: the per-pixel figures of memory.py within 1%."""
    from diffusers import AutoencoderKL

    monkeypatch.setattr(F, "scaled_dot_product_attention", fused_attention)
    samples, latent = 2, 32  # 256 x 256 views: the figures are linear in both
    for family, (unet, controlnet) in real.items():
        unet.to(torch.float16), controlnet.to(torch.float16)
        with torch.device("meta"):
            x = torch.randn(samples, 4, latent, latent, dtype=torch.float16)
            text = torch.randn(samples, 77, unet.config.cross_attention_dim, dtype=torch.float16)
            control = torch.randn(samples, 3, latent * 8, latent * 8, dtype=torch.float16)
            added = {} if family == "sd15" else {"added_cond_kwargs": {
                "text_embeds": torch.randn(samples, 1280, dtype=torch.float16),
                "time_ids": torch.randn(samples, 6, dtype=torch.float16)}}
        tracker = PeakBytes()
        with torch.inference_mode(), tracker:
            down, mid = controlnet(x, 500, encoder_hidden_states=text, controlnet_cond=control, return_dict=False,
                                   **added)
            unet(x, 500, encoder_hidden_states=text, down_block_additional_residuals=down,
                 mid_block_additional_residual=mid, return_dict=False, **added)
        per_pixel = tracker.peak / (samples * latent * latent)
        assert per_pixel == pytest.approx(memory.ACTIVATION_BYTES[family], rel=0.01), family
    with torch.device("meta"):
        vae = AutoencoderKL(**SD_VAE).to(torch.float16)
        z = torch.randn(1, 4, 16, 16, dtype=torch.float16)
    tracker = PeakBytes()
    with torch.inference_mode(), tracker:
        vae.decode(z)
    assert tracker.peak / (128 * 128) == pytest.approx(memory.VAE_DECODE_BYTES, rel=0.01)


def test_the_plan_adds_up_weights_and_activations():
    weights = memory.weight_bytes("sd15", "fp16")
    assert weights["denoise"] == (859_520_964 + 361_279_120) * 2
    assert memory.weight_bytes("sdxl", "fp32")["encode"] == (123_060_480 + 694_659_840) * 4
    with_reference = memory.weight_bytes("sdxl", "fp16", reference=True)
    assert with_reference["encode"] - memory.weight_bytes("sdxl")["encode"] == 1_844_907_264 * 2
    # 8 views of 512^2: 16 samples (the guidance halves) of 64^2 latent pixels.
    assert memory.denoise_activation_bytes("sd15", 8, 512) == 21_241 * 16 * 64 * 64
    assert memory.decode_activation_bytes(8, 512) == 1_536 * 4 * 512 * 512  # the sampler decodes 4 at a time
    assert memory.decode_activation_bytes(8, 512, slicing=True) == 1_536 * 512 * 512
    chosen = memory.plan(24 * GiB, "sd15", 8, 512)
    resident = sum(weights.values())
    assert chosen.stages["denoise"] == resident + memory.denoise_activation_bytes("sd15", 8, 512)
    assert chosen.peak_bytes == max(chosen.stages.values()) and chosen.fits
    assert chosen.usable_bytes == int(24 * GiB * memory.USABLE_SHARE) - memory.RESERVED_BYTES


def memory_for(usable: int) -> int:
    """The device memory whose usable part is ``usable``."""
    return int((usable + memory.RESERVED_BYTES) / memory.USABLE_SHARE) + 1


def test_the_plan_takes_the_cheapest_options_that_fit():
    family, views, size = "sdxl", 8, 1024
    plain = memory.plan(1000 * GiB, family, views, size)
    assert (plain.offload, plain.vae_slicing, plain.vae_tiling, plain.dtype) == (False, False, False, "fp16")
    # Room for the denoising stage with every weight on the device, not for decoding four
    # views at once: VAE slicing.
    assert plain.stages["decode"] > plain.stages["denoise"]
    just_slicing = memory.plan(memory_for(plain.stages["denoise"]), family, views, size)
    assert just_slicing.vae_slicing and not just_slicing.vae_tiling and not just_slicing.offload
    assert just_slicing.fits and just_slicing.peak_bytes == plain.stages["denoise"]
    offloaded = memory.plan(memory_for(just_slicing.peak_bytes - GiB), family, views, size)
    assert offloaded.offload and offloaded.fits and offloaded.peak_bytes <= just_slicing.peak_bytes - GiB
    too_small = memory.plan(4 * GiB, family, views, size)
    assert not too_small.fits and too_small.offload and too_small.vae_tiling and "NOT fit" in too_small.describe()
    # More memory never makes the plan worse; overrides win.
    previous = None
    for gib in range(4, 40, 2):
        chosen = memory.plan(gib * GiB, family, views, size)
        options = (chosen.offload, chosen.vae_tiling, chosen.vae_slicing)
        assert previous is None or options <= previous
        previous = options
    forced = memory.plan(80 * GiB, family, views, size, offload=True, vae_tiling=True)
    assert forced.offload and forced.vae_tiling and forced.vae_slicing
    assert not memory.plan(2 * GiB, family, views, size, offload=False).offload


def test_devices_without_a_plan_and_with_materialised_scores():
    cpu = memory.plan(None, "sd15", 8, 512, device="cpu")
    assert (cpu.dtype, cpu.offload, cpu.vae_slicing, cpu.vae_tiling, cpu.fits) == ("fp32", False, False, False, True)
    assert cpu.attention_score_bytes is None and cpu.usable_bytes is None
    assert memory.plan(24 * GiB, "sd15", 8, 512).attention_score_bytes is None  # CUDA: fused kernels
    mps = memory.plan(32 * GiB, "sdxl", 8, 1024, device="mps")
    # Extended attention's whole scores there: 2 groups x 10 heads x (8 views x 64^2 tokens)^2 x 2
    # bytes (SDXL's first attention is at half the 128^2 latent): 40 GiB.
    assert memory.extended_score_bytes("sdxl", 8, 1024) == 2 * 10 * (8 * 64 * 64) ** 2 * 2 == 40 * GiB
    assert mps.attention_score_bytes == memory.SCORE_BUDGET < memory.extended_score_bytes("sdxl", 8, 1024)
    with pytest.raises(ValueError, match="family"):
        memory.plan(8 * GiB, "flux", 8, 1024)


def test_the_readme_shows_the_plans_table():
    table = memory.markdown_table()
    assert table in (ROOT / "README.md").read_text()
    assert "| SDXL, 8 x 1024^2 |" in table and "8 GiB GPU" in table


# ------------------------------------------------------------------ on the tiny model


@pytest.fixture
def small_job():
    passes = scene.sphere_scene(views=2, width=64, height=64, texture_size=64)
    return Request(prompt="old copper", steps=1, seed=3, attention="extended", noise="surface").validate(), passes


def test_offload_gives_the_views_plain_sampling_gives(small_job):
    request, passes = small_job
    components = models.load("tiny", device="cpu")
    plain = sampler.sample(components, request, passes)
    memory.apply(components, memory.MemoryPlan(offload=True))
    assert all(type(module._hf_hook).__name__ == "_StageHook" for module in components.modules().values())
    offloaded = sampler.sample(components, request, passes)
    np.testing.assert_array_equal(offloaded.images, plain.images)
    # Text encoding, the denoising loop, decoding: each stage moved to the device once.
    assert memory.offload_log(components) == ["encode", "denoise", "decode"]
    memory.apply(components, memory.MemoryPlan())
    assert not any(hasattr(module, "_hf_hook") for module in components.modules().values())
    np.testing.assert_array_equal(sampler.sample(components, request, passes).images, plain.images)


def test_offload_with_a_lora_and_a_reference_image(small_job, tmp_path):
    """diffusers' LoRA and IP-Adapter loaders on offloaded modules: they leave these hooks
    alone, and the image encoder they add joins the encode stage."""
    import adapter_files

    request, passes = small_job
    components = models.load("tiny", device="cpu")
    lora = adapter_files.write_lora(tmp_path / "style.safetensors", components)
    adapter = adapter_files.write_ip_adapter(tmp_path / "ip", components)
    request = dataclasses.replace(request, loras=f"{lora}:0.7", ip_adapter=str(adapter)).validate()
    passes.reference_image = np.random.default_rng(0).random((40, 48, 3)).astype(np.float32)
    from zs_core import loras

    loras.apply_request(components, request)
    plain = sampler.sample(components, request, passes)
    memory.apply(components, memory.MemoryPlan(offload=True))
    loras.apply_request(components, request)
    offloaded = sampler.sample(components, request, passes)
    np.testing.assert_allclose(offloaded.images, plain.images, atol=1e-6)
    assert type(components.image_encoder._hf_hook).__name__ == "_StageHook"


def test_vae_slicing_and_tiling_decode():
    components = models.load("tiny", device="cpu")
    generator = torch.Generator().manual_seed(0)
    # Smooth latents (a 3 x 3 field, upsampled) of two 128 x 128 views.
    latents = F.interpolate(torch.randn(2, 4, 3, 3, generator=generator), size=(16, 16), mode="bicubic",
                            align_corners=True) * components.vae.config.scaling_factor
    whole = sampler.decode(components, latents)
    memory.apply(components, memory.MemoryPlan(vae_slicing=True))
    sliced = sampler.decode(components, latents)
    np.testing.assert_allclose(sliced, whole, atol=1e-4)  # batched convolutions round differently
    tiles = []
    handle = components.vae.decoder.register_forward_pre_hook(lambda module, inputs: tiles.append(inputs[0].shape))
    try:
        memory.apply(components, memory.MemoryPlan(vae_slicing=True, vae_tiling=True, vae_tile=64))
        tiled = sampler.decode(components, latents)
        memory.apply(components, memory.MemoryPlan(vae_slicing=True, vae_tiling=True, vae_tile=128))
        one_tile = sampler.decode(components, latents)
    finally:
        handle.remove()
    # 64 px tiles with diffusers' 1/4 overlap: 3 x 3 tiles of at most 8 x 8 latents per view;
    # 128 px tiles: each view whole.
    assert len(tiles) == 2 * 9 + 2 and tiled.shape == whole.shape
    assert all(shape[0] == 1 and max(shape[2:]) <= 8 for shape in tiles[:18])
    assert tiles[18:] == [torch.Size([1, 4, 16, 16])] * 2
    # Each tile is normalised on its own (GroupNorm), so a random VAE's pixels move; the
    # colour of each view stays.
    np.testing.assert_allclose(tiled.mean(axis=(1, 2)), whole.mean(axis=(1, 2)), atol=0.02)
    np.testing.assert_allclose(one_tile, sliced, atol=1e-6)  # a view within one tile is not tiled


def test_plan_for_loaded_components_counts_their_parameters():
    components = models.load("tiny", device="cpu")
    chosen = memory.plan_for(components, views=4, view_size=64)
    total = sum(count(module) for module in components.modules().values())
    assert chosen.dtype == "fp32" and chosen.usable_bytes is None and not chosen.offload
    assert sum(memory.weight_bytes("sd15", "fp32", parameters={
        name: count(module) for name, module in components.modules().items()}).values()) == total * 4


# ------------------------------------------------------------------ bounded attention


@pytest.mark.parametrize("bias_shape", [None, (2, 1, 50, 70), (2, 3, 1, 70)])
def test_chunked_attention_equals_one_call(bias_shape):
    generator = torch.Generator().manual_seed(1)
    query = torch.randn(2, 3, 50, 8, generator=generator)
    key, value = torch.randn(2, 2, 3, 70, 8, generator=generator)
    bias = None if bias_shape is None else torch.randn(*bias_shape, generator=generator)
    budget = 2 * 2 * 3 * 70 * 4 * 7  # scores and softmax of 7 queries at a time
    assert memory.query_chunk(2, 3, 70, 4, budget) == 7
    whole = F.scaled_dot_product_attention(query, key, value, attn_mask=bias)
    chunked = memory.chunked_sdpa(query, key, value, bias, score_bytes=budget)
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(memory.chunked_sdpa(query, key, value, bias), whole)


def test_extended_attention_keys_in_chunks():
    """Extended attention's grouped call (G, h, V*N, d) with the queries in chunks: each view's
    tokens still attend to every view's keys of its group."""
    from zs_core import attention

    generator = torch.Generator().manual_seed(2)
    groups, views, heads, tokens, dim = 2, 3, 2, 16, 8
    query, key, value = torch.randn(3, groups * views, heads, tokens, dim, generator=generator)
    whole = attention.extended_attention(query, key, value, groups, views)

    def as_group(tensor):
        grouped = tensor.reshape(groups, views, heads, tokens, dim).transpose(1, 2)
        return grouped.reshape(groups, heads, views * tokens, dim)

    out = memory.chunked_sdpa(as_group(query), as_group(key), as_group(value), score_bytes=2 * groups * heads * 48 * 4 * 5)
    out = out.reshape(groups, heads, views, tokens, dim).transpose(1, 2).reshape(groups * views, heads, tokens, dim)
    torch.testing.assert_close(out, whole, atol=1e-6, rtol=1e-5)
