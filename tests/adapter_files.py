"""Tiny LoRA and IP-Adapter files for a model, written to disk in the real formats.

Random weights shaped for a :class:`zs_core.models.Components` (the built-in ``tiny`` /
``tiny-sdxl`` or any other), so the real loading code (diffusers' ``load_lora_weights`` /
``load_ip_adapter``, through :mod:`zs_core.loras` and :mod:`zs_core.reference`) reads them
as it reads files downloaded from the hub:

- :func:`write_lora`, ``format="diffusers"``: diffusers' ``save_lora_weights`` output, PEFT
  keys ``unet.<layer>.lora_A.weight`` and ``text_encoder[_2].text_model.<layer>.lora_A.weight``
  (the ``text_model.`` of files made with transformers 4); ``format="kohya"``: the kohya /
  A1111 single file, ``lora_unet_<layer>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``,
  ``lora_te_`` (SD 1.5) or ``lora_te1_`` / ``lora_te2_`` (SDXL), SDXL's UNet in the SGM block
  names (``input_blocks_4_1_…``) kohya's trainer uses.
- :func:`write_ip_adapter`: the h94/IP-Adapter layout, ``ip-adapter_*.safetensors`` (flat
  ``image_proj.proj.weight``, ``ip_adapter.1.to_k_ip.weight`` …) or ``.bin`` (the nested
  ``{"image_proj": …, "ip_adapter": …}`` pickle), with ``image_encoder/`` (a small
  ``CLIPVisionModelWithProjection``) next to it.

:func:`diffusers_images` is the oracle: diffusers' own ControlNet pipeline of the family with
those files loaded by its own loaders.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from zs_core import families
from zs_core.models import Components

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # every attention layer's projections
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
IMAGE_ENCODER_WIDTH = 32  # the tiny image encoder's projection width (real ones: 1024, 1280)


def lora_targets(components: Components, text_encoders: bool = True) -> dict[str, list[tuple[str, int, int]]]:
    """``{part: [(layer, inputs, outputs), ...]}``: the linear layers a typical LoRA changes."""
    targets = {"unet": [(name, module.in_features, module.out_features)
                        for name, module in components.unet.named_modules()
                        if ".attn" in name and name.endswith(tuple("." + target for target in UNET_TARGETS))
                        and isinstance(module, torch.nn.Linear)]}
    if text_encoders:
        for part in ("text_encoder", "text_encoder_2"):
            encoder = getattr(components, part)
            if encoder is not None:
                targets[part] = [(name, module.in_features, module.out_features)
                                 for name, module in encoder.named_modules()
                                 if name.rsplit(".", 1)[-1] in TEXT_TARGETS and isinstance(module, torch.nn.Linear)]
    return targets


def write_lora(path: str | Path, components: Components, rank: int = 4, seed: int = 0, format: str = "diffusers",
               text_encoders: bool = True, strength: float = 0.5, alpha: float | None = None) -> Path:
    """A random LoRA for ``components`` at ``path`` (a ``.safetensors`` file); returns it.

    Each targeted layer gets ``lora_A (rank, inputs)`` ~ N(0, 1/inputs) and ``lora_B
    (outputs, rank)`` ~ N(0, strength^2/rank), so it changes the layer's output by about
    ``strength`` times its input's size. ``alpha`` (kohya only; default rank / 2) scales it
    by alpha / rank as kohya's trainer does. ``text_encoders=False``: UNet layers only.
    """
    if format not in ("diffusers", "kohya"):
        raise ValueError(f"format: expected 'diffusers' or 'kohya', got {format!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    weights: dict[str, dict[str, torch.Tensor]] = {}
    for part, layers in lora_targets(components, text_encoders).items():
        weights[part] = {}
        for layer, inputs, outputs in layers:
            down = torch.randn(rank, inputs, generator=generator) / inputs ** 0.5
            up = torch.randn(outputs, rank, generator=generator) * strength / rank ** 0.5
            weights[part][layer] = (down.contiguous(), up.contiguous())
    if format == "diffusers":
        return _save_diffusers(path, components, weights)
    return _save_kohya(path, components, weights, rank, rank / 2 if alpha is None else alpha)


def _save_diffusers(path: Path, components: Components, weights: dict) -> Path:
    """Through diffusers' own writer (the family's ``save_lora_weights``)."""
    layers = {}
    for part, pairs in weights.items():
        layers[f"{part}_lora_layers"] = {
            f"{_as_in_files(components, part, layer)}.{name}.weight": tensor
            for layer, (down, up) in pairs.items() for name, tensor in (("lora_A", down), ("lora_B", up))}
    families.get(components.family).pipeline_class.save_lora_weights(
        save_directory=str(path.parent), weight_name=path.name, safe_serialization=True, **layers)
    return path


def _save_kohya(path: Path, components: Components, weights: dict, rank: int, alpha: float) -> Path:
    sdxl = components.family == "sdxl"
    prefixes = {"unet": "lora_unet_", "text_encoder": "lora_te1_" if sdxl else "lora_te_",
                "text_encoder_2": "lora_te2_"}
    tensors = {}
    for part, pairs in weights.items():
        for layer, (down, up) in pairs.items():
            if part == "unet":
                name = _sgm_layer(layer, components.unet.config.layers_per_block) if sdxl else layer
            else:
                name = _as_in_files(components, part, layer)
            key = prefixes[part] + name.replace(".", "_")
            tensors[f"{key}.lora_down.weight"] = down
            tensors[f"{key}.lora_up.weight"] = up
            tensors[f"{key}.alpha"] = torch.tensor(float(alpha))
    save_file(tensors, str(path), metadata={"ss_network_module": "networks.lora", "ss_network_dim": str(rank),
                                            "ss_network_alpha": str(alpha)})
    return path


def _as_in_files(components: Components, part: str, layer: str) -> str:
    """A layer's name as LoRA files spell it: text encoder layers under ``text_model.``
    (transformers 4's CLIPTextModel; version 5 flattened it, its CLIPTextModelWithProjection
    did not)."""
    if part == "unet" or hasattr(getattr(components, part), "text_model"):
        return layer
    return f"text_model.{layer}"


def _sgm_layer(layer: str, layers_per_block: int) -> str:
    """A diffusers UNet attention layer's name in the SGM (original SDXL) block layout kohya
    writes: ``down_blocks.1.attentions.0.…`` -> ``input_blocks.4.1.…`` for 2 layers per block."""
    parts = layer.split(".")
    if parts[0] == "mid_block":
        return ".".join(["middle_block", "1"] + parts[3:])
    block, index = int(parts[1]), int(parts[3])
    if parts[0] == "down_blocks":
        return ".".join(["input_blocks", str(1 + block * (layers_per_block + 1) + index), "1"] + parts[4:])
    return ".".join(["output_blocks", str(block * (layers_per_block + 1) + index), "1"] + parts[4:])


def write_ip_adapter(folder: str | Path, components: Components, seed: int = 0, format: str = "safetensors",
                     image_size: int = 32, strength: float = 1.0) -> Path:
    """A random IP-Adapter for ``components`` in ``folder``: ``ip-adapter_<family>-tiny.safetensors``
    (or ``.bin``) and ``image_encoder/`` beside it; returns the weights file.

    image_proj: ``proj`` ``(4 * text width, 32)`` and a LayerNorm (4 image tokens, the plain
    IP-Adapter); ip_adapter: ``to_k_ip`` / ``to_v_ip`` ``(layer width, text width)`` for each
    cross-attention layer, numbered 1, 3, 5, ... in the UNet's processor order, as h94's
    files are. ``strength`` scales the key / value weights.
    """
    if format not in ("safetensors", "bin"):
        raise ValueError(f"format: expected 'safetensors' or 'bin', got {format!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            image_size=image_size, patch_size=8, projection_dim=IMAGE_ENCODER_WIDTH))
    finally:
        torch.random.set_rng_state(state)
    encoder.save_pretrained(folder / "image_encoder", safe_serialization=True)

    unet = components.unet
    width = unet.config.cross_attention_dim
    image_proj = {
        "proj.weight": torch.randn(4 * width, IMAGE_ENCODER_WIDTH, generator=generator) / IMAGE_ENCODER_WIDTH ** 0.5,
        "proj.bias": torch.randn(4 * width, generator=generator) * 0.1,
        "norm.weight": 1 + 0.1 * torch.randn(width, generator=generator),
        "norm.bias": 0.1 * torch.randn(width, generator=generator),
    }
    ip_adapter = {}
    key_id = 1
    for name in unet.attn_processors:  # the order diffusers' loader numbers them in
        if name.endswith("attn1.processor"):
            continue
        hidden = _layer_width(unet.config.block_out_channels, name)
        for which in ("to_k_ip", "to_v_ip"):
            ip_adapter[f"{key_id}.{which}.weight"] = (
                torch.randn(hidden, width, generator=generator) * strength / width ** 0.5)
        key_id += 2
    path = folder / f"ip-adapter_{components.family}-tiny.{format}"
    if format == "safetensors":
        flat = {f"image_proj.{k}": v for k, v in image_proj.items()}
        flat.update({f"ip_adapter.{k}": v for k, v in ip_adapter.items()})
        save_file({k: v.contiguous() for k, v in flat.items()}, str(path))
    else:
        torch.save({"image_proj": image_proj, "ip_adapter": ip_adapter}, path)
    return path


def _layer_width(block_out_channels, processor: str) -> int:
    """A UNet attention layer's width from its name, as diffusers' IP-Adapter loader reckons it."""
    if processor.startswith("mid_block"):
        return block_out_channels[-1]
    block = int(processor.split(".")[1])
    return (list(reversed(block_out_channels)) if processor.startswith("up_blocks") else block_out_channels)[block]


# ---------------------------------------------------------------------------------- the oracle


def diffusers_images(components: Components, request, passes, latents: torch.Tensor, *,
                     loras: Sequence[tuple[str | Path, float]] = (), ip_adapter: str | Path | None = None):
    """What diffusers' own ControlNet pipeline of the family makes for ``request`` /
    ``passes`` from the starting ``latents`` ``(V, 4, H/8, W/8)``, with ``loras`` loaded by its
    ``load_lora_weights`` / ``set_adapters`` and, given ``ip_adapter`` (a weights file with
    ``image_encoder/`` beside it), ``passes.reference_image`` through its ``load_ip_adapter`` /
    ``set_ip_adapter_scale``. Changes ``components``' modules: give it a copy. Stochastic
    schedulers draw their step noise as the sampler does (the job's noise model at the
    step's seed). -> images ``(V, H, W, 3)`` float32 in [0, 1]."""
    import dataclasses

    import numpy as np
    from PIL import Image

    from zs_core import sampler, step_noise
    from zs_core.loras import quiet_loading

    family = families.get(components.family)
    scheduler = sampler.make_scheduler(components, request.scheduler)
    offered = dict(vae=components.vae, text_encoder=components.text_encoder, tokenizer=components.tokenizer,
                   text_encoder_2=components.text_encoder_2, tokenizer_2=components.tokenizer_2,
                   unet=components.unet, controlnet=components.controlnet, scheduler=scheduler,
                   safety_checker=None, feature_extractor=None, requires_safety_checker=False, add_watermarker=False)
    accepted = inspect.signature(family.controlnet_pipeline_class.__init__).parameters
    pipeline = family.controlnet_pipeline_class(**{k: v for k, v in offered.items() if k in accepted})
    pipeline.set_progress_bar_config(disable=True)
    names = [f"lora{index}" for index in range(len(loras))]
    for name, (path, _) in zip(names, loras):
        with quiet_loading():  # PEFT's "multiple adapters" warning
            pipeline.load_lora_weights(str(path), adapter_name=name)
    if loras:
        pipeline.set_adapters(names, [float(weight) for _, weight in loras])
    extra = {}
    if ip_adapter is not None:
        ip_adapter = Path(ip_adapter)
        pipeline.load_ip_adapter(str(ip_adapter.parent), subfolder="", weight_name=ip_adapter.name)
        pipeline.set_ip_adapter_scale(request.reference_strength)
        extra["ip_adapter_image"] = Image.fromarray((passes.reference_image * 255).round().astype(np.uint8))

    def supply():  # the sampler's step noise: the job's noise model at the step's seed
        seeded = dataclasses.replace(request, seed=step_noise.step_seed(request.seed, scheduler.step_index))
        return sampler.initial_noise(seeded, passes, latents.shape[1], components.vae_scale_factor)

    views = passes.views
    with step_noise.drawn_from(scheduler, supply):
        return pipeline(
            prompt=[request.prompt] * views, negative_prompt=[request.negative_prompt] * views,
            image=sampler.control_images(passes.depth), height=passes.height, width=passes.width,
            num_inference_steps=request.steps, guidance_scale=request.guidance_scale,
            controlnet_conditioning_scale=request.controlnet_scale, control_guidance_start=request.control_start,
            control_guidance_end=request.control_end, latents=latents.clone(), output_type="np",
            eta=0.3 if request.scheduler == "tcd" else 0.0, **extra,
        ).images
