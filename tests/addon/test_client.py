"""blender_addon.client against a real uvicorn server running the tiny model, over real HTTP."""

from __future__ import annotations

import json
import socket
import threading
import time

import numpy as np
import pytest

from blender_addon.client import Client, ServerError
from zs_core import images, scene
from zs_core.protocol import Request
from zs_server_helpers import ServerThread, free_port, make_settings


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    with ServerThread(make_settings(tmp_path_factory.mktemp("zs-data")), tiny) as running:
        yield running


@pytest.fixture(scope="module")
def npz() -> bytes:
    return scene.sphere_scene(views=2, width=64, height=64, texture_size=64).to_npz_bytes()


@pytest.fixture
def client(server) -> Client:
    return Client(server.base_url, server.token, timeout=30)


def request(steps: int = 2, **fields) -> dict:
    return Request(prompt="green moss", steps=steps, texture_size=64, **fields).validate().to_dict()


def finish(client: Client, job: str) -> list[tuple[str, dict]]:
    return list(client.events(job))


def test_submit_stream_and_download(client, npz, tmp_path):
    assert client.health()["status"] == "ok"
    job = client.submit(request(steps=3), npz)
    events = finish(client, job)
    names = [name for name, _ in events]
    assert names[0] == "queued" and names[-1] == "done" and "started" in names
    steps = [data["step"] for name, data in events if name == "progress"]
    assert steps == [1, 2, 3]
    assert all(data["job"] == job and data["type"] == name for name, data in events)
    done = events[-1][1]
    assert "texture.png" in done["files"] and done["metrics"]["steps"] == 3

    texture = client.download_file(job, "texture.png", tmp_path / "one" / "texture.png")
    assert images.load_png(texture).shape == (64, 64, 3)
    view = client.download_file(job, "views/0001.png", tmp_path / "one" / "v1.png")
    assert images.load_png(view).shape == (64, 64, 3)

    folder = client.download_result(job, tmp_path / "all")
    assert folder == tmp_path / "all"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png")) == \
        ["contact_sheet.png", "texture.png", "views/0000.png", "views/0001.png"]
    assert np.array_equal(images.load_png(folder / "texture.png"), images.load_png(texture))
    assert json.loads((folder / "metrics.json").read_text()) == done["metrics"]
    assert client.status(job)["state"] == "done"


def test_wrong_token_is_401_with_what_to_do(server, npz):
    bad = Client(server.base_url, "not-the-token")
    assert bad.health()["status"] == "ok"  # the one route without a token
    for call in (lambda: bad.models(), lambda: bad.submit(request(), npz)):
        with pytest.raises(ServerError) as info:
            call()
        assert info.value.status == 401 and info.value.field == "authorization"
        assert "token rejected" in str(info.value) and "preferences" in str(info.value)
    with pytest.raises(ServerError) as info:
        Client(server.base_url, None).status("whatever")
    assert info.value.status == 401


def test_server_down_is_status_none():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(ServerError) as info:
        Client(url, "x", timeout=2).health()
    assert info.value.status is None
    assert f"cannot reach the ZS server at {url}" in str(info.value) and "zs serve" in str(info.value)


def test_bad_requests_name_the_field(client, npz):
    with pytest.raises(ServerError) as info:
        client.submit(request(steps=500), npz)  # over the test server's max_steps of 200
    assert info.value.status == 422 and info.value.field == "steps" and "steps" in str(info.value)
    bad = dict(request(), noise="loud")
    with pytest.raises(ServerError) as info:
        client.submit(bad, npz)
    assert info.value.status == 422 and info.value.field == "noise"
    with pytest.raises(ServerError) as info:
        client.submit(request(), b"not an npz")
    assert 400 <= info.value.status < 500 and info.value.field == "passes"
    with pytest.raises(ServerError) as info:
        client.status("no-such-job")
    assert info.value.status == 404 and info.value.field == "job_id"


def test_cancel_a_running_job(client, npz):
    job = client.submit(request(steps=200), npz)
    seen = []
    for name, data in client.events(job):
        seen.append(name)
        if name == "progress" and data["step"] == 1:
            answer = client.cancel(job)
            assert answer["cancel_requested"] or answer["state"] == "cancelled"
    assert seen[-1] == "cancelled"
    status = client.status(job)
    assert status["state"] == "cancelled" and status["step"] < 200
    with pytest.raises(ServerError) as info:
        client.cancel(job)  # finished: nothing to cancel
    assert info.value.status == 409


def test_stop_interrupts_a_waiting_stream(client, npz):
    """A queued job's stream carries only queue updates; setting ``stop`` ends the wait at once."""
    running = client.submit(request(steps=200), npz)
    queued = client.submit(request(steps=2), npz)
    stop = threading.Event()
    received, ended = [], threading.Event()

    def follow():
        for name, _data in client.events(queued, stop=stop):
            received.append(name)
        ended.set()

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            time.sleep(0.02)
        assert received[0] == "queued"
        time.sleep(0.3)
        assert set(received[1:]) <= {"queue"}  # where the job ahead is: no step of its own
        assert not ended.is_set()  # waiting on the server
        started = time.monotonic()
        stop.set()
        assert ended.wait(3), "the stream did not stop"
        assert time.monotonic() - started < 1.5
    finally:
        client.cancel(queued)
        client.cancel(running)
    assert [name for name, _ in client.events(running)][-1] == "cancelled"


class DroppingProxy:
    """A TCP proxy to the server that cuts the first event stream after ``cut_after``
    events have gone through (the connection just closes, as a flaky network would)."""

    def __init__(self, port: int, cut_after: int = 2):
        self.target = port
        self.cut_after = cut_after
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.streams = 0
        self.cut = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(downstream,), daemon=True).start()

    def _serve(self, downstream):
        upstream = socket.create_connection(("127.0.0.1", self.target))
        head = b""
        while b"\r\n\r\n" not in head:
            head += downstream.recv(65536)
        upstream.sendall(head)
        is_stream = b"/events " in head.split(b"\r\n", 1)[0]
        cut_this = False
        if is_stream:
            self.streams += 1
            cut_this = self.streams == 1
        threading.Thread(target=self._pump, args=(downstream, upstream), daemon=True).start()
        passed = 0
        try:
            while True:
                data = upstream.recv(65536)
                if not data:
                    break
                downstream.sendall(data)
                passed += data.count(b"\nevent: ")
                if cut_this and passed >= self.cut_after:
                    self.cut = True
                    break
        finally:
            for sock in (downstream, upstream):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    @staticmethod
    def _pump(source, target):
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass

    def close(self):
        self.listener.close()


def test_dropped_stream_resumes_without_losing_events(server, npz):
    proxy = DroppingProxy(server.settings.port, cut_after=2)
    try:
        client = Client(f"http://127.0.0.1:{proxy.port}", server.token, timeout=30)
        job = client.submit(request(steps=4), npz)
        events = list(client.events(job))
    finally:
        proxy.close()
    assert proxy.cut and proxy.streams == 2
    names = [name for name, _ in events]
    assert names[:2] == ["queued", "started"] and names[-1] == "done"
    assert [data["step"] for name, data in events if name == "progress"] == [1, 2, 3, 4]
