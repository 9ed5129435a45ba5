"""Bad uploads get a 4xx whose body names the field: {"detail": {"field", "message"}}."""

from __future__ import annotations

import io
import json

import httpx
import numpy as np
import pytest

from zs_core import scene
from zs_core.protocol import Request

from zs_server_helpers import ServerThread, job_form, make_settings


def npz_of(passes, **changes) -> bytes:
    arrays = passes.arrays()
    arrays.update(changes)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def post(server, files=None, **kwargs) -> httpx.Response:
    return server.client().post("/v1/jobs", files=files, **kwargs)


def assert_names(response: httpx.Response, status: int | tuple, field: str) -> dict:
    statuses = status if isinstance(status, tuple) else (status,)
    assert response.status_code in statuses, (response.status_code, response.text)
    detail = response.json()["detail"]
    assert detail["field"] == field, detail
    assert isinstance(detail["message"], str) and detail["message"]
    return detail


GOOD = Request(prompt="valid", steps=2, texture_size=64)


def bad_passes_cases(passes):
    nan_depth = passes.depth.copy()
    nan_depth[0, 10, 10] = np.nan
    nan_uv = passes.uv.copy()
    nan_uv[passes.mask] = np.nan
    return {
        "depth float64": (npz_of(passes, depth=passes.depth.astype(np.float64)), "depth"),
        "mask as uint8": (npz_of(passes, mask=passes.mask.astype(np.uint8)), "mask"),
        "normal wrong shape": (npz_of(passes, normal=passes.normal[:, :32]), "normal"),
        "depth 2-d": (npz_of(passes, depth=passes.depth[0]), "depth"),
        "texel maps disagree": (npz_of(passes, texel_normal=passes.texel_normal[:32, :32]), "texel_normal"),
        "NaN in depth": (npz_of(passes, depth=nan_depth), "depth"),
        "NaN in uv": (npz_of(passes, uv=nan_uv), "uv"),
        "empty mask": (npz_of(passes, mask=np.zeros_like(passes.mask)), "mask"),
        "no depth": (npz_of(passes, depth=None), "depth"),
        "size not a multiple of 8": (npz_of(scene.sphere_scene(views=2, width=60, height=60, texture_size=64)), "depth"),
        "truncated npz": (npz_of(passes)[:5000], "passes"),
        "not an npz": (b"this is not a zip file at all", "passes"),
        "empty npz": (b"", "passes"),
        "pickled object array": (npz_of(passes, depth=np.array([object()] * 4, dtype=object)), "depth"),
    }


@pytest.mark.parametrize("case", ["depth float64", "mask as uint8", "normal wrong shape", "depth 2-d",
                                  "texel maps disagree", "NaN in depth", "NaN in uv", "empty mask", "no depth",
                                  "size not a multiple of 8", "truncated npz", "not an npz", "empty npz",
                                  "pickled object array"])
def test_malformed_passes_name_the_array(server, small_passes, case):
    npz, field = bad_passes_cases(small_passes)[case]
    assert_names(post(server, job_form(npz, GOOD)), 422, field)


@pytest.mark.parametrize("request_text,field", [
    ("{not json", "request"),
    ("[1, 2, 3]", "request"),
    (json.dumps({"prompt": "x", "colour": "red"}), "colour"),
    (json.dumps({"prompt": "x", "steps": "many"}), "steps"),
    (json.dumps({"prompt": "x", "steps": 0}), "steps"),
    (json.dumps({"prompt": "x", "steps": 201}), "steps"),  # over the server's max_steps=200
    (json.dumps({"prompt": "x", "texture_size": 2048}), "texture_size"),  # over max_texture_size=1024
    (json.dumps({"prompt": "x", "noise": "purple"}), "noise"),
    (json.dumps({"prompt": "x", "guidance_scale": float("nan")}), "guidance_scale"),
    (json.dumps({"prompt": "x", "protocol": 99}), "protocol"),
    (json.dumps({"prompt": "x", "control_start": 0.9, "control_end": 0.1}), "control_end"),
    (json.dumps({"prompt": "x", "attention": "neighbors", "reference_view": 5}), "reference_view"),
])
def test_bad_request_json_names_the_field(server, small_npz, request_text, field):
    assert_names(post(server, job_form(small_npz, request_text)), 422, field)


