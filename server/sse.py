"""Server-sent events: wake async streams when the worker thread logs an event.

The worker lives in a plain thread and the streams in the event loop, so the bridge is
``loop.call_soon_threadsafe``: each job has at most one :class:`asyncio.Event` that every
waiting stream shares; a new job event sets it and a fresh one is made for the next wait.

A queued job's stream also sends ``queue`` events: its place in the queue and the job it
waits on (:meth:`JobStore.queue_view`), whenever that differs from what the client last
saw (the ``queued`` event, or the previous ``queue`` event). They carry no ``id:``: they are
the queue's state now, not part of the job's log, so ``Last-Event-ID`` keeps pointing at
the last logged event and a client that reconnects gets the state of that moment.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import AsyncIterator

from .errors import ApiError
from .jobs import QUEUED, Event, JobNotFound, JobStore

QUEUE_EVENT = "queue"
MAX_EVENT_ID = 10 ** 18 - 1  # ids count a job's events; 18 digits is far beyond any job
_EVENT_ID = re.compile(r"[0-9]{1,18}")

KEEPALIVE_SECONDS = 15.0
RETRY_MILLISECONDS = 1000


class Notifier:
    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._waiters: dict[str, asyncio.Event] = {}
        self.closed = asyncio.Event()

    def notify(self, job_id: str) -> None:
        """Thread-safe: wake every stream waiting on ``job_id``."""
        try:
            self._loop.call_soon_threadsafe(self._wake, job_id)
        except RuntimeError:  # the loop is closed: the server is going away, nobody listens
            pass

    def _wake(self, job_id: str) -> None:
        waiter = self._waiters.pop(job_id, None)
        if waiter is not None:
            waiter.set()

    def waiter(self, job_id: str) -> asyncio.Event:
        """The event the next notification for ``job_id`` will set (event-loop thread only)."""
        return self._waiters.setdefault(job_id, asyncio.Event())

    def close(self) -> None:
        """Ends every stream (on shutdown)."""
        self.closed.set()
        for waiter in self._waiters.values():
            waiter.set()
        self._waiters.clear()


def parse_last_event_id(text: str) -> int:
    """A ``Last-Event-ID`` header -> the id; 400 naming the header for anything but up to 18
    ASCII digits (``str.isdigit`` also takes "²", which ``int`` refuses)."""
    if not _EVENT_ID.fullmatch(text.strip()):
        shown = text if len(text) <= 40 else f"{text[:40]}... ({len(text)} characters)"
        raise ApiError(400, "last-event-id", f"expected an event id (at most 18 digits 0-9), got {shown!r}")
    return int(text)


def format_event(event: Event) -> bytes:
    # The data is one-line JSON, so a single data: line carries it.
    return f"id: {event.id}\nevent: {event.type}\ndata: {event.data}\n\n".encode()


def format_queue_event(job_id: str, view: dict) -> bytes:
    """A ``queue`` event: no ``id:`` line, so the client's last event id stays as it was."""
    data = json.dumps({"type": QUEUE_EVENT, "job": job_id, "state": QUEUED, **view}, separators=(",", ":"))
    return f"event: {QUEUE_EVENT}\ndata: {data}\n\n".encode()


def _view_in(event: Event) -> dict:
    """The queue view a logged ``queued`` event told the client."""
    data = json.loads(event.data)
    return {"position": data.get("position"), "waiting_on": data.get("waiting_on")}


async def event_stream(store: JobStore, notifier: Notifier, job_id: str, after: int) -> AsyncIterator[bytes]:
    """Every event of the job with id > ``after``, then new ones as they come, until the
    job has finished (or the server shuts down)."""
    yield f"retry: {RETRY_MILLISECONDS}\n\n".encode()
    shown = None  # the queue view the client has seen
    while not notifier.closed.is_set():
        # Take the waiter before reading, so an event logged in between still wakes us.
        waiter = notifier.waiter(job_id)
        try:
            events, finished = store.events_after(job_id, after)
            # Read after the events: a view of a queued job comes before its "started".
            view = None if finished else store.queue_view(job_id)
        except JobNotFound:  # pruned while someone watched it
            return
        for event in events:
            yield format_event(event)
            after = event.id
            if event.type == QUEUED:
                shown = _view_in(event)
        if finished:
            return
        changed = view is not None and view != shown
        if changed:
            yield format_queue_event(job_id, view)
            shown = view
        if not events and not changed:
            try:
                await asyncio.wait_for(waiter.wait(), KEEPALIVE_SECONDS)
            except asyncio.TimeoutError:
                yield b": keepalive\n\n"
