"""Recovery never deletes what it cannot read, and touches only the store's own folders;
everything under the data dir is owner-only. On a real server (uvicorn, the tiny model)."""

from __future__ import annotations

import json
import logging
import os
import stat

import pytest

from server.jobs import MARKER_FILE, JobStore
from zs_core.protocol import Request
from zs_server_helpers import ServerThread, make_settings, submit, wait_for


def run_one_job(settings, tiny, npz, prompt="kept") -> str:
    with ServerThread(settings, tiny) as running:
        client = running.client()
        job_id = submit(client, npz, Request(prompt=prompt, steps=1, texture_size=64))
        assert wait_for(client, job_id, timeout=60)["state"] == "done"
        assert client.get(f"/v1/jobs/{job_id}/result").status_code == 200
    return job_id


@pytest.mark.slow
def test_unreadable_status_is_quarantined_and_foreign_folders_stay(tmp_path, tiny, small_npz, caplog):
    settings = make_settings(tmp_path / "data")
    good, broken = run_one_job(settings, tiny, small_npz, "good"), run_one_job(settings, tiny, small_npz, "broken")
    jobs = settings.jobs_dir
    texture = (jobs / broken / "out" / "texture.png").read_bytes()
    (jobs / broken / "status.json").write_text('{"id": "' + broken + '", "st')  # torn by a disk fault
    notes = jobs / "user_notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine, not the server's")
    hidden = jobs / ".backup"
    hidden.mkdir()
    (hidden / "copy.txt").write_text("also mine")
    look_alike = jobs / "0123456789abcdef0123"  # a job id for a name, but no marker and no status
    look_alike.mkdir()
    (jobs / "README").write_text("a file, left alone")
    (jobs / good / ".status.json.0a1b2c3d.tmp").write_text("{")  # a write a crash interrupted
    (jobs / ".new-0123456789abcdef").mkdir()  # a submission that crashed before its marker

    caplog.set_level(logging.INFO, logger="zs.server")
    with ServerThread(settings, tiny) as running:
        client = running.client()
        assert client.get(f"/v1/jobs/{good}").json()["state"] == "done"
        assert client.get(f"/v1/jobs/{good}/files/texture.png").status_code == 200
        assert client.get(f"/v1/jobs/{broken}").status_code == 404
        fresh = submit(client, small_npz, Request(prompt="after recovery", steps=1, texture_size=64))
        assert wait_for(client, fresh, timeout=60)["state"] == "done"

    quarantined = settings.data_dir / "quarantine" / broken
    assert (quarantined / "out" / "texture.png").read_bytes() == texture  # moved whole, outputs included
    assert not (jobs / broken).exists()
    assert f"{broken}: unreadable status.json" in caplog.text and "quarantine" in caplog.text
    assert (notes / "todo.txt").read_text() == "mine, not the server's"
    assert (hidden / "copy.txt").read_text() == "also mine"
    assert look_alike.is_dir() and (jobs / "README").is_file()
    assert not (jobs / good / ".status.json.0a1b2c3d.tmp").exists()
    assert not (jobs / ".new-0123456789abcdef").exists()


def test_a_submission_killed_while_writing_its_marker_is_cleaned_up(tmp_path):
    """Killed inside the marker's atomic write: its staging folder holds only the temporary
    file. That is still ours (the staging name and nothing else); a staging-named folder
    with anything else in it is not touched."""
    crashed = tmp_path / ".new-0123456789abcdef"
    crashed.mkdir()
    (crashed / f".{MARKER_FILE}.a4c25fbd.tmp").write_text("")
    foreign = tmp_path / ".new-fedcba9876543210"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("someone's")
    JobStore(tmp_path).recover()
    assert not crashed.exists() and (foreign / "notes.txt").read_text() == "someone's"


def test_recovery_adopts_a_job_folder_from_before_the_marker(tmp_path):
    store = JobStore(tmp_path)
    job = store.create('{"prompt": "old"}', b"npz", total=1)
    store.finish(store.take_next(0), "done")
    (job.folder / MARKER_FILE).unlink()  # as written by a server before markers existed
    again = JobStore(tmp_path)
    counts = again.recover()
    assert counts["finished"] == 1 and counts["left_alone"] == 0
    assert again.get(job.id).state == "done" and (job.folder / MARKER_FILE).is_file()


def test_recovery_quarantines_a_marked_folder_whose_status_names_another_job(tmp_path):
    store = JobStore(tmp_path)
    job = store.create('{"prompt": "x"}', b"npz", total=1)
    status = json.loads((job.folder / "status.json").read_text())
    (job.folder / "status.json").write_text(json.dumps({**status, "id": "f" * 20}))
    again = JobStore(tmp_path)
    assert again.recover()["quarantined"] == 1
    assert (tmp_path.parent / "quarantine" / job.id / "passes.npz").read_bytes() == b"npz"
    # A second folder of the same name later goes next to it, not over it.
    job2 = JobStore(tmp_path)
    (tmp_path / job.id).mkdir()
    (tmp_path / job.id / MARKER_FILE).write_text("")
    assert job2.recover()["quarantined"] == 1
    assert len(list((tmp_path.parent / "quarantine").iterdir())) == 2


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_everything_under_the_data_dir_is_owner_only(tmp_path, tiny, small_npz):
    settings = make_settings(tmp_path / "data")
    settings.data_dir.mkdir(mode=0o755)
    os.chmod(settings.data_dir, 0o755)  # an existing, world-readable data dir is tightened
    run_one_job(settings, tiny, small_npz)
    wrong = []
    for root, folders, files in os.walk(settings.data_dir):
        for name in folders:
            if stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode) != 0o700:
                wrong.append(os.path.join(root, name))
        for name in files:
            mode = stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode)
            if mode != 0o600:
                wrong.append((os.path.join(root, name), oct(mode)))
    assert stat.S_IMODE(os.stat(settings.data_dir).st_mode) == 0o700
    assert not wrong, wrong
