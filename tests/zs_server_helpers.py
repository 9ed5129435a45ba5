"""Server test helpers: a real uvicorn server on a free loopback port, real HTTP with httpx.

(A plain module at the top of tests/, not a conftest, so the server, add-on and e2e tests
can all import it by its unique name: pytest puts tests/ on sys.path for tests/conftest.py.)

The in-process server runs ``uvicorn.Server`` in a thread and shares the session's tiny
model (no second model load); the restart test starts ``zs serve`` as a subprocess instead.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from zs_core.protocol import Request

FINISHED = ("done", "failed", "cancelled")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class RunningServer:
    base_url: str
    token: str
    data_dir: Path
    settings: object = None
    clients: list = field(default_factory=list)
    app: object = None  # the FastAPI app (its state: store, worker) when it runs in this process

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def client(self, timeout: float = 60.0) -> httpx.Client:
        client = httpx.Client(base_url=self.base_url, headers=self.auth, timeout=timeout)
        self.clients.append(client)
        return client


class ServerThread:
    """``create_app`` served by uvicorn in a background thread, stopped with should_exit."""

    def __init__(self, settings, components):
        import uvicorn

        from server.app import create_app

        self.settings = settings
        app = self.app = create_app(settings, components=components)
        config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning",
                                timeout_graceful_shutdown=1, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test", daemon=True)
        self.token = app.state.token

    def __enter__(self) -> RunningServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        self.running = RunningServer(f"http://{self.settings.host}:{self.settings.port}", self.token,
                                     self.settings.data_dir, self.settings, app=self.app)
        return self.running

    def __exit__(self, *exc) -> None:
        for client in self.running.clients:
            client.close()
        self.server.should_exit = True
        self.thread.join(30)
        assert not self.thread.is_alive(), "the test server did not stop"


def wait_until_healthy(base_url: str, alive, log_path: Path, timeout: float = 180.0, interval: float = 0.2) -> None:
    """Poll ``base_url``/v1/health until it answers 200; ``alive()`` False (the server
    process exited) or the timeout fails the test with the end of its log."""
    deadline = time.monotonic() + timeout
    while True:
        assert alive(), f"zs serve exited:\n{Path(log_path).read_text()[-3000:]}"
        try:
            if httpx.get(base_url + "/v1/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "zs serve did not come up"
        time.sleep(interval)


def make_settings(data_dir: Path, **overrides):
    from server.config import Settings

    values = dict(host="127.0.0.1", port=free_port(), data_dir=data_dir, default_model="tiny", device="cpu",
                  max_steps=200, max_views=8, max_resolution=256, max_texture_size=1024)
    values.update(overrides)
    return Settings(**values)


def backend_settings(request, backend: str, **ray_overrides) -> dict:
    """Settings of a test server whose jobs run on ``backend``: nothing for "embedded"; for
    "ray" the session's local Ray cluster (the ``ray_cluster`` fixture of tests/server) and
    one worker of one thread, unless ``ray_overrides`` say otherwise."""
    if backend != "ray":
        return {}
    request.getfixturevalue("ray_cluster")
    return {"ray": "auto", "ray_workers": 1, "ray_threads": 1, **ray_overrides}


def job_form(npz: bytes, request: Request | str | bytes) -> dict:
    text = request.to_json() if isinstance(request, Request) else request
    return {"request": (None, text, "application/json"), "passes": ("passes.npz", npz, "application/octet-stream")}


def submit(client: httpx.Client, npz: bytes, request: Request) -> str:
    response = client.post("/v1/jobs", files=job_form(npz, request))
    assert response.status_code == 202, response.text
    return response.json()["id"]


def read_events(client: httpx.Client, job_id: str, last_event_id: int | None = None,
                on_event=None, timeout: float = 120.0) -> list[dict]:
    """Follow a job's SSE stream until the server ends it; -> [{"id", "event", "data"}]
    (``id`` None for an event without one: a queued job's ``queue`` events).
    ``on_event(event)`` is called as each one arrives."""
    headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
    events, current = [], {}
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=timeout) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line:
                if "data" in current:
                    event = {"id": int(current["id"]) if "id" in current else None, "event": current["event"],
                             "data": json.loads(current["data"])}
                    events.append(event)
                    if on_event is not None:
                        on_event(event)
                current = {}
                continue
            if line.startswith(":"):
                continue
            key, _, value = line.partition(":")
            current[key] = value[1:] if value.startswith(" ") else value
    return events


def wait_for(client: httpx.Client, job_id: str, states=FINISHED, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = client.get(f"/v1/jobs/{job_id}").json()
        if status["state"] in states:
            return status
        assert time.monotonic() < deadline, f"job {job_id} still {status['state']} after {timeout} s"
        time.sleep(0.05)


def decode_preview(data: dict):
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(data["preview_png"])))
    image.load()
    return image
