"""What this server can load: models with their depth ControlNets, LoRAs and IP-Adapters.

Where entries come from, and the names a request uses for them (``request.model``, the
names in ``request.loras``, ``request.ip_adapter``):

- built-ins: ``tiny`` and ``tiny-sdxl`` (:mod:`zs_core.tiny`);
- ``<data_dir>/models/``: diffusers pipeline folders (``model_index.json``) and single
  checkpoint files, named by their folder or file name (``mymodel``, ``dreamy.safetensors``);
- ``<data_dir>/models/controlnets/``: depth ControlNets (folders with ``config.json``, single
  files; one put in ``models/`` itself counts too); a model folder's own ``controlnet/``
  (what :func:`zs_core.models.save` writes);
- ``<data_dir>/models/loras/*.safetensors`` and ``<data_dir>/models/ip_adapters/`` (weight
  files, or folders that also hold the image encoder), named by their file or folder name;
  a LoRA may also be named without its ``.safetensors``;
- the Hugging Face hub cache (``Settings.hub_cache``): cached pipelines (``model_index.json``),
  ControlNets and LoRA repositories (``pytorch_lora_weights.safetensors``), named by repo id;
- the server's default model as it was configured (a folder, file or hub id), by that text.

A request names entries of this list and nothing else: the server never loads a path or a
hub id a client sent, and a job never makes it download (``hf download`` fills the cache;
the one download a server makes is its default model at start, online). So a client can
neither make the server read its files nor make it fetch gigabytes.

Listing loads no weights: the family comes from configs and tensor names
(:func:`zs_core.families.inspect`) and, for adapters, the shapes in safetensors headers;
sizes from the files. The listing is kept and made again
when one of the folders it read changes (an entry added, removed or renamed). Each model
lists the ControlNets it can use, the one it loads first: the server's ``--controlnet``
(default model only), its own ``controlnet/``, ``controlnets/`` of its family, then the
cache's, the family's default id first.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
from dataclasses import dataclass, replace
from pathlib import Path

from zs_core import families
from zs_core.protocol import ProtocolError, Request, format_loras, parse_loras

from .config import Settings
from .jobs import file_size

log = logging.getLogger("zs.server")

BUILTIN_CONTROLNET = "tiny"  # models.load(builtin, None) pairs a built-in with its tiny ControlNet
MODEL_FILE_SUFFIXES = (".safetensors", ".ckpt")
CONTROLNETS_DIR, LORAS_DIR, IP_ADAPTERS_DIR = "controlnets", "loras", "ip_adapters"
OWN_CONTROLNET_DIR = "controlnet"  # inside a model folder (zs_core.models.save)
ADAPTER_SUFFIXES = (".safetensors", ".bin")
HUB_LORA_FILE = "pytorch_lora_weights.safetensors"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
UNKNOWN = ""  # a family that could not be told from the files

# Where an entry came from ("source" in GET /v1/models).
BUILTIN, FOLDER, FILE, HUB, SETTING = "builtin", "folder", "file", "hub", "setting"


@dataclass(frozen=True)
class Entry:
    """A ControlNet, LoRA or IP-Adapter: its name, family and what the loaders take."""

    name: str
    family: str
    path: str  # a file or folder on this machine, or "tiny"
    source: str


@dataclass(frozen=True)
class ModelEntry:
    """A model a job may name."""

    name: str
    family: str
    path: str  # what zs_core.models.load takes: a built-in name, a folder or a file
    source: str
    controlnets: tuple[Entry, ...]  # usable with this model; the first is loaded
    bytes: int  # the weights on disk (0: not known before loading)
    missing_controlnet: str = ""  # why there is none (then the model cannot run here)


@dataclass(frozen=True)
class Listing:
    default: str
    models: dict[str, ModelEntry]
    controlnets: dict[str, Entry]
    loras: dict[str, Entry]
    ip_adapters: dict[str, Entry]
    skipped: tuple[str, ...] = ()  # what was not listed, and why


@dataclass(frozen=True)
class Resolved:
    """A request's names resolved to entries of the listing."""

    model: ModelEntry
    loras: tuple[tuple[Entry, float], ...]  # (LoRA, weight)
    ip_adapter: Entry | None  # None: the family's default

    def core_request(self, request: Request) -> Request:
        """``request`` as :mod:`zs_core` takes it: the LoRAs and the IP-Adapter as paths."""
        return replace(request, loras=format_loras([(entry.path, weight) for entry, weight in self.loras]),
                       ip_adapter=self.ip_adapter.path if self.ip_adapter is not None else "")

    @property
    def lora_files(self) -> list[tuple[str, float]]:
        return [(entry.path, weight) for entry, weight in self.loras]


