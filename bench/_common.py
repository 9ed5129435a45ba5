"""Shared helpers for benchmarks: repo on sys.path, best-of timing, the JSON result line."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import zs_core  # noqa: E402,F401  before any diffusers import: it hides a transformers warning ZS has no use for


# A UNet large enough to dominate a step (about 90 MB of fp32 weights) with head dimensions
# 32-64 like SD1.5's 40-160 (attention_head_dim is the head count here), so attention takes
# a realistic share of the time: the benchmarks' stand-in for a real model.
MID_UNET = dict(
    block_out_channels=(128, 256, 256),
    attention_head_dim=4,
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D",) * 3,
    up_block_types=("CrossAttnUpBlock2D",) * 3,
)


def best_of(function, repeats: int = 3) -> float:
    """Fastest wall time of ``repeats`` calls (the least disturbed by a noisy machine)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def interleaved(functions: dict, repeats: int = 3) -> dict[str, float]:
    """Best time of each function, running them in turns so drift hits all alike."""
    times = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            started = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - started)
    return {name: min(values) for name, values in times.items()}


def report(bench: str, seconds: float, baseline_seconds: float, target: float | None, *, target_applies_to: str,
           **extra) -> None:
    """Print the one JSON line every benchmark ends with.

    ``target_applies_to`` names the key of this line the target is compared with
    ("seconds", "ratio" or one of ``extra``'s keys): a reader must not have to guess
    whether 0.05 means seconds or a ratio."""
    line = {"bench": bench, "seconds": round(seconds, 4), "baseline_seconds": round(baseline_seconds, 4),
            "ratio": round(seconds / baseline_seconds, 3), "target": target}
    line.update(extra)
    _print_line(line, target_applies_to)


def report_value(bench: str, value: float, baseline: float, target: float | None, unit: str, *,
                 target_applies_to: str, **extra) -> None:
    """Print the one JSON line of a benchmark that measures a quantity other than time:
    ``value`` against ``baseline`` measured in the same run, their ratio, and the target
    (None: the number is reported, not judged); ``target_applies_to`` names the key the
    target is compared with, as in :func:`report`."""
    line = {"bench": bench, "value": round(value, 4), "baseline": round(baseline, 4),
            "ratio": round(value / baseline, 3), "target": target, "unit": unit}
    line.update(extra)
    _print_line(line, target_applies_to)


def _print_line(line: dict, target_applies_to: str) -> None:
    if target_applies_to not in line or target_applies_to in ("bench", "target", "unit"):
        raise ValueError(f"target_applies_to: expected a measured key of the result line "
                         f"({', '.join(key for key in line if key not in ('bench', 'target'))}), "
                         f"got {target_applies_to!r}")
    line["target_applies_to"] = target_applies_to
    print(json.dumps(line))
