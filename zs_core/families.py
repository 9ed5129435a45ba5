"""Model families (SD 1.5, SDXL): what differs between them, and which one a checkpoint is.

A :class:`Family` says how a family's prompts become the model's conditioning
(:attr:`Family.encode_prompt`: text embeddings ``(G, 77, D)`` plus the ``added_cond_kwargs``
UNet and ControlNet take), its native resolution, its default depth ControlNet, the
diffusers pipeline classes that load it (single files, LoRAs and IP-Adapters go through
:attr:`Family.pipeline_class` on a transient pipeline around the loaded modules) and the
stock ControlNet pipeline the tests hold the sampler equal to.

:func:`inspect` / :func:`detect` tell a checkpoint's family and kind (pipeline or
ControlNet) from its contents, never from its name: a diffusers folder by its
``model_index.json`` / ``config.json`` and UNet config, a hub id by those files in the
local hub cache, a single ``.safetensors`` by the tensor names in its header (no weight is
read), a ``.ckpt`` by the names in its pickle (read as opcodes, nothing executed).

Stdlib only at import: the server lists models with :func:`detect`, and the torch work of
:attr:`Family.encode_prompt` imports torch when it runs.
"""

from __future__ import annotations

import json
import os
import pickletools
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
# The built-in random models (zs_core/tiny.py), by name.
BUILTIN = {"tiny": "sd15", "tiny-sdxl": "sdxl"}
PIPELINE, CONTROLNET = "pipeline", "controlnet"
BUILTIN_FORM, FOLDER, HUB, SINGLE_FILE = "builtin", "folder", "hub", "single_file"
MAX_HEADER_BYTES = 100 * 1024 * 1024  # a safetensors header this large is not one


class ModelLoadError(RuntimeError):
    """A model could not be found or loaded; the message says what to do."""


# ------------------------------------------------------------------------ prompt encoding


def _tokens(tokenizer, texts: list[str]):
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def encode_sd15(components, prompt: str, negative_prompt: str, guidance: bool, size: tuple[int, int]):
    """SD 1.5: the text encoder's last hidden states -> ``(G, 77, D)``; no added conditioning.
    G = 2 ([negative, prompt]) with guidance, else 1 ([prompt])."""
    texts = [negative_prompt, prompt] if guidance else [prompt]
    embeds = components.text_encoder(_tokens(components.tokenizer, texts).to(components.device))[0]
    return embeds.to(components.dtype), {}


def encode_sdxl(components, prompt: str, negative_prompt: str, guidance: bool, size: tuple[int, int]):
    """SDXL, as diffusers' SDXL pipelines do it: the penultimate hidden states of both text
    encoders side by side -> embeds ``(G, 77, D1 + D2)``; the second encoder's projected
    pooled output -> ``text_embeds (G, P)``; ``time_ids (G, 6)`` = (original size, crop
    (0, 0), target size), both sizes ``size`` = (height, width) of the image the UNet sees.

    An empty negative prompt is diffusers' "no negative prompt": with the pipeline's
    ``force_zeros_for_empty_prompt`` (SDXL base: true) the unconditional row is zeros.
    """
    import torch

    texts = [negative_prompt, prompt] if guidance else [prompt]
    pairs = ((components.tokenizer, components.text_encoder), (components.tokenizer_2, components.text_encoder_2))
    hidden = []
    for tokenizer, encoder in pairs:
        outputs = encoder(_tokens(tokenizer, texts).to(components.device), output_hidden_states=True)
        hidden.append(outputs.hidden_states[-2])
    embeds = torch.cat(hidden, dim=-1)
    pooled = outputs.text_embeds  # the projected pooled output of the last (second) encoder
    if guidance and not negative_prompt and components.pipeline_config.get("force_zeros_for_empty_prompt", True):
        embeds = torch.cat([torch.zeros_like(embeds[:1]), embeds[1:]])
        pooled = torch.cat([torch.zeros_like(pooled[:1]), pooled[1:]])
    height, width = size
    time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=components.dtype,
                            device=components.device).repeat(len(texts), 1)
    return embeds.to(components.dtype), dict(text_embeds=pooled.to(components.dtype), time_ids=time_ids)


# ------------------------------------------------------------------------------ families


