"""The persistent job store: one folder per job, a FIFO queue, states, events and cancel flags.

Layout of ``<data_dir>/jobs/<id>/``::

    .zs-job         marker: this folder was made by the store (recovery touches nothing else)
    request.json    the validated request (written once)
    passes.npz      the uploaded passes, byte for byte (written once)
    status.json     state, timestamps, error (rewritten on every state change)
    events.jsonl    the job's event log, one JSON object a line, append-only
    out/            the outputs (views/NNNN.png, texture.png, metrics.json, ...) once done
    result.zip      the outputs zipped, built on the first download

Durability (:mod:`.durable`): whole files are written to a temporary name, fsynced and
renamed into place, and the folder fsynced; a new job's folder is assembled under a
temporary name and renamed in one step. The event log is append-only; state events are
fsynced, progress events are not (the next state event's fsync covers them); a failed
append is cut back, and a torn last line (a crash mid-append) is dropped when read back.
Everything is owner-only (folders 0700, files 0600).

Memory is the truth, disk follows. A state change (finish, cancel, fail) always happens in
memory, so clients and event streams see it at once; when writing it fails (disk full,
I/O error) the job is noted as unsynced and :meth:`JobStore.flush` retries until memory
and disk agree again. A job can only *start* once its ``started`` event and ``running``
status are on disk; otherwise it stays queued (disk full: the worker waits; another error:
retried, then the job fails). A job whose folder was removed from outside fails with that
reason, and its folder is written again as a record of it (status and events).

Restart policy: jobs that were queued are queued again in their original order, finished
jobs are served as before, and a job that was running is marked failed with the reason
:data:`RESTART_REASON` — its partial outputs are discarded, since the sampler cannot resume
mid-denoising. Recovery only touches folders holding the marker; one whose status cannot be
read is moved to ``<data_dir>/quarantine/``, never deleted.

Queue view: a queued job's place in the queue and the job the worker runs meanwhile
(:meth:`JobStore.queue_view`). It is part of the status and of the ``queued`` event, and the
event streams send it live (``queue`` events, see :mod:`.sse`); it is not logged, since it
changes with every step of the running job. Listeners hear about every queued job after
anything that moves the queue (a job taken, a step, a cancel, a finish).

Thread safety: one lock guards the in-memory state and the small status/event writes;
nothing holds it while a job samples, so HTTP handlers wait at most an fsync.
"""

from __future__ import annotations

import errno
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

from . import durable

log = logging.getLogger("zs.server")

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
STATES = (QUEUED, RUNNING, DONE, FAILED, CANCELLED)
FINISHED = (DONE, FAILED, CANCELLED)
RESTART_REASON = "server restarted"
REMOVED_REASON = "its folder {folder} was removed from outside the server"

MARKER_FILE = ".zs-job"
MARKER_TEXT = b"a folder of the ZS Texturing job store; recovery touches only folders holding this file\n"
REQUEST_FILE = "request.json"
PASSES_FILE = "passes.npz"
STATUS_FILE = "status.json"
EVENTS_FILE = "events.jsonl"
OUTPUT_DIR = "out"
PARTIAL_OUTPUT_DIR = "out.partial"
RESULT_ZIP = "result.zip"
QUARANTINE_DIR = "quarantine"  # next to jobs/: folders recovery could not read

_JOB_ID = re.compile(r"^[0-9a-f]{20}$")
STAGING_PREFIX, TRASH_PREFIX = ".new-", ".trash-"
_STAGING = re.compile(r"^\.new-[0-9a-f]{16}$")
DEFAULT_KIND = "texture"  # a request without "kind" is a texture job (zs_core.protocol.Request)
EVENTS_KEPT_IN_MEMORY = 32  # finished jobs; their progress previews add up otherwise
START_ATTEMPTS = 3  # an I/O error (not a full disk) when starting a job: retries before it fails


class JobNotFound(KeyError):
    """No job with that id (or not a valid id at all)."""


class JobConflict(RuntimeError):
    """The job is in a state that does not allow the operation."""


