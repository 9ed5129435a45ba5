"""A soak: 500 small jobs from 20 client threads, some cancelled at random, across two
restarts of a real `zs serve` (one `kill -9`, one graceful SIGTERM). Every job ends in a
final state, every finished result downloads, and the only failures are the jobs the
restarts interrupted ("server restarted")."""

from __future__ import annotations

import io
import random
import signal
import threading
import time
import zipfile

import httpx
import pytest

from zs_core import scene
from zs_core.protocol import Request
from zs_serve_fork import ForkServer
from zs_server_helpers import FINISHED, free_port, job_form

CLIENTS = 20
JOBS_PER_CLIENT = 25  # 500 in all
IN_FLIGHT = 4  # jobs a client keeps submitted at once: the queue never runs dry
CANCEL_SHARE = 0.15
POLL_SECONDS = 1.0  # throughput is the worker's; polls only cost it CPU
# A queue cap below the 80 jobs the clients keep in flight: admission answers 429 under load.
ENV = {"ZS_RECENT_JOBS": "100000", "ZS_MIN_FREE_BYTES": "0", "ZS_MAX_QUEUED_JOBS": "48"}


class Restartable:
    """The current server's address and token; clients retry while it restarts."""

    def __init__(self, serve):
        self.serve = serve
        self.up = threading.Event()
        self.up.set()

    def call(self, client: httpx.Client, method: str, url: str, **kwargs) -> httpx.Response:
        deadline = time.monotonic() + 120
        while True:
            self.up.wait(120)
            try:
                return client.request(method, url, **kwargs)
            except httpx.TransportError:
                assert time.monotonic() < deadline, f"{method} {url}: the server never came back"
                time.sleep(0.2)


class Client(threading.Thread):
    def __init__(self, index: int, server: Restartable, npz: bytes, token: str, report: dict):
        super().__init__(daemon=True, name=f"soak-client-{index}")
        self.index, self.server, self.npz, self.report = index, server, npz, report
        self.rng = random.Random(index)
        self.http = httpx.Client(base_url=server.serve.base_url, headers={"Authorization": f"Bearer {token}",
                                                                          "X-ZS-Client": f"soak-{index}"},
                                 timeout=30)
        self.final: dict[str, str] = {}  # job id -> final state
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.http.close()

    def _run(self) -> None:
        submitted, pending = 0, {}  # job id -> when to cancel it (None: never)
        while submitted < JOBS_PER_CLIENT or pending:
            while submitted < JOBS_PER_CLIENT and len(pending) < IN_FLIGHT:
                # guidance_scale 1: one model pass per step instead of two (no unconditional half)
                request = Request(prompt=f"soak {self.index}", steps=1, texture_size=64, seed=submitted,
                                  guidance_scale=1.0)
                response = self.server.call(self.http, "POST", "/v1/jobs", files=job_form(self.npz, request))
                if response.status_code == 429:
                    self.report["429"] += 1
                    time.sleep(min(1.0, int(response.headers["Retry-After"])))
                    continue
                assert response.status_code == 202, response.text
                submitted += 1
                cancel_at = time.monotonic() + self.rng.uniform(0, 0.5) if self.rng.random() < CANCEL_SHARE else None
                pending[response.json()["id"]] = cancel_at
            time.sleep(POLL_SECONDS)
            for job_id, cancel_at in list(pending.items()):
                if cancel_at is not None and time.monotonic() >= cancel_at:
                    answer = self.server.call(self.http, "DELETE", f"/v1/jobs/{job_id}")
                    assert answer.status_code in (202, 409), answer.text  # 409: it finished first
                    pending[job_id] = None
                status = self.server.call(self.http, "GET", f"/v1/jobs/{job_id}")
                assert status.status_code == 200, status.text
                state = status.json()["state"]
                if state in FINISHED:
                    del pending[job_id]
                    self.final[job_id] = state
                    if state == "done":
                        result = self.server.call(self.http, "GET", f"/v1/jobs/{job_id}/result")
                        assert result.status_code == 200, result.text
                        assert "texture.png" in zipfile.ZipFile(io.BytesIO(result.content)).namelist()


@pytest.mark.slow
def test_soak_500_jobs_20_clients_cancels_and_two_restarts(tmp_path):
    npz = scene.sphere_scene(views=1, width=64, height=64, texture_size=64).to_npz_bytes()
    forks = ForkServer()
    data_dir, port, log = tmp_path / "data", free_port(), tmp_path / "serve.log"
    serve = forks.spawn(data_dir, port, log, ENV)
    server = Restartable(serve)
    report = {"429": 0}
    clients = [Client(index, server, npz, serve.token, report) for index in range(CLIENTS)]
    started = time.monotonic()
    try:
        for client in clients:
            client.start()
        restarts = []
        for share, sig in ((1 / 3, signal.SIGKILL), (2 / 3, signal.SIGTERM)):
            while sum(len(client.final) for client in clients) < share * CLIENTS * JOBS_PER_CLIENT:
                assert any(client.is_alive() for client in clients), [c.error for c in clients if c.error]
                time.sleep(0.1)
            server.up.clear()
            serve.kill(sig)
            t0 = time.monotonic()
            serve = server.serve = forks.spawn(data_dir, port, log, ENV)
            restarts.append(round(time.monotonic() - t0, 2))
            server.up.set()
        for client in clients:
            client.join(240)
        errors = [client.error for client in clients if client.error is not None]
        assert not errors, errors[0]
        assert not any(client.is_alive() for client in clients), "a client never finished"
        elapsed = time.monotonic() - started

        with serve.client(timeout=30) as http:
            deadline = time.monotonic() + 60  # a job whose 202 a restart swallowed is nobody's: it runs too
            while True:
                jobs = {job["id"]: job for job in http.get("/v1/jobs", params={"limit": 10000}).json()["jobs"]}
                if all(job["state"] in FINISHED for job in jobs.values()):
                    break
                assert time.monotonic() < deadline, "jobs stuck after the clients finished"
                time.sleep(0.1)
            mine = {job_id: state for client in clients for job_id, state in client.final.items()}
            assert len(mine) == CLIENTS * JOBS_PER_CLIENT
            assert set(mine) <= set(jobs)
            outcomes: dict[str, int] = {}
            failures = set()
            for job_id, job in jobs.items():
                assert job["state"] in FINISHED, job  # every job, also any a lost POST answer created
                outcomes[job["state"]] = outcomes.get(job["state"], 0) + 1
                if job["state"] == "failed":
                    failures.add(http.get(f"/v1/jobs/{job_id}").json()["error"])
                if job["state"] == "done":  # every finished result still downloads at the end
                    assert http.get(f"/v1/jobs/{job_id}/result").status_code == 200
            assert failures <= {"server restarted"}, failures
            assert outcomes.get("failed", 0) <= 2  # at most the job each restart interrupted
            assert outcomes.get("cancelled", 0) > 0 and outcomes.get("done", 0) > 400
        print(f"\nsoak: {len(mine)} jobs from {CLIENTS} clients ({len(jobs)} on the server) in {elapsed:.1f} s, "
              f"restarts (kill -9, SIGTERM) back in {restarts} s; outcomes {outcomes}; "
              f"{report['429']} submissions answered 429 and retried")
    finally:
        server.up.set()
        serve.kill(signal.SIGTERM)
        forks.close()
