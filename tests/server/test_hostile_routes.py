"""Hostile input to the routes other than the upload, over real HTTP: Last-Event-ID values
that pass ``isdigit`` but not ``int``, a symlink planted in a job's outputs (the result
zip and /files/ both refuse it), and Host headers of other names (DNS rebinding: 421)."""

from __future__ import annotations

import io
import os
import zipfile

import httpx
import pytest

from server.config import Settings
from server.hosts import HostCheck
from zs_core.protocol import Request
from zs_server_helpers import ServerThread, make_settings, read_events, submit, wait_for


@pytest.fixture(scope="module")
def finished_job(server, small_npz) -> str:
    client = server.client()
    job_id = submit(client, small_npz, Request(prompt="target", steps=1, texture_size=64))
    assert wait_for(client, job_id)["state"] == "done"
    return job_id


def assert_names(response: httpx.Response, status: int, field: str) -> dict:
    assert response.status_code == status, (response.status_code, response.text[:300])
    detail = response.json()["detail"]
    assert detail["field"] == field and detail["message"], detail
    return detail


@pytest.mark.parametrize("value", ["²".encode(), "１".encode(), b"9" * 5000, b"-1", b"1.5", b"0x10", b"1 2", b"abc"])
def test_bad_last_event_ids_are_400(server, finished_job, value):
    response = server.client().get(f"/v1/jobs/{finished_job}/events", headers={"Last-Event-ID": value})
    detail = assert_names(response, 400, "last-event-id")
    assert len(detail["message"]) < 200  # a 5000-digit value is not echoed whole


def test_good_last_event_ids_still_resume(server, finished_job):
    client = server.client()
    events = read_events(client, finished_job)
    assert [e["id"] for e in read_events(client, finished_job, last_event_id=2)] == [e["id"] for e in events[2:]]
    assert read_events(client, finished_job, last_event_id=10 ** 17) == []


@pytest.mark.parametrize("after", ["9" * 5000, "-1", "x"])
def test_bad_after_values_are_422(server, finished_job, after):
    response = server.client().get(f"/v1/jobs/{finished_job}/events", params={"after": after})
    assert_names(response, 422, "after")


def test_the_result_zip_skips_symlinks_as_files_does(server, finished_job):
    client = server.client()
    job_folder = server.data_dir / "jobs" / finished_job
    out = job_folder / "out"
    honest = client.get(f"/v1/jobs/{finished_job}").json()["files"]
    os.symlink("/etc/passwd", out / "passwd")
    os.symlink("/etc", out / "etc")
    os.symlink(out / "metrics.json", out / "views" / "inside.json")  # even one that stays inside
    (job_folder / "result.zip").unlink(missing_ok=True)  # built on the next download

    response = client.get(f"/v1/jobs/{finished_job}/result")
    assert response.status_code == 200
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert sorted(archive.namelist()) == sorted(honest)
        assert b"root:" not in b"".join(archive.read(name) for name in archive.namelist())
    for name in ("passwd", "etc/passwd", "etc/hostname", "views/inside.json"):
        assert_names(client.get(f"/v1/jobs/{finished_job}/files/{name}"), 404, "name")
    assert client.get(f"/v1/jobs/{finished_job}/files/metrics.json").status_code == 200
    assert client.get(f"/v1/jobs/{finished_job}").json()["files"] == honest


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1.evil.example:{port}",
                                  "localhost.evil.example", "[::2]:{port}", "10.0.0.1:{port}", "127.0.0.1:x"])
def test_a_foreign_host_is_misdirected(server, host):
    host = host.format(port=server.settings.port)
    for method, path in (("GET", "/v1/health"), ("GET", "/openapi.json"), ("POST", "/v1/jobs"), ("GET", "/v1/jobs")):
        response = httpx.request(method, server.base_url + path, headers={**server.auth, "Host": host})
        detail = assert_names(response, 421, "host")
        assert "DNS rebinding" in detail["message"]


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "127.0.0.1", "localhost:{port}", "LOCALHOST", "localhost.",
                                  "[::1]:{port}", "127.1.2.3:{port}"])
def test_loopback_names_are_answered(server, host):
    response = httpx.get(server.base_url + "/v1/health", headers={"Host": host.format(port=server.settings.port)})
    assert response.status_code == 200, response.text


def test_extra_names_come_from_a_setting(tiny, tmp_path):
    with ServerThread(make_settings(tmp_path, allowed_hosts="zs.lan, Render-Box "), tiny) as running:
        for host, status in (("zs.lan", 200), ("render-box:80", 200), ("other.lan", 421)):
            response = httpx.get(running.base_url + "/v1/health", headers={"Host": host})
            assert response.status_code == status, (host, response.text)


def test_names_of_a_server_bound_to_every_interface():
    check = HostCheck(None, Settings(host="0.0.0.0"))
    assert check.allows("192.168.1.20:8765") and check.allows("[fe80::1]:8765") and check.allows("localhost")
    assert not check.allows("evil.example:8765")
    bound = HostCheck(None, Settings(host="192.168.1.20"))
    assert bound.allows("192.168.1.20:8765") and not bound.allows("192.168.1.21:8765")


def test_the_addon_client_still_connects(server):
    """The add-on's urllib client (its own Host header) passes the allow-list."""
    from blender_addon.client import Client

    assert Client(server.base_url, server.token).models()["models"]
