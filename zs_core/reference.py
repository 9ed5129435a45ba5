"""(T) The reference image (IP-Adapter): one image embedding conditions every view / frame.

:func:`unet_conditioning` is what the sampler's :func:`zs_core.sampler.condition` stage
asks for; its result goes to the UNet only (``ModelBatch.unet_added``): ``image_embeds``,
a list (one per IP-Adapter) of ``(G, 1, D)`` rows in the CFG group order of the text
embeddings ([unconditional, conditional] with guidance; the unconditional row is the zero
embedding, as diffusers' pipelines make it), which the sampler repeats per view.

The IP-Adapter (``request.ip_adapter``) is a weights file holding ``image_proj`` and
``ip_adapter`` tensors (h94/IP-Adapter's ``.safetensors`` or ``.bin`` layout) with the image
encoder (a ``CLIPVisionModelWithProjection`` folder) in ``image_encoder/`` beside it:

- ``""``: the family's default, :data:`DEFAULTS` in :data:`DEFAULT_REPOSITORY`, through the
  hub cache (downloaded when online; offline and missing, a ``ModelLoadError`` naming the
  missing files and the ``hf download`` command);
- a file, or a folder holding one such file;
- a hub id (the family's default file in it) or ``owner/name/path/to/file.safetensors``.

Loading goes through diffusers' ``load_ip_adapter`` on a transient pipeline around the
Components' modules (:func:`zs_core.loras.transient_pipeline`): it installs IP-Adapter
processors on the UNet's cross-attention layers (``attn2``) and its image projection as
the UNet's ``encoder_hid_proj``; the sampler's cross-view processors replace only the
self-attention layers (``attn1``) and so coexist with them. The image encoder goes to
``components.image_encoder`` / ``feature_extractor`` and stays; the weights stay read in
``components.extras``. A job without a reference image unloads the adapter from the UNet
(its processors and projection), so it computes exactly what a model that never loaded
one computes (tested); the next reference job installs it again from memory.
Before any weight is applied the adapter is checked against the model: an IP-Adapter for
the other family is a ``ProtocolError("ip_adapter", ...)`` naming the file and both.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import families
from .loras import family_title, header_shapes, known_text_widths, quiet_loading, transient_pipeline
from .models import Components, ModelLoadError
from .protocol import Passes, ProtocolError, Request

FIELD = "ip_adapter"
STATE_KEY = "ip_adapter"  # components.extras[STATE_KEY]: the AdapterState
DEFAULT_REPOSITORY = "h94/IP-Adapter"
# The family's default IP-Adapter in DEFAULT_REPOSITORY; its image encoder is image_encoder/ beside it.
DEFAULTS = {"sd15": "models/ip-adapter_sd15.safetensors", "sdxl": "sdxl_models/ip-adapter_sdxl.safetensors"}
WEIGHT_SUFFIXES = (".safetensors", ".bin")
ENCODER_FOLDER = "image_encoder"
ENCODER_CONFIG = "config.json"
ENCODER_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # the preferred one first


@dataclass(frozen=True)
class Source:
    """Where an IP-Adapter's two parts are on this machine."""

    weights: Path  # the image_proj + ip_adapter weights file
    encoder: Path  # the image encoder's folder

    def key(self) -> str:
        """Identity of the files' current contents (resolved path, size, modification time)."""
        parts = []
        for path in (self.weights, self.encoder / ENCODER_CONFIG):
            stat = path.stat()
            parts.append(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}")
        return hashlib.sha1("\0".join(parts).encode()).hexdigest()


@dataclass
class AdapterState:
    """What stays in ``components.extras`` between jobs."""

    weights_key: str
    encoder_key: str  # the image encoder's folder now in components.image_encoder
    state_dict: dict  # {"image_proj": {...}, "ip_adapter": {...}}, as read
    installed: bool  # its processors and projection are on the UNet now
    # The UNet's attention processors before it was installed (the same objects), put back
    # by detach: whatever they were (stock, or a memory-saving kind), not diffusers' default.
    processors: dict | None = None


# ------------------------------------------------------------------ finding the files


