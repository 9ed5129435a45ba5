"""`kill -9` of a real `zs serve` at random points, 20 times over, while clients keep
submitting: after every restart no finished result is lost (its bytes are the same), no job
is stuck running, accepted jobs all still exist, leftovers of the crash are cleaned up, and
new jobs run. The servers are forked from one warm parent (tests/server/zs_serve_fork.py),
so a restart costs well under a second instead of torch's import time."""

from __future__ import annotations

import hashlib
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

RESTARTS = 20
ENV = {"ZS_RECENT_JOBS": "100000", "ZS_MIN_FREE_BYTES": "0"}


@pytest.fixture(scope="module")
def forks():
    parent = ForkServer()
    yield parent
    parent.close()


def digest(client: httpx.Client, job_id: str) -> str:
    response = client.get(f"/v1/jobs/{job_id}/files/texture.png")
    assert response.status_code == 200, (job_id, response.text)
    return hashlib.sha256(response.content).hexdigest()


def all_jobs(client: httpx.Client) -> dict[str, dict]:
    return {job["id"]: job for job in client.get("/v1/jobs", params={"limit": 10000}).json()["jobs"]}


def crash_leftovers(jobs_dir) -> set[str]:
    """What a crash may leave: unfinished submissions, deletions, temporary files, partial outputs."""
    return {str(p.relative_to(jobs_dir)) for p in jobs_dir.rglob("*")
            if p.name.startswith((".new-", ".trash-")) or p.name.endswith(".tmp") or p.name == "out.partial"}


class Submitter(threading.Thread):
    """Submits small jobs back to back until the server goes away under it."""

    def __init__(self, base_url: str, token: str, npz: bytes, rng: random.Random, accepted: dict):
        super().__init__(daemon=True)
        self.client = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        self.npz, self.rng, self.accepted = npz, rng, accepted

    def run(self) -> None:
        try:
            while True:
                request = Request(prompt="restart loop", steps=self.rng.choice((1, 2, 3)), texture_size=64,
                                  seed=self.rng.randrange(1000), guidance_scale=1.0)  # one model pass a step
                response = self.client.post("/v1/jobs", files=job_form(self.npz, request))
                if response.status_code == 202:
                    self.accepted[response.json()["id"]] = time.monotonic()
                else:
                    assert response.status_code == 429, response.text
                    time.sleep(0.05)
        except httpx.TransportError:  # killed under us: whatever was in flight may or may not exist
            pass
        finally:
            self.client.close()


@pytest.mark.slow
def test_twenty_kill_9_restarts_lose_nothing(tmp_path, forks):
    npz = scene.sphere_scene(views=1, width=64, height=64, texture_size=64).to_npz_bytes()
    rng = random.Random(14)
    data_dir, port = tmp_path / "data", free_port()
    jobs_dir = data_dir / "jobs"
    accepted: dict[str, float] = {}  # every job answered 202
    done: dict[str, str] = {}  # finished jobs -> sha256 of their texture
    running_at_kill: set[str] = set()
    started = time.monotonic()
    spawn_seconds = []

    for round_index in range(RESTARTS + 1):
        leftovers_before = crash_leftovers(jobs_dir) if jobs_dir.exists() else set()
        t0 = time.monotonic()
        serve = forks.spawn(data_dir, port, tmp_path / "serve.log", ENV)
        spawn_seconds.append(time.monotonic() - t0)
        client = serve.client()

        jobs = all_jobs(client)
        missing = set(accepted) - set(jobs)
        assert not missing, f"round {round_index}: accepted jobs lost: {missing}"
        for job_id in running_at_kill:  # the crash's running job: failed "server restarted" (or it had finished)
            assert jobs[job_id]["state"] in FINISHED, (round_index, jobs[job_id])
        for job_id, texture in done.items():
            assert jobs[job_id]["state"] == "done", (round_index, jobs[job_id])
        for job_id in rng.sample(sorted(done), min(5, len(done))):
            assert digest(client, job_id) == done[job_id], f"round {round_index}: result of {job_id} changed"
        still_there = leftovers_before & crash_leftovers(jobs_dir)
        assert not still_there, f"round {round_index}: recovery left {still_there}"

        if round_index == RESTARTS:
            break
        submitter = Submitter(serve.base_url, serve.token, npz, rng, accepted)
        submitter.start()
        deadline = time.monotonic() + rng.uniform(0.2, 1.2)
        while time.monotonic() < deadline:
            for job_id, job in all_jobs(client).items():
                if job["state"] == "done" and job_id not in done:
                    done[job_id] = digest(client, job_id)
            time.sleep(rng.uniform(0.0, 0.15))
        running_at_kill = {job_id for job_id, job in all_jobs(client).items() if job["state"] == "running"}
        time.sleep(rng.uniform(0.0, 0.1))
        client.close()
        serve.kill(signal.SIGKILL)  # mid-sampling, mid-write, mid-upload: wherever it is
        submitter.join(10)

    # The last server: everything queued runs, nothing is stuck, every result downloads.
    deadline = time.monotonic() + 60
    while any(job["state"] not in FINISHED for job in all_jobs(client).values()):
        assert time.monotonic() < deadline, "jobs stuck after the last restart"
        time.sleep(0.1)
    jobs = all_jobs(client)
    outcomes: dict[str, int] = {}
    for job_id, job in jobs.items():
        outcomes[job["state"]] = outcomes.get(job["state"], 0) + 1
        if job["state"] == "done":
            result = client.get(f"/v1/jobs/{job_id}/result")
            assert result.status_code == 200 and "texture.png" in zipfile.ZipFile(io.BytesIO(result.content)).namelist()
            if job_id in done:
                assert digest(client, job_id) == done[job_id]
        elif job["state"] == "failed":
            assert client.get(f"/v1/jobs/{job_id}").json()["error"] == "server restarted"
    fresh = client.post("/v1/jobs", files=job_form(npz, Request(prompt="after it all", steps=1, texture_size=64)))
    assert fresh.status_code == 202
    while client.get(f"/v1/jobs/{fresh.json()['id']}").json()["state"] not in FINISHED:
        time.sleep(0.05)
    assert client.get(f"/v1/jobs/{fresh.json()['id']}").json()["state"] == "done"
    client.close()
    serve.kill(signal.SIGTERM)
    assert not crash_leftovers(jobs_dir)
    print(f"\n{RESTARTS} kill -9 restarts in {time.monotonic() - started:.1f} s "
          f"(spawn to healthy: median {sorted(spawn_seconds)[len(spawn_seconds) // 2]:.2f} s); "
          f"{len(accepted)} jobs accepted, {len(jobs)} on the server: {outcomes}; "
          f"{len(done)} results checked byte for byte across restarts")
