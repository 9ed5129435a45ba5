"""(T) Load a model of a supported family (SD 1.5, SDXL; :mod:`zs_core.families`) and its
depth ControlNet.

:func:`check_available` resolves a model and its ControlNet without loading a weight: the
family (from the checkpoint's contents), where each comes from, and, offline, one
:class:`ModelLoadError` naming every missing file of both with the ``hf download`` command
that fetches them. The CLI calls it before any Blender render, the server before queueing
a job. :func:`load` checks the same way, then loads. Each of model and ControlNet may be:

- ``"tiny"`` / ``"tiny-sdxl"``: the built-in random models (:mod:`zs_core.tiny`);
- a local diffusers folder (``model_index.json`` for a pipeline, ``config.json`` for a
  ControlNet), e.g. one written by :func:`save`;
- a hub id (``owner/name``) through the local hub cache (downloaded when online);
- a single ``.safetensors`` / ``.ckpt`` file: a model in the original (LDM / SGM) layout
  through the family's ``from_single_file``, which needs the family's configs (no
  weights): a local diffusers folder given as ``config``, else the family's reference
  repository (:attr:`~zs_core.families.Family.single_file_config`) from the hub cache; a
  ControlNet in the original or the diffusers layout, its config from a ``config.json``
  beside it, else from the family's default depth ControlNet in the hub cache.
  :func:`save_single_file` writes both layouts.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DDIMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextModel, CLIPTokenizer

from . import families, tiny
from .families import BUILTIN, CONTROLNET, FOLDER, HUB, PIPELINE, SINGLE_FILE, SINGLE_FILE_SUFFIXES, ModelLoadError

__all__ = ["Components", "ModelInfo", "ModelLoadError", "Source", "check_available", "choose_device", "load",
           "load_tiny", "save", "save_single_file"]

DEFAULT_DEPTH_CONTROLNET = families.SD15.default_controlnet
BUILTIN_BUILDERS = {"tiny": tiny.build, "tiny-sdxl": tiny.build_sdxl}
CONTROLNET_FILES = ("config.json", "diffusion_pytorch_model.safetensors")
# A file by its preferred (hub) name is also present as any of these: weights pickled or
# sharded, a tokenizer as one tokenizer.json (what transformers 5 writes).
ALTERNATIVES = {
    "diffusion_pytorch_model.safetensors": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                                            "diffusion_pytorch_model.safetensors.index.json"),
    "model.safetensors": ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json"),
    "vocab.json": ("vocab.json", "tokenizer.json"),
    "merges.txt": ("merges.txt", "tokenizer.json"),
}


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
    # SDXL's second text encoder (CLIPTextModelWithProjection) and tokenizer (None for SD 1.5).
    text_encoder_2: torch.nn.Module | None = None
    tokenizer_2: object | None = None
    # The reference image's encoder, present once an IP-Adapter is loaded (zs_core/reference.py).
    image_encoder: torch.nn.Module | None = None
    feature_extractor: object | None = None
    # The pipeline's own settings from model_index.json (SDXL: force_zeros_for_empty_prompt).
    pipeline_config: dict = field(default_factory=dict)
    # The family's inpainting ControlNet, when loaded: completion views condition on it too.
    inpaint_controlnet: ControlNetModel | None = None

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def modules(self) -> dict[str, torch.nn.Module]:
        found = dict(unet=self.unet, controlnet=self.controlnet, vae=self.vae, text_encoder=self.text_encoder,
                     text_encoder_2=self.text_encoder_2, image_encoder=self.image_encoder,
                     inpaint_controlnet=self.inpaint_controlnet)
        return {name: module for name, module in found.items() if module is not None}


@dataclass(frozen=True)
class Source:
    """Where one checkpoint comes from: ``form`` builtin / folder / hub / single_file;
    ``path`` the built-in name, the folder, the cached snapshot folder of a hub id ("" when
    a load downloads it) or the file; ``config`` (single files) the local folder or hub id
    of the configs that describe it."""

    name: str
    form: str
    path: str
    config: str | None = None


@dataclass(frozen=True)
class ModelInfo:
    """A model and its depth ControlNet, resolved (:func:`check_available`): the family, the
    two sources, and (online only) the hub files a load would download, ``owner/name/file``."""

    family: str
    model: Source
    controlnet: Source
    to_download: tuple[str, ...] = ()


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


# ------------------------------------------------------------------------------ resolving


def _offline() -> bool:
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _present(exists, file: str) -> bool:
    """Is ``file`` (``folder/name``) there by ``exists(path)``, in any of its :data:`ALTERNATIVES`?"""
    folder, _, name = file.rpartition("/")
    return any(exists(f"{folder}/{alt}" if folder else alt) for alt in ALTERNATIVES.get(name, (name,)))


def _missing_in_folder(folder: Path, files) -> list[str]:
    return [f for f in files if not _present(lambda relative: (folder / relative).is_file(), f)]


def _missing_in_cache(hub_id: str, files, cache_dir) -> list[str]:
    return [f for f in files if not _present(lambda relative: families.cached_file(hub_id, relative, cache_dir), f)]


def _download_hint(hub_id: str, missing: list[str]) -> str:
    return f"`hf download {hub_id} {' '.join(missing)}`"


# A diffusers pipeline's configs, tokenizers and weights, whatever its family (for a hub
# model whose model_index.json, so whose family, is not known yet).
PIPELINE_PATTERNS = ("*.json", "*.txt", "*/diffusion_pytorch_model.safetensors", "*/model.safetensors")


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connection to the hub's endpoint: without a network, huggingface_hub retries
    each request for about 23 s before it gives up."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
        return True
    except OSError:
        return False


class _Findings:
    """What resolving found wrong (one sentence per checkpoint) and what a load would fetch."""

    def __init__(self, cache_dir):
        self.cache_dir, self.problems, self.downloads = cache_dir, [], []
        self._offline_reason = "the hub is offline (HF_HUB_OFFLINE)" if _offline() else None
        self._probed = False

    @property
    def offline(self) -> bool:
        """No download possible: HF_HUB_OFFLINE, or (asked once, when something is missing)
        the hub cannot be reached."""
        if self._offline_reason is None and not self._probed:
            self._probed = True
            if not _hub_reachable():
                from huggingface_hub import constants

                self._offline_reason = f"the hub ({constants.ENDPOINT}) cannot be reached"
        return self._offline_reason is not None

    def missing_hub_files(self, field_name: str, subject: str, hub_id: str, missing: list[str],
                          command: str | None = None) -> None:
        """Missing files of hub repository ``hub_id`` (``subject`` says what it is for): an
        error offline, downloads online."""
        if not missing:
            return
        if self.offline:
            self.problems.append(
                f"{field_name}: {subject} is not complete in the hub cache ({families.hub_cache(self.cache_dir)}) and "
                f"{self._offline_reason}. Missing: {', '.join(missing)}. On a connected machine run "
                f"{command or _download_hint(hub_id, missing)} (it fills the same cache), or download the files "
                "into a folder and pass its path.")
        else:
            self.downloads += [f"{hub_id}/{f}" for f in missing]


def check_available(model: str = "tiny", controlnet: str | None = None, *, config: str | None = None,
                    cache_dir: str | os.PathLike | None = None) -> ModelInfo:
    """Resolve ``model`` and its depth ``controlnet`` without loading a weight.

    ``controlnet=None``: the built-in models' own, else the family's default depth
    ControlNet. ``config``: for a single-file model, a local diffusers folder or hub id
    with the family's configs (default: the family's reference repository). ``cache_dir``:
    the hub cache (default huggingface_hub's). Raises one :class:`ModelLoadError` naming
    every missing file of the model and of the ControlNet (``model: ...`` first, then
    ``controlnet: ...``) with the ``hf download`` commands; online, hub files not cached
    are listed in ``to_download`` instead.
    """
    findings = _Findings(cache_dir)
    family, model_source = _resolve_model(model, config, findings)
    if controlnet is None:
        controlnet = "tiny" if model in BUILTIN else (family.default_controlnet if family else None)
    control_source = _resolve_controlnet(controlnet, family, findings) if controlnet else None
    if controlnet is None:  # the model's family (so its default ControlNet) is unknown until it is there
        findings.problems.append(
            f"controlnet: the default depth ControlNet is {families.SD15.default_controlnet} for an SD 1.5 model, "
            f"{families.SDXL.default_controlnet} for SDXL; it is checked once the model is there")
    if findings.problems:
        raise ModelLoadError("\n".join(findings.problems))
    return ModelInfo(family.name, model_source, control_source, tuple(findings.downloads))


def _resolve_model(model: str, config: str | None, findings: _Findings
                   ) -> tuple[families.Family | None, Source | None]:
    if model in BUILTIN:
        return families.get(BUILTIN[model]), Source(model, families.BUILTIN_FORM, model)
    path = Path(model).expanduser()
    if path.is_file() or path.is_dir():
        checkpoint = _inspect("model", model, findings)
        if checkpoint.kind != PIPELINE:
            raise ModelLoadError(f"model: {model} is a {checkpoint.family.name} ControlNet, not a model; pass it as "
                                 "the controlnet")
        if checkpoint.form == SINGLE_FILE:
            return checkpoint.family, _single_file_source(model, checkpoint.family, config, findings)
        missing = _missing_in_folder(path, checkpoint.family.pipeline_files())
        if missing:
            findings.problems.append(f"model: the diffusers folder {path} lacks {', '.join(missing)}")
        return checkpoint.family, Source(model, FOLDER, str(path))
    if not families.is_hub_id(model):
        raise ModelLoadError(
            f"model: {model!r} is neither {', '.join(map(repr, BUILTIN))}, an existing diffusers folder, a "
            f"{'/'.join(SINGLE_FILE_SUFFIXES)} file, nor a hub id of the form owner/name")
    index = families.cached_file(model, "model_index.json", findings.cache_dir)
    if index is None and not findings.offline:
        index = _fetch_index(model, findings.cache_dir)
    if index is None:
        # The family (so the full file list) is known once model_index.json is there.
        missing = ["model_index.json", "unet/", "vae/", "text_encoder/", "tokenizer/", "scheduler/",
                   "(SDXL: also text_encoder_2/, tokenizer_2/)"]
        patterns = " ".join(f'--include "{pattern}"' for pattern in PIPELINE_PATTERNS)
        findings.missing_hub_files("model", f"the model {model!r}", model, missing,
                                   f'`hf download {model} {patterns} --exclude "safety_checker/*"`')
        return None, Source(model, HUB, "")
    family = _inspect("model", str(Path(index).parent), findings).family
    missing = _missing_in_cache(model, family.pipeline_files(), findings.cache_dir)
    findings.missing_hub_files("model", f"the {family.title} model {model!r}", model, missing)
    return family, Source(model, HUB, "" if missing else str(Path(index).parent))


def _fetch_index(hub_id: str, cache_dir) -> str | None:
    """Online: a hub model's model_index.json (a few hundred bytes) tells its family."""
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(hub_id, "model_index.json", cache_dir=families.hub_cache(cache_dir))
    except Exception as exc:  # any hub failure: the model cannot be resolved
        raise ModelLoadError(f"model: could not fetch {hub_id}/model_index.json from the hub "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None


def _inspect(field_name: str, source: str, findings: _Findings) -> families.Checkpoint:
    try:
        return families.inspect(source, findings.cache_dir)
    except ModelLoadError as exc:
        raise ModelLoadError(f"{field_name}: {exc}") from None


def _single_file_source(model: str, family: families.Family, config: str | None, findings: _Findings) -> Source:
    """A single-file model and the configs that describe it: ``config`` (a folder or hub id),
    else the family's reference repository in the hub cache."""
    config = config or family.single_file_config
    folder = Path(config).expanduser()
    if folder.is_dir():
        missing = _missing_in_folder(folder, family.config_files())
        if missing:
            findings.problems.append(f"model: the config folder {folder} for {model} lacks {', '.join(missing)}")
        return Source(model, SINGLE_FILE, model, str(folder))
    if not families.is_hub_id(config):
        raise ModelLoadError(f"model: config {config!r} for {model} is neither a folder nor a hub id")
    missing = _missing_in_cache(config, family.config_files(), findings.cache_dir)
    findings.missing_hub_files("model", f"{config!r}, whose {family.title} configs describe the single file "
                                        f"{model},", config, missing)
    if missing:
        return Source(model, SINGLE_FILE, model, config)
    index = families.cached_file(config, "model_index.json", findings.cache_dir)
    return Source(model, SINGLE_FILE, model, str(Path(index).parent))


def _resolve_controlnet(name: str, family: families.Family | None, findings: _Findings) -> Source:
    if name == "tiny":
        return Source(name, families.BUILTIN_FORM, name)
    path = Path(name).expanduser()
    if path.is_file() or path.is_dir() or (families.is_hub_id(name) and _cached_controlnet(name, findings)):
        checkpoint = _inspect("controlnet", name, findings)
        if checkpoint.kind != CONTROLNET:
            raise ModelLoadError(f"controlnet: {name} is a {checkpoint.family.name} model, not a ControlNet")
        if family is not None and checkpoint.family is not family:
            raise ModelLoadError(
                f"controlnet: {name} is a {checkpoint.family.title} ControlNet but the model is {family.title}; "
                f"use a {family.title} depth ControlNet such as {family.default_controlnet}")
        if checkpoint.form == SINGLE_FILE:
            return Source(name, SINGLE_FILE, str(path), _controlnet_config(path, checkpoint.family, findings))
        if checkpoint.form == FOLDER:
            missing = _missing_in_folder(path, CONTROLNET_FILES)
            if missing:
                findings.problems.append(f"controlnet: the ControlNet folder {path} lacks {', '.join(missing)}")
            return Source(name, FOLDER, str(path))
        missing = _missing_in_cache(name, CONTROLNET_FILES, findings.cache_dir)
        findings.missing_hub_files("controlnet", f"the ControlNet {name!r}", name, missing)
        return Source(name, HUB, "" if missing else checkpoint.path)
    if not families.is_hub_id(name):
        raise ModelLoadError(f"controlnet: {name!r} is neither 'tiny', an existing folder, a single file, nor a "
                             "hub id")
    findings.missing_hub_files("controlnet", f"the ControlNet {name!r}", name, list(CONTROLNET_FILES))
    return Source(name, HUB, "")


def _cached_controlnet(hub_id: str, findings: _Findings) -> bool:
    return families.cached_file(hub_id, "config.json", findings.cache_dir) is not None


def _controlnet_config(path: Path, family: families.Family, findings: _Findings) -> str | None:
    """The config of a single-file ControlNet: a ControlNetModel ``config.json`` beside it,
    else the family's default depth ControlNet's from the hub cache."""
    beside = path.parent / "config.json"
    if beside.is_file() and json.loads(beside.read_text()).get("_class_name") == "ControlNetModel":
        return str(path.parent)
    default = family.default_controlnet
    found = families.cached_file(default, "config.json", findings.cache_dir)
    if found is not None:
        return str(Path(found).parent)
    findings.missing_hub_files("controlnet", f"{default!r}, whose config describes the single-file ControlNet "
                                             f"{path},", default, ["config.json"])
    return default


# -------------------------------------------------------------------------------- loading


def load(model: str = "tiny", controlnet: str | None = None, device: str = "auto", dtype: str | None = None, *,
         config: str | None = None, cache_dir: str | os.PathLike | None = None,
         inpaint_controlnet: str | None = None) -> Components:
    """Load the image model and its depth ControlNet, ready for :func:`zs_core.sampler.sample`.

    Resolves both first (:func:`check_available`, same arguments), so a missing file is
    named before anything loads. ``controlnet=None`` means the built-in models' own
    ControlNet, else the family's default depth ControlNet; ``"tiny"`` a random one built
    for the model's UNet. ``inpaint_controlnet``: None loads none; ``"auto"`` the family's
    inpainting ControlNet when all its files are on disk, else none (never a download; the
    built-in models have none); ``"tiny"`` a random one; any other name must be there
    (see :func:`inpaint_controlnet_for`).
    """
    torch_device, torch_dtype = choose_device(device, dtype)
    info = check_available(model, controlnet, config=config, cache_dir=cache_dir)
    family = families.get(info.family)
    base, pipeline_config = _load_pipeline_parts(info.model, family, cache_dir)
    built_in_controlnet = base.pop("controlnet", None)
    if info.controlnet.form == families.BUILTIN_FORM:
        control = built_in_controlnet if built_in_controlnet is not None else tiny.build_controlnet(base["unet"])
    else:
        control = _load_controlnet(info.controlnet, cache_dir)
    inpaint = inpaint_controlnet_for(model, family, base["unet"], inpaint_controlnet, cache_dir)
    components = _assemble(base, control, torch_device, torch_dtype, str(model), info.controlnet.name,
                           inpaint=inpaint)
    components.family, components.pipeline_config = family.name, pipeline_config
    _check_fits(components, family)
    return components


def inpaint_controlnet_for(model: str, family: families.Family, unet, name: str | None,
                           cache_dir=None) -> ControlNetModel | None:
    """The inpainting ControlNet ``name`` asks for (see :func:`load`): None, ``"tiny"`` (a
    random one for ``unet``, seeded apart from the depth one; for tests), ``"auto"``, or a
    hub id / path that must be on disk (ModelLoadError otherwise)."""
    if name is None or (name == "auto" and model in BUILTIN):  # a random one would only add noise
        return None
    if name == "tiny":
        with torch.random.fork_rng():
            torch.manual_seed(INPAINT_SEED)
            return tiny.build_controlnet(unet)
    wanted = family.inpaint_controlnet if name == "auto" else name
    if not wanted:
        return None
    try:
        info = check_available(model, wanted, cache_dir=cache_dir)
    except ModelLoadError:
        if name == "auto":
            return None
        raise
    if info.to_download:
        if name == "auto":
            return None
        raise ModelLoadError(f"inpaint_controlnet: {wanted} is not on disk: " + "; ".join(info.to_download))
    return _load_controlnet(info.controlnet, cache_dir)


INPAINT_SEED = 7  # the built-in tiny inpainting ControlNet's weights


def load_tiny(unet_overrides: dict | None = None, device: str = "auto", family: str = "sd15") -> Components:
    """A built-in model with a changed UNet config (benchmarks use a mid-size UNet):
    ``family`` sd15 (``tiny``) or sdxl (``tiny-sdxl``)."""
    torch_device, torch_dtype = choose_device(device)
    name = {"sd15": "tiny", "sdxl": "tiny-sdxl"}[families.get(family).name]
    parts = BUILTIN_BUILDERS[name](unet_overrides)
    control = parts.pop("controlnet")
    components = _assemble(parts, control, torch_device, torch_dtype, name, name)
    components.family = family
    return components


def _assemble(base: dict, control: ControlNetModel, device: torch.device, dtype: torch.dtype,
              name: str, controlnet_name: str, inpaint: ControlNetModel | None = None) -> Components:
    components = Components(controlnet=control, device=device, dtype=dtype, name=name,
                            controlnet_name=controlnet_name, inpaint_controlnet=inpaint, **base)
    for name, module in components.modules().items():
        module.to(device=device)
        wanted = vae_dtype(module, dtype) if name == "vae" else dtype
        if next(module.parameters()).dtype != wanted:
            module.to(dtype=wanted)
        module.eval()
        module.requires_grad_(False)
    return components


def vae_dtype(vae, dtype: torch.dtype) -> torch.dtype:
    """The dtype the VAE runs in: the model's, except fp16 for a VAE whose config asks to be
    upcast (``force_upcast``: SDXL's overflows to NaN in fp16), which stays fp32."""
    if dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        return torch.float32
    return dtype


def _check_fits(components: Components, family: families.Family) -> None:
    """The parts fit together: text width, SDXL's added embedding, the ControlNet's UNet."""
    encoders = [components.text_encoder] + ([components.text_encoder_2] if family.name == "sdxl" else [])
    width = sum(encoder.config.hidden_size for encoder in encoders)
    for field_name, module in (("model", components.unet), ("controlnet", components.controlnet)):
        if module.config.cross_attention_dim != width:
            raise ModelLoadError(f"{field_name}: takes text {module.config.cross_attention_dim} wide but the "
                                 f"model's text encoders give {width}")
    if family.name == "sdxl":
        added = components.unet.config.addition_time_embed_dim * 6 + components.text_encoder_2.config.projection_dim
        takes = components.unet.add_embedding.linear_1.in_features
        if takes != added:
            raise ModelLoadError(f"model: its UNet's added embedding takes {takes} values, the pooled text and 6 "
                                 f"size ids give {added}")


def _pipeline_config(folder: Path) -> dict:
    settings = json.loads((folder / "model_index.json").read_text())
    return {key: settings[key] for key in ("force_zeros_for_empty_prompt",) if key in settings}


def _load_pipeline_parts(source: Source, family: families.Family, cache_dir) -> tuple[dict, dict]:
    """The pipeline's modules (unet, vae, text encoders, tokenizers, scheduler; a built-in's
    controlnet too) and its model_index settings."""
    if source.form == families.BUILTIN_FORM:
        return BUILTIN_BUILDERS[source.name](), dict(force_zeros_for_empty_prompt=True) if family.name == "sdxl" else {}
    if source.form == SINGLE_FILE:
        return _pipeline_parts_from_single_file(source, family, cache_dir)
    try:
        if source.path:  # a folder, or a hub id's complete cached snapshot
            return _pipeline_parts_from_folder(source.path, family), _pipeline_config(Path(source.path))
        parts = _pipeline_parts_from_folder(source.name, family, cache_dir=families.hub_cache(cache_dir))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"model: could not load {source.name} ({type(exc).__name__}: {_first_line(exc)})") from None
    index = families.cached_file(source.name, "model_index.json", cache_dir)
    return parts, _pipeline_config(Path(index).parent)


def _pipeline_parts_from_folder(source: str, family: families.Family, **common) -> dict:
    import transformers

    local = dict(common, local_files_only=not common)  # a folder: never the hub
    parts = dict(
        unet=UNet2DConditionModel.from_pretrained(source, subfolder="unet", **local),
        vae=AutoencoderKL.from_pretrained(source, subfolder="vae", **local),
        # DDIM is the default sampler; the request may swap in another scheduler class.
        scheduler=DDIMScheduler.from_pretrained(source, subfolder="scheduler", **local),
    )
    for name, class_name in family.text_encoders:
        parts[name] = getattr(transformers, class_name).from_pretrained(source, subfolder=name, **local)
    for name in family.tokenizers:
        parts[name] = CLIPTokenizer.from_pretrained(source, subfolder=name, **local)
    return parts


def _pipeline_parts_from_single_file(source: Source, family: families.Family, cache_dir) -> tuple[dict, dict]:
    local = Path(source.config).is_dir()
    extra = dict(safety_checker=None, requires_safety_checker=False) if family.name == "sd15" else {}
    try:
        pipeline = family.pipeline_class.from_single_file(
            source.path, config=source.config, local_files_only=local, cache_dir=families.hub_cache(cache_dir),
            **extra)
    except Exception as exc:  # diffusers raises many kinds (ValueError, KeyError, SingleFileComponentError...)
        raise ModelLoadError(
            f"model: could not read the single-file {family.title} checkpoint {source.path} with the configs of "
            f"{source.config} ({type(exc).__name__}: {_first_line(exc)})") from None
    parts = {name: getattr(pipeline, name) for name in ("unet", "vae", *dict(family.text_encoders), *family.tokenizers)}
    parts["scheduler"] = DDIMScheduler.from_config(pipeline.scheduler.config)
    settings = {key: pipeline.config[key] for key in ("force_zeros_for_empty_prompt",) if key in pipeline.config}
    return parts, settings


def _load_controlnet(source: Source, cache_dir) -> ControlNetModel:
    try:
        if source.form == SINGLE_FILE:
            return ControlNetModel.from_single_file(source.path, config=source.config,
                                                    local_files_only=Path(source.config).is_dir(),
                                                    cache_dir=families.hub_cache(cache_dir))
        if source.path:
            return ControlNetModel.from_pretrained(source.path, local_files_only=True)
        return ControlNetModel.from_pretrained(source.name, cache_dir=families.hub_cache(cache_dir))
    except Exception as exc:  # as above: any loading failure names the ControlNet
        raise ModelLoadError(f"controlnet: could not load {source.name} ({type(exc).__name__}: "
                             f"{_first_line(exc)})") from None


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else ""


# --------------------------------------------------------------------------------- saving


def save(components: Components, directory: str | os.PathLike) -> Path:
    """Write the model as a diffusers pipeline folder of its family and the ControlNet as
    ``controlnet/``. ``load(directory, directory + "/controlnet")`` reads it back."""
    directory = Path(directory)
    common = dict(vae=components.vae, text_encoder=components.text_encoder, tokenizer=components.tokenizer,
                  unet=components.unet, scheduler=components.scheduler)
    if components.family == "sdxl":
        pipeline = StableDiffusionXLPipeline(
            **common, text_encoder_2=components.text_encoder_2, tokenizer_2=components.tokenizer_2,
            force_zeros_for_empty_prompt=components.pipeline_config.get("force_zeros_for_empty_prompt", True),
            add_watermarker=False)
    else:
        pipeline = StableDiffusionPipeline(**common, safety_checker=None, feature_extractor=None,
                                           requires_safety_checker=False)
    pipeline.save_pretrained(directory, safe_serialization=True)
    components.controlnet.save_pretrained(directory / "controlnet", safe_serialization=True)
    return directory


def save_single_file(components: Components, path: str | os.PathLike, controlnet_path: str | os.PathLike | None = None
                     ) -> Path:
    """Write the model as one ``.safetensors`` in the original layout community checkpoints
    use (SD 1.5: LDM; SDXL: SGM with ``conditioner.embedders``), and the ControlNet, when
    ``controlnet_path`` is given, as one ``.safetensors`` in the diffusers layout (how
    SDXL ControlNets are distributed). Loading either needs the family's configs (see the
    module docstring)."""
    from safetensors.torch import save_file

    tensors = original_layout(components)
    save_file({name: tensor.detach().float().cpu().contiguous() for name, tensor in tensors.items()}, str(path))
    if controlnet_path is not None:
        save_file({name: tensor.detach().float().cpu().contiguous()
                   for name, tensor in components.controlnet.state_dict().items()}, str(controlnet_path))
    return Path(path)


# ---------------------------------------------------------------- the original layout
# The names single-file checkpoints use, written from diffusers modules. diffusers reads
# them back (loaders/single_file_utils.py); the tests hold the round trip exact.

_UNET_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
                ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection"))
_VAE_RESNET = (("conv_shortcut", "nin_shortcut"),)
_VAE_ATTENTION = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"))


def original_layout(components: Components) -> dict[str, torch.Tensor]:
    """The model's tensors under the original single-file names: UNet under
    ``model.diffusion_model.``, VAE under ``first_stage_model.``, the text encoder(s) under
    ``cond_stage_model.transformer.`` (SD 1.5) or ``conditioner.embedders.0.transformer.`` and,
    in OpenCLIP's layout, ``conditioner.embedders.1.model.`` (SDXL)."""
    out = {}
    unet_names = _unet_prefixes(components.unet.config)
    for name, tensor in components.unet.state_dict().items():
        out["model.diffusion_model." + _renamed(name, unet_names)] = tensor
    vae_names = _vae_prefixes(components.vae.config)
    for name, tensor in components.vae.state_dict().items():
        renamed = _renamed(name, vae_names)
        if ".mid.attn_1." in renamed and renamed.endswith(("q.weight", "k.weight", "v.weight", "proj_out.weight")):
            tensor = tensor[:, :, None, None]  # the original VAE attention is 1x1 convolutions
        out["first_stage_model." + renamed] = tensor
    first = "conditioner.embedders.0.transformer." if components.family == "sdxl" else "cond_stage_model.transformer."
    for name, tensor in components.text_encoder.state_dict().items():
        out[first + "text_model." + name.removeprefix("text_model.")] = tensor
    if components.family == "sdxl":
        out.update(_open_clip_layout(components.text_encoder_2.state_dict(), "conditioner.embedders.1.model."))
    return out


def _unet_prefixes(config) -> dict[str, tuple[str, tuple]]:
    """diffusers module path -> (original path, renames inside it) for a UNet."""
    names = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
             "mid_block.resnets.0": "middle_block.0", "mid_block.attentions.0": "middle_block.1",
             "mid_block.resnets.1": "middle_block.2"}
    per_level = config.layers_per_block + 1  # resnets, then a downsampler (down) / an upsampler (up)
    levels = len(config.block_out_channels)
    for level in range(levels):
        for layer in range(config.layers_per_block):
            names[f"down_blocks.{level}.resnets.{layer}"] = f"input_blocks.{per_level * level + layer + 1}.0"
            names[f"down_blocks.{level}.attentions.{layer}"] = f"input_blocks.{per_level * level + layer + 1}.1"
        names[f"down_blocks.{level}.downsamplers.0.conv"] = f"input_blocks.{per_level * (level + 1)}.0.op"
        for layer in range(per_level):
            names[f"up_blocks.{level}.resnets.{layer}"] = f"output_blocks.{per_level * level + layer}.0"
            names[f"up_blocks.{level}.attentions.{layer}"] = f"output_blocks.{per_level * level + layer}.1"
        position = 2 if "CrossAttn" in config.up_block_types[level] else 1  # after the attention, if any
        names[f"up_blocks.{level}.upsamplers.0.conv"] = f"output_blocks.{per_level * level + per_level - 1}.{position}.conv"
    return {path: (original, _UNET_RESNET if ".resnets." in path else ()) for path, original in names.items()}