def resolve(family: str, name: str) -> Source:
    """The files of IP-Adapter ``name`` (see the module docstring) for a model of ``family``,
    without reading a weight: ProtocolError for a path that is not one, ModelLoadError for
    hub files that are not in the cache and cannot be downloaded."""
    if not name:
        if family not in DEFAULTS:
            raise ProtocolError(FIELD, f"no default IP-Adapter for the {family} family; name one")
        return _from_hub(DEFAULT_REPOSITORY, DEFAULTS[family], f"the default IP-Adapter of {family_title(family)}")
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix.lower() not in WEIGHT_SUFFIXES:
            raise ProtocolError(FIELD, f"{path}: not IP-Adapter weights (expected {' or '.join(WEIGHT_SUFFIXES)})")
        return Source(path, _encoder_beside(path.parent, path))
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in WEIGHT_SUFFIXES)
        if len(found) != 1:
            names = ", ".join(p.name for p in found)
            what = f"{len(found)} weights files ({names})" if found else "no weights file"
            raise ProtocolError(FIELD, f"{path} is a folder with {what}; name the IP-Adapter file itself")
        return Source(found[0], _encoder_beside(path, found[0]))
    parts = name.split("/")
    if len(parts) >= 2 and all(parts) and not name.startswith((".", "~")) and "\\" not in name:
        repository = "/".join(parts[:2])
        if len(parts) == 2:
            if family not in DEFAULTS:
                raise ProtocolError(FIELD, f"{name}: name the file in it (no default for the {family} family)")
            return _from_hub(repository, DEFAULTS[family], f"IP-Adapter {name!r}")
        return _from_hub(repository, "/".join(parts[2:]), f"IP-Adapter {name!r}")
    raise ProtocolError(FIELD, f"{name}: no such file or folder, and not a hub id (owner/name[/path/to/file])")


def _encoder_beside(folder: Path, weights: Path) -> Path:
    encoder = folder / ENCODER_FOLDER
    if not (encoder / ENCODER_CONFIG).is_file():
        raise ProtocolError(FIELD, f"{weights}: its image encoder is missing (expected {encoder}/ with "
                                   f"{ENCODER_CONFIG} and {ENCODER_WEIGHTS[0]}, as in {DEFAULT_REPOSITORY})")
    return encoder


def _offline() -> bool:
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _from_hub(repository: str, weights: str, what: str) -> Source:
    """The weights file and its image encoder from the hub cache (fetched when online)."""
    encoder = f"{weights.rpartition('/')[0]}/{ENCODER_FOLDER}".lstrip("/")
    wanted = {weights: (weights,), ENCODER_CONFIG: (f"{encoder}/{ENCODER_CONFIG}",),
              "encoder weights": tuple(f"{encoder}/{file}" for file in ENCODER_WEIGHTS)}
    found, missing = {}, []
    for role, candidates in wanted.items():
        local = next((hit for hit in (families.cached_file(repository, c) for c in candidates) if hit), None)
        if local is None and not _offline():
            local = _download(repository, candidates[0])
        if local is None:
            missing.append(candidates[0])
        found[role] = local
    if missing:
        raise ModelLoadError(
            f"{FIELD}: {what} ({repository}) is not complete in the hub cache ({families.hub_cache()}) and the hub "
            f"is offline (HF_HUB_OFFLINE). Missing: {', '.join(missing)}. On a connected machine run "
            f"`hf download {repository} {' '.join(missing)}` (it fills the same cache), or download them into a "
            f"folder (the weights file with {ENCODER_FOLDER}/ beside it) and pass the file's path.")
    return Source(Path(found[weights]), Path(found[ENCODER_CONFIG]).parent)


def _download(repository: str, filename: str) -> str:
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repository, filename, cache_dir=families.hub_cache())
    except Exception as exc:  # network, authentication, a file that is not there
        raise ModelLoadError(f"{FIELD}: could not download {filename} of {repository} ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}); run `hf download {repository} "
                             f"{filename}` to see why") from None


def preflight(family: str, name: str) -> Source:
    """What can be known of a job's IP-Adapter before a model is loaded (and before any
    render or upload): its files are there (``resolve``) and, as far as a ``.safetensors``
    header tells, it is for ``family``."""
    source = resolve(family, name)
    shapes = header_shapes(source.weights, FIELD) if source.weights.suffix.lower() == ".safetensors" else {}
    widths = {shape[1] for key, shape in shapes.items() if key.endswith("to_k_ip.weight") and len(shape) == 2}
    made_for = known_text_widths().get(widths.pop()) if len(widths) == 1 else None
    if made_for is not None and made_for != family:
        raise ProtocolError(FIELD, f"{source.weights} is an IP-Adapter for {family_title(made_for)}; the model is "
                                   f"{family_title(family)}")
    return source


