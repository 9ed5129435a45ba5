"""Animation: time and memory per frame as the shot grows, chunked cross-frame attention
against plain per-frame sampling, measured in the same run.

Each configuration runs in its own process (so its peak resident memory is its own) on
the built-in animated scene at 128x128, tiny model, 4 DDIM steps, chunks of 8 frames:

- plain: today's add-ons, the same iid noise every frame and stock self-attention;
- tma: surface noise with chunked temporal momentum attention (mu 0.5), nothing else;
- full: tma plus temporal UV sync, background sync and pixel sync (the best configuration).

Prints one line per run, then the JSON line: seconds per frame of tma at 64 frames against
plain at 64 frames (target: ratio < 1.5), with per-frame time and peak memory for 8..64
frames (flat per frame = chunking bounds the work per frame).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

from _common import ROOT, report

SIZE, STEPS, CHUNK = 128, 4, 8
# Every sync given explicitly: an animation request's defaults turn them all on.
NO_SYNC = dict(sync_strength=0.0, background_sync=0.0, pixel_sync=0.0)
CONFIGS = {
    "plain": dict(noise="fixed", attention="self", **NO_SYNC),
    "tma": dict(noise="surface", attention="tma", momentum=0.5, **NO_SYNC),
    "full": dict(noise="surface", attention="tma", momentum=0.5, sync_strength=0.9, background_sync=0.9,
                 pixel_sync=0.5),
}
# The 64-frame runs that make the ratios go twice, interleaved; the faster of each counts.
RUNS = [("tma", 8), ("tma", 16), ("tma", 32)] + [("plain", 64), ("tma", 64), ("full", 64)] * 2


def run_one(config: str, frames: int) -> dict:
    """In this process: sample one shot; -> seconds, seconds per frame, peak RSS (MiB)."""
    from zs_core import animation, models, scene
    from zs_core.protocol import Request

    components = models.load("tiny", device="cpu")
    passes = scene.animated_scene(frames=frames, width=SIZE, height=SIZE)
    request = Request(kind="animation", prompt="a painted wooden toy", steps=STEPS, seed=5, chunk=CHUNK,
                      **CONFIGS[config])
    warm_up = scene.animated_scene(frames=2, width=SIZE, height=SIZE)
    animation.sample_frames(components, request, warm_up)  # first-call costs (allocator, kernels)
    started = time.perf_counter()
    result = animation.sample_frames(components, request, passes)
    seconds = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"config": config, "frames": frames, "seconds": round(seconds, 3),
            "seconds_per_frame": round(seconds / frames, 4), "peak_rss_mib": round(peak_mib, 1),
            "peak_key_tokens": result.attention_stats.get("peak_key_tokens")}


def main() -> None:
    results = []
    for config, frames in RUNS:
        output = subprocess.run([sys.executable, __file__, "--one", config, str(frames)], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout
        line = json.loads(output.strip().splitlines()[-1])
        print(f"{config:>5} {frames:3d} frames: {line['seconds_per_frame']:.3f} s/frame, "
              f"peak {line['peak_rss_mib']:.0f} MiB, keys per query {line['peak_key_tokens']}", flush=True)
        results.append(line)
    by = {}
    for line in results:
        key = (line["config"], line["frames"])
        if key not in by or line["seconds"] < by[key]["seconds"]:
            by[key] = line
    tma, plain = by[("tma", 64)], by[("plain", 64)]
    report("animation", tma["seconds_per_frame"], plain["seconds_per_frame"], target=1.5,
           target_applies_to="ratio",
           unit="seconds per frame at 64 frames",
           full_ratio=round(by[("full", 64)]["seconds_per_frame"] / plain["seconds_per_frame"], 3),
           tma_per_frame={f: r["seconds_per_frame"] for (c, f), r in by.items() if c == "tma"},
           tma_peak_rss_mib={f: r["peak_rss_mib"] for (c, f), r in by.items() if c == "tma"},
           flatness_64_vs_8=round(tma["seconds_per_frame"] / by[("tma", 8)]["seconds_per_frame"], 3))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--one":
        print(json.dumps(run_one(sys.argv[2], int(sys.argv[3]))))
    else:
        main()
