"""Kill `zs serve` mid-queue and start it again: nothing finished is lost, queued jobs run,
the job that was running is failed with "server restarted"."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from zs_core.protocol import Request
from zs_server_helpers import free_port, read_events, submit, wait_for, wait_until_healthy

ROOT = Path(__file__).resolve().parents[2]


class ServeProcess:
    """`python -m zs_cli serve` in a subprocess, its output in a log file."""

    def __init__(self, data_dir: Path, port: int, log_path: Path):
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "zs_cli", "serve", "--port", str(port), "--data-dir", str(data_dir),
             "--device", "cpu", "--default-model", "tiny"],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.base_url = f"http://127.0.0.1:{port}"
        wait_until_healthy(self.base_url, lambda: self.process.poll() is None, log_path)

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.close()


@pytest.mark.slow
def test_restart_mid_queue_keeps_finished_runs_queued_fails_running(tmp_path, small_npz):
    data_dir, port = tmp_path / "data", free_port()
    first = ServeProcess(data_dir, port, tmp_path / "serve.log")
    second = None
    try:
        token = (data_dir / "token").read_text().strip()
        assert "127.0.0.1" in (tmp_path / "serve.log").read_text()  # it says where it listens
        client = httpx.Client(base_url=first.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60)

        finished = submit(client, small_npz, Request(prompt="finished before", steps=2, texture_size=64))
        assert wait_for(client, finished)["state"] == "done"
        texture_before = client.get(f"/v1/jobs/{finished}/files/texture.png").content
        events_before = read_events(client, finished)

        running = submit(client, small_npz, Request(prompt="running at the crash", steps=150, texture_size=64))
        queued = submit(client, small_npz, Request(prompt="queued at the crash", steps=2, texture_size=64))
        deadline = time.monotonic() + 60
        while client.get(f"/v1/jobs/{running}").json()["step"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.get(f"/v1/jobs/{queued}").json()["state"] == "queued"
        client.close()

        first.stop(signal.SIGKILL)  # a crash: no shutdown code runs at all

        second = ServeProcess(data_dir, port, tmp_path / "serve2.log")
        assert (data_dir / "token").read_text().strip() == token
        client = httpx.Client(base_url=second.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60)

        assert client.get(f"/v1/jobs/{finished}").json()["state"] == "done"
        assert client.get(f"/v1/jobs/{finished}/files/texture.png").content == texture_before
        assert client.get(f"/v1/jobs/{finished}/result").status_code == 200
        assert read_events(client, finished) == events_before

        crashed = client.get(f"/v1/jobs/{running}").json()
        assert crashed["state"] == "failed" and crashed["error"] == "server restarted"
        crashed_events = read_events(client, running)
        assert crashed_events[-1]["event"] == "failed"
        assert crashed_events[-1]["data"]["error"] == "server restarted"
        assert [e["id"] for e in crashed_events] == list(range(1, len(crashed_events) + 1))

        assert wait_for(client, queued)["state"] == "done"
        assert client.get(f"/v1/jobs/{queued}/files/texture.png").status_code == 200
        ids = [job["id"] for job in client.get("/v1/jobs").json()["jobs"]]
        assert ids == [queued, running, finished]  # newest first, none lost
        assert not (data_dir / "jobs" / running / "out").exists()
        assert not (data_dir / "jobs" / running / "out.partial").exists()
        client.close()
    finally:
        first.stop(signal.SIGKILL)
        if second is not None:
            second.stop()
    # A graceful stop (SIGTERM) ends by itself (uvicorn re-raises the signal once it has
    # shut down cleanly); -9 would mean stop() had to kill it.
    assert second.process.returncode in (0, -signal.SIGTERM), (tmp_path / "serve2.log").read_text()[-3000:]
    assert "Application shutdown complete" in (tmp_path / "serve2.log").read_text()
