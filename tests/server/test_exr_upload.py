"""An animation job whose passes are a ZS-passes render's EXR files (form field
``exr_sequence``, a zip), over real HTTP: decoded by the server, sampled to done; hostile
or wrong archives are 4xx naming the problem, before anything is queued."""

from __future__ import annotations

import io
import zipfile

from exr_shots import FRAMES, write_shot, zipped
from zs_core.protocol import FRAME_PNG, Request
from zs_server_helpers import read_events

REQUEST = Request(kind="animation", prompt="a wooden toy", steps=2, chunk=2)


def form(archive: bytes, request: Request = REQUEST) -> dict:
    return {"request": (None, request.to_json(), "application/json"),
            "exr_sequence": ("frames.zip", archive, "application/zip")}


def test_an_exr_sequence_is_sampled_like_a_bundle(server, tmp_path):
    _passes, folder = write_shot(tmp_path / "renders")
    client = server.client()
    response = client.post("/v1/jobs", files=form(zipped(folder)))
    assert response.status_code == 202, response.text
    events = read_events(client, response.json()["id"])
    assert events[-1]["event"] == "done", events[-1]
    assert {FRAME_PNG.format(index=i) for i in range(FRAMES)} <= set(events[-1]["data"]["files"])


def test_bad_archives_are_refused_before_queueing(server, tmp_path):
    _passes, folder = write_shot(tmp_path / "renders")
    client = server.client()
    jobs_before = len(client.get("/v1/jobs").json()["jobs"])

    def refused(files) -> str:
        response = client.post("/v1/jobs", files=files)
        assert response.status_code in (400, 422), response.text
        return response.text

    hostile = io.BytesIO()
    with zipfile.ZipFile(hostile, "w") as archive:
        archive.writestr("../../escape.exr", b"x")
    assert "expected plain NNNN.exr / NNNN.json names" in refused(form(hostile.getvalue()))
    assert "not a readable zip archive" in refused(form(b"PK\x03\x04 truncated"))
    texture = Request(kind="texture", prompt="x", steps=2)
    assert "an EXR sequence is an animation's frames" in refused(form(zipped(folder), texture))
    both = dict(form(zipped(folder)), passes=("passes.npz", b"", "application/octet-stream"))
    assert "give exactly one of the form fields passes" in refused(both)
    (folder / "shot_0002.json").unlink()
    assert "shot_0002.exr has no camera sidecar" in refused(form(zipped(folder)))
    assert len(client.get("/v1/jobs").json()["jobs"]) == jobs_before
