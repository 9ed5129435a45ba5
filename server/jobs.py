"""The persistent job store: one folder per job, a FIFO queue, states, events and cancel flags.

Layout of ``<data_dir>/jobs/<id>/``::

    request.json    the validated request (written once)
    passes.npz      the uploaded passes, byte for byte (written once)
    status.json     state, timestamps, error (rewritten on every state change)
    events.jsonl    the job's event log, one JSON object a line, append-only
    out/            the outputs (views/NNNN.png, texture.png, metrics.json, ...) once done
    result.zip      the outputs zipped, built on the first download

Whole files are written to a temporary name and renamed into place, so a crash never
leaves a half-written request, status or output folder; a new job's folder is assembled
under a temporary name and renamed in one step. The event log is append-only with one
``write`` per line; a torn last line (crash mid-append) is dropped when it is read back.

Restart policy: jobs that were queued are queued again in their original order, finished
jobs are served as before, and a job that was running is marked failed with the reason
:data:`RESTART_REASON` — its partial outputs are discarded, since the sampler cannot resume
mid-denoising.

Queue view: a queued job's place in the queue and the job the worker runs meanwhile
(:meth:`JobStore.queue_view`). It is part of the status and of the ``queued`` event, and the
event streams send it live (``queue`` events, see :mod:`.sse`); it is not logged, since it
changes with every step of the running job. Listeners hear about every queued job after
anything that moves the queue (a job taken, a step, a cancel, a finish).

Thread safety: one lock guards the in-memory state and the small status/event writes;
nothing holds it while a job samples, so HTTP handlers only ever wait microseconds.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

log = logging.getLogger("zs.server")

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
STATES = (QUEUED, RUNNING, DONE, FAILED, CANCELLED)
FINISHED = (DONE, FAILED, CANCELLED)
RESTART_REASON = "server restarted"

REQUEST_FILE = "request.json"
PASSES_FILE = "passes.npz"
STATUS_FILE = "status.json"
EVENTS_FILE = "events.jsonl"
OUTPUT_DIR = "out"
PARTIAL_OUTPUT_DIR = "out.partial"
RESULT_ZIP = "result.zip"

_JOB_ID = re.compile(r"^[0-9a-f]{20}$")
DEFAULT_KIND = "texture"  # a request without "kind" is a texture job (zs_core.protocol.Request)
EVENTS_KEPT_IN_MEMORY = 32  # finished jobs; their progress previews add up otherwise


class JobNotFound(KeyError):
    """No job with that id (or not a valid id at all)."""


class JobConflict(RuntimeError):
    """The job is in a state that does not allow the operation."""


@dataclass(frozen=True)
class Event:
    id: int  # 1, 2, 3, ... within a job; the SSE id clients resume from
    type: str
    data: str  # one-line JSON


@dataclass
class Job:
    id: str
    seq: int  # submission order, the FIFO key
    created: float
    state: str
    total: int
    kind: str = DEFAULT_KIND  # the request's job kind: texture or animation
    step: int = 0
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    eta_seconds: float | None = None
    cancel_requested: bool = False
    folder: Path = field(default=Path("."), repr=False)
    events: list[Event] | None = field(default=None, repr=False)  # None: not read from disk yet
    cancel_flag: threading.Event = field(default_factory=threading.Event, repr=False)
    size_bytes: int | None = field(default=None, repr=False)
    # The validated (Request, Passes) kept from submission so the worker need not decode
    # the .npz again; only for a job that runs next (see JobStore.create), never persisted.
    preloaded: tuple | None = field(default=None, repr=False)

    def status(self) -> dict:
        """What status.json holds (and the base of GET /v1/jobs/{id})."""
        return {
            "id": self.id, "seq": self.seq, "kind": self.kind, "state": self.state, "created": self.created,
            "started": self.started, "finished": self.finished, "step": self.step,
            "total": self.total, "error": self.error,
        }

    @property
    def output_dir(self) -> Path:
        return self.folder / OUTPUT_DIR


def is_job_id(text: str) -> bool:
    return bool(_JOB_ID.match(text))


def new_job_id() -> str:
    """Millisecond time then randomness: unique, unguessable enough, sorts by creation."""
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(4)}"


def write_atomic(path: Path, data: bytes | bytearray | str) -> None:
    """Write ``data`` to a temporary sibling, flush it to disk, rename it over ``path``."""
    if isinstance(data, str):
        data = data.encode()
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _event_line(event: Event) -> bytes:
    # event.data is already one-line JSON: splice it in rather than parse it again.
    return f'{{"id":{event.id},"type":{json.dumps(event.type)},"data":{event.data}}}\n'.encode()


def read_event_log(path: Path, repair: bool = False) -> list[Event]:
    """The events of a log, up to the first unreadable line (a crash tears at most the
    last one). ``repair`` rewrites the log without that tail, so appends can follow."""
    events: list[Event] = []
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return events
    intact = 0  # bytes of the log that hold whole, readable lines
    for line in text.split(b"\n")[:-1]:  # the piece after the last newline is never whole
        try:
            record = json.loads(line)
            events.append(Event(int(record["id"]), str(record["type"]),
                                json.dumps(record["data"], separators=(",", ":"))))
        except (ValueError, KeyError, TypeError):
            break
        intact += len(line) + 1
    if repair and intact < len(text):
        write_atomic(path, text[:intact])
    return events


def request_kind(request_json: str | bytes) -> str:
    """The job kind a request names (its default when it names none or cannot be read)."""
    try:
        kind = json.loads(request_json).get("kind")
    except (ValueError, AttributeError):
        kind = None
    return kind if isinstance(kind, str) and kind else DEFAULT_KIND


def _kind_on_disk(folder: Path) -> str:
    try:
        return request_kind((folder / REQUEST_FILE).read_bytes())
    except OSError:
        return DEFAULT_KIND


def folder_size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


class JobStore:
    """All jobs, in memory and on disk, plus the FIFO queue the worker takes from."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._jobs: dict[str, Job] = {}
        self._queue: deque[str] = deque()
        self._running: Job | None = None  # the job the worker samples now
        self._next_seq = 1
        self._changed = threading.Condition()  # guards everything above; worker waits on it
        self._listeners: list[Callable[[str], None]] = []
        # Finished jobs whose events are still in memory, oldest first; beyond
        # EVENTS_KEPT_IN_MEMORY they are dropped and read back from disk when asked for.
        self._events_cached: deque[Job] = deque()

    # ------------------------------------------------------------ startup

    def recover(self) -> dict[str, int]:
        """Load every job folder after a (re)start; see the module docstring for the policy."""
        counts = {"queued": 0, "failed_on_restart": 0, "finished": 0, "discarded": 0}
        loaded: list[Job] = []
        for folder in sorted(self.root.iterdir()):
            if folder.name.startswith("."):
                shutil.rmtree(folder, ignore_errors=True)  # an unfinished submission or deletion
                continue
            job = self._load(folder)
            if job is None:
                counts["discarded"] += 1
                shutil.rmtree(folder, ignore_errors=True)
                continue
            loaded.append(job)
        loaded.sort(key=lambda job: job.seq)
        with self._changed:
            for job in loaded:
                self._jobs[job.id] = job
                self._next_seq = max(self._next_seq, job.seq + 1)
                if job.state == RUNNING:
                    shutil.rmtree(job.folder / PARTIAL_OUTPUT_DIR, ignore_errors=True)
                    self._finish_locked(job, FAILED, error=RESTART_REASON)
                    counts["failed_on_restart"] += 1
                elif job.state == QUEUED:
                    self._queue.append(job.id)
                    counts["queued"] += 1
                else:
                    counts["finished"] += 1
            self._changed.notify_all()
        return counts

    def _load(self, folder: Path) -> Job | None:
        try:
            status = json.loads((folder / STATUS_FILE).read_text())
            job = Job(id=status["id"], seq=int(status["seq"]), created=float(status["created"]),
                      state=status["state"], total=int(status["total"]), step=int(status.get("step") or 0),
                      started=status.get("started"), finished=status.get("finished"),
                      error=status.get("error"), folder=folder)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("discarding job folder %s: unreadable status (%s)", folder.name, exc)
            return None
        if job.id != folder.name or job.state not in STATES:
            log.warning("discarding job folder %s: inconsistent status", folder.name)
            return None
        # Status files written before the kind was recorded: the request still names it.
        job.kind = status.get("kind") or _kind_on_disk(folder)
        if job.state in (QUEUED, RUNNING):
            job.events = read_event_log(folder / EVENTS_FILE, repair=True)  # more events will follow
        return job

    # ------------------------------------------------------------ listeners

    def add_listener(self, listener: Callable[[str], None]) -> None:
        """``listener(job_id)`` is called (from any thread) after each new event of a job,
        and for every queued job after a change of its queue view."""
        self._listeners.append(listener)

    def _notify(self, *job_ids: str) -> None:
        for job_id in job_ids:
            for listener in self._listeners:
                try:
                    listener(job_id)
                except Exception:  # a listener must never break the worker
                    log.exception("event listener failed")

    # ------------------------------------------------------------ submission

    def stage(self, passes_npz: bytes | bytearray) -> Path:
        """Write the uploaded passes into a hidden staging folder. Slow (77 MB for 8 views at
        512^2): the server does it while validation runs; :meth:`create` then adopts the
        folder, :meth:`discard` drops it when the upload is refused."""
        staging = self.root / f".new-{secrets.token_hex(8)}"
        staging.mkdir()
        try:
            write_atomic(staging / PASSES_FILE, passes_npz)
        except BaseException:
            self.discard(staging)
            raise
        return staging

    def discard(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    def create(self, request_json: str, passes_npz: bytes | bytearray | None, total: int,
               preloaded: tuple | None = None, staging: Path | None = None) -> Job:
        """Persist a validated job and queue it: give ``passes_npz``, or a ``staging``
        folder from :meth:`stage` that already holds them.

        ``preloaded`` (the decoded request and passes) is kept in memory only when no other
        job waits, so a long queue never holds many decoded uploads.
        """
        staging = staging if staging is not None else self.stage(passes_npz)
        try:
            write_atomic(staging / REQUEST_FILE, request_json)
            with self._changed:
                job = Job(id=new_job_id(), seq=self._next_seq, created=time.time(), state=QUEUED, total=total,
                          kind=request_kind(request_json), events=[])
                job.folder = self.root / job.id
                self._next_seq += 1
                if not self._queue:
                    job.preloaded = preloaded
                write_atomic(staging / STATUS_FILE, json.dumps(job.status()))
                os.replace(staging, job.folder)  # the job exists from here on, complete
                self._jobs[job.id] = job
                self._queue.append(job.id)
                self._append_event_locked(job, QUEUED, {"state": QUEUED, **self._queue_view_locked(job)})
                self._changed.notify_all()
        except BaseException:
            self.discard(staging)
            raise
        self._notify(job.id)
        return job

    # ------------------------------------------------------------ queries

    def get(self, job_id: str) -> Job:
        with self._changed:
            job = self._jobs.get(job_id) if is_job_id(job_id) else None
            if job is None:
                raise JobNotFound(job_id)
            return job

    def snapshot(self, job_id: str) -> dict:
        """A consistent copy of a job's public status."""
        with self._changed:
            job = self.get(job_id)
            out = job.status()
            view = self._queue_view_locked(job) or {}
            out.update(eta_seconds=job.eta_seconds, cancel_requested=job.cancel_requested,
                       queue_position=view.get("position"), waiting_on=view.get("waiting_on"))
            return out

    def queue_view(self, job_id: str) -> dict | None:
        """A queued job's view of the queue -> ``{"position", "waiting_on"}`` (None once it
        has left the queue): ``position`` 1 runs next; ``waiting_on`` is the running job
        (``id``, ``kind``, ``step``, ``total``, ``cancelling``), or None between jobs."""
        with self._changed:
            return self._queue_view_locked(self.get(job_id))

    def _queue_view_locked(self, job: Job) -> dict | None:
        if job.state != QUEUED:
            return None
        running = self._running
        waiting_on = None if running is None else {
            "id": running.id, "kind": running.kind, "step": running.step, "total": running.total,
            # Cancelled but still stopping: the queue waits for it to let go of the model.
            "cancelling": running.cancel_requested}
        return {"position": self._queue.index(job.id) + 1, "waiting_on": waiting_on}

    def recent(self, limit: int) -> list[dict]:
        """Newest first."""
        with self._changed:
            jobs = sorted(self._jobs.values(), key=lambda job: job.seq, reverse=True)[:max(0, limit)]
            return [{"id": job.id, "seq": job.seq, "state": job.state, "created": job.created,
                     "step": job.step, "total": job.total} for job in jobs]

    def queue_length(self) -> int:
        with self._changed:
            return len(self._queue)

    def running_job(self) -> str | None:
        with self._changed:
            return None if self._running is None else self._running.id

    def events_after(self, job_id: str, after: int) -> tuple[list[Event], bool]:
        """Events with id > ``after``, and whether the job has finished (no more will come)."""
        with self._changed:
            job = self.get(job_id)
            if job.events is None:
                job.events = read_event_log(job.folder / EVENTS_FILE)
                self._cache_events_locked(job)
            # Event ids are 1, 2, 3, ... so the id is the position in the list.
            return job.events[max(0, after):], job.state in FINISHED

    def _cache_events_locked(self, job: Job) -> None:
        if job.state not in FINISHED:
            return
        self._events_cached.append(job)
        while len(self._events_cached) > EVENTS_KEPT_IN_MEMORY:
            self._events_cached.popleft().events = None

    # ------------------------------------------------------------ worker side

    def take_next(self, timeout: float) -> Job | None:
        """Block up to ``timeout`` s for the oldest queued job; mark it running and return it."""
        with self._changed:
            if not self._queue:
                self._changed.wait(timeout)
            if not self._queue:
                return None
            job = self._jobs[self._queue.popleft()]
            job.state, job.started = RUNNING, time.time()
            self._running = job
            self._write_status_locked(job)
            self._append_event_locked(job, "started", {"state": RUNNING, "total": job.total})
            waiting = list(self._queue)
        self._notify(job.id, *waiting)
        return job

    def wake(self) -> None:
        """Wake a worker blocked in :meth:`take_next` (used on shutdown)."""
        with self._changed:
            self._changed.notify_all()

    def progress(self, job: Job, step: int, total: int, eta_seconds: float | None, preview: dict) -> None:
        with self._changed:
            job.step, job.total, job.eta_seconds = step, total, eta_seconds
            self._append_event_locked(job, "progress", {"step": step, "total": total,
                                                        "eta_seconds": eta_seconds, **preview})
            waiting = list(self._queue)
        self._notify(job.id, *waiting)  # the queued jobs see the step they wait on

    def finish(self, job: Job, state: str, *, error: str | None = None, extra: dict | None = None) -> None:
        with self._changed:
            self._finish_locked(job, state, error=error, extra=extra)
            waiting = list(self._queue)
        self._notify(job.id, *waiting)

    def _finish_locked(self, job: Job, state: str, *, error: str | None = None, extra: dict | None = None) -> None:
        job.state, job.finished, job.error, job.eta_seconds = state, time.time(), error, None
        if self._running is job:
            self._running = None
        self._write_status_locked(job)
        data = {"state": state}
        if error is not None:
            data["error"] = error
        data.update(extra or {})
        self._append_event_locked(job, state, data)
        self._cache_events_locked(job)

    # ------------------------------------------------------------ cancel

    def cancel(self, job_id: str) -> dict:
        """Cancel a queued job at once; ask a running one to stop before its next step."""
        with self._changed:
            job = self.get(job_id)
            if job.state in FINISHED:
                raise JobConflict(f"job is already {job.state}")
            job.cancel_requested = True
            job.cancel_flag.set()
            if job.state == QUEUED:
                self._queue.remove(job.id)
                self._finish_locked(job, CANCELLED)
            waiting = list(self._queue)  # the jobs behind it move up, or now wait on a cancel
        self._notify(job.id, *waiting)
        return self.snapshot(job_id)

    # ------------------------------------------------------------ pruning

    def prune(self, max_age_seconds: float, max_bytes: int, now: float | None = None) -> list[str]:
        """Delete finished jobs older than the age limit, then the oldest finished ones until
        all job folders together fit in ``max_bytes``. Returns the ids removed."""
        now = time.time() if now is None else now
        with self._changed:
            finished = sorted((job for job in self._jobs.values() if job.state in FINISHED),
                              key=lambda job: job.finished or job.created)
            active = [job for job in self._jobs.values() if job.state not in FINISHED]
        doomed = [job for job in finished if (job.finished or job.created) < now - max_age_seconds]
        kept = [job for job in finished if job not in doomed]
        for job in kept:
            if job.size_bytes is None:  # finished folders do not change, so measure once
                job.size_bytes = folder_size(job.folder)
        total = sum(job.size_bytes for job in kept) + sum(folder_size(job.folder) for job in active)
        for job in kept:
            if total <= max_bytes:
                break
            doomed.append(job)
            total -= job.size_bytes
        self._remove(doomed)
        return [job.id for job in doomed]

    def _remove(self, jobs: Iterable[Job]) -> None:
        for job in jobs:
            with self._changed:
                self._jobs.pop(job.id, None)
            trash = self.root / f".trash-{job.id}"
            try:
                os.replace(job.folder, trash)  # gone from view at once; deleting may take a while
            except OSError:
                continue
            shutil.rmtree(trash, ignore_errors=True)

    # ------------------------------------------------------------ files (lock held)

    def _write_status_locked(self, job: Job) -> None:
        write_atomic(job.folder / STATUS_FILE, json.dumps(job.status()))

    def _append_event_locked(self, job: Job, event_type: str, data: dict) -> None:
        if job.events is None:
            job.events = read_event_log(job.folder / EVENTS_FILE)
        data = {"type": event_type, "job": job.id, **data}
        event = Event(len(job.events) + 1, event_type, json.dumps(data, separators=(",", ":")))
        line = _event_line(event)
        fd = os.open(job.folder / EVENTS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)  # one write per line: a crash tears at most the last line
        finally:
            os.close(fd)
        job.events.append(event)