class ModelRegistry:
    """The listing of one server, scanned on first use and again when its folders change.
    Thread-safe: the event loop's thread pool and the worker both read it."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._lock = threading.Lock()
        self._listing: Listing | None = None
        self._signature: tuple | None = None

    @property
    def hub_cache(self) -> Path:
        if self.settings.hub_cache:
            return Path(self.settings.hub_cache).expanduser()
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE)

    def listing(self) -> Listing:
        """The current listing (stat calls only, unless a folder changed since the last scan)."""
        signature = self._folders_signature()
        with self._lock:
            if self._listing is None or signature != self._signature:
                self._listing = scan(self.settings, self.hub_cache)
                self._signature = signature
                for note in self._listing.skipped:
                    log.warning("model list: %s", note)
            return self._listing

    def resolve(self, request: Request) -> Resolved:
        """The entries ``request`` names -> Resolved; ProtocolError naming the field, the value
        and what this server has when one is not listed, or a LoRA / IP-Adapter is of
        another family than the model."""
        listing = self.listing()
        return resolve(listing, request)

    def _folders_signature(self) -> tuple:
        """Modification times of every folder the scan reads whose entries it lists."""
        models = self.settings.models_dir
        folders = [models, models / CONTROLNETS_DIR, models / LORAS_DIR, models / IP_ADAPTERS_DIR]
        folders += _subfolders(models)
        hub = self.hub_cache
        folders.append(hub)
        for repo in _subfolders(hub):
            folders += [repo / "snapshots", repo / "refs" / "main"]
        return tuple((str(path), _mtime(path)) for path in folders)


# ---------------------------------------------------------------- resolving a request


def resolve(listing: Listing, request: Request) -> Resolved:
    name = request.model or listing.default
    model = listing.models.get(name)
    if model is None:
        raise ProtocolError("model", f"{name!r} is not on this server; it has {_names(listing.models)} "
                                     "(GET /v1/models lists them)")
    if not model.controlnets:
        raise ProtocolError("model", f"{name!r} has no depth ControlNet on this server: {model.missing_controlnet}")
    loras = []
    for lora_name, weight in parse_loras(request.loras):
        entry = listing.loras.get(lora_name) or _lora_without_suffix(listing, lora_name)
        if entry is None:
            raise ProtocolError("loras", f"{lora_name!r} is not on this server; it has {_names(listing.loras)}")
        _same_family("loras", "LoRA", entry, model)
        loras.append((entry, weight))
    adapter = None
    if request.ip_adapter:
        adapter = listing.ip_adapters.get(request.ip_adapter)
        if adapter is None:
            raise ProtocolError("ip_adapter", f"{request.ip_adapter!r} is not on this server; it has "
                                              f"{_names(listing.ip_adapters)} (empty: the default for the family)")
        _same_family("ip_adapter", "IP-Adapter", adapter, model)
    return Resolved(model, tuple(loras), adapter)


def _lora_without_suffix(listing: Listing, name: str) -> Entry | None:
    return listing.loras.get(name + ".safetensors")


def _same_family(field_name: str, what: str, entry: Entry, model: ModelEntry) -> None:
    if UNKNOWN not in (entry.family, model.family) and entry.family != model.family:
        raise ProtocolError(field_name, f"the {what} {entry.name!r} is for {entry.family} models; the model "
                                        f"{model.name!r} is {model.family}")


def _names(entries: dict) -> str:
    return ", ".join(repr(name) for name in entries) if entries else "none"


# ---------------------------------------------------------------- scanning


def scan(settings: Settings, hub_cache: Path) -> Listing:
    """Everything listed from the folders and the cache; entries that cannot be read are
    left out, with the reason in ``Listing.skipped``."""
    skipped: list[str] = []
    models_dir = settings.models_dir
    found: list[tuple[Entry, int, Entry | None]] = []  # a model, its weights' bytes, its own ControlNet
    controlnets: dict[str, Entry] = {}
    for name, family in families.BUILTIN.items():
        found.append((Entry(name, family, name, BUILTIN), 0, None))
    for path in _children(models_dir) + _children(models_dir / CONTROLNETS_DIR):
        if path.name in (CONTROLNETS_DIR, LORAS_DIR, IP_ADAPTERS_DIR) or path.name.startswith("."):
            continue
        if path.is_file() and path.suffix not in MODEL_FILE_SUFFIXES:
            continue
        checkpoint = _inspect(path, skipped)
        if checkpoint is None:
            continue
        entry = Entry(path.name, checkpoint.family.name, str(path), FOLDER if path.is_dir() else FILE)
        if checkpoint.kind == families.CONTROLNET:
            controlnets[entry.name] = entry
        elif path.parent == models_dir:
            found.append((entry, _weights_bytes(path), _own_controlnet(path, skipped)))
    hub = _scan_hub(hub_cache, skipped)
    found += [(entry, _weights_bytes(Path(entry.path)), None) for entry in hub["models"]]
    controlnets.update((entry.name, entry) for entry in hub["controlnets"])

    default = settings.default_model
    if default not in {entry.name for entry, _, _ in found}:
        path = Path(default).expanduser()
        # Given as a folder or file (a hub id is listed from the cache, or not at all: then
        # zs serve says what to download).
        checkpoint = _inspect(path, skipped) if path.exists() else None
        if checkpoint is not None and checkpoint.kind == families.PIPELINE:
            found.append((Entry(default, checkpoint.family.name, str(path), SETTING), _weights_bytes(path),
                          _own_controlnet(path, skipped)))

    models = {}
    for entry, size, own in found:
        if entry.name in models:
            skipped.append(f"{entry.path}: a second model named {entry.name!r} (the first one is listed)")
            continue
        configured = settings.controlnet if entry.name == default else None
        usable, why = _controlnets_for(entry, own, controlnets, configured, skipped)
        models[entry.name] = ModelEntry(entry.name, entry.family, entry.path, entry.source, usable, size, why)
    loras = {**_scan_adapters(models_dir / LORAS_DIR, (".safetensors",), False, _lora_family, skipped),
             **{entry.name: entry for entry in hub["loras"]}}
    ip_adapters = _scan_adapters(models_dir / IP_ADAPTERS_DIR, ADAPTER_SUFFIXES, True, _ip_adapter_family, skipped)
    return Listing(default, models, controlnets, loras, ip_adapters, tuple(skipped))


def _controlnets_for(model: Entry, own: Entry | None, known: dict[str, Entry], configured: str | None,
                     skipped: list[str]) -> tuple[tuple[Entry, ...], str]:
    """The ControlNets a model can use, in the order they are tried, and when there is
    none, what to do about it."""
    chosen: list[Entry] = []
    if configured:
        entry = known.get(configured) or _configured_controlnet(configured, skipped)
        if entry is not None:
            chosen.append(entry)
    if model.source == BUILTIN:
        chosen.append(Entry(BUILTIN_CONTROLNET, model.family, BUILTIN_CONTROLNET, BUILTIN))
        return tuple(_unique(chosen)), ""
    if own is not None:
        chosen.append(own)
    default_id = families.get(model.family).default_controlnet
    fitting = [entry for entry in known.values() if entry.family == model.family]
    fitting.sort(key=lambda entry: (entry.source == HUB, entry.name != default_id, entry.name))
    chosen += fitting
    why = "" if chosen else (f"no {model.family} depth ControlNet was found; run `hf download {default_id}` "
                             f"or put one in the {CONTROLNETS_DIR}/ folder of the server's models folder")
    return tuple(_unique(chosen)), why


def _unique(entries: list[Entry]) -> list[Entry]:
    seen, out = set(), []
    for entry in entries:
        if entry.path not in seen:
            seen.add(entry.path)
            out.append(entry)
    return out


def _configured_controlnet(name: str, skipped: list[str]) -> Entry | None:
    """The server's ``--controlnet`` as given (a folder or file; a cached hub id is listed)."""
    if name == BUILTIN_CONTROLNET:
        return Entry(name, UNKNOWN, name, BUILTIN)
    path = Path(name).expanduser()
    checkpoint = _inspect(path, skipped) if path.exists() else None
    if checkpoint is None or checkpoint.kind != families.CONTROLNET:
        return None  # zs serve's check names what is missing
    return Entry(name, checkpoint.family.name, str(path), SETTING)


