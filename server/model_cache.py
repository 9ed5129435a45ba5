"""The loaded models: an LRU of :class:`zs_core.models.Components` bounded by a memory budget.

The worker asks for the model of each job (:meth:`ModelCache.use`): a model in the cache
is used as it is (and becomes the most recently used), another one is loaded. Before a
load, least recently used models are dropped until the new one's weights (their size on
disk) fit in the budget beside the rest; after it, again with its real size (its
parameter and buffer bytes). The model a job is using is never dropped, and a model alone
over the budget is still loaded (the budget then holds just it).

The budget (``Settings.model_memory_bytes``; 0: :func:`default_budget`) counts weights only:
what a job needs besides (activations, attention, decoded views) is the headroom left
out of it.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

log = logging.getLogger("zs.server")

GIB = 1024 ** 3
CUDA_HEADROOM = (0.3, 3 * GIB)  # left to the jobs on a GPU: a share of its memory, at least this
CPU_SHARE = 0.5  # of the RAM, on a CPU (or Apple's shared memory)
FALLBACK_RAM = 8 * GIB  # when the platform does not say how much RAM there is


def default_budget(device) -> int:
    """Bytes of weights to keep loaded on ``device`` (a torch.device): a CUDA device's
    memory less the headroom, or a share of the machine's RAM."""
    if device.type == "cuda":
        import torch

        total = torch.cuda.get_device_properties(device).total_memory
        return int(total - max(total * CUDA_HEADROOM[0], CUDA_HEADROOM[1]))
    return int(physical_memory() * CPU_SHARE)


def physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not a POSIX system
        return FALLBACK_RAM


def components_bytes(components) -> int:
    """The parameter and buffer bytes of every module of ``components``."""
    total = 0
    for module in components.modules().values():
        total += sum(p.numel() * p.element_size() for p in module.parameters())
        total += sum(b.numel() * b.element_size() for b in module.buffers())
    return total


@dataclass
class Loaded:
    name: str
    components: object
    bytes: int
    users: int = 0  # jobs using it now: never dropped while > 0


class ModelCache:
    """Thread-safe: the worker loads and uses models, HTTP handlers read what is loaded.
    Loads are serialised (one at a time) and run without the state lock held."""

    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._loaded: OrderedDict[str, Loaded] = OrderedDict()  # least recently used first
        self.loading: str | None = None  # the model being loaded now
        self.loads = 0  # loads so far (evicted models loaded again count again)

    def put(self, name: str, components) -> None:
        """Add an already loaded model (the server's default at start) as the most recent."""
        with self._lock:
            self._loaded[name] = Loaded(name, components, components_bytes(components))
            self._loaded.move_to_end(name)
            dropped = self._evict_locked(keep=name)
        _dropped(dropped, self.budget)

    def get(self, name: str):
        """The loaded model ``name`` or None; does not count as a use."""
        with self._lock:
            entry = self._loaded.get(name)
            return entry.components if entry is not None else None

    def recent(self):
        """The most recently used model, or None when none is loaded."""
        with self._lock:
            return next(reversed(self._loaded.values())).components if self._loaded else None

    @contextmanager
    def use(self, name: str, load: Callable[[], object], expected_bytes: int = 0,
            on_load: Callable[[str, float | None], None] | None = None) -> Iterator[object]:
        """The model ``name``, loaded with ``load()`` if it is not in the cache, held
        against eviction until the block ends. ``on_load(name, None)`` is called before a
        load and ``on_load(name, seconds)`` after it; ``expected_bytes`` (its weights on
        disk) makes room before the load."""
        with self._load_lock:
            entry = self._take(name)
            if entry is None:
                entry = self._load(name, load, expected_bytes, on_load)
        try:
            yield entry.components
        finally:
            with self._lock:
                entry.users -= 1
                entry.bytes = components_bytes(entry.components)  # adapters loaded by the job count too
                dropped = self._evict_locked(keep=name)
            _dropped(dropped, self.budget)

    def loaded(self) -> list[dict]:
        """``[{"name", "bytes", "in_use"}]``, least recently used first."""
        with self._lock:
            return [{"name": e.name, "bytes": e.bytes, "in_use": e.users > 0} for e in self._loaded.values()]

    def used_bytes(self) -> int:
        with self._lock:
            return sum(entry.bytes for entry in self._loaded.values())

    # ------------------------------------------------------------ internals

    def _take(self, name: str) -> Loaded | None:
        with self._lock:
            entry = self._loaded.get(name)
            if entry is not None:
                self._loaded.move_to_end(name)
                entry.users += 1
            return entry

    def _load(self, name: str, load: Callable[[], object], expected_bytes: int,
              on_load: Callable[[str, float | None], None] | None) -> Loaded:
        with self._lock:
            dropped = self._evict_locked(keep=None, room=expected_bytes)
        _dropped(dropped, self.budget)
        if on_load is not None:
            on_load(name, None)
        self.loading = name
        started = time.perf_counter()
        try:
            components = load()
        finally:
            self.loading = None
        seconds = time.perf_counter() - started
        entry = Loaded(name, components, components_bytes(components), users=1)
        with self._lock:
            self._loaded[name] = entry
            self.loads += 1
            dropped = self._evict_locked(keep=name)
        _dropped(dropped, self.budget)
        log.info("model %s loaded in %.2f s (%d bytes of weights; %d of %d bytes in use)", name, seconds,
                 entry.bytes, self.used_bytes(), self.budget)
        if on_load is not None:
            on_load(name, seconds)
        return entry

    def _evict_locked(self, keep: str | None, room: int = 0) -> list[str]:
        """Drop least recently used models, none in use nor ``keep``, until ``room`` more
        bytes fit in the budget -> the names dropped."""
        dropped = []
        for name in list(self._loaded):
            if sum(entry.bytes for entry in self._loaded.values()) + room <= self.budget:
                break
            entry = self._loaded[name]
            if name == keep or entry.users > 0:
                continue
            del self._loaded[name]
            dropped.append(name)
        return dropped


def _dropped(names: list[str], budget: int) -> None:
    """Give what dropped models held back to the device now, not at some later collection
    (called without the lock: a collection takes a while)."""
    if not names:
        return
    log.info("models dropped from memory (budget %d bytes): %s", budget, ", ".join(names))
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_entry(entry, device: str, hub_cache: str | None = None, dtype: str | None = None):
    """Load a model of the server's list (a :class:`.model_registry.ModelEntry`) with its
    first ControlNet -> Components named as the list names them. ``hub_cache``: where a
    single file's configs are looked up (None: huggingface_hub's cache); ``dtype`` None:
    the device's default."""
    from zs_core import models

    controlnet = entry.controlnets[0]
    # "tiny" is a built-in's own tiny ControlNet, or a random one made for another model's UNet.
    # The family's inpainting ControlNet joins when it is on disk (completion views use it).
    components = models.load(entry.path, controlnet.path, device=device, dtype=dtype, cache_dir=hub_cache,
                             inpaint_controlnet="auto")
    components.name, components.controlnet_name = entry.name, controlnet.name
    return components


def check_files(entry, cache_dir: str | None = None) -> None:
    """The files of a listed model and of its ControlNet are all there (no weight is read);
    ModelLoadError naming every missing one."""
    from zs_core import models

    from .model_registry import BUILTIN

    if not entry.controlnets:
        raise models.ModelLoadError(f"model: {entry.name!r} has no depth ControlNet: {entry.missing_controlnet}")
    if entry.source != BUILTIN:
        models.check_available(entry.path, entry.controlnets[0].path, cache_dir=cache_dir)
