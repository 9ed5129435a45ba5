"""Admission control and pruning on a real server: queue caps answered 429 / 507 with
Retry-After before the upload is read; finished results survive a queue-heavy workload
(the grace period) and a download in progress is never pruned."""

from __future__ import annotations

import io
import socket
import threading
import time
import zipfile

import httpx
import pytest

from zs_core import scene
from zs_core.protocol import Request
from zs_faults import FaultyOs, Rule
from zs_server_helpers import FINISHED, ServerThread, job_form, make_settings, submit, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def npz():
    return scene.sphere_scene(views=1, width=64, height=64, texture_size=64).to_npz_bytes()


@pytest.fixture(scope="module")
def served(tiny, tmp_path_factory, faulty_os):
    settings = make_settings(tmp_path_factory.mktemp("zs-admission"), max_queued_jobs=3, max_queued_jobs_per_client=2,
                             jobs_max_bytes=1, prune_grace_seconds=3600, recent_jobs=1000)
    thread = ServerThread(settings, tiny)
    with thread as running:
        running.app = thread.app
        yield running


class Hold:
    """The worker held before it makes a job's outputs folder: everything after it queues."""

    def __init__(self, faulty_os: FaultyOs):
        self.reached, self.open = threading.Event(), threading.Event()
        faulty_os.add(Rule("mkdir", path="out.partial", before=self._wait))

    def _wait(self):
        self.reached.set()
        self.open.wait(60)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.open.set()


def post(client: httpx.Client, npz: bytes, name: str | None = None) -> httpx.Response:
    headers = {"X-ZS-Client": name} if name else {}
    return client.post("/v1/jobs", files=job_form(npz, Request(prompt="cap", steps=1, texture_size=64)), headers=headers)


def finished_or_pruned(client: httpx.Client, job_id: str) -> None:
    """With no grace period a job may be pruned the moment it finishes: either counts."""
    deadline = time.monotonic() + 30
    while True:
        response = client.get(f"/v1/jobs/{job_id}")
        if response.status_code == 404 or response.json()["state"] in FINISHED:
            return
        assert time.monotonic() < deadline, f"job {job_id} never finished"
        time.sleep(0.02)


def refused(response: httpx.Response, status: int, setting: str) -> None:
    assert response.status_code == status, response.text
    assert int(response.headers["Retry-After"]) >= 1
    detail = response.json()["detail"]
    assert detail["field"] == "queue" and setting in detail["message"], detail


def test_queue_caps_per_client_and_in_total_answer_429(served, faulty_os, npz):
    client = served.client()
    with Hold(faulty_os) as hold:
        running = submit(client, npz, Request(prompt="holds the worker", steps=1, texture_size=64))
        assert hold.reached.wait(30)
        a1, a2 = post(client, npz, "blender-a"), post(client, npz, "blender-a")
        assert a1.status_code == a2.status_code == 202
        refused(post(client, npz, "blender-a"), 429, "(max_queued_jobs_per_client)")
        b1 = post(client, npz, "blender-b")  # another client still has its share...
        assert b1.status_code == 202
        refused(post(client, npz, "blender-b"), 429, "(max_queued_jobs)")  # ...until the total cap
        refused(post(client, npz), 429, "(max_queued_jobs)")
        bad = post(client, npz, "has spaces in it")
        assert bad.status_code == 400 and bad.json()["detail"]["field"] == "x-zs-client"
    for job_id in (running, a1.json()["id"], a2.json()["id"], b1.json()["id"]):
        assert wait_for(client, job_id, timeout=30)["state"] == "done"
    assert post(client, npz, "blender-a").status_code == 202  # the queue moved: admitted again


def test_uploads_arriving_together_cannot_overshoot_the_cap(served, faulty_os, npz):
    client = served.client()
    with Hold(faulty_os) as hold:
        running = submit(client, npz, Request(prompt="holds the worker", steps=1, texture_size=64))
        assert hold.reached.wait(30)
        answers, start = [], threading.Barrier(10)

        def one(index):
            with httpx.Client(base_url=served.base_url, headers=served.auth, timeout=60) as own:
                start.wait()
                answers.append(post(own, npz, f"client-{index}"))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        codes = sorted(answer.status_code for answer in answers)
        assert codes == [202] * 3 + [429] * 7, codes
    for answer in answers:
        if answer.status_code == 202:
            wait_for(client, answer.json()["id"], timeout=30)
    wait_for(client, running, timeout=30)