class StorageFull(OSError):
    """Not enough free space for a write the store is asked to make. An OSError with errno
    ENOSPC, so callers that turn a full disk into 507 treat it like the kernel's own."""

    def __init__(self, what: str, needed: int, free: int, where: Path):
        super().__init__(errno.ENOSPC, f"disk full: {what} needs {needed} bytes free in {where} "
                                       f"(the server keeps min_free_bytes free), {free} are free")
        self.needed, self.free = needed, free


class StartDeferred(Exception):
    """The next job cannot start now (disk full, an I/O error); it stays first in the queue."""


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
    client: str | None = None  # who submitted it (admission's per-client cap)
    folder: Path = field(default=Path("."), repr=False)
    events: list[Event] | None = field(default=None, repr=False)  # None: not read from disk yet
    saved_events: int = field(default=0, repr=False)  # how many of ``events`` are on disk
    cancel_flag: threading.Event = field(default_factory=threading.Event, repr=False)
    size_bytes: int | None = field(default=None, repr=False)
    passes_bytes: int = field(default=0, repr=False)  # the upload on disk, while queued
    start_attempts: int = field(default=0, repr=False)
    # The validated (Request, Passes) kept from submission so the worker need not decode
    # the .npz again; only for a job that runs next (see JobStore.create), never persisted.
    preloaded: tuple | None = field(default=None, repr=False)

    def status(self) -> dict:
        """The base of GET /v1/jobs/{id}."""
        return {
            "id": self.id, "seq": self.seq, "kind": self.kind, "state": self.state, "created": self.created,
            "started": self.started, "finished": self.finished, "step": self.step,
            "total": self.total, "error": self.error,
        }

    def record(self) -> dict:
        """What status.json holds."""
        return {**self.status(), "client": self.client}

    @property
    def output_dir(self) -> Path:
        return self.folder / OUTPUT_DIR


def is_job_id(text: str) -> bool:
    return bool(_JOB_ID.match(text))


def new_job_id() -> str:
    """Millisecond time then randomness: unique, unguessable enough, sorts by creation."""
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(4)}"


def _event_line(event: Event) -> bytes:
    # event.data is already one-line JSON: splice it in rather than parse it again.
    return f'{{"id":{event.id},"type":{json.dumps(event.type)},"data":{event.data}}}\n'.encode()


def read_event_log(path: Path, repair: bool = False) -> list[Event]:
    """The events of a log, up to the first unreadable line (a crash tears at most the
    last one). ``repair`` cuts the log back to its whole lines, so appends can follow."""
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
        durable.truncate(path, intact)  # needs no free space, unlike a rewrite
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


def describe_os_error(exc: BaseException) -> str:
    error = durable.os_error_in(exc)
    if error is None:
        return f"{type(exc).__name__}: {exc}"
    if error.errno in durable.NO_SPACE_ERRNOS:
        return f"disk full ({error.strerror or error})"
    return f"{error.strerror or 'I/O error'} (errno {error.errno})" if error.errno else str(error)


