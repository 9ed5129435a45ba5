"""`zs serve` processes forked from one warm parent, for tests that restart the server often.

``python -m zs_cli serve`` spends 7-20 s importing torch and diffusers on a 2-core machine
before it listens; twenty restarts would take minutes. :class:`ForkServer` pays the imports
once: a parent process (this file run as a script) imports everything and then, on each
request, forks a child that runs ``zs_cli.main(["serve", ...])`` — the real command, in a
process of its own, with its own pid to ``kill -9``. The parent never runs torch itself, so
no thread pool exists yet that a fork could break.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


class Serve:
    """One forked ``zs serve``."""

    def __init__(self, pid: int, base_url: str, data_dir: Path, log_path: Path):
        self.pid, self.base_url, self.data_dir, self.log_path = pid, base_url, data_dir, log_path

    @property
    def token(self) -> str:
        return (self.data_dir / "token").read_text().strip()

    def client(self, timeout: float = 10.0) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {self.token}"},
                            timeout=timeout)

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 30.0) -> None:
        """Send ``sig`` and wait until the process is gone (the parent reaps it)."""
        if self.alive():
            os.kill(self.pid, sig)
        deadline = time.monotonic() + timeout
        while self.alive():
            assert time.monotonic() < deadline, f"zs serve {self.pid} did not end after signal {sig}"
            time.sleep(0.01)

    def wait_up(self, timeout: float = 60.0) -> None:
        from zs_server_helpers import wait_until_healthy  # the test process's; this file also runs alone

        wait_until_healthy(self.base_url, self.alive, self.log_path, timeout, interval=0.02)


class ForkServer:
    def __init__(self):
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
        self.process = subprocess.Popen([sys.executable, __file__], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        ready = self.process.stdout.readline().strip()
        assert ready == "ready", f"the fork server did not start ({ready!r})"

    def spawn(self, data_dir: Path, port: int, log_path: Path, env: dict[str, str] | None = None) -> Serve:
        argv = ["serve", "--port", str(port), "--data-dir", str(data_dir), "--device", "cpu", "--default-model", "tiny"]
        self.process.stdin.write(json.dumps({"argv": argv, "log": str(log_path), "env": env or {}}) + "\n")
        self.process.stdin.flush()
        pid = int(self.process.stdout.readline())
        serve = Serve(pid, f"http://127.0.0.1:{port}", Path(data_dir), Path(log_path))
        serve.wait_up()
        return serve

    def close(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def _parent() -> None:
    import torch  # noqa: F401  everything `zs serve` imports, once
    import uvicorn  # noqa: F401

    import server.app  # noqa: F401
    import zs_cli
    import zs_core.models  # noqa: F401
    import zs_core.run  # noqa: F401
    import zs_core.tiny  # noqa: F401

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    print("ready", flush=True)
    for line in sys.stdin:
        order = json.loads(line)
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.setsid()
            log = os.open(order["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.environ.update(order["env"])
            code = 1
            try:
                code = zs_cli.main(order["argv"])
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code or 0)
        print(pid, flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    _parent()
