"""The network side of one generation, on a background thread; no bpy.

Blender's UI must never wait on the network, and bpy may only be touched from the main
thread. So a :class:`RemoteJob` submits, follows the server-sent events and downloads
the result (the texture, or every output of an animation) on its own thread, and reports
through a queue; the main thread calls :meth:`RemoteJob.poll` (from a modal operator's
timer) to drain it and act in Blender.

Messages (drained by ``poll``), as tuples:
    ("submitted", job_id)
    ("state", state)                       queued / running
    ("progress", step, total, preview_png) preview_png: PNG bytes or None
    ("done", result_path)                  the downloaded file (texture.png), or the folder
                                           the whole result was extracted into (a Path)
    ("failed", message)                    the job failed or the server could not be used
    ("cancelled",)

Only one job runs at a time in a Blender session: :func:`active` / :func:`cancel_active`.
"""

from __future__ import annotations

import base64
import binascii
import queue
import threading
from pathlib import Path

from ..client import Client, ServerError

FINISHED = ("done", "failed", "cancelled")
TEXTURE_FILE = "texture.png"

_active: "RemoteJob | None" = None
_active_lock = threading.Lock()


class RemoteJob:
    """Submit ``request`` (a dict, ``Request.to_dict()``) with ``passes_npz`` to ``client``'s
    server, follow it and download its ``result`` file (default ``texture.png``; None: the
    whole result, e.g. an animation's ``frames/``) into ``folder`` on a worker thread.

    ``state`` (main-thread view, updated by :meth:`poll`): "starting", "queued",
    "running", then one of "done", "failed", "cancelled". ``step`` / ``total`` count
    sampler steps; ``error`` is a user-facing message; ``result_path`` (the file, or
    ``folder`` for a whole result) is set when done.
    """

    def __init__(self, client: Client, request: dict, passes_npz: bytes, folder: Path,
                 result: str | None = TEXTURE_FILE):
        self.client = client
        self.request = request
        self.passes_npz = passes_npz
        self.folder = Path(folder)
        self.result = result
        self.state = "starting"
        self.job_id: str | None = None
        self.step = 0
        self.total = int(request.get("steps", 0))
        self.error: str | None = None
        self.result_path: Path | None = None
        self._queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._submitted = threading.Event()  # job_id is known to the worker thread
        self._thread = threading.Thread(target=self._run, name="zs-generate", daemon=True)
        self._cancel_thread: threading.Thread | None = None

    # ------------------------------------------------------------- main thread

    @property
    def texture_path(self) -> Path | None:
        """The downloaded texture of a texture job (``result_path``)."""
        return self.result_path

    def start(self) -> "RemoteJob":
        """Start the worker thread and make this the session's active job."""
        global _active
        with _active_lock:
            if _active is not None and _active.alive:
                raise RuntimeError("another ZS job is already running; cancel it first")
            _active = self
        self._thread.start()
        return self

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def cancel_requested(self) -> bool:
        return self._stop.is_set()

    @property
    def alive(self) -> bool:
        """The worker thread still runs (a job nobody polls any more does not block others)."""
        return self._thread.is_alive()

    def poll(self) -> list[tuple]:
        """Drain the worker's messages (never blocks) -> them, in order; ``state``,
        ``step``, ``job_id``, ``error`` and ``result_path`` are updated from them."""
        messages = []
        while True:
            try:
                message = self._queue.get_nowait()
            except queue.Empty:
                break
            messages.append(message)
            kind = message[0]
            if kind == "submitted":
                self.job_id = message[1]
            elif kind == "state":
                self.state = message[1]
            elif kind == "progress":
                self.state, self.step, self.total = "running", message[1], message[2]
            elif kind == "done":
                self.state, self.result_path = "done", message[1]
            elif kind == "failed":
                self.state, self.error = "failed", message[1]
            elif kind == "cancelled":
                self.state = "cancelled"
        if self.finished:
            _release(self)
        return messages

    def cancel(self) -> None:
        """Ask the server to cancel (on a helper thread: never blocks) and stop following.
        ``poll`` reports ("cancelled",) once the worker has let go."""
        if self._stop.is_set() or self.finished:
            return
        self._stop.set()
        self._cancel_thread = threading.Thread(target=self._cancel_on_server, name="zs-cancel", daemon=True)
        self._cancel_thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the worker (and a cancel request) to end -> True if both did. For
        scripts and tests: the UI polls instead."""
        self._thread.join(timeout)
        if self._cancel_thread is not None:
            self._cancel_thread.join(timeout)
        return not self._thread.is_alive()

    # ----------------------------------------------------------- worker thread

    def _run(self) -> None:
        try:
            job_id = self.client.submit(self.request, self.passes_npz)
            self.job_id = job_id
            self._submitted.set()
            self._queue.put(("submitted", job_id))
            if self._stop.is_set():  # cancelled while uploading: the cancel thread takes it down
                self._queue.put(("cancelled",))
                return
            for name, data in self.client.events(job_id, stop=self._stop):
                if name in ("queued", "started"):
                    self._queue.put(("state", "queued" if name == "queued" else "running"))
                elif name == "progress":
                    self._queue.put(("progress", int(data.get("step", 0)), int(data.get("total", self.total)),
                                     _preview_bytes(data)))
                elif name == "done":
                    self.folder.mkdir(parents=True, exist_ok=True)
                    if self.result is None:
                        path = self.client.download_result(job_id, self.folder)
                    else:
                        path = self.client.download_file(job_id, self.result, self.folder / self.result)
                    self._queue.put(("done", Path(path)))
                    return
                elif name == "failed":
                    self._queue.put(("failed", f"the job failed on the server: {data.get('error') or 'no reason given'}"))
                    return
                elif name == "cancelled":
                    self._queue.put(("cancelled",))
                    return
            # The stream ended without a terminal event: only a stop request does that.
            self._queue.put(("cancelled",) if self._stop.is_set() else
                            ("failed", "the server's event stream ended before the job finished"))
        except ServerError as exc:
            self._queue.put(("cancelled",) if self._stop.is_set() and exc.status is None else ("failed", str(exc)))
        except Exception as exc:  # never die silently on a thread: the UI would wait forever
            self._queue.put(("failed", f"unexpected error while talking to the server: "
                                       f"{type(exc).__name__}: {exc}"))
        finally:
            self._submitted.set()

    def _cancel_on_server(self) -> None:
        # The upload may still be running: wait for the id (the worker sets the event on
        # every way out, so this never hangs).
        self._submitted.wait()
        if self.job_id is None:
            return
        try:
            self.client.cancel(self.job_id)
        except ServerError:
            pass  # already finished (409) or the server is gone: nothing left to cancel


def _preview_bytes(data: dict) -> bytes | None:
    text = data.get("preview_png")
    if not text:
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None  # a damaged preview is skipped, not fatal


def _release(job: RemoteJob) -> None:
    global _active
    with _active_lock:
        if _active is job:
            _active = None


def active() -> RemoteJob | None:
    """The job running in this Blender session, if any."""
    return _active


def cancel_active() -> bool:
    """Cancel the running job, if any -> whether there was one."""
    job = _active
    if job is None or job.finished or not job.alive:
        return False
    job.cancel()
    return True
