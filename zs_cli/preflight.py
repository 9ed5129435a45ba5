"""What a run needs, resolved before anything renders, captures or uploads.

- the reference image (``--reference-image``): read with Pillow into ``(H', W', 3)`` float32
  in [0, 1];
- in this process: the model and its depth ControlNet (:func:`zs_core.models.check_available`:
  no weight loaded), each LoRA file, and with a reference image the IP-Adapter
  (:func:`zs_core.reference.resolve`);
- on ``--server``: the token, and the model, LoRA and IP-Adapter names against the server's
  ``GET /v1/models`` list.

The Hugging Face hub is asked only when the local cache does not settle it, and only when
it can be reached: without a connection huggingface_hub retries for about 23 s before it
gives up, so one short connection attempt decides first, and an unreachable hub makes the
rest of the run use the cache only (``HF_HUB_OFFLINE``). Every problem is one error that
names it (ValueError, ProtocolError or ModelLoadError; ``zs`` prints it as one line).
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from zs_core.protocol import PARAMETERS, REFERENCE_IMAGE_SIDES, parse_loras

HUB_PROBE_TIMEOUT = 1.5  # seconds for one TCP connection to the hub
OWN_CONTROLNET = "controlnet"  # the ControlNet zs_core.models.save writes into a model folder
# Flags that only sampling in this process takes (argparse dest -> flag).
LOCAL_FLAGS = {"controlnet": "--controlnet", "dtype": "--dtype", "offload": "--offload", "vae_tiling": "--vae-tiling"}


# ------------------------------------------------------------------ the reference image


def reference_image(path: str | None) -> np.ndarray | None:
    """``--reference-image PATH`` -> ``(H', W', 3)`` float32 RGB in [0, 1] (alpha dropped),
    or None. ValueError naming the file when it is missing, not an image Pillow reads, or a
    side is outside :data:`~zs_core.protocol.REFERENCE_IMAGE_SIDES`."""
    if path is None:
        return None
    from PIL import Image, UnidentifiedImageError

    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"--reference-image: {path} is not a file")
    try:
        with Image.open(file) as image:
            image.load()
            pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ValueError(f"--reference-image: {path} is not an image ({type(exc).__name__}: {exc})") from None
    low, high = REFERENCE_IMAGE_SIDES
    height, width = pixels.shape[:2]
    if min(height, width) < low or max(height, width) > high:
        raise ValueError(f"--reference-image: {path} is {width}x{height} pixels; each side must be in "
                         f"[{low}, {high}]")
    return pixels


# ------------------------------------------------------------------ in this process


@dataclass(frozen=True)
class ResolvedModel:
    """The model of a run in this process, resolved: what :func:`zs_core.models.load` takes
    and the family the files say."""

    model: str
    controlnet: str | None
    family: str


def reject_local_flags(args, where: str) -> None:
    """Flags of sampling in this process given to a run that samples ``where``: an error."""
    for name, flag in LOCAL_FLAGS.items():
        if getattr(args, name, None) not in (None, False):
            raise ValueError(f"{flag}: only for sampling in this process; {where} chooses its own")


def resolve_local(args, values: dict, reference: np.ndarray | None) -> ResolvedModel:
    """Resolve everything a run in this process loads: model and ControlNet, LoRA files, and
    with a reference image its IP-Adapter. No weight is read."""
    from zs_core import loras, models

    models.choose_device(getattr(args, "device", "auto") or "auto", getattr(args, "dtype", None))  # --device, --dtype
    model = values.get("model") or "tiny"
    controlnet = args.controlnet or own_controlnet(model)
    entries = parse_loras(values.get("loras", ""))
    for name, _weight in entries:
        loras.resolve_file(name)  # ProtocolError("loras") naming a missing or unreadable file
    info = through_hub(lambda: models.check_available(model, controlnet))
    stay_offline_without_hub(info)
    loras.preflight(info.family, entries)  # a LoRA made for the other family, from its header
    if reference is not None:
        resolve_ip_adapter(info.family, values.get("ip_adapter", ""))
    return ResolvedModel(model, controlnet, info.family)


def resolve_ip_adapter(family: str, name: str) -> None:
    """The IP-Adapter ``name`` ("" the family's default) is on this machine (or fetched) and,
    as far as its header tells, made for ``family``."""
    from zs_core import reference

    through_hub(lambda: reference.preflight(family, name))


def own_controlnet(model: str) -> str | None:
    """A model folder's own ``controlnet/`` (what :func:`zs_core.models.save` writes), used
    when no ``--controlnet`` is given; None: the model's default."""
    folder = Path(model).expanduser() / OWN_CONTROLNET
    return str(folder) if (folder / "config.json").is_file() else None


def through_hub(resolve):
    """``resolve()`` against the local cache first; the hub only when the cache does not
    settle it and the hub can be reached. An unreachable hub leaves ``HF_HUB_OFFLINE`` set
    for the rest of the run (loading then reads the cache without retrying the network)."""
    from zs_core.families import ModelLoadError

    if _offline():
        return resolve()
    try:
        with cache_only():
            return resolve()
    except ModelLoadError as cached:  # files missing from the cache (a bad path or name is raised as it is)
        if hub_reachable():
            return resolve()  # online: what is missing is fetched
        os.environ["HF_HUB_OFFLINE"] = "1"
        raise ModelLoadError(f"{cached}\n(the hub, {_endpoint()}, cannot be reached from here, so only the local "
                             "cache counts)") from None


def stay_offline_without_hub(info) -> None:
    """A model or ControlNet from the hub cache is loaded through huggingface_hub, which
    asks the hub for newer files first: without a connection, set ``HF_HUB_OFFLINE``."""
    if not _offline() and any(source.form == "hub" for source in (info.model, info.controlnet) if source) \
            and not hub_reachable():
        os.environ["HF_HUB_OFFLINE"] = "1"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


@contextlib.contextmanager
def cache_only():
    """``HF_HUB_OFFLINE`` set meanwhile: the resolvers read the cache and never the network."""
    before = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = before


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT) -> bool:
    """One TCP connection to the hub's host (``HF_ENDPOINT``), no retries."""
    address = urlsplit(_endpoint())
    port = address.port or (443 if address.scheme == "https" else 80)
    try:
        socket.create_connection((address.hostname, port), timeout=timeout).close()
    except OSError:
        return False
    return True