def test_limits_on_views_and_resolution_name_the_field(server):
    too_many = scene.sphere_scene(views=9, width=16, height=16, texture_size=16)  # max_views=8
    assert_names(post(server, job_form(too_many.to_npz_bytes(), GOOD)), 422, "views")
    too_wide = scene.sphere_scene(views=1, width=264, height=64, texture_size=16)  # max_resolution=256
    assert_names(post(server, job_form(too_wide.to_npz_bytes(), GOOD)), 422, "width")
    big_texels = scene.sphere_scene(views=1, width=64, height=64, texture_size=1032)  # max_texture_size=1024
    assert_names(post(server, job_form(big_texels.to_npz_bytes(), GOOD)), 422, "texel_position")


def test_limits_hold_for_background_id(server, small_passes):
    wide = np.zeros((small_passes.views, small_passes.height, 264), np.int32)  # max_resolution=256
    assert_names(post(server, job_form(npz_of(small_passes, background_id=wide), GOOD)), 422, "width")


def test_malformed_forms(server, small_npz):
    assert_names(post(server, {"passes": ("p.npz", small_npz)}), 422, "request")
    assert_names(post(server, {"request": (None, GOOD.to_json())}), 422, "passes")
    extra = job_form(small_npz, GOOD) | {"colour": (None, "red")}
    assert_names(post(server, extra), 422, "colour")
    assert_names(post(server, data=None, content=b'{"prompt": "x"}', headers={"Content-Type": "application/json"}),
                 415, "content-type")
    assert_names(post(server, content=b"--x\r\nContent-Disposition: form-data; name=\"request\"\r\n\r\n{}",
                      headers={"Content-Type": "multipart/form-data; boundary=x"}), 400, "body")
    assert_names(post(server, content=b"no boundary here", headers={"Content-Type": "multipart/form-data; boundary=zz"}),
                 400, "body")
    assert_names(post(server, content=b"", headers={"Content-Type": "multipart/form-data"}), 400, "content-type")


def test_nothing_is_queued_by_rejected_uploads(server, small_npz):
    client = server.client()
    before = len(client.get("/v1/jobs", params={"limit": 1000}).json()["jobs"])
    post(server, job_form(small_npz, "{not json"))
    post(server, job_form(b"junk", GOOD))
    assert len(client.get("/v1/jobs", params={"limit": 1000}).json()["jobs"]) == before
    assert not [p for p in (server.data_dir / "jobs").iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module")
def small_upload_server(tiny, tmp_path_factory):
    with ServerThread(make_settings(tmp_path_factory.mktemp("zs-small"), max_upload_bytes=200_000), tiny) as running:
        yield running


def test_oversized_upload_is_413(small_upload_server, small_npz):
    big = np.random.default_rng(0).bytes(300_000)  # over the 200 kB limit
    response = post(small_upload_server, job_form(big, GOOD))
    assert_names(response, 413, "body")
    # The same limit holds for uploads without a Content-Length (chunked).
    body = b"".join(job_form_bytes(big))
    response = small_upload_server.client().post(
        "/v1/jobs", content=iter([body[:100_000], body[100_000:]]),
        headers={"Content-Type": "multipart/form-data; boundary=b0undary"})
    assert_names(response, 413, "body")
    # Something that fits is still accepted.
    accepted = small_upload_server.client().post("/v1/jobs", files=job_form(small_npz, GOOD))
    assert accepted.status_code == 202, accepted.text


def job_form_bytes(npz: bytes):
    yield b"--b0undary\r\nContent-Disposition: form-data; name=\"request\"\r\n\r\n" + GOOD.to_json().encode()
    yield b"\r\n--b0undary\r\nContent-Disposition: form-data; name=\"passes\"; filename=\"p.npz\"\r\n\r\n" + npz
    yield b"\r\n--b0undary--\r\n"


def test_handwritten_multipart_is_accepted(server, small_npz):
    response = server.client().post("/v1/jobs", content=b"".join(job_form_bytes(small_npz)),
                                    headers={"Content-Type": 'multipart/form-data; boundary="b0undary"'})
    assert response.status_code == 202, response.text