def _own_controlnet(model: Path, skipped: list[str]) -> Entry | None:
    """The ``controlnet/`` folder inside a model folder, as :func:`zs_core.models.save` writes it."""
    folder = model / OWN_CONTROLNET_DIR
    if not (model.is_dir() and (folder / "config.json").is_file()):
        return None
    checkpoint = _inspect(folder, skipped)
    if checkpoint is None or checkpoint.kind != families.CONTROLNET:
        return None
    return Entry(f"{model.name}/{OWN_CONTROLNET_DIR}", checkpoint.family.name, str(folder), FOLDER)


def _scan_adapters(folder: Path, suffixes: tuple[str, ...], folders: bool, family_of,
                   skipped: list[str]) -> dict[str, Entry]:
    found = {}
    for path in _children(folder):
        if path.name.startswith(".") or (path.is_dir() and not folders) or (path.is_file()
                                                                            and path.suffix not in suffixes):
            continue
        found[path.name] = Entry(path.name, family_of(path, skipped), str(path), FOLDER if path.is_dir() else FILE)
    return found


def _scan_hub(cache: Path, skipped: list[str]) -> dict[str, list[Entry]]:
    """Pipelines, ControlNets and LoRA repositories in the hub cache (each repo's ``main``
    revision, else its newest), by repo id."""
    found: dict[str, list[Entry]] = {"models": [], "controlnets": [], "loras": []}
    if not cache.is_dir():
        return found
    from huggingface_hub import scan_cache_dir

    try:
        info = scan_cache_dir(cache)
    except (OSError, ValueError) as exc:
        skipped.append(f"the hub cache {cache} could not be read: {exc}")
        return found
    for repo in sorted(info.repos, key=lambda repo: repo.repo_id):
        if repo.repo_type != "model" or not repo.revisions:
            continue
        revision = max(repo.revisions, key=lambda revision: ("main" in revision.refs, revision.last_modified))
        snapshot = Path(revision.snapshot_path)
        if (snapshot / "model_index.json").is_file() or (snapshot / "config.json").is_file():
            checkpoint = _inspect(snapshot, skipped, repo.repo_id)
            if checkpoint is not None:
                kind = "models" if checkpoint.kind == families.PIPELINE else "controlnets"
                found[kind].append(Entry(repo.repo_id, checkpoint.family.name, str(snapshot), HUB))
        elif (snapshot / HUB_LORA_FILE).is_file():
            lora = snapshot / HUB_LORA_FILE
            found["loras"].append(Entry(repo.repo_id, _lora_family(lora, skipped), str(lora), HUB))
    return found


