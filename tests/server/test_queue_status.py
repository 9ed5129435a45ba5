"""A queued job says where it stands: its place in the queue and the running job it waits
on (id, kind, step, or cancelling), in its status and, live, in its event stream."""

from __future__ import annotations

import json
import time

from server.jobs import CANCELLED, QUEUED, REQUEST_FILE, STATUS_FILE, JobStore
from zs_core.protocol import Request
from zs_server_helpers import read_events, submit, wait_for

ANIMATION = json.dumps({"kind": "animation", "prompt": "x"})
TEXTURE = json.dumps({"kind": "texture", "prompt": "x"})


def test_store_queue_view_follows_the_running_job_its_steps_and_a_cancel(tmp_path):
    store = JobStore(tmp_path)
    heard: list[str] = []
    store.add_listener(heard.append)
    first = store.create(ANIMATION, b"npz", total=20)
    second, third = (store.create(TEXTURE, b"npz", total=4) for _ in range(2))
    assert store.snapshot(third.id)["queue_position"] == 3 and store.snapshot(third.id)["waiting_on"] is None

    assert store.take_next(0) is first
    store.progress(first, 3, 20, 1.0, {})
    assert {second.id, third.id} <= set(heard[-3:])  # a step wakes the queued jobs' streams
    status = store.snapshot(third.id)
    assert status["kind"] == "texture" and status["queue_position"] == 2
    assert status["waiting_on"] == {"id": first.id, "kind": "animation", "step": 3, "total": 20, "cancelling": False}
    assert store.snapshot(first.id)["waiting_on"] is None and store.snapshot(first.id)["kind"] == "animation"

    store.cancel(second.id)
    assert store.queue_view(third.id)["position"] == 1
    store.cancel(first.id)  # running: it stops at its next step, the queue still waits for it
    assert store.queue_view(third.id)["waiting_on"]["cancelling"] is True
    assert store.snapshot(first.id)["state"] == "running"
    store.finish(first, CANCELLED)
    assert store.queue_view(third.id) == {"position": 1, "waiting_on": None}
    assert store.take_next(0) is third and store.queue_view(third.id) is None

    # The kind survives a restart, also for a status written before it was recorded.
    status_file = tmp_path / second.id / STATUS_FILE
    old = json.loads(status_file.read_text())
    del old["kind"]
    status_file.write_text(json.dumps(old))
    (tmp_path / second.id / REQUEST_FILE).write_text(ANIMATION)
    again = JobStore(tmp_path)
    again.recover()
    assert again.get(first.id).kind == "animation" and again.get(second.id).kind == "animation"
    assert again.get(third.id).kind == "texture"


def test_with_several_running_jobs_the_queue_waits_on_the_one_ending_first(tmp_path):
    """A pool of workers runs jobs at once: each stays running until it finishes, and a
    queued job waits on the one expected to end first."""
    store = JobStore(tmp_path)
    first, second, queued = (store.create(TEXTURE, b"npz", total=10) for _ in range(3))
    assert store.take_next(0) is first and store.take_next(0) is second
    assert store.running_jobs() == [first.id, second.id]
    store.progress(first, 2, 10, 40.0, {})
    store.progress(second, 5, 10, 4.0, {})
    assert store.running_job() == second.id and store.running_eta() == 4.0
    assert store.queue_view(queued.id)["waiting_on"]["id"] == second.id
    store.finish(second, "done")
    assert store.running_jobs() == [first.id] and store.queue_view(queued.id)["waiting_on"]["id"] == first.id
    store.finish(first, "done")
    assert store.running_jobs() == [] and store.queue_view(queued.id)["waiting_on"] is None


def test_queued_job_status_and_events_name_the_running_job_and_its_place(server, small_npz):
    client = server.client()
    long_job = submit(client, small_npz, Request(prompt="long", steps=200, texture_size=64))
    deadline = time.monotonic() + 60
    while (ahead := client.get(f"/v1/jobs/{long_job}").json())["step"] < 1:
        assert ahead["state"] in ("queued", "running") and time.monotonic() < deadline, ahead
        time.sleep(0.02)
    second = submit(client, small_npz, Request(prompt="second", steps=1, texture_size=64))
    third = submit(client, small_npz, Request(prompt="third", steps=1, texture_size=64))

    status = client.get(f"/v1/jobs/{third}").json()
    assert status["state"] == QUEUED and status["kind"] == "texture" and status["queue_position"] == 2
    waiting_on = status["waiting_on"]
    assert (waiting_on["id"], waiting_on["kind"], waiting_on["total"], waiting_on["cancelling"]) == \
        (long_job, "texture", 200, False)
    assert 1 <= waiting_on["step"] < 200
    running = client.get(f"/v1/jobs/{long_job}").json()
    assert running["waiting_on"] is None and running["queue_position"] is None

    def on_event(event):  # cancel the job ahead in line, then the running one
        data = event["data"]
        if event["event"] != "queue":
            return
        if data["position"] == 2 and data["waiting_on"] and data["waiting_on"]["step"] > waiting_on["step"]:
            client.delete(f"/v1/jobs/{second}")
        elif data["position"] == 1 and data["waiting_on"] and not data["waiting_on"]["cancelling"]:
            client.delete(f"/v1/jobs/{long_job}")

    events = read_events(client, third, on_event=on_event)
    kinds = [event["event"] for event in events]
    assert kinds[0] == "queued" and kinds[-1] == "done", kinds
    queued = events[0]["data"]
    assert queued["position"] == 2 and queued["waiting_on"]["id"] == long_job
    started = kinds.index("started")
    queue = [event for event in events if event["event"] == "queue"]
    assert queue and all(events.index(event) < started for event in queue)  # only while queued
    assert all(event["id"] is None for event in queue)  # live state, not logged
    assert [event["id"] for event in events if event["id"] is not None] == list(range(1, len(events) - len(queue) + 1))
    for event in queue:
        assert event["data"]["type"] == "queue" and event["data"]["job"] == third
        assert event["data"]["state"] == QUEUED
    steps = [e["data"]["waiting_on"]["step"] for e in queue if e["data"]["waiting_on"] and e["data"]["position"] == 2]
    assert steps and steps == sorted(steps) and steps[-1] > waiting_on["step"]  # live steps of the job ahead
    assert any(e["data"]["position"] == 1 for e in queue)  # moved up when the job ahead was cancelled
    assert wait_for(client, long_job)["state"] == "cancelled" and wait_for(client, second)["state"] == "cancelled"
    # A finished job's stream replays only its log.
    assert [event["event"] for event in read_events(client, third)] == [k for k in kinds if k != "queue"]