# ------------------------------------------------------------------ reading and checking


def read_weights(path: Path) -> dict:
    """``{"image_proj": {...}, "ip_adapter": {...}}`` from h94's flat ``.safetensors`` (keys
    ``image_proj.*`` / ``ip_adapter.*``) or nested ``.bin`` layout (torch's weights-only loader)."""
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            flat = load_file(str(path), device="cpu")
            state_dict = {"image_proj": {}, "ip_adapter": {}}
            for key, value in flat.items():
                part, _, rest = key.partition(".")
                if part in state_dict:
                    state_dict[part][rest] = value
        else:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors and torch.load raise many kinds
        raise ProtocolError(FIELD, f"{path}: not a readable IP-Adapter file ({type(exc).__name__}: "
                                   f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not (isinstance(state_dict, dict) and state_dict.get("image_proj") and state_dict.get("ip_adapter")):
        raise ProtocolError(FIELD, f"{path}: not an IP-Adapter (no image_proj and ip_adapter weights in it)")
    return state_dict


def cross_attention_layers(components: Components) -> list[str]:
    """The UNet's cross-attention processors, in the order IP-Adapter files number them."""
    return [name for name in components.unet.attn_processors if not name.endswith("attn1.processor")]


def check_fits(components: Components, path: Path, state_dict: dict) -> None:
    """ProtocolError("ip_adapter") unless the adapter fits the model: made for its family, one
    key / value pair per cross-attention layer, each reading the model's text width and
    giving the layer's width."""
    pairs = state_dict["ip_adapter"]
    keys = sorted((k for k in pairs if k.endswith(".to_k_ip.weight")), key=lambda k: int(k.split(".")[0]))
    widths = {tuple(pairs[k].shape)[1] for k in keys}
    text_width = widths.pop() if len(widths) == 1 else None
    made_for = known_text_widths().get(text_width)
    model = f"the model {components.name!r} is {family_title(components.family)}"
    if made_for is not None and made_for != components.family:
        raise ProtocolError(FIELD, f"{path} is an IP-Adapter for {family_title(made_for)}; {model}")
    layers = cross_attention_layers(components)
    unet = components.unet
    problems = []
    if len(keys) != len(layers) or text_width != unet.config.cross_attention_dim:
        problems.append(f"it has {len(keys)} cross-attention layers reading text width {text_width}, the model "
                        f"{len(layers)} of width {unet.config.cross_attention_dim}")
    else:
        for key, layer in zip(keys, layers):
            attention = unet.get_submodule(layer.removesuffix(".processor"))
            expected = (attention.inner_dim, unet.config.cross_attention_dim)
            if tuple(pairs[key].shape) != expected:
                problems.append(f"{key} is {tuple(pairs[key].shape)}, {layer} needs {expected}")
    if problems:
        hint = "" if made_for else "; is it an IP-Adapter for another model family?"
        raise ProtocolError(FIELD, f"{path} does not fit {model}: {'; '.join(problems[:3])}{hint}")


def check_encoder(components: Components, path: Path, state_dict: dict) -> None:
    """The plain IP-Adapter projects the encoder's image embedding: their widths must agree."""
    projection = state_dict["image_proj"].get("proj.weight")
    encoder = components.image_encoder
    if projection is not None and encoder is not None and projection.shape[-1] != encoder.config.projection_dim:
        raise ProtocolError(FIELD, f"{path} projects {projection.shape[-1]}-wide image embeddings, its image encoder "
                                   f"gives {encoder.config.projection_dim}")


# ------------------------------------------------------------------ loading


def _load_encoder(components: Components, folder: Path) -> None:
    from transformers import CLIPVisionModelWithProjection

    try:
        encoder = CLIPVisionModelWithProjection.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{FIELD}: could not load the image encoder in {folder} ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    encoder.to(device=components.device, dtype=components.dtype).eval().requires_grad_(False)
    components.image_encoder = encoder
    components.feature_extractor = None  # made to the new encoder's image size by load_ip_adapter


def attach(components: Components, name: str) -> AdapterState:
    """Make IP-Adapter ``name`` the one installed on the UNet (reading and loading only what
    changed since the last job) and return its state."""
    source = resolve(components.family, name)
    weights_key, encoder_key = source.key(), str(source.encoder.resolve())
    current: AdapterState | None = components.extras.get(STATE_KEY)
    if current is not None and current.weights_key == weights_key and current.installed:
        return current
    state_dict = current.state_dict if current is not None and current.weights_key == weights_key else None
    if state_dict is None:
        state_dict = read_weights(source.weights)
        check_fits(components, source.weights, state_dict)
    detach(components)
    if components.image_encoder is None or current is None or current.encoder_key != encoder_key:
        _load_encoder(components, source.encoder)
    check_encoder(components, source.weights, state_dict)
    pipeline = transient_pipeline(components)
    processors = dict(components.unet.attn_processors)
    # From memory: the file was read (and checked) above; the encoder is already in place.
    with quiet_loading():
        pipeline.load_ip_adapter(state_dict, subfolder="", weight_name="", image_encoder_folder=None)
    components.feature_extractor = pipeline.feature_extractor
    current = AdapterState(weights_key, encoder_key, state_dict, installed=True, processors=processors)
    components.extras[STATE_KEY] = current
    return current


def detach(components: Components) -> None:
    """Take the installed IP-Adapter off the UNet (processors and projection), keeping the
    image encoder and the weights read for the next reference job."""
    current: AdapterState | None = components.extras.get(STATE_KEY)
    if current is None or not current.installed:
        return
    encoder, extractor = components.image_encoder, components.feature_extractor
    # Removes the image projection (encoder_hid_proj) and the adapter's processors; the
    # image encoder it drops is the transient pipeline's reference only.
    transient_pipeline(components).unload_ip_adapter()
    components.unet.set_attn_processor(dict(current.processors))
    components.image_encoder, components.feature_extractor = encoder, extractor
    current.installed, current.processors = False, None


def clear(components: Components) -> None:
    """Remove the IP-Adapter and its image encoder from the Components."""
    detach(components)
    components.extras.pop(STATE_KEY, None)
    components.image_encoder = components.feature_extractor = None


# ------------------------------------------------------------------ the job's conditioning


@torch.inference_mode()
def image_embeds(components: Components, image: np.ndarray, guidance: bool) -> list[torch.Tensor]:
    """The reference image ``(H', W', 3)`` float32 in [0, 1] -> one ``(G, 1, ...)`` tensor per
    installed IP-Adapter: [zero (unconditional) embedding, image embedding] with guidance,
    else [image embedding], as diffusers' ``prepare_ip_adapter_image_embeds`` makes them
    (the plain adapter reads the encoder's projected embedding ``(D,)``, the "plus" ones its
    penultimate hidden states ``(tokens, D)``, unconditioned on a zero image)."""
    from diffusers.models.embeddings import ImageProjection
    from PIL import Image

    encoder = components.image_encoder
    # As an image file would arrive (diffusers' numpy_to_pil rounding); the feature
    # extractor resizes, crops and normalises it for the encoder.
    picture = Image.fromarray((np.asarray(image, dtype=np.float32) * 255).round().astype(np.uint8))
    pixels = components.feature_extractor(picture, return_tensors="pt").pixel_values
    pixels = pixels.to(device=components.device, dtype=next(encoder.parameters()).dtype)
    embeds = []
    for projection in components.unet.encoder_hid_proj.image_projection_layers:
        if isinstance(projection, ImageProjection):
            cond = encoder(pixels).image_embeds
            uncond = torch.zeros_like(cond)
        else:
            cond = encoder(pixels, output_hidden_states=True).hidden_states[-2]
            uncond = encoder(torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2]
        rows = [uncond, cond] if guidance else [cond]
        embeds.append(torch.stack(rows).to(components.dtype))  # (G, 1, ...)
    return embeds


def unet_conditioning(components: Components, request: Request, passes: Passes, guidance: bool) -> dict:
    """The UNet-only extra conditioning of a job, one row per CFG group: ``{}`` without a
    reference image (and the UNet as if no IP-Adapter had been loaded), else
    ``{"image_embeds": [(G, 1, D)]}`` with the adapter at ``request.reference_strength``."""
    if passes.reference_image is None:
        detach(components)
        return {}
    attach(components, request.ip_adapter)
    transient_pipeline(components).set_ip_adapter_scale(request.reference_strength)
    return {"image_embeds": image_embeds(components, passes.reference_image, guidance)}
