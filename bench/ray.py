"""What ``zs serve --ray`` costs, and how a ``zs farm`` batch scales over Ray workers.

1. Overhead: the same tiny texture job (the built-in sphere, 4 views of 64x64, 4 steps, the
   built-in tiny model, 2 torch threads) through the HTTP API of a server with the embedded
   worker and of a ``--ray`` server with one worker on a local cluster, submit -> ``done``
   event wall time, best of 3, the two interleaved. The ratio (Ray / embedded) is the
   target's (<= 1.10): the object store round trip of the passes and results, the event
   drain and the actor call.
2. Batch throughput, by simulation: a 32-job ``zs farm`` batch (the same job, one seed each)
   on a ``--ray`` server with 1, 2 and 4 workers. The workers' model is a timed stand-in
   (bench/split_scaling.py's: UNet and ControlNet sleep 50 ms per view and step, a GPU's
   time, which sleeping processes overlap as GPUs would); everything else is real: the
   farm, HTTP, the pool, the sampler's other work, the bake, the metrics and the files.
   That other work is CPU time the workers share on this machine's cores, so at 4 workers
   the efficiency understates a cluster of 4 machines. Reported, not judged.

Prints the table, then the JSON line (the overhead).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

try:
    from _common import ROOT, interleaved, report
except ModuleNotFoundError:  # imported as bench.ray
    from bench._common import ROOT, interleaved, report

# Run as a script, this file's folder comes first on sys.path, where its own name would
# shadow the ray package.
BENCH = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != BENCH]

import ray  # noqa: E402

from blender_addon.client import Client  # noqa: E402
from server import ray_pool  # noqa: E402
from server.ray_actor import JobActor  # noqa: E402
from zs_cli import farm  # noqa: E402
from zs_core import scene  # noqa: E402
from zs_core.protocol import Request  # noqa: E402

VIEWS, SIZE, STEPS = 4, 64, 4
REPEATS = 3
TARGET = 1.10
BATCH_JOBS = 32
WORKERS = (1, 2, 4)
SECONDS_PER_VIEW = 0.05  # the stand-in model's time per view and step
CLUSTER_CPUS = 8  # logical CPUs of the local cluster: enough for 4 workers of one thread


class TimedActor(JobActor):
    """A Ray worker whose models are timed stand-ins (the batch table's simulated GPU)."""

    def _load(self, entry):
        from bench.split_scaling import stand_in

        return stand_in(super()._load(entry), SECONDS_PER_VIEW)


def server_args(ray_mode: str, workers: int | None = None) -> SimpleNamespace:
    return SimpleNamespace(ray=ray_mode, ray_workers=workers, default_model="tiny", device="cpu")


def run_one(client: Client, request: dict, npz: bytes) -> None:
    job_id = client.submit(request, npz)
    for name, data in client.events(job_id):
        if name in ("failed", "cancelled"):
            raise RuntimeError(f"job {job_id} {name}: {data}")


def overhead(folder: Path, npz: bytes) -> dict[str, float]:
    """Best submit -> done time of the tiny job on each server, interleaved."""
    request = Request(kind="texture", prompt="bronze", steps=STEPS, texture_size=SIZE).validate().to_dict()
    os.environ["ZS_RAY_THREADS"] = "2"  # the embedded worker's torch uses both cores too
    with contextlib.ExitStack() as stack:
        embedded = Client(*stack.enter_context(farm.local_server(server_args("off"), folder / "embedded")),
                          timeout=60)
        on_ray = Client(*stack.enter_context(farm.local_server(server_args("auto", 1), folder / "ray")), timeout=60)
        for client in (embedded, on_ray):  # warm: the first job's one-time costs
            run_one(client, request, npz)
        return interleaved({"embedded": lambda: run_one(embedded, request, npz),
                            "ray": lambda: run_one(on_ray, request, npz)}, repeats=REPEATS)


def batch_seconds(folder: Path, npz_path: Path, workers: int) -> float:
    """Wall time of the 32-job farm batch on a server with ``workers`` simulated workers."""
    batch = folder / f"batch{workers}.toml"
    jobs = "".join(f'[[job]]\nname = "j{index:02d}"\nsource = "{npz_path.name}"\nseed = {index}\n\n'
                   for index in range(BATCH_JOBS))
    batch.write_text(f'[defaults]\nprompt = "bronze"\nsteps = {STEPS}\n\n' + jobs)
    os.environ["ZS_RAY_THREADS"] = "1"
    ray_pool.JobActor = TimedActor
    try:
        with farm.local_server(server_args("auto", workers), folder / f"server{workers}") as (url, token):
            args = SimpleNamespace(batch=str(batch), out=str(folder / f"out{workers}"), server=url, token=token,
                                   parallel=2 * max(WORKERS), ray="off")
            started = time.perf_counter()
            with contextlib.redirect_stderr(io.StringIO()):  # 32 jobs' bars
                code = farm.farm(args)
            seconds = time.perf_counter() - started
    finally:
        ray_pool.JobActor = JobActor
    if code != 0:
        raise RuntimeError(f"the batch on {workers} workers failed")
    return seconds


def main() -> None:
    os.environ.setdefault("RAY_AUTH_TOKEN", os.urandom(32).hex())
    ray.init(address="local", num_cpus=CLUSTER_CPUS, object_store_memory=300 * 1024 ** 2, include_dashboard=False,
             log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    try:
        with tempfile.TemporaryDirectory(prefix="zs-bench-ray-") as scratch:
            folder = Path(scratch)
            passes = scene.sphere_scene(views=VIEWS, width=SIZE, height=SIZE, texture_size=SIZE)
            npz_path = folder / "sphere.npz"
            passes.save(npz_path)
            best = overhead(folder, npz_path.read_bytes())
            print(f"one job ({VIEWS} views {SIZE}px, {STEPS} steps, tiny model), submit -> done, best of {REPEATS}: "
                  f"embedded {best['embedded']:.3f} s, ray (1 worker) {best['ray']:.3f} s, "
                  f"ratio {best['ray'] / best['embedded']:.3f}")
            table = {}
            print(f"\n{BATCH_JOBS}-job farm batch, simulated model ({SECONDS_PER_VIEW * 1000:.0f} ms per view and "
                  f"step), load average {os.getloadavg()[0]:.2f}")
            print("workers  seconds  jobs/s  efficiency")
            for workers in WORKERS:
                seconds = batch_seconds(folder, npz_path, workers)
                table[workers] = seconds
                efficiency = table[WORKERS[0]] / (workers * seconds)
                print(f"{workers:>7}  {seconds:7.2f}  {BATCH_JOBS / seconds:6.2f}  {efficiency:10.2f}")
    finally:
        ray.shutdown()
    report("ray_overhead", best["ray"], best["embedded"], TARGET, target_applies_to="ratio",
           batch_seconds={str(workers): round(seconds, 2) for workers, seconds in table.items()},
           batch_efficiency={str(workers): round(table[WORKERS[0]] / (workers * seconds), 3)
                             for workers, seconds in table.items()},
           load_average=round(os.getloadavg()[0], 2))


if __name__ == "__main__":
    main()