def test_queued_bytes_cap_answers_507(served, faulty_os, npz):
    settings, client = served.settings, served.client()
    settings.max_queued_bytes = len(npz) + len(npz) // 2  # room for one queued upload
    try:
        with Hold(faulty_os) as hold:
            running = submit(client, npz, Request(prompt="holds the worker", steps=1, texture_size=64))
            assert hold.reached.wait(30)
            queued = post(client, npz)
            assert queued.status_code == 202
            refused(post(client, npz), 507, "max_queued_bytes")
        wait_for(client, queued.json()["id"], timeout=30)
        wait_for(client, running, timeout=30)
    finally:
        settings.max_queued_bytes = 8 * 1024 ** 3


def test_a_refusal_comes_before_the_body_is_read(served, faulty_os, npz):
    client = served.client()
    with Hold(faulty_os) as hold:
        answers = [post(client, npz, f"filler-{index}") for index in range(4)]
        assert [answer.status_code for answer in answers] == [202] * 4
        jobs = [answer.json()["id"] for answer in answers]
        assert hold.reached.wait(30)
        host, port = served.base_url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as raw:
            raw.sendall((f"POST /v1/jobs HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {served.token}\r\n"
                         "Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 500000000\r\n\r\n").encode())
            answer = raw.recv(65536).decode(errors="replace")  # no body sent at all: still answered
        assert answer.startswith("HTTP/1.1 429") and "retry-after" in answer.lower(), answer[:300]
    for job_id in jobs:
        wait_for(client, job_id, timeout=30)


def test_finished_results_survive_a_queue_heavy_workload(served, npz):
    """jobs_max_bytes is 1 byte: every finished job is over it, yet none goes within the grace period."""
    client = served.client()
    ids = []
    for index in range(10):
        while True:
            response = post(client, npz, f"heavy-{index % 5}")
            if response.status_code == 202:
                break
            assert response.status_code == 429
            time.sleep(0.05)
        ids.append(response.json()["id"])
    for job_id in ids:
        assert wait_for(client, job_id, timeout=60)["state"] == "done"
    for job_id in ids:
        assert client.get(f"/v1/jobs/{job_id}").json()["state"] == "done"
        result = client.get(f"/v1/jobs/{job_id}/result")
        assert result.status_code == 200 and "texture.png" in zipfile.ZipFile(io.BytesIO(result.content)).namelist()

    served.settings.prune_grace_seconds = 0.0  # grace over: the next prune removes them
    try:
        after = submit(client, npz, Request(prompt="triggers a prune", steps=1, texture_size=64))
        finished_or_pruned(client, after)
        deadline = time.monotonic() + 10
        # (Poll the status, not /result: a download holds its job, and the prune would skip it.)
        while not all(client.get(f"/v1/jobs/{job_id}").status_code == 404 for job_id in ids):
            assert time.monotonic() < deadline, "the old jobs were never pruned"
            time.sleep(0.05)
        assert all(client.get(f"/v1/jobs/{job_id}/result").status_code == 404 for job_id in ids)
    finally:
        served.settings.prune_grace_seconds = 3600.0


def test_a_download_in_progress_is_never_pruned(served, npz):
    client = served.client()
    kept = submit(client, npz, Request(prompt="downloaded slowly", steps=1, texture_size=64))
    assert wait_for(client, kept, timeout=30)["state"] == "done"
    folder = served.data_dir / "jobs" / kept
    big = b"".join(i.to_bytes(4, "little") for i in range(16 * 1024 * 1024))  # 64 MB: more than socket buffers
    (folder / "out" / "big.bin").write_bytes(big)
    served.settings.prune_grace_seconds = 0.0
    try:
        with client.stream("GET", f"/v1/jobs/{kept}/files/big.bin") as response:
            assert response.status_code == 200
            chunks = response.iter_bytes(1 << 16)
            received = [next(chunks)]
            other = submit(client, npz, Request(prompt="its prune must skip the download", steps=1, texture_size=64))
            finished_or_pruned(client, other)
            time.sleep(0.3)  # the worker prunes right after the job
            assert folder.is_dir() and client.get(f"/v1/jobs/{kept}").status_code == 200
            received.extend(chunks)
        assert b"".join(received) == big
        after = submit(client, npz, Request(prompt="prunes it now", steps=1, texture_size=64))
        finished_or_pruned(client, after)
        deadline = time.monotonic() + 10
        while folder.exists():  # no longer downloaded: pruned like any other
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.get(f"/v1/jobs/{kept}").status_code == 404
    finally:
        served.settings.prune_grace_seconds = 3600.0
