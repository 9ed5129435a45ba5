"""Admission control: a submission is refused before its upload is read when the queue is full.

Caps (server settings): ``max_queued_jobs`` queued jobs in total, ``max_queued_jobs_per_client``
per client, ``max_queued_bytes`` of the queued jobs' uploads on disk, and the disk itself
(the upload's declared size plus ``min_free_bytes`` must be free). Over a job cap: 429;
over the bytes or the disk: 507; each with Retry-After (the running job's ETA, 1 to 60 s).

A client is its address plus the ``X-ZS-Client`` header when one is sent. The bearer token
is one per server, so it cannot tell clients apart, and the Blender instances of one
machine share an address: a front end that wants a share of its own names itself in the
header. The header is no credential; it only splits the per-client cap, and the total cap
holds whatever it says.

Submissions being received count as queued from admission until they are queued or
refused, so uploads arriving together cannot overshoot a cap between them.
"""

from __future__ import annotations

import math
import re
import threading
from typing import AsyncIterator

from starlette.requests import Request as HttpRequest

from .config import Settings
from .errors import ApiError
from .jobs import JobStore, StorageFull

CLIENT_HEADER = "x-zs-client"
_CLIENT_NAME = re.compile(r"[\x21-\x7e]{1,64}")  # printable ASCII, no spaces
DEFAULT_RETRY_SECONDS = 5
DISK_RETRY_SECONDS = 30


def client_key(request: HttpRequest) -> str:
    """The client a submission counts against: its address, plus the X-ZS-Client name."""
    address = request.client.host if request.client is not None else "unknown"
    name = request.headers.get(CLIENT_HEADER)
    if name is None:
        return address
    name = name.strip()
    if not _CLIENT_NAME.fullmatch(name):
        raise ApiError(400, CLIENT_HEADER, "expected 1 to 64 printable ASCII characters without spaces")
    return f"{address} {name}"


def declared_bytes(request: HttpRequest) -> int:
    """The upload's Content-Length (0 when absent or malformed: the upload reader refuses
    a malformed one itself, and a chunked upload is held to the caps as it is received)."""
    declared = request.headers.get("content-length", "")
    return int(declared) if declared.isascii() and declared.isdigit() and len(declared) < 20 else 0


class Ticket:
    """A submission admitted and not yet queued or refused."""

    def __init__(self, admission: "Admission", client: str, size: int):
        self.admission, self.client, self.size = admission, client, size
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.admission._release(self)


class Admission:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._lock = threading.Lock()
        self._pending: list[Ticket] = []

    def admit(self, store: JobStore, client: str, size: int) -> Ticket:
        """A ticket for one submission, or ApiError 429 / 507 naming the cap it would pass."""
        settings = self.settings
        with self._lock:
            queued, mine, queued_bytes = store.queue_stats(client)
            queued += len(self._pending)
            mine += sum(1 for ticket in self._pending if ticket.client == client)
            queued_bytes += sum(ticket.size for ticket in self._pending)
            if queued >= settings.max_queued_jobs:
                raise self._refuse(store, 429, f"the queue is full: {queued} jobs queued or being received, "
                                               f"the server's limit is {settings.max_queued_jobs} (max_queued_jobs)")
            if mine >= settings.max_queued_jobs_per_client:
                raise self._refuse(store, 429, f"this client has {mine} jobs queued or being received, the limit "
                                               f"per client is {settings.max_queued_jobs_per_client} "
                                               "(max_queued_jobs_per_client)")
            if queued_bytes + size > settings.max_queued_bytes:
                raise self._refuse(store, 507, f"the queued uploads hold {queued_bytes} bytes; this one "
                                               f"({size} bytes) would pass the limit of {settings.max_queued_bytes} "
                                               "(max_queued_bytes)")
            try:
                store.check_space("this upload", size)
            except StorageFull as exc:
                raise ApiError(507, "body", exc.strerror, headers={"Retry-After": str(DISK_RETRY_SECONDS)}) from None
            ticket = Ticket(self, client, size)
            self._pending.append(ticket)
            return ticket

    def _release(self, ticket: Ticket) -> None:
        with self._lock:
            self._pending.remove(ticket)

    @staticmethod
    def _refuse(store: JobStore, status: int, message: str) -> ApiError:
        eta = store.running_eta()
        retry = DEFAULT_RETRY_SECONDS if eta is None else min(60, max(1, math.ceil(eta)))
        return ApiError(status, "queue", f"{message}; retry in {retry} s", headers={"Retry-After": str(retry)})


async def admit_job(request: HttpRequest) -> AsyncIterator[str]:
    """Route dependency of POST /v1/jobs: admits the submission before its body is read and
    gives the ticket back once the job is queued or refused. Yields the client key."""
    state = request.app.state
    client = client_key(request)
    ticket = state.admission.admit(state.store, client, declared_bytes(request))
    try:
        yield client
    finally:
        ticket.release()
