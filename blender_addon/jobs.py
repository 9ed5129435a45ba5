"""The network side of one generation, on a background thread; no bpy.

Blender's UI must never wait on the network, and bpy may only be touched from the main
thread. So a :class:`RemoteJob` submits, follows the server-sent events and downloads
the whole result (texture.png, views/ or frames/, metrics.json ...) on its own thread,
and reports through a queue; the main thread calls :meth:`RemoteJob.poll` (from a modal
operator's timer, or a blocking loop in scripts) to drain it and act in Blender.

Events (drained by ``poll``) are ``(name, data)`` pairs, the server's own where it sends one:
    ("submitted", {"job"})
    ("queued", {"position", "waiting_on", ...}), ("started", {"total", ...})
    ("queue", {"position", "waiting_on"})         the queue moved (the server's live queue state)
    ("progress", {"step", "total", "preview"})   preview: PNG bytes or None
    ("done", {"job", "folder", ...})              folder: where the result was extracted
    ("failed", {"job", "error"})                  error: a user-facing message
    ("cancelled", {"job"})

Only one job runs at a time in a Blender session: :func:`active` / :func:`cancel_active`.
"""

from __future__ import annotations

import base64
import binascii
import queue
import threading
from pathlib import Path

from .client import Client, ServerError

FINISHED = ("done", "failed", "cancelled")
TEXTURE_FILE = "texture.png"

_active: "RemoteJob | None" = None
_active_lock = threading.Lock()


class RemoteJob:
    """Submit ``request`` (a dict, ``Request.to_dict()``) with ``passes_npz`` to ``client``'s
    server, follow it and download its whole result into ``folder`` on a worker thread.

    ``state`` (main-thread view, updated by :meth:`poll`): "starting", "queued",
    "running", then one of "done", "failed", "cancelled". ``step`` / ``total`` count
    sampler steps; ``error`` is a user-facing message; ``result_path`` (``folder``) is set
    when done. While queued, ``queue_position`` (1 runs next) and ``waiting_on`` (the job
    the server runs meanwhile: ``id``, ``kind``, ``step``, ``total``, ``cancelling``; None
    between jobs) say what it waits for: :func:`queue_text` puts that into words.
    """

    def __init__(self, client: Client, request: dict, passes_npz: bytes, folder: Path, field: str = "passes"):
        self.client = client
        self.request = request
        self.passes_npz = passes_npz
        self.field = field  # "exr_sequence": passes_npz holds a zip of a ZS-passes render
        self.folder = Path(folder)
        self.state = "starting"
        self.job_id: str | None = None
        self.step = 0
        self.total = int(request.get("steps", 0))
        self.error: str | None = None
        self.result_path: Path | None = None
        self.queue_position: int | None = None
        self.waiting_on: dict | None = None
        self._queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._submitted = threading.Event()  # job_id is known to the worker thread
        self._thread = threading.Thread(target=self._run, name="zs-generate", daemon=True)
        self._cancel_thread: threading.Thread | None = None

    # ------------------------------------------------------------- main thread

    @property
    def texture_path(self) -> Path | None:
        """The downloaded texture of a texture job."""
        return None if self.result_path is None else self.result_path / TEXTURE_FILE

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

    def poll(self) -> list[tuple[str, dict]]:
        """Drain the worker's events (never blocks) -> them, in order; ``state``, ``step``,
        ``job_id``, ``error`` and ``result_path`` are updated from them."""
        events = []
        while True:
            try:
                name, data = self._queue.get_nowait()
            except queue.Empty:
                break
            events.append((name, data))
            if name == "submitted":
                self.job_id = data["job"]
            elif name in ("queued", "queue"):
                self.state = "queued"
                self.queue_position, self.waiting_on = data.get("position"), data.get("waiting_on")
            elif name == "started":
                self.state = "running"
            elif name == "progress":
                self.state, self.step, self.total = "running", data["step"], data["total"]
            elif name in FINISHED:
                self.state = name
                self.error = data.get("error")
                self.result_path = data.get("folder")
        if self.finished:
            _release(self)
        return events

    def cancel(self) -> None:
        """Ask the server to cancel (on a helper thread: never blocks) and stop following.
        ``poll`` reports ("cancelled", ...) once the worker has let go."""
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

    def _put(self, name: str, **data) -> None:
        self._queue.put((name, dict(data, job=self.job_id)))

    def _run(self) -> None:
        try:
            self.job_id = self.client.submit(self.request, self.passes_npz, self.field)
            self._submitted.set()
            self._put("submitted")
            if self._stop.is_set():  # cancelled while uploading: the cancel thread takes it down
                self._put("cancelled")
                return
            for name, data in self.client.events(self.job_id, stop=self._stop):
                if name in ("queued", "queue", "started"):
                    self._put(name, **data)
                elif name == "progress":
                    self._put("progress", step=int(data.get("step", 0)), total=int(data.get("total", self.total)),
                              preview=_preview_bytes(data))
                elif name == "done":
                    self._put("done", **dict(data, folder=self.client.download_result(self.job_id, self.folder)))
                    return
                elif name == "failed":
                    self._put("failed", error=f"job {self.job_id} failed on the server: "
                                              f"{data.get('error') or 'no reason given'}")
                    return
                elif name == "cancelled":
                    self._put("cancelled")
                    return
            # The stream ended without a terminal event: only a stop request does that.
            if self._stop.is_set():
                self._put("cancelled")
            else:
                self._put("failed", error="the server's event stream ended before the job finished")
        except ServerError as exc:
            if self._stop.is_set() and exc.status is None:
                self._put("cancelled")
            else:
                self._put("failed", error=str(exc))
        except Exception as exc:  # never die silently on a thread: the UI would wait forever
            self._put("failed", error=f"unexpected error while talking to the server: {type(exc).__name__}: {exc}")
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


def queue_text(position: int | None, waiting_on: dict | None) -> str:
    """A queued job's place and what it waits on, for the artist: "Queued: 2nd in line;
    waiting on a texture job at step 3/20" (``position`` and ``waiting_on`` as the server
    sends them; see :class:`RemoteJob`)."""
    if not position:
        return "Queued on the server"
    text = f"Queued: {_ordinal(position)} in line"
    if not waiting_on:
        return text
    if waiting_on.get("cancelling"):
        return f"{text}; waiting for a cancelled job to stop"
    kind = str(waiting_on.get("kind") or "")
    job = f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} job" if kind else "another job"
    step, total = int(waiting_on.get("step") or 0), int(waiting_on.get("total") or 0)
    return f"{text}; waiting on {job} " + (f"at step {step}/{total}" if step else "that is starting")


def _ordinal(number: int) -> str:
    """1 -> "1st", 2 -> "2nd", 11 -> "11th", 23 -> "23rd"."""
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"


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
