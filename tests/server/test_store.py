"""The persistent job store on its own (no HTTP, no model): recovery, torn logs, pruning."""

from __future__ import annotations

import json
import os
import time

import pytest

from server.jobs import (CANCELLED, DONE, EVENTS_FILE, EVENTS_KEPT_IN_MEMORY, FAILED, QUEUED, RESTART_REASON, RUNNING, JobConflict,
                         JobNotFound, JobStore, StartDeferred, is_job_id, read_event_log)


def make_store(path, jobs=3):
    store = JobStore(path)
    created = [store.create('{"prompt": "x"}', b"npz" * 10, total=4) for _ in range(jobs)]
    return store, created


def test_fifo_order_and_states(tmp_path):
    store, created = make_store(tmp_path)
    assert store.queue_length() == 3
    first = store.take_next(timeout=0)
    assert first.id == created[0].id and first.state == RUNNING
    assert store.snapshot(created[1].id)["queue_position"] == 1
    store.finish(first, DONE)
    assert [job["id"] for job in store.recent(10)] == [job.id for job in reversed(created)]
    with pytest.raises(JobConflict):
        store.cancel(first.id)
    with pytest.raises(JobNotFound):
        store.get("../../etc")
    assert all(is_job_id(job.id) for job in created)


def test_recover_requeues_queued_fails_running_keeps_finished(tmp_path):
    store, (done, running, queued) = make_store(tmp_path)
    assert store.take_next(0) is done
    store.finish(done, DONE)
    assert store.take_next(0) is running
    store.progress(running, 1, 4, 1.0, {"preview_png": ""})
    interrupted = JobStore(tmp_path).stage(b"npz")  # a submission never renamed into place
    (tmp_path / "0123456789abcdef0123").mkdir()  # a folder without a status, nor the store's marker

    again = JobStore(tmp_path)  # "restart"
    counts = again.recover()
    assert counts == {"queued": 1, "failed_on_restart": 1, "finished": 1, "quarantined": 0, "left_alone": 1}
    assert interrupted.name.startswith(".new-") and not interrupted.exists()
    assert again.get(done.id).state == DONE
    crashed = again.snapshot(running.id)
    assert crashed["state"] == FAILED and crashed["error"] == RESTART_REASON
    events, finished = again.events_after(running.id, 0)
    assert [e.type for e in events] == ["queued", "started", "progress", "failed"] and finished
    assert [e.id for e in events] == [1, 2, 3, 4]
    assert again.take_next(0).id == queued.id
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([done.id, running.id, queued.id,
                                                                 "0123456789abcdef0123"])  # not ours: stays
    new = again.create("{}", b"", total=1)
    assert new.seq > queued.seq  # numbering goes on after a restart


def test_torn_last_event_line_is_dropped(tmp_path):
    store, (job, *_) = make_store(tmp_path, jobs=1)
    store.take_next(0)
    log = tmp_path / job.id / EVENTS_FILE
    with open(log, "ab") as handle:
        handle.write(b'{"id":3,"type":"progress","data":{"st')  # crash mid-append
    events = read_event_log(log)
    assert [e.type for e in events] == ["queued", "started"]
    status = json.loads((tmp_path / job.id / "status.json").read_text())
    assert status["state"] == RUNNING

    again = JobStore(tmp_path)
    again.recover()  # drops the torn tail, then logs the failure after the intact events
    events, finished = again.events_after(job.id, 0)
    assert [(e.id, e.type) for e in events] == [(1, "queued"), (2, "started"), (3, "failed")] and finished
    assert [e.type for e in read_event_log(log)] == ["queued", "started", "failed"]


def test_finished_jobs_events_leave_memory_but_stay_readable(tmp_path):
    store, created = make_store(tmp_path, jobs=EVENTS_KEPT_IN_MEMORY + 2)
    for _ in created:
        store.finish(store.take_next(0), DONE)
    assert created[0].events is None and created[1].events is None and created[-1].events is not None
    events, finished = store.events_after(created[0].id, 0)
    assert [e.type for e in events] == ["queued", "started", "done"] and finished


def test_cancel_queued_removes_it_from_the_queue(tmp_path):
    store, (first, second, third) = make_store(tmp_path)
    snapshot = store.cancel(second.id)
    assert snapshot["state"] == CANCELLED and store.queue_length() == 2
    assert store.take_next(0) is first and store.take_next(0) is third
    assert store.take_next(0) is None


def test_cancel_running_sets_the_flag_only(tmp_path):
    store, (job, *_) = make_store(tmp_path, jobs=1)
    store.take_next(0)
    snapshot = store.cancel(job.id)
    assert snapshot["state"] == RUNNING and snapshot["cancel_requested"] and job.cancel_flag.is_set()


def test_prune_by_age_then_by_size_never_active_jobs(tmp_path):
    store, jobs = make_store(tmp_path, jobs=5)
    for job in jobs[:4]:
        store.finish(store.take_next(0), DONE)
    now = time.time()
    jobs[0].finished = now - 10 * 86400  # old
    for job in jobs[1:4]:
        (job.folder / "out").mkdir()
        (job.folder / "out" / "big.bin").write_bytes(os.urandom(10_000))
    removed = store.prune(max_age_seconds=86400, max_bytes=10**9, now=now)
    assert removed == [jobs[0].id] and not jobs[0].folder.exists()
    removed = store.prune(max_age_seconds=86400, max_bytes=15_000, now=now)  # 3 x ~10 kB
    assert removed == [jobs[1].id, jobs[2].id]  # oldest finished first, until it fits
    assert store.get(jobs[3].id).state == DONE and store.get(jobs[4].id).state == QUEUED
    store.prune(max_age_seconds=0, max_bytes=0, now=now + 1)
    assert store.get(jobs[4].id).state == QUEUED  # queued and running jobs are never pruned
    with pytest.raises(JobNotFound):
        store.get(jobs[3].id)


def test_a_failed_append_is_cut_back_and_a_failed_write_leaves_no_temporary(tmp_path, monkeypatch):
    import errno

    from server import durable
    from zs_faults import FaultyOs, Rule

    layer = FaultyOs(durable.os)
    monkeypatch.setattr(durable, "os", layer)
    store, (job, *_) = make_store(tmp_path, jobs=1)
    log = tmp_path / job.id / EVENTS_FILE
    before = log.read_bytes()
    layer.add(Rule("write", path="events.jsonl", short=True))  # half the line lands...
    layer.add(Rule("write", path="events.jsonl", error=errno.EIO))  # ...then the disk fails
    with pytest.raises(StartDeferred, match="Input/output error"):  # it stays queued, to be retried
        store.take_next(0)
    assert log.read_bytes() == before  # no torn half line for later appends to follow
    assert store.snapshot(job.id)["state"] == QUEUED
    layer.add(Rule("write", path=".status.json.", error=errno.EIO))
    with pytest.raises(OSError):
        durable.write_atomic(tmp_path / job.id / "status.json", "{}")
    assert not [p for p in (tmp_path / job.id).iterdir() if p.name.endswith(".tmp")]
    layer.clear()
    assert store.take_next(0) is job  # the same job starts once the disk works again
    assert [e.type for e in read_event_log(log)] == ["queued", "started"]
