"""A job end to end over real HTTP: submit, follow the SSE stream, download, cancel; on the
embedded worker and on Ray workers (``zs serve --ray``)."""

from __future__ import annotations

import io
import json
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

from zs_core.protocol import METRICS_JSON, TEXTURE_PNG, VIEW_PNG, Request

from zs_server_helpers import decode_preview, read_events, submit, wait_for

BACKENDS = ("embedded", "ray")  # the server fixture's (tests/server/conftest.py)


def png(content: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(content)) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def test_health_reports_model_device_and_queue(server):
    health = server.client().get("/v1/health").json()
    assert health["status"] == "ok" and health["model_loaded"] is True
    assert health["device"] == "cpu" and health["model"] == "tiny"
    assert isinstance(health["queue_length"], int) and health["protocol"] == 1


@pytest.mark.embedded_only  # the routes, not the worker
def test_models_lists_the_loaded_model(server):
    models = {m["name"]: m for m in server.client().get("/v1/models").json()["models"]}
    assert {"tiny", "tiny-sdxl"} <= set(models) and models["tiny"]["loaded"] is True


def test_job_runs_to_done_with_previews_and_results(server, small_npz):
    client = server.client()
    job_id = submit(client, small_npz, Request(prompt="a stone ball", steps=3, texture_size=64))
    events = read_events(client, job_id)

    kinds = [event["event"] for event in events]
    assert kinds[0] == "queued" and kinds[1] == "started" and kinds[-1] == "done", kinds
    assert kinds.count("progress") == 3
    assert [event["id"] for event in events] == list(range(1, len(events) + 1))
    for event in events:
        assert event["data"]["type"] == event["event"] and event["data"]["job"] == job_id
    progress = [event["data"] for event in events if event["event"] == "progress"]
    assert [p["step"] for p in progress] == [1, 2, 3] and {p["total"] for p in progress} == {3}
    preview = decode_preview(progress[-1])
    assert preview.size == (progress[-1]["preview_width"], progress[-1]["preview_height"])
    assert preview.size[0] > 0 and preview.mode == "RGB"

    status = client.get(f"/v1/jobs/{job_id}").json()
    assert status["state"] == "done" and status["step"] == 3 and status["error"] is None
    expected = {VIEW_PNG.format(index=0), VIEW_PNG.format(index=1), TEXTURE_PNG, METRICS_JSON}
    assert expected <= set(status["files"])
    assert set(events[-1]["data"]["files"]) == set(status["files"])

    response = client.get(f"/v1/jobs/{job_id}/result")
    assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        names = set(archive.namelist())
        assert expected <= names
        metrics = json.loads(archive.read(METRICS_JSON))
        view = png(archive.read(VIEW_PNG.format(index=1)))
        texture = png(archive.read(TEXTURE_PNG))
    assert metrics["views"] == 2 and metrics["steps"] == 3 and metrics["request"]["prompt"] == "a stone ball"
    assert view.shape == (64, 64, 3) and texture.shape == (64, 64, 3)

    single = client.get(f"/v1/jobs/{job_id}/files/{TEXTURE_PNG}")
    assert single.status_code == 200 and np.array_equal(png(single.content), texture)
    single_view = client.get(f"/v1/jobs/{job_id}/files/views/0001.png")
    assert single_view.status_code == 200 and np.array_equal(png(single_view.content), view)

    listed = client.get("/v1/jobs").json()["jobs"]
    assert listed[0]["id"] == job_id and listed[0]["state"] == "done"


def test_events_resume_after_last_event_id(server, small_npz):
    client = server.client()
    job_id = submit(client, small_npz, Request(prompt="resume", steps=2, texture_size=64))
    everything = read_events(client, job_id)
    resumed = read_events(client, job_id, last_event_id=3)
    assert resumed == everything[3:]
    assert read_events(client, job_id, last_event_id=everything[-1]["id"]) == []


