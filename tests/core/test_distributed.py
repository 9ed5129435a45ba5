"""A texture job split over several workers (zs_core/distributed.py) equals the job on one.

The workers here are threads of this process, each with its own copy of the tiny model,
talking through real Gloo process groups on 127.0.0.1 (as Ray actors do across processes).
"""

from __future__ import annotations

import copy
import socket
import threading

import numpy as np
import pytest
import torch

from zs_core import distributed, sampler, scene, sync
from zs_core.protocol import ProtocolError, Request

VIEWS = 8


@pytest.fixture(scope="module")
def passes():
    return scene.sphere_scene(views=VIEWS, width=64, height=64, texture_size=64)


@pytest.fixture(scope="module")
def models(tiny):
    """One model per worker (attention processors are installed per model)."""
    return [tiny] + [copy.deepcopy(tiny) for _ in range(3)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_split(models, request, passes, workers: int, cancel_at: int | None = None):
    """Every worker's result (or exception), in rank order."""
    port, results = free_port(), [None] * workers
    calls = [0] * workers

    def run(rank: int) -> None:
        collective = distributed.GlooCollective("127.0.0.1", port, rank, workers, name="test", timeout=60)

        def cancel() -> bool:  # only worker 1 is asked to stop
            calls[rank] += 1
            return rank == 1 and cancel_at is not None and calls[rank] > cancel_at

        try:
            results[rank] = distributed.sample_shard(models[rank], request, passes, collective, cancel=cancel)
        except Exception as exc:  # noqa: BLE001 - handed back to the test
            results[rank] = exc

    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    return results


def test_partition():
    assert distributed.partition(8, 3) == [(0, 3), (3, 6), (6, 8)]
    assert distributed.partition(2, 4) == [(0, 1), (1, 2), (2, 2), (2, 2)]
    with pytest.raises(ValueError):
        distributed.partition(4, 0)


@pytest.mark.parametrize("mode", ["self", "extended", "neighbors", "keyframes", "tma"])
def test_split_equals_one_worker(models, passes, mode):
    request = Request(prompt="stone", steps=3, seed=5, noise="surface", attention=mode, sync_strength=1.0,
                      scheduler="euler_a", reference_view=3)
    single = sampler.sample(models[0], request, passes)
    for workers in (2, 4):
        results = run_split(models, request, passes, workers)
        for result in results:
            assert not isinstance(result, Exception), result
        latents = torch.cat([result.latents for result in results])
        torch.testing.assert_close(latents, single.latents, atol=1e-4, rtol=0)
        images = np.concatenate([result.images for result in results])
        np.testing.assert_allclose(images, single.images, atol=1e-4)


def test_split_without_exchange_differs(models, passes):
    """The exchange matters: workers that sync and attend only among their own views give
    another result (so the equality above is not trivially true)."""
    request = Request(prompt="stone", steps=3, seed=5, noise="surface", attention="extended", sync_strength=1.0)
    single = sampler.sample(models[0], request, passes)
    alone = [sampler.sample(models[0], request, passes.select(range(start, stop)))
             for start, stop in distributed.partition(VIEWS, 2)]
    assert (torch.cat([result.latents for result in alone]) - single.latents).abs().max() > 0.1


def test_neighbors_and_keyframes_send_only_what_others_read():
    assert distributed.exported_views("neighbors", VIEWS, 4, reference=3) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert distributed.exported_views("neighbors", VIEWS, 2, reference=3) == [[0, 3], [4, 7]]  # ring ends, reference
    assert distributed.exported_views("keyframes", VIEWS, 4, policy="first") == [[0], [], [], []]
    assert distributed.exported_views("extended", VIEWS, 2) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert distributed.exported_views("tma", VIEWS, 2) == [[], []]


class CountingCollective:
    """A collective that counts the bytes this worker hands to all-gathers and all-reduces."""

    def __init__(self, inner):
        self.inner, self.rank, self.size = inner, inner.rank, inner.size
        self.gathered = self.reduced = 0

    def all_gather(self, tensor):
        self.gathered += tensor.numel() * 4
        return self.inner.all_gather(tensor)

    def all_reduce(self, tensor):
        if tensor.numel() > 1:  # not the cancel flag
            self.reduced += tensor.numel() * 4
        return self.inner.all_reduce(tensor)


@pytest.mark.parametrize("mode", ["extended", "neighbors", "tma"])
def test_bytes_per_step_is_what_workers_send(models, passes, mode):
    """distributed.bytes_per_step, from the UNet's config, against the bytes counted going
    into the collectives of a real split run (the tiny model, one step)."""
    request = Request(prompt="stone", steps=1, seed=5, noise="surface", attention=mode, reference_view=3)
    port, counted = free_port(), [None, None]

    def run(rank: int) -> None:
        collective = CountingCollective(distributed.GlooCollective("127.0.0.1", port, rank, 2, name="count"))
        distributed.sample_shard(models[rank], request, passes, collective)
        counted[rank] = collective

    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    hook = sync.UVSync(passes, request, 8)
    texels = hook.pyramid.total_texels
    expected = distributed.bytes_per_step(mode, VIEWS, 2, models[0].unet.config, (8, 8), texels=texels,
                                          guidance=request.guidance_scale > 1, reference=3)
    for collective in counted:
        assert collective.gathered == expected["attention"]
        assert collective.reduced == expected["sync"]


def test_cancel_on_one_worker_stops_all(models, passes):
    request = Request(prompt="stone", steps=6, seed=5, noise="surface", attention="extended")
    results = run_split(models, request, passes, 2, cancel_at=3)
    assert all(isinstance(result, sampler.Cancelled) for result in results), results


def test_what_is_not_split_is_named(tiny, passes):
    grid = Request(prompt="x", steps=1, layout="grid", attention="self")
    with pytest.raises(ProtocolError, match="layout"):
        distributed.check_split(grid, passes)
    flagged = passes.select(range(VIEWS))
    flagged.completion = np.arange(VIEWS) == VIEWS - 1
    with pytest.raises(ProtocolError, match="completion"):
        distributed.check_split(Request(prompt="x", steps=1), flagged)


def test_bytes_per_step_follow_the_modes(tiny):
    config = tiny.unet.config
    sizes = {mode: distributed.bytes_per_step(mode, 64, 8, config, (64, 64), texels=10_000)["per_worker"]
             for mode in distributed.SPLIT_MODES}
    assert sizes["self"] == 10_000 * 11 * 4  # the sync's texel sums only
    assert sizes["extended"] > sizes["neighbors"] > sizes["keyframes"] >= sizes["tma"] > sizes["self"]
    assert distributed.bytes_per_step("extended", 64, 1, config, (64, 64))["per_worker"] == 0


def test_scaling_simulation_splits_exactly(tiny, monkeypatch):
    """bench/split_scaling.py's timed stand-in model runs the real split (noise, sync,
    all-reduce): its workers' latents equal one worker's (timing is the bench's business)."""
    from bench import split_scaling

    monkeypatch.setattr(split_scaling, "SECONDS_PER_VIEW", 0.0)
    rows = split_scaling.measure(tiny, views=8, steps=2, workers=(1, 2))
    assert [row["workers"] for row in rows] == [1, 2]
    assert rows[1]["max_difference"] < 1e-4 and rows[1]["reduce_bytes_per_step"] > 0


def test_a_split_run_job_writes_the_one_worker_files_on_the_first_worker(models, passes, tmp_path):
    """run.run_job with a collective: the main views split, gathered on rank 0, which samples
    the completion views and writes everything; the other worker returns None."""
    from zs_core import run

    flagged = passes.select(range(VIEWS))
    flagged.completion = np.arange(VIEWS) >= VIEWS - 2
    request = Request(prompt="stone", steps=2, seed=5, noise="surface", attention="neighbors", sync_strength=1.0)
    single = run.run_job(models[0], request, flagged, tmp_path / "single")
    port, outcomes = free_port(), [None, None]

    def work(rank: int) -> None:
        collective = distributed.GlooCollective("127.0.0.1", port, rank, 2, name="run", timeout=60)
        outcomes[rank] = run.run_job(models[rank], request, flagged, tmp_path / f"rank{rank}", collective=collective)

    threads = [threading.Thread(target=work, args=(rank,)) for rank in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert outcomes[1] is None and not (tmp_path / "rank1").exists()
    assert outcomes[0]["completion_views"] == single["completion_views"] == 2
    assert abs(outcomes[0]["texels_from_views"] - single["texels_from_views"]) < 1e-6
    from PIL import Image

    for name in ("texture.png", "views/0000.png", "views/0007.png"):
        split = np.asarray(Image.open(tmp_path / "rank0" / name), np.int16)
        alone = np.asarray(Image.open(tmp_path / "single" / name), np.int16)
        assert np.abs(split - alone).max() <= 1, name


@pytest.fixture(scope="module")
def shot():
    return scene.animated_scene(frames=16, width=64, height=64)


@pytest.mark.parametrize("mode", distributed.ANIMATION_SPLIT_MODES)
def test_animation_split_equals_one_worker(models, shot, mode):
    """16 frames over 2 and 4 workers: the chunked single-worker result (chunk 4), with
    temporal UV sync, background UV sync and the vector chain on."""
    from zs_core import animation

    request = Request(kind="animation", prompt="stone", steps=2, seed=5, attention=mode, chunk=4,
                      sync_strength=0.8, background_sync=0.5, scheduler="euler_a")
    single = animation.sample_frames(models[0], request, shot)
    for workers in (2, 4):
        results = run_split(models, request, shot, workers)
        for result in results:
            assert not isinstance(result, Exception), result
        latents = torch.cat([result.latents for result in results])
        assert torch.allclose(latents, single.latents, atol=1e-4), (mode, workers,
                                                                     (latents - single.latents).abs().max())
