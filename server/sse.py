"""Server-sent events: wake async streams when the worker thread logs an event.

The worker lives in a plain thread and the streams in the event loop, so the bridge is
``loop.call_soon_threadsafe``: each job has at most one :class:`asyncio.Event` that every
waiting stream shares; a new job event sets it and a fresh one is made for the next wait.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from .jobs import Event, JobNotFound, JobStore

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


def format_event(event: Event) -> bytes:
    # The data is one-line JSON, so a single data: line carries it.
    return f"id: {event.id}\nevent: {event.type}\ndata: {event.data}\n\n".encode()


async def event_stream(store: JobStore, notifier: Notifier, job_id: str, after: int) -> AsyncIterator[bytes]:
    """Every event of the job with id > ``after``, then new ones as they come, until the
    job has finished (or the server shuts down)."""
    yield f"retry: {RETRY_MILLISECONDS}\n\n".encode()
    while not notifier.closed.is_set():
        # Take the waiter before reading, so an event logged in between still wakes us.
        waiter = notifier.waiter(job_id)
        try:
            events, finished = store.events_after(job_id, after)
        except JobNotFound:  # pruned while someone watched it
            return
        for event in events:
            yield format_event(event)
            after = event.id
        if finished:
            return
        if not events:
            try:
                await asyncio.wait_for(waiter.wait(), KEEPALIVE_SECONDS)
            except asyncio.TimeoutError:
                yield b": keepalive\n\n"
