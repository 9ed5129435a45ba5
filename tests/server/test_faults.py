"""Faults on a real server (uvicorn on loopback, the tiny model) whose data dir is a real
24 MB tmpfs: ENOSPC from the kernel at each write point of the job store, EIO and short
writes where only an injected ``os`` layer gives them, job folders removed from outside,
worker threads that die.

After each fault (the ``case`` fixture): the server says ``degraded`` while it cannot take
jobs and ``ok`` once the fault is gone, no job is stuck, every job's state on disk equals
what the API says, no temporary file is left, every finished result still downloads, and a
new job runs to the end.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import re
import shutil
import threading
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from server import durable
from zs_core import scene
from zs_core.protocol import Request
from zs_faults import FaultyOs, Rule, Tmpfs
from zs_server_helpers import FINISHED, ServerThread, job_form, make_settings, read_events, submit, wait_for

pytestmark = pytest.mark.slow

STARTED, PROGRESS, DONE = b'"type":"started"', b'"type":"progress"', b'"type":"done"'


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    fs = Tmpfs(tmp_path_factory.mktemp("tmpfs"), "24m")
    reason = fs.mount()
    if reason:
        pytest.skip(reason)
    yield fs
    fs.free()
    fs.unmount()


@pytest.fixture(scope="module")
def one_view_npz():
    return scene.sphere_scene(views=1, width=64, height=64, texture_size=64).to_npz_bytes()


@dataclasses.dataclass
class Served:
    base_url: str
    client: httpx.Client
    app: object
    data_dir: Path
    npz: bytes
    done: list  # every job that finished done: its result must stay downloadable

    @property
    def store(self):
        return self.app.state.store

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    def submit(self, steps: int = 1, prompt: str = "fault") -> str:
        return submit(self.client, self.npz, Request(prompt=prompt, steps=steps, texture_size=64))

    def health(self) -> dict:
        return self.client.get("/v1/health").json()

    def wait_health(self, status: str, contains: str = "", timeout: float = 15.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            health = self.health()
            if health["status"] == status and contains in " ".join(health["reasons"]):
                return health
            assert time.monotonic() < deadline, f"health never became {status} ({contains!r}): {health}"
            time.sleep(0.02)

    def on_disk(self, job_id: str) -> tuple[str, list[str]]:
        """The state status.json holds and the event types events.jsonl holds."""
        folder = self.jobs_dir / job_id
        state = json.loads((folder / "status.json").read_text())["state"]
        events = [json.loads(line)["type"] for line in (folder / "events.jsonl").read_text().splitlines()]
        return state, events


@pytest.fixture(scope="module")
def served(disk, faulty_os, tiny, one_view_npz):
    settings = make_settings(disk.path / "data", min_free_bytes=0, recent_jobs=1000)
    thread = ServerThread(settings, tiny)
    with thread as running:
        yield Served(running.base_url, running.client(), thread.app, settings.data_dir, one_view_npz, [])


@pytest.fixture
def case(served, disk, faulty_os):
    """One fault: the test injects it; afterwards the server must be whole again."""
    yield served
    faulty_os.clear()
    disk.free()
    assert_recovered(served)


def assert_recovered(served: Served) -> None:
    client = served.client
    served.wait_health("ok")
    jobs = client.get("/v1/jobs", params={"limit": 1000}).json()["jobs"]
    for job in jobs:  # nothing stuck: whatever was queued or running finishes now
        if job["state"] not in FINISHED:
            wait_for(client, job["id"], timeout=30)
    for job in client.get("/v1/jobs", params={"limit": 1000}).json()["jobs"]:
        state, events = served.on_disk(job["id"])
        assert state == job["state"] and events[-1] == job["state"], (job, state, events)
        if job["state"] == "done" and job["id"] not in served.done:
            served.done.append(job["id"])
    leftovers = [p for p in served.jobs_dir.rglob("*") if p.name.endswith(".tmp") or p.name.startswith((".new-",
                                                                                                          ".trash-"))]
    assert not leftovers, leftovers
    assert not any(p.name == "out.partial" for p in served.jobs_dir.rglob("out.partial"))
    for job_id in served.done:  # no finished result lost
        response = client.get(f"/v1/jobs/{job_id}/result")
        assert response.status_code == 200, (job_id, response.text)
        assert "texture.png" in zipfile.ZipFile(io.BytesIO(response.content)).namelist()
    fresh = served.submit(prompt="after the fault")
    assert wait_for(client, fresh, timeout=30)["state"] == "done"
    served.done.append(fresh)


class WorkerGate:
    """Holds the worker just before it makes a job's out.partial (no lock held there), so a
    test can queue jobs behind it or tamper with its folder first."""

    def __init__(self, faulty_os: FaultyOs):
        self.reached, self.open = threading.Event(), threading.Event()
        self.rule = faulty_os.add(Rule("mkdir", path="out.partial", before=self._wait))

    def _wait(self) -> None:
        self.reached.set()
        assert self.open.wait(30), "the test never opened the gate"

    def wait_reached(self) -> None:
        assert self.reached.wait(30), "the worker never reached the gate"


def submit_response(served: Served) -> httpx.Response:
    return served.client.post("/v1/jobs", files=job_form(served.npz, Request(prompt="x", steps=1, texture_size=64)))


# ---------------------------------------------------------------- ENOSPC, from the kernel


SUBMISSION_WRITES = {  # the disk fills just before this write of a submission
    "marker": (".new-", ".zs-job."),
    "request": (".new-", ".request.json."),
    "queued event": (".new-", "events.jsonl"),
    "status": (".new-", ".status.json."),
}


@pytest.mark.parametrize("point", SUBMISSION_WRITES)
def test_disk_full_at_a_submission_write_answers_507_and_leaves_nothing(case, disk, faulty_os, point):
    before = {job["id"] for job in case.client.get("/v1/jobs", params={"limit": 1000}).json()["jobs"]}
    rule = faulty_os.add(Rule("open", path=SUBMISSION_WRITES[point], before=disk.fill))
    response = submit_response(case)
    assert rule.hits == 1
    assert response.status_code == 507, response.text
    message = response.json()["detail"]["message"]
    assert "needs" in message and "bytes" in message, message
    # (Health need not say degraded: the refused upload's spool file is gone, so is the fill's last page.)
    assert case.health()["worker"]["alive"]
    after = {job["id"] for job in case.client.get("/v1/jobs", params={"limit": 1000}).json()["jobs"]}
    assert after == before
    assert not list(case.jobs_dir.glob(".new-*"))


@pytest.mark.parametrize("point", ["started event", "running status"])
def test_disk_full_when_a_job_starts_keeps_it_queued_until_space_is_back(case, disk, faulty_os, point):
    where = {"before": disk.fill} if point == "started event" else {"after": disk.fill}
    rule = faulty_os.add(Rule("write", path="events.jsonl", data=STARTED, **where))
    job_id = case.submit()
    health = case.wait_health("degraded", "disk full")
    assert rule.hits == 1 and health["worker"]["alive"]
    time.sleep(0.5)  # the worker retries meanwhile: the job waits, it does not fail
    assert case.client.get(f"/v1/jobs/{job_id}").json()["state"] == "queued"
    assert case.on_disk(job_id) == ("queued", ["queued"])  # the "started" line was cut back
    disk.free()
    assert wait_for(case.client, job_id, timeout=30)["state"] == "done"
    assert case.on_disk(job_id)[1] == ["queued", "started", "progress", "done"]


@pytest.mark.parametrize("point", ["progress event", "outputs"])
def test_disk_full_while_a_job_runs_fails_it_and_the_queue_resumes(case, disk, faulty_os, point):
    gate = WorkerGate(faulty_os)
    running = case.submit()
    gate.wait_reached()
    queued = case.submit(prompt="waits behind the full disk")
    where = {"before": disk.fill} if point == "progress event" else {"after": disk.fill}
    rule = faulty_os.add(Rule("write", path="events.jsonl", data=PROGRESS, **where))
    gate.open.set()
    events = read_events(case.client, running, timeout=30)
    assert rule.hits == 1
    assert events[-1]["event"] == "failed", events[-1]
    assert events[-1]["data"]["error"].startswith("disk full"), events[-1]
    health = case.wait_health("degraded", "disk full")
    assert "not on disk yet" in " ".join(health["reasons"])  # the failure waits for space to be written
    assert case.client.get(f"/v1/jobs/{queued}").json()["state"] == "queued"
    disk.free()
    assert wait_for(case.client, queued, timeout=30)["state"] == "done"
    case.wait_health("ok")
    assert case.on_disk(running)[0] == "failed"
    assert not (case.jobs_dir / running / "out").exists() and not (case.jobs_dir / running / "out.partial").exists()


@pytest.mark.parametrize("point", ["done event", "done status"])
def test_disk_full_when_a_job_finishes_keeps_it_done_and_writes_it_later(case, disk, faulty_os, point):
    where = {"before": disk.fill} if point == "done event" else {"after": disk.fill}
    rule = faulty_os.add(Rule("write", path="events.jsonl", data=DONE, **where))
    job_id = case.submit()
    events = read_events(case.client, job_id, timeout=30)
    assert rule.hits == 1 and events[-1]["event"] == "done"
    case.wait_health("degraded", "not on disk yet")
    assert case.on_disk(job_id)[0] == "running"  # memory is ahead of the disk for now
    assert case.client.get(f"/v1/jobs/{job_id}/files/texture.png").status_code == 200
    disk.free()
    case.wait_health("ok")
    assert case.on_disk(job_id) == ("done", ["queued", "started", "progress", "done"])


def test_cancel_on_a_full_disk_holds_and_is_written_later(case, disk, faulty_os):
    faulty_os.add(Rule("write", path="events.jsonl", data=STARTED, before=disk.fill))
    job_id = case.submit()
    case.wait_health("degraded", "disk full")
    response = case.client.delete(f"/v1/jobs/{job_id}")
    assert response.status_code == 202 and response.json()["state"] == "cancelled"
    assert read_events(case.client, job_id)[-1]["event"] == "cancelled"
    assert case.on_disk(job_id)[0] == "queued"
    disk.free()
    case.wait_health("ok")
    assert case.on_disk(job_id) == ("cancelled", ["queued", "cancelled"])
    assert case.client.get(f"/v1/jobs/{job_id}").json()["state"] == "cancelled"  # never ran


def test_uploads_keep_min_free_bytes_free(case):
    store = case.store
    store.min_free_bytes = durable.free_bytes(store.root) + 1024 ** 2
    try:
        response = submit_response(case)
        assert response.status_code == 507, response.text
        assert "needs" in response.json()["detail"]["message"] and int(response.headers["Retry-After"]) > 0
        case.wait_health("degraded", "min_free_bytes")
    finally:
        store.min_free_bytes = 0


def test_a_restart_on_a_full_disk_starts_and_writes_the_interrupted_job_later(case, disk, faulty_os, tiny):
    settings = make_settings(disk.path / "second", min_free_bytes=0)
    gate = WorkerGate(faulty_os)
    thread = ServerThread(settings, tiny)
    with thread as first:
        client = first.client()
        job_id = submit(client, case.npz, Request(prompt="interrupted", steps=150, texture_size=64))
        gate.wait_reached()
        gate.open.set()
        while client.get(f"/v1/jobs/{job_id}").json()["step"] < 1:
            time.sleep(0.01)
    assert json.loads((settings.jobs_dir / job_id / "status.json").read_text())["state"] == "running"
    disk.fill()
    thread = ServerThread(settings, tiny)
    with thread as second:  # recovery writes the "server restarted" failure: the disk refuses
        client = second.client()
        status = client.get(f"/v1/jobs/{job_id}").json()
        assert status["state"] == "failed" and status["error"] == "server restarted"
        assert read_events(client, job_id)[-1]["event"] == "failed"
        health = client.get("/v1/health").json()
        assert health["status"] == "degraded" and "not on disk yet" in " ".join(health["reasons"])
        disk.free()
        deadline = time.monotonic() + 15
        while client.get("/v1/health").json()["status"] != "ok":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert json.loads((settings.jobs_dir / job_id / "status.json").read_text())["state"] == "failed"
    shutil.rmtree(settings.data_dir)


# ---------------------------------------------------------------- EIO and short writes, injected


def test_io_error_starting_a_job_once_is_retried(case, faulty_os):
    rule = faulty_os.add(Rule("write", path=".status.json.", data=b'"state": "running"', error=errno.EIO))
    job_id = case.submit()
    assert wait_for(case.client, job_id, timeout=30)["state"] == "done"
    assert rule.hits == 1


def test_io_error_starting_a_job_every_time_fails_it_after_retries(case, faulty_os):
    rule = faulty_os.add(Rule("write", path=".status.json.", data=b'"state": "running"', error=errno.EIO,
                              times=10 ** 6))
    job_id = case.submit()
    status = wait_for(case.client, job_id, timeout=30)
    assert status["state"] == "failed" and status["error"].startswith("could not start"), status
    assert "Input/output error" in status["error"] and rule.hits == 3
    assert case.on_disk(job_id) == ("failed", ["queued", "failed"])


def test_io_error_in_the_event_log_fails_the_running_job(case, faulty_os):
    faulty_os.add(Rule("write", path="events.jsonl", data=PROGRESS, error=errno.EIO))
    job_id = case.submit()
    status = wait_for(case.client, job_id, timeout=30)
    assert status["state"] == "failed" and "Input/output error" in status["error"], status


def test_io_error_committing_the_outputs_fails_the_job_and_leaves_no_outputs(case, faulty_os):
    rule = faulty_os.add(Rule("fsync", path="out.partial", error=errno.EIO))
    job_id = case.submit()
    status = wait_for(case.client, job_id, timeout=30)
    assert rule.hits == 1 and status["state"] == "failed" and "Input/output error" in status["error"], status
    assert not (case.jobs_dir / job_id / "out").exists() and not (case.jobs_dir / job_id / "out.partial").exists()


def test_io_error_writing_a_finished_state_is_retried_until_it_lands(case, faulty_os):
    rule = faulty_os.add(Rule("write", path=".status.json.", data=b'"state": "done"', error=errno.EIO, times=4))
    job_id = case.submit()
    assert read_events(case.client, job_id, timeout=30)[-1]["event"] == "done"
    case.wait_health("degraded", "Input/output error")
    case.wait_health("ok")
    assert rule.hits == 4 and case.on_disk(job_id)[0] == "done"


def test_io_error_renaming_a_new_job_into_place_is_refused_and_leaves_nothing(case, faulty_os):
    rule = faulty_os.add(Rule("replace", path=re.compile(r"/\.new-[0-9a-f]{16} -> "), error=errno.EIO))
    response = submit_response(case)
    assert rule.hits == 1
    assert response.status_code == 503 and response.headers["Retry-After"], response.text
    assert "Input/output error" in response.json()["detail"]["message"]


def test_short_writes_never_tear_the_event_log(case, faulty_os):
    rule = faulty_os.add(Rule("write", path="events.jsonl", short=True, times=10 ** 6))
    job_id = case.submit(steps=3)
    events = read_events(case.client, job_id, timeout=30)
    assert rule.hits >= len(events) and events[-1]["event"] == "done"
    logged = [json.loads(line) for line in (case.jobs_dir / job_id / "events.jsonl").read_text().splitlines()]
    assert [(e["id"], e["type"]) for e in logged] == [(e["id"], e["event"]) for e in events]


# ---------------------------------------------------------------- folders removed from outside


def test_a_queued_jobs_folder_removed_from_outside_fails_that_job_only(case, faulty_os):
    gate = WorkerGate(faulty_os)
    first = case.submit()
    gate.wait_reached()
    victim = case.submit(prompt="its folder goes")
    shutil.rmtree(case.jobs_dir / victim)
    gate.open.set()
    assert wait_for(case.client, first, timeout=30)["state"] == "done"
    status = wait_for(case.client, victim, timeout=30)
    assert status["state"] == "failed" and "removed from outside" in status["error"], status
    assert read_events(case.client, victim)[-1]["event"] == "failed"
    assert case.on_disk(victim) == ("failed", ["queued", "failed"])  # written again, as a record


def test_a_running_jobs_folder_removed_from_outside_fails_it_and_the_worker_goes_on(case, faulty_os):
    gate = WorkerGate(faulty_os)
    victim = case.submit()
    gate.wait_reached()
    shutil.rmtree(case.jobs_dir / victim)
    gate.open.set()
    status = wait_for(case.client, victim, timeout=30)
    assert status["state"] == "failed" and "removed from outside" in status["error"], status
    assert case.on_disk(victim)[0] == "failed"


# ---------------------------------------------------------------- a worker thread that dies


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the injected exit
def test_a_worker_thread_that_dies_is_restarted(case, monkeypatch):
    store, worker = case.store, case.app.state.worker
    restarts, seen, respawn = worker.restarts, threading.Event(), worker._spawn

    def respawn_once_seen():  # holds the supervisor until the test has seen the dead worker
        assert seen.wait(30)
        respawn()

    def dies(timeout):
        del store.take_next  # once: the next thread takes jobs as usual
        raise SystemExit("injected")

    monkeypatch.setattr(worker, "_spawn", respawn_once_seen)
    store.take_next = dies
    health = case.wait_health("degraded", "not running")
    assert not health["worker"]["alive"]
    seen.set()
    health = case.wait_health("ok")
    assert health["worker"]["alive"] and health["worker"]["restarts"] == restarts + 1


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the injected exit
def test_a_worker_that_dies_mid_job_fails_that_job(case):
    store = case.store

    def dies(*args, **kwargs):
        del store.progress
        raise SystemExit("injected mid-job")

    store.progress = dies
    job_id = case.submit()
    events = read_events(case.client, job_id, timeout=30)
    assert events[-1]["event"] == "failed" and "worker stopped unexpectedly" in events[-1]["data"]["error"]