# ---------------------------------------------------------------- families, from the files


def _inspect(path: Path, skipped: list[str], shown: str | None = None):
    """What :func:`zs_core.families.inspect` tells of ``path`` (family, pipeline or
    ControlNet), or None, noted in ``skipped``, when the files do not say."""
    try:
        return families.inspect(str(path))
    except Exception as exc:  # any unreadable file is one entry left out, not a failed listing
        skipped.append(f"{shown or path}: not listed ({exc})")
        return None


def _lora_family(path: Path, skipped: list[str]) -> str:
    """The family a LoRA file was made for, from its safetensors header (no weight read):
    a second text encoder's layers say sdxl; else the text width its cross-attention keys
    read (:func:`zs_core.loras.known_text_widths`). Unknown when the file does not say (a
    pickled ``.bin``, a UNet-only LoRA without cross-attention layers): the job's
    :func:`zs_core.loras.apply` then checks it against the model."""
    shapes = _header_shapes(path, skipped)
    if any(name.startswith(("text_encoder_2.", "lora_te2_")) for name in shapes):
        return "sdxl"
    for name, shape in shapes.items():
        # The down (A) matrix of a cross-attention key: (rank, text width), in diffusers',
        # PEFT's and kohya's key names alike.
        if "attn2" in name and "to_k" in name and any(down in name for down in ("lora_A", "lora_down", "down.weight")):
            return _text_width_family(shape)
    return UNKNOWN


def _ip_adapter_family(path: Path, skipped: list[str]) -> str:
    """The family an IP-Adapter was made for: the text width its image keys map to
    (``ip_adapter.N.to_k_ip.weight``: (layer width, text width)); a folder by its one
    ``.safetensors`` weights file."""
    if path.is_dir():
        weights = [child for child in _children(path) if child.suffix == ".safetensors"]
        if len(weights) != 1:
            return UNKNOWN
        path = weights[0]
    for name, shape in _header_shapes(path, skipped).items():
        if name.endswith("to_k_ip.weight"):
            return _text_width_family(shape)
    return UNKNOWN


def _text_width_family(shape: list[int]) -> str:
    from zs_core import loras

    return loras.known_text_widths().get(shape[1], UNKNOWN) if len(shape) == 2 else UNKNOWN


def _header_shapes(path: Path, skipped: list[str]) -> dict[str, list[int]]:
    """Tensor name -> shape from a ``.safetensors`` header (8-byte little-endian length,
    then JSON); {} for other files."""
    if path.suffix != ".safetensors":
        return {}
    try:
        with open(path, "rb") as handle:
            length = struct.unpack("<Q", handle.read(8))[0]
            if length > min(families.MAX_HEADER_BYTES, path.stat().st_size - 8):
                raise ValueError(f"a header of {length} bytes does not fit the file")
            header = json.loads(handle.read(length))
        return {name: list(value["shape"]) for name, value in header.items() if name != "__metadata__"}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, struct.error) as exc:
        skipped.append(f"{path}: not a readable .safetensors file ({exc}); listed without a family")
        return {}


# ---------------------------------------------------------------- files


def _weights_bytes(path: Path) -> int:
    """Bytes of the weight files at ``path`` (a file, or a folder and its subfolders);
    symlinks into the hub cache's blobs are followed."""
    if path.is_file():
        return file_size(path)
    total = 0
    for root, _dirs, files in os.walk(path):
        total += sum(file_size(Path(root) / name) for name in files if name.endswith(WEIGHT_SUFFIXES))
    return total


def _children(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError:
        return []


def _subfolders(folder: Path) -> list[Path]:
    return [path for path in _children(folder) if path.is_dir()]


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None