def _vae_prefixes(config) -> dict[str, tuple[str, tuple]]:
    """diffusers module path -> (original path, renames inside it) for the VAE."""
    names = {"quant_conv": "quant_conv", "post_quant_conv": "post_quant_conv"}
    levels = len(config.block_out_channels)
    for part in ("encoder", "decoder"):
        names.update({f"{part}.conv_in": f"{part}.conv_in", f"{part}.conv_out": f"{part}.conv_out",
                      f"{part}.conv_norm_out": f"{part}.norm_out", f"{part}.mid_block.resnets.0": f"{part}.mid.block_1",
                      f"{part}.mid_block.resnets.1": f"{part}.mid.block_2",
                      f"{part}.mid_block.attentions.0": f"{part}.mid.attn_1"})
    for level in range(levels):
        for layer in range(config.layers_per_block):
            names[f"encoder.down_blocks.{level}.resnets.{layer}"] = f"encoder.down.{level}.block.{layer}"
        names[f"encoder.down_blocks.{level}.downsamplers.0.conv"] = f"encoder.down.{level}.downsample.conv"
        # The original counts decoder levels from the bottom.
        for layer in range(config.layers_per_block + 1):
            names[f"decoder.up_blocks.{level}.resnets.{layer}"] = f"decoder.up.{levels - 1 - level}.block.{layer}"
        names[f"decoder.up_blocks.{level}.upsamplers.0.conv"] = f"decoder.up.{levels - 1 - level}.upsample.conv"
    return {path: (original, _VAE_ATTENTION if ".attentions." in path else _VAE_RESNET if ".resnets." in path else ())
            for path, original in names.items()}