@dataclass(frozen=True)
class Family:
    """One model family. Class names are diffusers'; the ``*_class`` properties import them."""

    name: str  # the wire / listing name: sd15, sdxl
    title: str
    native_size: int  # the square view size (pixels) the family was trained at
    default_controlnet: str  # hub id of its depth ControlNet
    # The diffusers repository whose configs (no weights) describe a single-file checkpoint.
    single_file_config: str
    pipeline_class_name: str  # text-to-image pipeline: from_single_file, LoRA and IP-Adapter loaders
    controlnet_pipeline_class_name: str  # the stock ControlNet pipeline: the sampler's oracle
    # (components, prompt, negative_prompt, guidance, (height, width)) -> (embeds (G, 77, D), added dict)
    encode_prompt: Callable
    # The text encoders (component name, transformers class) and tokenizers, in encoding order.
    text_encoders: tuple[tuple[str, str], ...]
    tokenizers: tuple[str, ...]
    # hub id of its inpainting ControlNet ("": the family has none); completion views use it
    # when it is on disk (zs_core/completion.py), and never download it.
    inpaint_controlnet: str = ""

    def __repr__(self) -> str:
        return f"Family({self.name!r})"

    @property
    def pipeline_class(self):
        """The diffusers text-to-image pipeline class (with the single-file, LoRA and IP-Adapter
        loader mixins): build a transient one around a :class:`~zs_core.models.Components`'s
        modules to load adapters into them."""
        import diffusers

        return getattr(diffusers, self.pipeline_class_name)

    @property
    def controlnet_pipeline_class(self):
        """diffusers' ControlNet pipeline of the family (the tests' oracle)."""
        import diffusers

        return getattr(diffusers, self.controlnet_pipeline_class_name)

    def pipeline_files(self) -> tuple[str, ...]:
        """What a diffusers folder of the family must hold (weights by their preferred name)."""
        files = ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                 "vae/config.json", "vae/diffusion_pytorch_model.safetensors"]
        for encoder, _ in self.text_encoders:
            files += [f"{encoder}/config.json", f"{encoder}/model.safetensors"]
        for tokenizer in self.tokenizers:
            files += [f"{tokenizer}/vocab.json", f"{tokenizer}/merges.txt"]
        return tuple(files + ["scheduler/scheduler_config.json"])

    def config_files(self) -> tuple[str, ...]:
        """The configs (no weights) :attr:`single_file_config` must provide for a single file."""
        return tuple(f for f in self.pipeline_files() if not f.endswith((".safetensors", ".bin")))


SD15 = Family(
    name="sd15", title="Stable Diffusion 1.5", native_size=512,
    default_controlnet="lllyasviel/control_v11f1p_sd15_depth",
    single_file_config="stable-diffusion-v1-5/stable-diffusion-v1-5",
    pipeline_class_name="StableDiffusionPipeline",
    controlnet_pipeline_class_name="StableDiffusionControlNetPipeline",
    encode_prompt=encode_sd15,
    text_encoders=(("text_encoder", "CLIPTextModel"),),
    tokenizers=("tokenizer",),
    inpaint_controlnet="lllyasviel/control_v11p_sd15_inpaint",
)
SDXL = Family(
    name="sdxl", title="Stable Diffusion XL", native_size=1024,
    default_controlnet="diffusers/controlnet-depth-sdxl-1.0",
    single_file_config="stabilityai/stable-diffusion-xl-base-1.0",
    pipeline_class_name="StableDiffusionXLPipeline",
    controlnet_pipeline_class_name="StableDiffusionXLControlNetPipeline",
    encode_prompt=encode_sdxl,
    text_encoders=(("text_encoder", "CLIPTextModel"), ("text_encoder_2", "CLIPTextModelWithProjection")),
    tokenizers=("tokenizer", "tokenizer_2"),
)
FAMILIES: dict[str, Family] = {family.name: family for family in (SD15, SDXL)}


