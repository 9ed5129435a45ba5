"""Switching models on the server: the first load of a model vs loading a second one, a hit
in the LRU of loaded models, and a LoRA swap vs a full reload.

Two models saved to a temporary models folder as diffusers folders (:func:`zs_core.models.save`):
the tiny model with a mid-size UNet (and its ControlNet), so a load costs what it does for
a real checkpoint in proportion (reading and building the UNet and ControlNet dominates).
They are listed and loaded the way the server does it (server/model_registry.py,
server/model_cache.py), after the built-in tiny model the server loads at start (so
imports are warm). The files were just written, so every load reads them from the page
cache: this measures building the modules, not the disk.

LoRAs: two files for the first model in diffusers' format (the tests' writer,
tests/adapter_files.py): the first put on, a swap to the second (its file read and put
on: what a job naming a LoRA for the first time costs) and back to the first (both loaded:
set_adapters only, what jobs alternating between LoRAs cost), against a full reload.
Result line: the swap between loaded LoRAs against a full reload (target <= 0.25); the
swap to a new file, its ratio, and the model loads alongside (not judged).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from _common import MID_UNET, ROOT, report

from server.config import Settings
from server.model_cache import ModelCache, load_entry
from server.model_registry import ModelRegistry
from zs_core import loras, models

sys.path.insert(0, str(ROOT / "tests"))
from adapter_files import write_lora  # noqa: E402

REPEATS = 3


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="zs-bench-models-") as folder:
        data = Path(folder)
        settings = Settings(data_dir=data, token="bench", device="cpu", hub_cache=str(data / "no-hub-cache"))
        mid = models.load_tiny(MID_UNET, device="cpu")
        for name in ("first", "second"):
            models.save(mid, settings.models_dir / name)
        lora_files = [write_lora(data / f"lora-{index}.safetensors", mid, seed=index) for index in (1, 2)]
        del mid
        listing = ModelRegistry(settings).listing()
        entries = {name: listing.models[name] for name in ("tiny", "first", "second")}

        def load(name: str):
            return lambda: load_entry(entries[name], "cpu")

        cache = ModelCache(budget_bytes=10 ** 12)  # room for all: hits stay hits

        def use(name: str):
            with cache.use(name, load(name)):
                pass

        use("tiny")  # the server's default, loaded at start
        first = timed(lambda: use("first"))
        second = timed(lambda: use("second"))
        hits = []
        for _ in range(REPEATS):
            started = time.perf_counter()
            with cache.use("first", load("first")) as components:
                hits.append(time.perf_counter() - started)
        reload = min(timed(load("first")) for _ in range(REPEATS))

        def swap(files):
            return lambda: loras.apply(components, [(str(path), 0.8) for path in files])

        put_on = timed(swap(lora_files[:1]))  # the first LoRA read and put on the model
        swap_new = timed(swap(lora_files[1:]))  # a second file read and put on, the first made inactive
        swap_loaded = min(timed(swap(lora_files[:1])) for _ in range(REPEATS))  # both loaded: set_adapters
        take_off = timed(swap([]))
        model_mb = round(entries["first"].bytes / 1e6, 1)

    for label, seconds in (("first load", first), ("second model load", second), ("LRU hit", min(hits)),
                           ("full reload", reload), ("LoRA put on", put_on), ("LoRA swap (new file)", swap_new),
                           ("LoRA swap (loaded)", swap_loaded), ("LoRAs off", take_off)):
        print(f"{label:>22}: {seconds * 1000:9.2f} ms")
    report("model_switch", swap_loaded, reload, target=0.25, target_applies_to="ratio",
           first_load_seconds=round(first, 4), second_load_seconds=round(second, 4), second_vs_first=round(second / first, 3),
           lru_hit_seconds=round(min(hits), 6), lora_put_on_seconds=round(put_on, 4),
           lora_swap_new_file_seconds=round(swap_new, 4), lora_swap_new_file_ratio=round(swap_new / reload, 3),
           lora_off_seconds=round(take_off, 4), model_weights_mb=model_mb)


if __name__ == "__main__":
    main()