def _renamed(name: str, prefixes: dict[str, tuple[str, tuple]]) -> str:
    """``name`` with its longest module path in ``prefixes`` replaced, and the renames
    inside that module applied to the rest."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        path = ".".join(parts[:cut])
        if path in prefixes:
            original, inner = prefixes[path]
            rest = "." + ".".join(parts[cut:])
            for new, old in inner:
                rest = rest.replace(f".{new}.", f".{old}.")
            return original + rest
    raise ValueError(f"no original name for {name}")


def _open_clip_layout(state: dict, prefix: str) -> dict[str, torch.Tensor]:
    """A CLIPTextModelWithProjection's tensors in OpenCLIP's names (SDXL's second encoder):
    q / k / v projections stacked into ``in_proj``, the projection transposed."""
    renames = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
               "self_attn.out_proj": "attn.out_proj"}
    out, stacked = {}, {}
    for name, tensor in state.items():
        name = name.removeprefix("text_model.")
        if name == "text_projection.weight":
            out[prefix + "text_projection"] = tensor.T.contiguous()
        elif name == "embeddings.token_embedding.weight":
            out[prefix + "token_embedding.weight"] = tensor
        elif name == "embeddings.position_embedding.weight":
            out[prefix + "positional_embedding"] = tensor
        elif name.startswith("final_layer_norm."):
            out[prefix + "ln_final." + name.rpartition(".")[2]] = tensor
        elif name.startswith("encoder.layers."):
            index, _, inside = name.removeprefix("encoder.layers.").partition(".")
            module, _, kind = inside.rpartition(".")
            block = f"{prefix}transformer.resblocks.{index}."
            if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                stacked.setdefault((block, kind), {})[module.rpartition(".")[2][0]] = tensor  # q, k or v
            elif module in renames:
                out[block + renames[module] + "." + kind] = tensor
            else:
                raise ValueError(f"no OpenCLIP name for {name}")
        else:
            raise ValueError(f"no OpenCLIP name for {name}")
    for (block, kind), parts in stacked.items():
        out[f"{block}attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out
