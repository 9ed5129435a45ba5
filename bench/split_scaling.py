"""Scaling of one texture job split over workers, by simulation: parallel efficiency at 1, 2,
4 and 8 workers, and what the UV sync's all-reduce costs per step.

The model is a timed stand-in: UNet and ControlNet sleep a fixed time per view in the batch
(a GPU's time, which sleeping threads overlap as GPUs would) and predict a fixed fraction of
the latents. Everything else is real: the job's surface noise, the conditioning, the
scheduler, the UV sync hook with its pyramid, and the Gloo all-reduce of its texel sums
between the workers. The workers are threads of this process on 127.0.0.1. This is the
sync-only split (``self`` attention), the case the workers' share of the model time
dominates.

Job: 64 views of 64x64 (the built-in sphere), 5 steps, 50 ms of model time per view and step.
Baseline, measured in the same run: the same job on one worker. Two efficiencies at W
workers, T1 / (W * T_W): of a denoising step (the steady state: the time between worker 0's
first and last step reports, per step) and of the whole job. Every worker also draws the
job's noise, encodes the prompt and builds the sync's pyramid (about 0.5 s of CPU here);
on a cluster each does that on its own CPU, but here 8 simulated workers share 2 cores, so
the whole job's efficiency understates a cluster's. The target (>= 0.8 at 8 workers)
applies to the step. Prints the table, then the JSON line.
"""

from __future__ import annotations

import copy
import os
import socket
import threading
import time

import torch

try:
    from _common import report_value
except ModuleNotFoundError:  # imported as bench.split_scaling (by the tests)
    from bench._common import report_value

from zs_core import distributed, models, scene
from zs_core.protocol import Request

VIEWS, SIZE, STEPS = 64, 64, 5
SECONDS_PER_VIEW = 0.05  # model time per view per step (UNet and ControlNet together)
WORKERS = (1, 2, 4, 8)
TARGET = 0.8


class TimedStandIn(torch.nn.Module):
    """A UNet or ControlNet stand-in: sleeps ``seconds`` per item of the batch, then predicts
    ``-0.1 x`` (UNet) or no residuals (ControlNet). Takes the real model's config."""

    def __init__(self, config, seconds: float, controlnet: bool):
        super().__init__()
        self.config, self.seconds, self.controlnet = config, seconds, controlnet
        self.calls = 0

    @property
    def attn_processors(self) -> dict:
        return {}

    def set_attn_processor(self, processors) -> None:
        pass

    def forward(self, sample: torch.Tensor, *args, **kwargs):
        self.calls += 1
        time.sleep(self.seconds * sample.shape[0])
        if self.controlnet:
            return None, None
        return (-0.1 * sample,)


def stand_in(tiny, seconds_per_view: float):
    """The tiny model with timed stand-ins for UNet and ControlNet (half the time each; the
    batch holds both CFG halves, so per view it is seconds_per_view)."""
    components = copy.copy(tiny)
    per_item = seconds_per_view / 4.0
    components.unet = TimedStandIn(tiny.unet.config, per_item, controlnet=False)
    components.controlnet = TimedStandIn(tiny.controlnet.config, per_item, controlnet=True)
    return components


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class TimedReduce:
    """A collective that times its all-reduces (the UV sync's texel sums)."""

    def __init__(self, inner):
        self.inner, self.rank, self.size = inner, inner.rank, inner.size
        self.seconds, self.calls, self.bytes = 0.0, 0, 0

    def all_gather(self, tensor):
        return self.inner.all_gather(tensor)

    def all_reduce(self, tensor):
        started = time.perf_counter()
        out = self.inner.all_reduce(tensor)
        if tensor.numel() > 1:  # not the cancel flag
            self.seconds += time.perf_counter() - started
            self.calls += 1
            self.bytes += tensor.numel() * 4
        return out


def run_split(tiny, request: Request, passes, workers: int) -> tuple[float, float, list, TimedReduce]:
    """(wall seconds, seconds per step in the loop, each worker's result, worker 0's timed
    collective)."""
    port, results, collectives = free_port(), [None] * workers, [None] * workers
    models_ = [stand_in(tiny, SECONDS_PER_VIEW) for _ in range(workers)]
    reported: list[float] = []  # worker 0's step reports

    def run(rank: int) -> None:
        inner = distributed.Solo() if workers == 1 else \
            distributed.GlooCollective("127.0.0.1", port, rank, workers, name="bench")
        collectives[rank] = TimedReduce(inner)
        progress = (lambda _step: reported.append(time.perf_counter())) if rank == 0 else None
        results[rank] = distributed.sample_shard(models_[rank], request, passes, collectives[rank],
                                                 progress=progress)

    started = time.perf_counter()
    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    per_step = (reported[-1] - reported[0]) / (len(reported) - 1)
    return time.perf_counter() - started, per_step, results, collectives[0]


def measure(tiny=None, views: int = VIEWS, steps: int = STEPS, workers=WORKERS) -> list[dict]:
    """One row per worker count: seconds, efficiency, the all-reduce's share."""
    tiny = tiny or models.load("tiny", device="cpu")
    passes = scene.sphere_scene(views=views, width=SIZE, height=SIZE, texture_size=64)
    request = Request(prompt="stone", steps=steps, seed=1, noise="surface", attention="self", sync_strength=1.0)
    rows, single = [], None
    for count in workers:
        seconds, per_step, results, collective = run_split(tiny, request, passes, count)
        latents = torch.cat([result.latents for result in results])
        if single is None:
            single = (seconds, latents, per_step)
        rows.append({"workers": count, "seconds": seconds, "efficiency": single[0] / (count * seconds),
                     "step_seconds": per_step, "step_efficiency": single[2] / (count * per_step),
                     "reduce_seconds_per_step": collective.seconds / max(collective.calls, 1),
                     "reduce_bytes_per_step": collective.bytes // max(collective.calls, 1),
                     "max_difference": float((latents - single[1]).abs().max())})
    return rows


def main() -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    rows = measure()
    print(f"simulated split: {VIEWS} views of {SIZE}^2, {STEPS} steps, {SECONDS_PER_VIEW * 1000:.0f} ms of model "
          f"per view and step, self attention + UV sync; load average {os.getloadavg()[0]:.2f}")
    print(f"{'workers':>8}{'s/step':>8}{'step eff.':>10}{'job s':>8}{'job eff.':>9}{'all-reduce/step':>17}"
          f"{'bytes/step':>12}{'max diff':>10}")
    for row in rows:
        print(f"{row['workers']:>8}{row['step_seconds']:>8.3f}{row['step_efficiency']:>10.2f}"
              f"{row['seconds']:>8.2f}{row['efficiency']:>9.2f}"
              f"{row['reduce_seconds_per_step'] * 1000:>14.1f} ms{row['reduce_bytes_per_step']:>12}"
              f"{row['max_difference']:>10.1e}")
    last = rows[-1]
    report_value("split_scaling", last["step_efficiency"], 1.0, TARGET, "parallel efficiency of a step",
                 target_applies_to="value", workers=last["workers"], step_seconds=round(last["step_seconds"], 4),
                 one_worker_step_seconds=round(rows[0]["step_seconds"], 4),
                 job_efficiency=round(last["efficiency"], 3), seconds=round(last["seconds"], 3),
                 one_worker_seconds=round(rows[0]["seconds"], 3),
                 reduce_ms_per_step=round(last["reduce_seconds_per_step"] * 1000, 2),
                 reduce_bytes_per_step=last["reduce_bytes_per_step"])


if __name__ == "__main__":
    main()