@pytest.mark.embedded_only  # the routes, not the worker
def test_file_route_rejects_path_traversal(server, small_npz):
    client = server.client()
    job_id = submit(client, small_npz, Request(prompt="traversal", steps=1, texture_size=64))
    assert wait_for(client, job_id)["state"] == "done"
    for name in ("..%2Fstatus.json", "views/..%2F..%2Fstatus.json", "%2E%2E/token", "views/%2E%2E/metrics.json",
                 "%2Fetc%2Fpasswd", "views\\..\\metrics.json"):
        response = client.get(f"/v1/jobs/{job_id}/files/{name}")
        assert response.status_code in (400, 404), (name, response.status_code)
        assert response.json()["detail"]["field"] in ("name", "path"), name
    assert client.get(f"/v1/jobs/{job_id}/files/nothing.png").status_code == 404
    assert client.get(f"/v1/jobs/{job_id}/files/views").status_code == 404  # a folder, not a file


@pytest.mark.embedded_only  # the routes, not the worker
def test_unknown_jobs_are_404_and_unfinished_results_409(server, small_npz):
    client = server.client()
    for path in ("/v1/jobs/0123456789abcdef0123", "/v1/jobs/nope/events", "/v1/jobs/../../token",
                 "/v1/jobs/0123456789abcdef0123/result"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert set(response.json()["detail"]) == {"field", "message"}
    assert client.delete("/v1/jobs/0123456789abcdef0123").status_code == 404

    job_id = submit(client, small_npz, Request(prompt="slow", steps=40, texture_size=64))
    response = client.get(f"/v1/jobs/{job_id}/result")
    assert response.status_code == 409 and response.json()["detail"]["field"] == "job_id"
    client.delete(f"/v1/jobs/{job_id}")
    wait_for(client, job_id)


def test_cancel_running_job_stops_within_a_step(server, small_npz):
    client = server.client()
    job_id = submit(client, small_npz, Request(prompt="cancel me", steps=60, texture_size=64))
    cancel = {}

    def on_event(event):
        if event["event"] == "progress" and not cancel:
            cancel["at"] = time.monotonic()
            response = client.delete(f"/v1/jobs/{job_id}")
            cancel["status"] = response.status_code
            cancel["body"] = response.json()

    events = read_events(client, job_id, on_event=on_event)
    ended = time.monotonic()
    assert cancel["status"] == 202 and cancel["body"]["cancel_requested"] is True
    assert events[-1]["event"] == "cancelled", [e["event"] for e in events]
    steps_after_cancel = [e for e in events if e["event"] == "progress" and e["data"]["step"] > 2]
    assert len(steps_after_cancel) <= 2  # the step in flight, at most one more
    assert ended - cancel["at"] < 5.0
    status = client.get(f"/v1/jobs/{job_id}").json()
    assert status["state"] == "cancelled" and status["step"] < 60
    assert client.get(f"/v1/jobs/{job_id}/result").status_code == 409
    again = client.delete(f"/v1/jobs/{job_id}")
    assert again.status_code == 409


def test_cancel_queued_job_is_immediate_and_queue_continues(server, small_npz):
    client = server.client()
    running = submit(client, small_npz, Request(prompt="first", steps=25, texture_size=64))
    queued = submit(client, small_npz, Request(prompt="second", steps=1, texture_size=64))
    after = submit(client, small_npz, Request(prompt="third", steps=1, texture_size=64))
    response = client.delete(f"/v1/jobs/{queued}")
    assert response.status_code == 202 and response.json()["state"] == "cancelled"
    events = read_events(client, queued)
    assert [e["event"] for e in events] == ["queued", "cancelled"]
    assert wait_for(client, running)["state"] == "done"
    assert wait_for(client, after)["state"] == "done"


@pytest.mark.embedded_only  # the patch reaches this process, not a Ray worker's
def test_sampler_failure_fails_the_job_and_server_keeps_serving(server, small_npz, monkeypatch):
    from zs_core import run

    real_run_job = run.run_job

    def exploding_run_job(components, request, passes, out_dir, **kwargs):
        if request.prompt == "explode":
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_run_job(components, request, passes, out_dir, **kwargs)

    monkeypatch.setattr(run, "run_job", exploding_run_job)
    client = server.client()
    failing = submit(client, small_npz, Request(prompt="explode", steps=1, texture_size=64))
    fine = submit(client, small_npz, Request(prompt="fine", steps=1, texture_size=64))
    status = wait_for(client, failing)
    assert status["state"] == "failed" and "out of memory" in status["error"]
    events = read_events(client, failing)
    assert events[-1]["event"] == "failed" and "out of memory" in events[-1]["data"]["error"]
    assert wait_for(client, fine)["state"] == "done"
    assert client.get("/v1/health").status_code == 200