# ------------------------------------------------------------------ on a server


def server_token(args) -> str:
    """``--token``, else ``ZS_TOKEN`` or the local server's token file."""
    from .blender import NO_TOKEN_HINT, local_token

    token = args.token or local_token()
    if token is None:
        raise ValueError(f"--token: no token for {args.server}; {NO_TOKEN_HINT}")
    return token


def check_server(url: str, token: str, values: dict) -> dict:
    """The model, LoRA and IP-Adapter names of ``values`` are on the server at ``url``
    (its ``GET /v1/models``; also checks the token) -> the listed model. ValueError naming
    the flag, the name and what the server has; a LoRA or IP-Adapter of another family than
    the model too."""
    from blender_addon.client import Client

    listing = Client(url, token, timeout=10).models()
    models = {entry.get("name"): entry for entry in listing.get("models", [])}
    model_flag, lora_flag, adapter_flag = (PARAMETERS[name].flag for name in ("model", "loras", "ip_adapter"))
    name = values.get("model") or listing.get("default", "")
    if not name:  # an older server: no default named, its own model is used
        return {}
    model = models.get(name)
    if model is None:
        raise ValueError(f"{model_flag}: {name!r} is not on the server at {url}; it has {_names(models)} "
                         "(its models folder: <data_dir>/models/)")
    family = model.get("family", "")
    loras = {entry.get("name"): entry for entry in listing.get("loras", [])}
    for lora, _weight in parse_loras(values.get("loras", "")):
        entry = loras.get(lora) or loras.get(lora + ".safetensors")
        if entry is None:
            raise ValueError(f"{lora_flag}: {lora!r} is not on the server at {url}; it has {_names(loras)} "
                             "(its LoRA folder: <data_dir>/models/loras/)")
        _same_family(lora_flag, "LoRA", lora, entry.get("family", ""), name, family)
    adapter_name = values.get("ip_adapter", "")
    if adapter_name:
        adapters = {entry.get("name"): entry for entry in listing.get("ip_adapters", [])}
        entry = adapters.get(adapter_name)
        if entry is None:
            raise ValueError(f"{adapter_flag}: {adapter_name!r} is not on the server at {url}; it has "
                             f"{_names(adapters)} (its IP-Adapter folder: <data_dir>/models/ip_adapters/; leave "
                             f"{adapter_flag} out for the family's default)")
        _same_family(adapter_flag, "IP-Adapter", adapter_name, entry.get("family", ""), name, family)
    return model


def _same_family(flag: str, what: str, name: str, family: str, model: str, model_family: str) -> None:
    if family and model_family and family != model_family:
        raise ValueError(f"{flag}: the {what} {name!r} is made for {family} models; the model {model!r} is "
                         f"{model_family}")


def _names(entries: dict) -> str:
    return ", ".join(repr(name) for name in entries) if entries else "none"
