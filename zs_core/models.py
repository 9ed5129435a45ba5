"""(T) Load a Stable-Diffusion-1.5-family model and a depth ControlNet.

``load(model, controlnet, device)`` accepts, for each of the two:
- ``"tiny"``: the built-in model (:mod:`zs_core.tiny`), nothing downloaded;
- a local diffusers folder (``model_index.json`` for a pipeline, ``config.json`` for a
  ControlNet), e.g. one written by :func:`save`;
- a hub id (``owner/name``) resolved through the diffusers cache; offline, a clear error
  lists the files that are missing and how to provide them;
- a single ``.safetensors`` / ``.ckpt`` checkpoint, through diffusers' ``from_single_file``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DDIMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextModel, CLIPTokenizer

from . import tiny

DEFAULT_DEPTH_CONTROLNET = "lllyasviel/control_v11f1p_sd15_depth"
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
# What a diffusers SD pipeline folder must hold for us (weights in any supported format).
PIPELINE_FILES = (
    "model_index.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "scheduler/scheduler_config.json",
)
CONTROLNET_FILES = ("config.json", "diffusion_pytorch_model.safetensors")


class ModelLoadError(RuntimeError):
    """A model could not be found or loaded; the message says what to do."""


@dataclass
class Components:
    """Everything the sampler needs, on one device and dtype."""

    unet: UNet2DConditionModel
    controlnet: ControlNetModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDIMScheduler
    device: torch.device
    dtype: torch.dtype
    name: str = "tiny"
    controlnet_name: str = "tiny"
    extras: dict = field(default_factory=dict)
    family: str = "sd15"  # the model family (sd15, sdxl): how prompts are encoded, which adapters fit
    # SDXL's second text encoder and tokenizer (None for SD 1.5).
    text_encoder_2: torch.nn.Module | None = None
    tokenizer_2: object | None = None
    # The reference image's encoder, present once an IP-Adapter is loaded (zs_core/reference.py).
    image_encoder: torch.nn.Module | None = None
    feature_extractor: object | None = None

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def modules(self) -> dict[str, torch.nn.Module]:
        found = dict(unet=self.unet, controlnet=self.controlnet, vae=self.vae, text_encoder=self.text_encoder,
                     text_encoder_2=self.text_encoder_2, image_encoder=self.image_encoder)
        return {name: module for name, module in found.items() if module is not None}


def choose_device(device: str = "auto", dtype: str | None = None) -> tuple[torch.device, torch.dtype]:
    """The one place that picks device and precision.

    ``auto``: CUDA (fp16) if present, else Apple MPS (fp16), else CPU (fp32). ``dtype``
    overrides: ``"fp32"``, ``"fp16"``, ``"bf16"`` (bf16 is the CPU's only reduced precision).
    """
    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    if device not in ("cuda", "mps", "cpu") and not device.startswith("cuda:"):
        raise ValueError(f"device: unknown device {device!r}; expected auto, cuda, cuda:N, mps or cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device: CUDA was asked for but torch sees no CUDA device")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device: MPS was asked for but is not available")
    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if dtype is None:
        chosen = torch.float32 if device == "cpu" else torch.float16
    elif dtype in dtypes:
        chosen = dtypes[dtype]
    else:
        raise ValueError(f"dtype: unknown dtype {dtype!r}; expected one of {', '.join(dtypes)}")
    if device == "cpu" and chosen == torch.float16:
        raise ValueError("dtype: fp16 is not supported on the CPU; use fp32 or bf16")
    return torch.device(device), chosen


def load(model: str = "tiny", controlnet: str | None = None, device: str = "auto",
         dtype: str | None = None) -> Components:
    """Load the image model and its depth ControlNet, ready for :func:`zs_core.sampler.sample`.

    ``controlnet=None`` means the tiny ControlNet for the tiny model and
    :data:`DEFAULT_DEPTH_CONTROLNET` otherwise.
    """
    torch_device, torch_dtype = choose_device(device, dtype)
    if model == "tiny":
        parts = tiny.build()
        base = {k: parts[k] for k in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")}
        tiny_controlnet = parts["controlnet"]
    else:
        base = _load_pipeline_parts(model)
        tiny_controlnet = None
    if controlnet is None:
        controlnet = "tiny" if model == "tiny" else DEFAULT_DEPTH_CONTROLNET
    if controlnet == "tiny":
        control = tiny_controlnet if tiny_controlnet is not None else tiny.build_controlnet(base["unet"])
    else:
        control = _load_controlnet(controlnet)
    return _assemble(base, control, torch_device, torch_dtype, str(model), str(controlnet))


def load_tiny(unet_overrides: dict | None = None, device: str = "auto") -> Components:
    """The tiny model with a changed UNet config (benchmarks use a mid-size UNet)."""
    torch_device, torch_dtype = choose_device(device)
    parts = tiny.build(unet_overrides)
    control = parts.pop("controlnet")
    return _assemble(parts, control, torch_device, torch_dtype, "tiny", "tiny")


def _assemble(base: dict, control: ControlNetModel, device: torch.device, dtype: torch.dtype,
              name: str, controlnet_name: str) -> Components:
    components = Components(controlnet=control, device=device, dtype=dtype, name=name,
                            controlnet_name=controlnet_name, **base)
    for module in components.modules().values():
        module.to(device=device)
        if next(module.parameters()).dtype != dtype:
            module.to(dtype=dtype)
        module.eval()
        module.requires_grad_(False)
    return components


def save(components: Components, directory: str | os.PathLike) -> Path:
    """Write the model as a diffusers pipeline folder and the ControlNet as ``controlnet/``.

    ``load(directory, directory + "/controlnet")`` reads it back.
    """
    directory = Path(directory)
    pipeline = StableDiffusionPipeline(
        vae=components.vae, text_encoder=components.text_encoder, tokenizer=components.tokenizer,
        unet=components.unet, scheduler=components.scheduler, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    pipeline.save_pretrained(directory, safe_serialization=True)
    components.controlnet.save_pretrained(directory / "controlnet", safe_serialization=True)
    return directory


def _is_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not os.path.exists(name)


def _load_pipeline_parts(model: str) -> dict:
    path = Path(model).expanduser()
    if path.is_file() and path.suffix in SINGLE_FILE_SUFFIXES:
        return _pipeline_parts_from_single_file(path)
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(
                f"model: {path} is a folder but not a diffusers pipeline (no model_index.json). "
                "Point at the folder that contains model_index.json, unet/, vae/, text_encoder/, "
                "tokenizer/ and scheduler/, or at a single .safetensors checkpoint."
            )
        return _pipeline_parts_from_folder(str(path), local_files_only=True)
    if _is_hub_id(model):
        try:
            return _pipeline_parts_from_folder(model, local_files_only=_offline())
        except (OSError, ValueError) as exc:
            raise _missing_files_error("model", model, PIPELINE_FILES, exc) from None
    raise ModelLoadError(
        f"model: {model!r} is neither 'tiny', an existing diffusers folder, a "
        f"{'/'.join(SINGLE_FILE_SUFFIXES)} file, nor a hub id of the form owner/name"
    )


def _pipeline_parts_from_folder(source: str, local_files_only: bool) -> dict:
    common = dict(local_files_only=local_files_only)
    return dict(
        unet=UNet2DConditionModel.from_pretrained(source, subfolder="unet", **common),
        vae=AutoencoderKL.from_pretrained(source, subfolder="vae", **common),
        text_encoder=CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **common),
        tokenizer=CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **common),
        # DDIM is the default sampler; the request may swap in another scheduler class.
        scheduler=DDIMScheduler.from_pretrained(source, subfolder="scheduler", **common),
    )


def _pipeline_parts_from_single_file(path: Path) -> dict:
    try:
        pipeline = StableDiffusionPipeline.from_single_file(
            str(path), local_files_only=_offline(), safety_checker=None, requires_safety_checker=False,
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"model: could not read the single-file checkpoint {path} ({exc}). A single file "
            "needs the SD1.5 configs from the diffusers cache; offline, convert it once on a "
            "connected machine or pass a diffusers folder instead."
        ) from None
    scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
    return dict(unet=pipeline.unet, vae=pipeline.vae, text_encoder=pipeline.text_encoder,
                tokenizer=pipeline.tokenizer, scheduler=scheduler)


def _load_controlnet(name: str) -> ControlNetModel:
    path = Path(name).expanduser()
    if path.is_file() and path.suffix in SINGLE_FILE_SUFFIXES:
        try:
            return ControlNetModel.from_single_file(str(path), local_files_only=_offline())
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"controlnet: could not read the single-file ControlNet {path} ({exc})") from None
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"controlnet: {path} has no config.json; expected a diffusers ControlNet folder")
        return ControlNetModel.from_pretrained(str(path), local_files_only=True)
    if _is_hub_id(name):
        try:
            return ControlNetModel.from_pretrained(name, local_files_only=_offline())
        except (OSError, ValueError) as exc:
            raise _missing_files_error("controlnet", name, CONTROLNET_FILES, exc) from None
    raise ModelLoadError(
        f"controlnet: {name!r} is neither 'tiny', an existing folder, a single file, nor a hub id"
    )


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def _missing_files_error(field_name: str, hub_id: str, files: tuple[str, ...], exc: Exception) -> ModelLoadError:
    from huggingface_hub import try_to_load_from_cache

    missing = [f for f in files if not isinstance(try_to_load_from_cache(hub_id, f), str)]
    listing = ", ".join(missing) if missing else "(all listed files are cached; see the cause below)"
    return ModelLoadError(
        f"{field_name}: {hub_id!r} is not in the local diffusers cache and could not be downloaded. "
        f"Missing: {listing}. On a connected machine run `huggingface-cli download {hub_id}` "
        f"(it fills the same cache), or download the files into a folder and pass its path. "
        f"Cause: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    )