class JobStore:
    """All jobs, in memory and on disk, plus the FIFO queue the worker takes from.

    ``min_free_bytes``: uploads that would leave less free space are refused, and the next
    job waits to start until that much is free (its outputs need room)."""

    def __init__(self, root: Path, *, min_free_bytes: int = 0, quarantine: Path | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True, mode=durable.DIR_MODE)
        self.root.chmod(durable.DIR_MODE)
        self.quarantine = Path(quarantine) if quarantine is not None else self.root.parent / QUARANTINE_DIR
        self.min_free_bytes = min_free_bytes
        self._jobs: dict[str, Job] = {}
        self._queue: deque[str] = deque()
        self._running: dict[str, Job] = {}  # the jobs workers sample now, in the order they started
        self._next_seq = 1
        self._changed = threading.Condition()  # guards everything above; worker waits on it
        self._listeners: list[Callable[[str], None]] = []
        # Finished jobs whose events are still in memory, oldest first; beyond
        # EVENTS_KEPT_IN_MEMORY they are dropped and read back from disk when asked for.
        self._events_cached: deque[Job] = deque()
        self._unsynced: dict[str, str] = {}  # job id -> why its disk state lags behind memory
        self._holds: dict[str, int] = {}  # job id -> downloads in progress (never pruned meanwhile)

    # ------------------------------------------------------------ startup

    def recover(self) -> dict[str, int]:
        """Load every job folder after a (re)start; see the module docstring for the policy."""
        counts = {"queued": 0, "failed_on_restart": 0, "finished": 0, "quarantined": 0, "left_alone": 0}
        loaded: list[Job] = []
        for folder in sorted(self.root.iterdir()):
            if folder.is_symlink() or not folder.is_dir():
                counts["left_alone"] += 1
                continue
            ours = (folder / MARKER_FILE).is_file()
            if folder.name.startswith((STAGING_PREFIX, TRASH_PREFIX)):
                if ours:
                    shutil.rmtree(folder, ignore_errors=True)  # an unfinished submission or deletion
                elif _STAGING.match(folder.name) and all(durable.is_temporary_name(entry.name)
                                                           for entry in folder.iterdir()):
                    shutil.rmtree(folder)  # a submission that crashed before its marker landed
                else:
                    counts["left_alone"] += 1
                continue
            if not ours and not self._adopt_legacy(folder):
                log.info("leaving %s alone: not a job folder of this server (no %s)", folder, MARKER_FILE)
                counts["left_alone"] += 1
                continue
            job, problem = self._load(folder)
            if job is None:
                self._quarantine(folder, problem)
                counts["quarantined"] += 1
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

    def _adopt_legacy(self, folder: Path) -> bool:
        """A job folder from before the marker existed: a job id for a name and a status naming
        that id. It gets the marker; anything else without one is not ours."""
        if not is_job_id(folder.name):
            return False
        try:
            if json.loads((folder / STATUS_FILE).read_text()).get("id") != folder.name:
                return False
            durable.write_atomic(folder / MARKER_FILE, MARKER_TEXT)
        except (OSError, ValueError, AttributeError):
            return False
        return True

    def _load(self, folder: Path) -> tuple[Job | None, str]:
        try:
            status = json.loads((folder / STATUS_FILE).read_text())
            job = Job(id=status["id"], seq=int(status["seq"]), created=float(status["created"]),
                      state=status["state"], total=int(status["total"]), step=int(status.get("step") or 0),
                      started=status.get("started"), finished=status.get("finished"),
                      error=status.get("error"), client=status.get("client"), folder=folder)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            return None, f"unreadable {STATUS_FILE} ({type(exc).__name__}: {exc})"
        if job.id != folder.name or job.state not in STATES:
            return None, f"{STATUS_FILE} names job {job.id!r} in state {job.state!r}"
        # Status files written before the kind was recorded: the request still names it.
        job.kind = status.get("kind") or _kind_on_disk(folder)
        for leftover in folder.iterdir():  # temporary files of a write a crash interrupted
            if durable.is_temporary_name(leftover.name) and leftover.is_file():
                leftover.unlink(missing_ok=True)
        if job.state in (QUEUED, RUNNING):
            job.events = read_event_log(folder / EVENTS_FILE, repair=True)  # more events will follow
            job.saved_events = len(job.events)
        if job.state == QUEUED:
            job.passes_bytes = file_size(folder / PASSES_FILE)
        return job, ""

    def _quarantine(self, folder: Path, problem: str) -> None:
        """Move a folder recovery cannot read out of jobs/, never delete it: it may hold outputs."""
        self.quarantine.mkdir(parents=True, exist_ok=True, mode=durable.DIR_MODE)
        target = self.quarantine / folder.name
        if target.exists():
            target = self.quarantine / f"{folder.name}.{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
        try:
            shutil.move(folder, target)
        except OSError as exc:
            log.error("job folder %s: %s, and moving it to %s failed (%s); left where it is",
                      folder, problem, target, exc)
            return
        log.warning("job folder %s: %s; moved to %s", folder.name, problem, target)

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

    def check_space(self, what: str, size: int) -> None:
        """StorageFull unless ``size`` bytes fit and ``min_free_bytes`` stay free."""
        free = durable.free_bytes(self.root)
        needed = size + self.min_free_bytes
        if free < needed:
            raise StorageFull(what, needed, free, self.root)

    def stage(self, passes_npz: bytes | bytearray) -> Path:
        """Write the uploaded passes into a hidden staging folder; :meth:`create` then adopts
        the folder, :meth:`discard` drops it when the upload is refused. StorageFull (an
        OSError, ENOSPC) when the disk cannot take it."""
        self.check_space("this upload", len(passes_npz))
        staging = self.root / f"{STAGING_PREFIX}{secrets.token_hex(8)}"
        durable.make_dir(staging)
        try:
            durable.write_atomic(staging / MARKER_FILE, MARKER_TEXT)
            durable.write_atomic(staging / PASSES_FILE, passes_npz)
        except BaseException:
            self.discard(staging)
            raise
        return staging

    def discard(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    def create(self, request_json: str, passes_npz: bytes | bytearray | None, total: int,
               preloaded: tuple | None = None, staging: Path | None = None, client: str | None = None) -> Job:
        """Persist a validated job and queue it: give ``passes_npz``, or a ``staging``
        folder from :meth:`stage` that already holds them. The job exists once its whole
        folder (request, status, ``queued`` event) is on disk; on any error nothing is left.

        ``preloaded`` (the decoded request and passes) is kept in memory only when no other
        job waits, so a long queue never holds many decoded uploads.
        """
        staging = staging if staging is not None else self.stage(passes_npz)
        try:
            durable.write_atomic(staging / REQUEST_FILE, request_json)
            passes_bytes = file_size(staging / PASSES_FILE)
            with self._changed:
                job = Job(id=new_job_id(), seq=self._next_seq, created=time.time(), state=QUEUED, total=total,
                          kind=request_kind(request_json), client=client, folder=staging, events=[],
                          passes_bytes=passes_bytes)
                view = {"position": len(self._queue) + 1, "waiting_on": self._waiting_on_locked()}
                self._log_event_locked(job, QUEUED, {"state": QUEUED, **view}, sync=True)
                self._write_status_locked(job)
                final = self.root / job.id
                durable.rename(staging, final)  # the job exists from here on, complete...
                try:
                    durable.fsync_dir(self.root)  # ...once the rename is on disk too
                except BaseException:
                    durable.rename(final, staging)
                    raise
                job.folder = final
                self._next_seq += 1
                if not self._queue:
                    job.preloaded = preloaded
                self._jobs[job.id] = job
                self._queue.append(job.id)
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
        if job.state != QUEUED or job.id not in self._queue:
            return None
        return {"position": self._queue.index(job.id) + 1, "waiting_on": self._waiting_on_locked()}

    def _waiting_on_locked(self) -> dict | None:
        running = self._first_free_locked()
        return None if running is None else {
            "id": running.id, "kind": running.kind, "step": running.step, "total": running.total,
            # Cancelled but still stopping: the queue waits for it to let go of the model.
            "cancelling": running.cancel_requested}

    def recent(self, limit: int) -> list[dict]:
        """Newest first."""
        with self._changed:
            jobs = sorted(self._jobs.values(), key=lambda job: job.seq, reverse=True)[:max(0, limit)]
            return [{"id": job.id, "seq": job.seq, "state": job.state, "created": job.created,
                     "step": job.step, "total": job.total} for job in jobs]

    def queue_length(self) -> int:
        with self._changed:
            return len(self._queue)

    def queue_stats(self, client: str | None = None) -> tuple[int, int, int]:
        """(queued jobs, of them submitted by ``client``, bytes their uploads hold on disk)."""
        with self._changed:
            queued = [self._jobs[job_id] for job_id in self._queue]
            return (len(queued), sum(1 for job in queued if client is not None and job.client == client),
                    sum(job.passes_bytes for job in queued))

    def running_job(self) -> str | None:
        """The running job that frees its worker first (see :meth:`_first_free_locked`)."""
        with self._changed:
            running = self._first_free_locked()
            return None if running is None else running.id

    def running_jobs(self) -> list[str]:
        """Every running job (several on a pool of workers), in the order they started."""
        with self._changed:
            return list(self._running)

    def running_eta(self) -> float | None:
        with self._changed:
            running = self._first_free_locked()
            return None if running is None else running.eta_seconds

    def _first_free_locked(self) -> Job | None:
        """The running job expected to end first (the queue waits on it): the smallest ETA,
        then the earliest started; None when none runs."""
        if not self._running:
            return None
        return min(self._running.values(),
                   key=lambda job: (job.eta_seconds is None, job.eta_seconds or 0.0, job.started or 0.0))

    def unsynced(self) -> dict[str, str]:
        """Jobs whose state on disk lags behind memory -> why the write failed."""
        with self._changed:
            return dict(self._unsynced)

    def space_problem(self) -> str | None:
        """Why the disk cannot take jobs now (less than ``min_free_bytes`` free), or None."""
        try:
            free = durable.free_bytes(self.root)
        except OSError as exc:
            return f"cannot read the free space of {self.root}: {exc}"
        if free < max(self.min_free_bytes, 1):
            return (f"disk full: {free} bytes free in {self.root}; jobs start again once "
                    f"{max(self.min_free_bytes, 1)} are free (min_free_bytes)")
        return None

    def events_after(self, job_id: str, after: int) -> tuple[list[Event], bool]:
        """Events with id > ``after``, and whether the job has finished (no more will come)."""
        with self._changed:
            job = self.get(job_id)
            if job.events is None:
                job.events = read_event_log(job.folder / EVENTS_FILE)
                job.saved_events = len(job.events)
                self._cache_events_locked(job)
            # Event ids are 1, 2, 3, ... so the id is the position in the list.
            return job.events[max(0, after):], job.state in FINISHED

    def _cache_events_locked(self, job: Job) -> None:
        if job.state not in FINISHED or job.id in self._unsynced:
            return  # an unsynced job's events may exist only in memory: keep them
        self._events_cached.append(job)
        while len(self._events_cached) > EVENTS_KEPT_IN_MEMORY:
            old = self._events_cached.popleft()
            if old.id not in self._unsynced:
                old.events = None

    # ------------------------------------------------------------ worker side

    def take_next(self, timeout: float) -> Job | None:
        """Block up to ``timeout`` s for the oldest queued job; mark it running and return it.

        StartDeferred when it cannot start now (it stays first in the queue): the disk is
        full, or writing its start failed (retried START_ATTEMPTS times, then it fails)."""
        with self._changed:
            if not self._queue:
                self._changed.wait(timeout)
            if not self._queue:
                return None
            problem = self.space_problem() if self.min_free_bytes > 0 else None
            if problem is not None:
                raise StartDeferred(problem)
            job = self._jobs[self._queue[0]]
            try:
                self._start_locked(job)
            except OSError as exc:
                self._start_failed_locked(job, exc)  # raises StartDeferred unless the job failed
                waiting, job = list(self._queue), None
            else:
                self._queue.popleft()
                self._running[job.id] = job
                waiting = list(self._queue)
        self._notify(*([job.id] if job is not None else []), *waiting)
        return job

    def _start_locked(self, job: Job) -> None:
        """Log ``started`` then write the ``running`` status, both durably; on failure the
        log is cut back and the job is exactly as queued as before, in memory and on disk."""
        before = (job.state, job.started)
        job.state, job.started = RUNNING, time.time()
        try:
            offset = self._log_event_locked(job, "started", {"state": RUNNING, "total": job.total}, sync=True)
            try:
                self._write_status_locked(job)
            except BaseException:
                try:
                    durable.truncate(job.folder / EVENTS_FILE, offset)
                    job.events.pop()
                    job.saved_events = len(job.events)
                except OSError:
                    pass  # the log keeps a "started" the job will log again: harmless
                raise
        except BaseException:
            job.state, job.started = before
            raise

    def _start_failed_locked(self, job: Job, exc: OSError) -> None:
        if not job.folder.is_dir():
            self._queue.remove(job.id)
            log.error("job %s: %s while it was queued", job.id, REMOVED_REASON.format(folder=job.folder))
            self._finish_locked(job, FAILED, error=REMOVED_REASON.format(folder=job.folder) + " while it was queued")
            return
        if durable.is_no_space(exc):
            raise StartDeferred(f"disk full: cannot start job {job.id} ({describe_os_error(exc)}); "
                                "it starts once there is space") from exc
        job.start_attempts += 1
        if job.start_attempts < START_ATTEMPTS:
            raise StartDeferred(f"could not start job {job.id}: {describe_os_error(exc)}; "
                                f"attempt {job.start_attempts} of {START_ATTEMPTS}") from exc
        self._queue.remove(job.id)
        log.error("job %s: could not start after %d attempts (%s)", job.id, job.start_attempts, exc)
        self._finish_locked(job, FAILED, error=f"could not start: writing its status failed "
                                               f"({describe_os_error(exc)})")

    def wake(self) -> None:
        """Wake a worker blocked in :meth:`take_next` (used on shutdown)."""
        with self._changed:
            self._changed.notify_all()

    def progress(self, job: Job, step: int, total: int, eta_seconds: float | None, preview: dict) -> None:
        """Log a step. Raises OSError when the log cannot be written: the job then fails."""
        with self._changed:
            self._log_event_locked(job, "progress", {"step": step, "total": total,
                                                     "eta_seconds": eta_seconds, **preview}, sync=False)
            job.step, job.total, job.eta_seconds = step, total, eta_seconds
            waiting = list(self._queue)
        self._notify(job.id, *waiting)  # the queued jobs see the step they wait on

    def log_event(self, job: Job, event_type: str, data: dict) -> None:
        """Log an event besides steps and states (e.g. a model loading), not fsynced (like a
        step). Raises OSError when the log cannot be written: the job then fails."""
        with self._changed:
            self._log_event_locked(job, event_type, data, sync=False)
        self._notify(job.id)

    def finish(self, job: Job, state: str, *, error: str | None = None, extra: dict | None = None) -> None:
        """Never raises: the state changes in memory (and the event streams hear it); writing
        it to disk is retried by :meth:`flush` when it fails."""
        with self._changed:
            self._finish_locked(job, state, error=error, extra=extra)
            waiting = list(self._queue)
        self._notify(job.id, *waiting)

    def _finish_locked(self, job: Job, state: str, *, error: str | None = None, extra: dict | None = None) -> None:
        job.state, job.finished, job.error, job.eta_seconds = state, time.time(), error, None
        self._running.pop(job.id, None)
        data = {"state": state}
        if error is not None:
            data["error"] = error
        data.update(extra or {})
        if job.events is None:
            job.events = read_event_log(job.folder / EVENTS_FILE)
            job.saved_events = len(job.events)
        job.events.append(Event(len(job.events) + 1, state, json.dumps({"type": state, "job": job.id, **data},
                                                                         separators=(",", ":"))))
        if self._persist_locked(job):
            self._cache_events_locked(job)

    def _persist_locked(self, job: Job) -> bool:
        """Bring a job's folder up to date with memory: events not yet logged, then the
        status. False (and the job noted as unsynced) when the disk refuses."""
        try:
            if not job.folder.is_dir():
                self._rewrite_removed_folder_locked(job)
            self._write_pending_events_locked(job, sync=True)
            self._write_status_locked(job)
        except OSError as exc:
            if job.id not in self._unsynced:
                log.warning("job %s is %s, but writing that to disk failed (%s); retrying", job.id, job.state,
                            describe_os_error(exc))
            self._unsynced[job.id] = describe_os_error(exc)
            return False
        if self._unsynced.pop(job.id, None) is not None:
            log.info("job %s: its %s state is on disk now", job.id, job.state)
        return True

    def _rewrite_removed_folder_locked(self, job: Job) -> None:
        """A folder removed from outside: write it again from memory (marker, the whole event
        log, status), so a restart still knows how the job ended."""
        durable.make_dir(job.folder)
        durable.write_atomic(job.folder / MARKER_FILE, MARKER_TEXT)
        job.saved_events = 0

    def flush(self) -> int:
        """Retry writing the jobs whose disk state lags behind -> how many still lag."""
        with self._changed:
            for job_id in list(self._unsynced):
                job = self._jobs.get(job_id)
                if job is None:
                    self._unsynced.pop(job_id)
                elif self._persist_locked(job):
                    self._cache_events_locked(job)
            return len(self._unsynced)

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

    # ------------------------------------------------------------ downloads

    def hold(self, job_id: str) -> bool:
        """A download of the job starts: pruning leaves it alone until :meth:`release`.
        False when there is no such job (the route then answers 404 itself)."""
        with self._changed:
            if job_id not in self._jobs:
                return False
            self._holds[job_id] = self._holds.get(job_id, 0) + 1
            return True

    def release(self, job_id: str) -> None:
        with self._changed:
            left = self._holds.get(job_id, 0) - 1
            if left > 0:
                self._holds[job_id] = left
            else:
                self._holds.pop(job_id, None)

    # ------------------------------------------------------------ pruning

    def prune(self, max_age_seconds: float, max_bytes: int, grace_seconds: float = 0.0,
              now: float | None = None) -> list[str]:
        """Delete finished jobs older than the age limit, then the oldest finished ones until
        the finished jobs together fit in ``max_bytes``. Only jobs finished more than
        ``grace_seconds`` ago, whose state is on disk and that nobody is downloading, are
        touched; queued and running jobs never (admission caps those). -> the ids removed."""
        now = time.time() if now is None else now
        with self._changed:
            finished = sorted((job for job in self._jobs.values() if job.state in FINISHED),
                              key=lambda job: job.finished or job.created)
            protected = {job.id for job in finished
                         if job.id in self._holds or job.id in self._unsynced
                         or (job.finished or job.created) > now - grace_seconds}
        for job in finished:
            if job.size_bytes is None:  # finished folders barely change, so measure once
                job.size_bytes = folder_size(job.folder)
        candidates = [job for job in finished if job.id not in protected]
        doomed = [job for job in candidates if (job.finished or job.created) < now - max_age_seconds]
        total = sum(job.size_bytes for job in finished if job not in doomed)
        for job in candidates:
            if total <= max_bytes:
                break
            if job not in doomed:
                doomed.append(job)
                total -= job.size_bytes
        return self._remove(doomed)

    def _remove(self, jobs: Iterable[Job]) -> list[str]:
        removed = []
        for job in jobs:
            with self._changed:  # a download may have started since the job was picked
                if job.id in self._holds or self._jobs.get(job.id) is not job:
                    continue
                self._jobs.pop(job.id)
            removed.append(job.id)
            trash = self.root / f"{TRASH_PREFIX}{job.id}"
            try:
                durable.replace(job.folder, trash)  # gone from view at once; deleting may take a while
            except OSError:
                continue
            shutil.rmtree(trash, ignore_errors=True)
        return removed

    # ------------------------------------------------------------ files (lock held)

    def _write_status_locked(self, job: Job) -> None:
        durable.write_atomic(job.folder / STATUS_FILE, json.dumps(job.record()))

    def _log_event_locked(self, job: Job, event_type: str, data: dict, sync: bool) -> int:
        """Add an event and write it -> the log offset it starts at. If the write fails the
        event is taken back (memory and disk stay equal) and the error raised."""
        if job.events is None:
            job.events = read_event_log(job.folder / EVENTS_FILE)
            job.saved_events = len(job.events)
        data = {"type": event_type, "job": job.id, **data}
        job.events.append(Event(len(job.events) + 1, event_type, json.dumps(data, separators=(",", ":"))))
        try:
            return self._write_pending_events_locked(job, sync)
        except BaseException:
            job.events.pop()
            raise

    def _write_pending_events_locked(self, job: Job, sync: bool) -> int:
        """Append the events not yet on disk (fsynced when ``sync``) -> where they start."""
        pending = job.events[job.saved_events:]
        if not pending:
            return -1
        offset = durable.append(job.folder / EVENTS_FILE, b"".join(_event_line(event) for event in pending), sync)
        job.saved_events = len(job.events)
        return offset


def file_size(path: Path) -> int:
    """The size of a file in bytes, 0 when it cannot be read (gone, not permitted)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0
