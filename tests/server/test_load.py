"""A bounded load test on loopback: 20 clients submit and poll at once. Every job completes,
in submission (FIFO) order, none is lost, and status polls stay fast while jobs sample."""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import pytest

from zs_core.protocol import Request
from zs_server_helpers import FINISHED, submit

CLIENTS = 20
POLL_INTERVAL = 0.05


@pytest.mark.slow
def test_twenty_clients_fifo_none_lost_fast_polls(server, small_npz):
    results: list[dict | None] = [None] * CLIENTS
    latencies: list[float] = []  # list.append is atomic: safe from many threads
    errors: list[BaseException] = []
    start_together = threading.Barrier(CLIENTS)

    def one_client(index: int) -> None:
        try:
            with httpx.Client(base_url=server.base_url, headers=server.auth, timeout=30) as client:
                start_together.wait(30)
                job_id = submit(client, small_npz, Request(prompt=f"client {index}", seed=index, steps=2,
                                                           texture_size=64))
                deadline = time.monotonic() + 240
                while time.monotonic() < deadline:
                    started = time.perf_counter()
                    response = client.get(f"/v1/jobs/{job_id}")
                    latencies.append(time.perf_counter() - started)
                    assert response.status_code == 200
                    if response.json()["state"] in FINISHED:
                        results[index] = response.json()
                        return
                    time.sleep(POLL_INTERVAL)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=one_client, args=(i,), daemon=True) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert not errors, errors[0]
    assert all(result is not None for result in results), "a client never saw its job finish"

    assert [result["state"] for result in results] == ["done"] * CLIENTS
    ids = {result["id"] for result in results}
    assert len(ids) == CLIENTS
    listed = {job["id"] for job in httpx.get(server.base_url + "/v1/jobs", headers=server.auth).json()["jobs"]}
    assert ids <= listed  # none lost

    # FIFO: ordered by submission (seq), the jobs started one after another, each only
    # after the previous one had finished (one worker).
    by_submission = sorted(results, key=lambda result: result["seq"])
    started = [result["started"] for result in by_submission]
    assert started == sorted(started)
    for previous, following in zip(by_submission, by_submission[1:]):
        assert following["started"] >= previous["finished"] - 1e-3

    p50, p99 = np.percentile(latencies, [50, 99])
    print(f"\n{len(latencies)} status polls while jobs ran: p50 {1000 * p50:.1f} ms, p99 {1000 * p99:.1f} ms")
    assert len(latencies) >= 5 * CLIENTS
    assert p99 < 1.0, f"p99 poll latency {p99:.3f} s: the HTTP side is blocked by sampling"
