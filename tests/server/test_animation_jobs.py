"""Animation jobs over real HTTP: frames beyond the view limit, SSE to done, frame files; on
the embedded worker and on Ray workers."""

from __future__ import annotations

import json

import pytest

from zs_core import scene
from zs_core.protocol import FRAME_PNG, METRICS_JSON, Request

from zs_server_helpers import job_form, read_events, submit

BACKENDS = ("embedded", "ray")  # the server fixture's (tests/server/conftest.py)


def animation_npz(frames: int) -> bytes:
    return scene.animated_scene(frames=frames, width=64, height=64).to_npz_bytes()


def test_animation_job_streams_to_done_and_serves_frames(server):
    client = server.client()
    frames = 10  # over this server's 8-view limit: frames have their own
    request = Request(kind="animation", prompt="a wooden toy", steps=2, noise="surface", attention="tma",
                      chunk=4, sync_strength=0.8, background_sync=0.8)
    job_id = submit(client, animation_npz(frames), request)
    events = read_events(client, job_id)
    assert [e["event"] for e in events][-1] == "done", events[-1]
    files = set(events[-1]["data"]["files"])
    assert {FRAME_PNG.format(index=i) for i in range(frames)} <= files and METRICS_JSON in files
    metrics = json.loads(client.get(f"/v1/jobs/{job_id}/files/{METRICS_JSON}").content)
    assert metrics["frames"] == frames and metrics["attention_stats"]["chunks"] == 3
    assert metrics["latent_temporal_warp_error"] > 0
    frame = client.get(f"/v1/jobs/{job_id}/files/{FRAME_PNG.format(index=frames - 1)}")
    assert frame.status_code == 200 and frame.content.startswith(b"\x89PNG")


@pytest.mark.embedded_only  # checked at submission, before any worker
def test_animation_requests_are_checked_at_submit(server):
    client = server.client()
    bad = Request(kind="animation", prompt="x", steps=2, attention="extended")
    response = client.post("/v1/jobs", files=job_form(animation_npz(3), bad))
    assert response.status_code == 422 and "attention" in response.text