def get(name: str) -> Family:
    """The family called ``name`` (sd15, sdxl)."""
    if name not in FAMILIES:
        raise ModelLoadError(f"family: unknown model family {name!r}; expected one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


# ----------------------------------------------------------------------------- detection


@dataclass(frozen=True)
class Checkpoint:
    """What :func:`inspect` found: the family, ``kind`` (pipeline / controlnet), ``form``
    (builtin / folder / hub / single_file) and ``path`` (the folder, the cached snapshot
    folder of a hub id, or the file; the name for a built-in)."""

    family: Family
    kind: str
    form: str
    path: str


def is_hub_id(name: str) -> bool:
    """``owner/name`` that is not an existing path."""
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not os.path.exists(name)


def hub_cache(cache_dir: str | os.PathLike | None = None) -> str:
    """The hub cache folder: ``cache_dir``, else huggingface_hub's (``HF_HUB_CACHE``), read
    at call time so a changed setting takes effect."""
    if cache_dir:
        return str(cache_dir)
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def cached_file(hub_id: str, filename: str, cache_dir: str | os.PathLike | None = None) -> str | None:
    """The cached copy of ``filename`` of hub repository ``hub_id``, or None."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(hub_id, filename, cache_dir=hub_cache(cache_dir))
    return found if isinstance(found, str) else None


def inspect(source: str, cache_dir: str | os.PathLike | None = None) -> Checkpoint:
    """The family and kind of ``source``: a built-in name, a diffusers folder (pipeline or
    ControlNet), a hub id in the local hub cache, or a single ``.safetensors`` / ``.ckpt``.
    Reads configs and tensor names only. ModelLoadError when it is none of these or of a
    family not supported."""
    if source in BUILTIN:
        return Checkpoint(FAMILIES[BUILTIN[source]], PIPELINE, BUILTIN_FORM, source)
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix not in SINGLE_FILE_SUFFIXES:
            raise ModelLoadError(f"{source}: not a checkpoint file (expected {' or '.join(SINGLE_FILE_SUFFIXES)})")
        family, kind = classify_tensor_names(tensor_names(path), str(path))
        return Checkpoint(family, kind, SINGLE_FILE, str(path))
    if path.is_dir():
        family, kind = _classify_folder(path)
        return Checkpoint(family, kind, FOLDER, str(path))
    if is_hub_id(source):
        for filename in ("model_index.json", "config.json"):
            found = cached_file(source, filename, cache_dir)
            if found is not None:
                family, kind = _classify_folder(Path(found).parent)
                return Checkpoint(family, kind, HUB, str(Path(found).parent))
        raise ModelLoadError(f"{source}: not in the local hub cache ({hub_cache(cache_dir)}): neither "
                             f"model_index.json nor config.json of it is there")
    raise ModelLoadError(f"{source!r} is neither {', '.join(map(repr, BUILTIN))}, an existing diffusers folder, "
                         f"a {'/'.join(SINGLE_FILE_SUFFIXES)} file, nor a hub id of the form owner/name")


def detect(source: str, cache_dir: str | os.PathLike | None = None) -> Family:
    """The family of ``source`` (see :func:`inspect`)."""
    return inspect(source, cache_dir).family


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: not a readable JSON config ({exc})") from None


def _family_of_unet_config(config: dict, where: str) -> Family:
    """SDXL's UNet (and ControlNet) takes pooled text + size ids ("text_time"); SD 2.x's
    1024-wide cross-attention without them is a family we do not support."""
    if config.get("addition_embed_type") == "text_time":
        return SDXL
    if config.get("addition_embed_type") is None and config.get("cross_attention_dim") == 1024:
        raise ModelLoadError(f"{where}: a Stable Diffusion 2.x model (1024-wide text conditioning); supported "
                             f"families: {', '.join(FAMILIES)}")
    if config.get("addition_embed_type") is not None:
        raise ModelLoadError(f"{where}: a UNet with added conditioning {config['addition_embed_type']!r}; "
                             f"supported families: {', '.join(FAMILIES)}")
    return SD15


def _classify_folder(path: Path) -> tuple[Family, str]:
    """A diffusers pipeline folder (model_index.json) or ControlNet folder (config.json)."""
    index = path / "model_index.json"
    if index.is_file():
        class_name = str(_read_json(index).get("_class_name", ""))
        unet_config = path / "unet" / "config.json"
        if unet_config.is_file():  # the UNet says what the model takes, whatever the pipeline's name
            family = _family_of_unet_config(_read_json(unet_config), str(path))
        elif class_name.startswith("StableDiffusionXL"):
            family = SDXL
        elif class_name.startswith("StableDiffusion") and class_name[len("StableDiffusion"):][:1] not in "0123456789":
            family = SD15
        else:
            raise ModelLoadError(f"{path}: a {class_name or 'pipeline of unknown class'}; supported families: "
                                 f"{', '.join(FAMILIES)} (Stable Diffusion 1.5 and SDXL pipelines)")
        first_encoder = _read_json(index).get("text_encoder") or [None]
        if family is SDXL and first_encoder[0] is None:
            raise ModelLoadError(f"{path}: an SDXL refiner (one text encoder, aesthetic-score conditioning); "
                                 "use an SDXL base model")
        return family, PIPELINE
    config = path / "config.json"
    if config.is_file():
        settings = _read_json(config)
        if settings.get("_class_name") != "ControlNetModel":
            raise ModelLoadError(f"{path}: a {settings.get('_class_name', 'model of unknown class')}, not a "
                                 "diffusers pipeline (model_index.json) or ControlNetModel")
        return _family_of_unet_config(settings, str(path)), CONTROLNET
    raise ModelLoadError(f"{path} is a folder but neither a diffusers pipeline (model_index.json) nor a "
                         "ControlNet (config.json)")


def tensor_names(path: str | os.PathLike) -> list[str]:
    """The tensor names of a checkpoint file, without reading a weight: a ``.safetensors``
    header (8-byte little-endian length, then JSON), or the strings of a ``.ckpt``'s pickle
    (torch's zip format; the opcodes are read, nothing is unpickled)."""
    path = Path(path)
    if path.suffix == ".ckpt":
        return _pickle_strings(path)
    try:
        with open(path, "rb") as handle:
            length = struct.unpack("<Q", handle.read(8))[0]
            if length > min(MAX_HEADER_BYTES, path.stat().st_size - 8):
                raise ValueError(f"header length {length} does not fit the file")
            header = json.loads(handle.read(length))
    except (OSError, ValueError, struct.error) as exc:
        raise ModelLoadError(f"{path}: not a readable .safetensors file ({exc})") from None
    if not isinstance(header, dict):
        raise ModelLoadError(f"{path}: not a readable .safetensors file (its header is not a table)")
    return [name for name in header if name != "__metadata__"]


def _pickle_strings(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as archive:
            pickled = [name for name in archive.namelist() if name.endswith("data.pkl")]
            if not pickled:
                raise ValueError("no data.pkl inside")
            data = archive.read(pickled[0])
        return [arg for _, arg, _ in pickletools.genops(data) if isinstance(arg, str)]
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ModelLoadError(f"{path}: not a readable .ckpt (torch zip) checkpoint ({exc}); convert it to "
                             ".safetensors") from None


def classify_tensor_names(names: list[str], where: str) -> tuple[Family, str]:
    """(family, kind) of a single-file checkpoint from its tensor names: the original
    (LDM / SGM) layouts of SD 1.5 and SDXL checkpoints and ControlNets, and diffusers-layout
    ControlNet files (how SDXL ControlNets are distributed)."""
    def has(prefix: str) -> bool:
        return any(name.startswith(prefix) for name in names)

    if has("conditioner.embedders.1.model.") or has("conditioner.embedders.0.transformer."):
        return SDXL, PIPELINE
    if has("conditioner.embedders.0.model."):
        raise ModelLoadError(f"{where}: an SDXL refiner checkpoint (one OpenCLIP text encoder); use an SDXL base "
                             "model")
    if has("cond_stage_model.model."):
        raise ModelLoadError(f"{where}: a Stable Diffusion 2.x checkpoint (OpenCLIP text encoder); supported "
                             f"families: {', '.join(FAMILIES)}")
    if has("cond_stage_model.transformer.") or has("model.diffusion_model."):
        # A UNet-only SDXL file still carries its added-conditioning embedding (label_emb).
        return (SDXL if has("model.diffusion_model.label_emb.") else SD15), PIPELINE
    if has("control_model."):
        return (SDXL if has("control_model.label_emb.") else SD15), CONTROLNET
    if has("input_hint_block.") and has("zero_convs."):  # an original-layout ControlNet without its prefix
        return (SDXL if has("label_emb.") else SD15), CONTROLNET
    if has("controlnet_cond_embedding.") and has("controlnet_down_blocks."):
        return (SDXL if has("add_embedding.") else SD15), CONTROLNET
    raise ModelLoadError(f"{where}: neither a Stable Diffusion 1.5 / SDXL checkpoint nor a ControlNet (none of "
                         "their tensor names are in it)")
