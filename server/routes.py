"""HTTP routes (all under /v1). Everything but /v1/health needs ``Authorization: Bearer <token>``.

Handlers never wait on sampling: they read the job store (a lock held for microseconds),
and the slow parts of a request (decompressing and checking an upload, writing it to disk,
zipping a result) run in the thread pool.
"""

from __future__ import annotations

import secrets
import shutil
from importlib import metadata
from pathlib import Path

from fastapi import APIRouter, Depends, Header, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from starlette.requests import Request as HttpRequest

from zs_core.families import ModelLoadError
from zs_core.protocol import PROTOCOL_VERSION, Request, request_schema

from . import admission, result_files, sse, uploads
from .errors import ApiError, ErrorBody, insufficient_storage, is_disk_full
from .jobs import DONE, PASSES_FILE, RESULT_ZIP, JobConflict, JobNotFound, JobStore
from .model_cache import check_files
from .model_registry import Resolved

bearer = HTTPBearer(auto_error=False, description="The token in <data-dir>/token")


def _state(request: HttpRequest):
    return request.app.state


async def require_token(request: HttpRequest,
                        credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
    expected = _state(request).token.encode()
    given = credentials.credentials.encode() if credentials is not None else b""
    if not secrets.compare_digest(given, expected):  # constant time: no guessing by timing
        raise ApiError(401, "authorization", "missing or wrong bearer token",
                       headers={"WWW-Authenticate": "Bearer"})


ERRORS = {status: {"model": ErrorBody} for status in (400, 401, 404, 409, 413, 415, 421, 422)}
# Submitting also answers 503 (a bound shared by all uploads is reached; Retry-After),
# 507 (the disk is full, or the queued uploads' cap: the message says how much) and 429
# (a queued-jobs cap, server/admission.py; Retry-After).
SUBMIT_ERRORS = {**ERRORS, **{status: {"model": ErrorBody} for status in (429, 503, 507)}}

public = APIRouter(prefix="/v1", tags=["server"])
protected = APIRouter(prefix="/v1", dependencies=[Depends(require_token)], responses={401: {"model": ErrorBody}})


# ---------------------------------------------------------------- models of the responses

class Health(BaseModel):
    status: str  # "ok", or "degraded" when the worker is not taking jobs: ``reasons`` says why
    reasons: list[str] = []
    worker: dict | None = None  # the heartbeat: alive, last_seen_seconds, job, restarts (server/worker.py)
    workers: list[dict] | None = None  # zs serve --ray: each Ray worker and what it does (server/ray_pool.py)
    version: str
    protocol: int
    device: str
    model: str  # the default model (for jobs that name none)
    model_loaded: bool  # whether the default model is loaded
    models_loaded: list[str] = []  # every loaded model, least recently used first
    model_loading: str | None = None  # the model being loaded now
    queue_length: int
    running: str | None  # the running job that frees its worker first (the queue waits on it)
    running_jobs: list[str] = []  # every running job (several on Ray workers), in the order they started
    # This server's limits, so a client can refuse a job before capturing its passes.
    limits: dict[str, int]


LIMITS = ("max_steps", "max_views", "max_frames", "max_resolution", "max_texture_size")


class ModelInfo(BaseModel):
    name: str  # what a request's ``model`` names
    family: str  # sd15, sdxl ("" when the files do not say)
    source: str  # builtin, folder or file (in <data_dir>/models/), hub (the hub cache), setting (zs serve's)
    controlnets: list[str]  # the depth ControlNets it can use; the first is the one it loads
    loaded: bool
    bytes: int  # its weights: in memory when loaded, else on disk (0: not known)
    # Kept from the one-model server: the ControlNet it loads, where and in what precision.
    controlnet: str
    device: str
    dtype: str | None  # once loaded


class AdapterInfo(BaseModel):
    name: str  # what a request's ``loras`` entries / ``ip_adapter`` name
    family: str  # the model family it fits ("" when the file does not say)


class ModelList(BaseModel):
    default: str  # the model of jobs that name none
    models: list[ModelInfo]
    loras: list[AdapterInfo]
    ip_adapters: list[AdapterInfo]


class Accepted(BaseModel):
    id: str
    state: str
    queue_position: int | None  # None once the worker has already taken it
    status_url: str
    events_url: str


class WaitingOn(BaseModel):
    """The job the worker runs while a queued job waits: what the queue waits on."""
    id: str
    kind: str
    step: int
    total: int
    cancelling: bool  # cancelled, not stopped yet


class JobStatus(BaseModel):
    id: str
    seq: int
    kind: str | None = None  # texture or animation
    state: str
    created: float
    started: float | None
    finished: float | None
    step: int
    total: int
    eta_seconds: float | None
    error: str | None
    cancel_requested: bool
    queue_position: int | None  # queued: 1 runs next
    waiting_on: WaitingOn | None = None  # queued: the running job, None between jobs
    files: list[str] | None = None


class JobSummary(BaseModel):
    id: str
    seq: int
    state: str
    created: float
    step: int
    total: int


class JobList(BaseModel):
    jobs: list[JobSummary]


def _version() -> str:
    try:
        return metadata.version("zs-texturing")
    except metadata.PackageNotFoundError:
        return "unknown"


def _job_or_404(store: JobStore, job_id: str):
    try:
        return store.get(job_id)
    except JobNotFound:
        raise ApiError(404, "job_id", f"no job {job_id!r}") from None


# ---------------------------------------------------------------- routes

@public.get("/health", response_model=Health)
async def health(request: HttpRequest) -> Health:
    """Liveness and what is loaded. The one route that needs no token."""
    state = _state(request)
    cache = getattr(state, "models", None)
    store: JobStore | None = getattr(state, "store", None)
    worker = getattr(state, "worker", None)
    report = worker.health() if worker is not None else {"status": "ok", "reasons": [], "worker": None}
    loaded = [entry["name"] for entry in cache.loaded()] if cache is not None else []
    default = state.settings.default_model
    return Health(**report, version=_version(), protocol=PROTOCOL_VERSION,
                  device=str(state.device) if state.device is not None else "none",
                  model=default, model_loaded=default in loaded, models_loaded=loaded,
                  model_loading=cache.loading if cache is not None else None,
                  queue_length=store.queue_length() if store else 0,
                  running=store.running_job() if store else None,
                  running_jobs=store.running_jobs() if store else [],
                  limits={name: int(getattr(state.settings, name)) for name in LIMITS})


@protected.get("/models", response_model=ModelList)
async def list_models(request: HttpRequest) -> ModelList:
    """What this server can load (server/model_registry.py): the models with their family
    and depth ControlNets, which are loaded, and the LoRAs and IP-Adapters. A job names
    entries of these lists and nothing else."""
    state = _state(request)
    listing = await run_in_threadpool(state.registry.listing)  # a folder changed: a scan
    loaded = {entry["name"]: entry["bytes"] for entry in state.models.loaded()}
    models = []
    for entry in listing.models.values():
        components = state.models.get(entry.name)
        models.append(ModelInfo(
            name=entry.name, family=entry.family, source=entry.source,
            controlnets=[controlnet.name for controlnet in entry.controlnets], loaded=entry.name in loaded,
            bytes=loaded.get(entry.name, entry.bytes),
            controlnet=components.controlnet_name if components is not None else
            (entry.controlnets[0].name if entry.controlnets else ""),
            device=str(state.device),
            dtype=str(components.dtype).removeprefix("torch.") if components is not None else None))
    return ModelList(default=listing.default, models=models,
                     loras=[AdapterInfo(name=e.name, family=e.family) for e in listing.loras.values()],
                     ip_adapters=[AdapterInfo(name=e.name, family=e.family) for e in listing.ip_adapters.values()])


_SUBMIT_BODY = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object",
            "required": ["request"],  # and exactly one of passes / exr_sequence
            "properties": {
                "request": {"type": "string", "contentMediaType": "application/json",
                            "contentSchema": request_schema(),
                            "description": "the request JSON: the job kind and the parameters of the table "
                                           "(zs_core.protocol.PARAMETERS); a field left out takes its default "
                                           "for the kind"},
                "passes": {"type": "string", "format": "binary", "description": "passes.npz in the wire layout"},
                "exr_sequence": {"type": "string", "format": "binary",
                                 "description": "instead of passes, for an animation: a zip of the NNNN.exr files "
                                                "and NNNN.json sidecars a render with the ZS passes setting wrote"},
            },
        }}},
    },
}


@protected.post("/jobs", status_code=202, response_model=Accepted, openapi_extra=_SUBMIT_BODY,
                responses=SUBMIT_ERRORS)
async def submit_job(request: HttpRequest, client: str = Depends(admission.admit_job)) -> JSONResponse:
    """Queue a job: multipart form with ``request`` (JSON) and ``passes`` (.npz), or for an
    animation ``exr_sequence`` (a zip of the EXR files and sidecars a ZS-passes render wrote)."""
    state = _state(request)
    resolved = []

    async def check_names(request_json: bytes) -> None:
        # The model, LoRAs and IP-Adapter it names must be on the list (and a model not loaded
        # yet have all its files): a 422 before the passes are read.
        resolved.append(await run_in_threadpool(_resolve, state, Request.from_json(request_json)))

    # The body streams to disk; each check runs before what it guards costs memory (server/uploads.py).
    async with uploads.receive(request, state.settings, _upload_gate(state), check_names) as upload:
        # The passes are checked against the job's model when it is loaded, else the last used
        # one (the checks need only the VAE's factor, 8 in every family); the worker checks again.
        components = (state.models.get(resolved[0].model.name) if resolved else None) or state.models.recent()
        job = await uploads.check(upload, components)
        created = await run_in_threadpool(_create_job, state.store, job, client)
    snapshot = state.store.snapshot(created.id)
    status_url = f"/v1/jobs/{created.id}"
    accepted = Accepted(id=created.id, state=snapshot["state"], queue_position=snapshot["queue_position"],
                        status_url=status_url, events_url=f"{status_url}/events")
    return JSONResponse(accepted.model_dump(), status_code=202, headers={"Location": status_url})


@protected.get("/jobs", response_model=JobList)
async def list_jobs(request: HttpRequest, limit: int | None = Query(None, ge=1, le=10_000)) -> JobList:
    """Recent jobs, newest first."""
    state = _state(request)
    count = min(limit or state.settings.recent_jobs, state.settings.recent_jobs)
    return JobList(jobs=[JobSummary(**job) for job in state.store.recent(count)])


@protected.get("/jobs/{job_id}", response_model=JobStatus, responses=ERRORS)
async def job_status(request: HttpRequest, job_id: str) -> JobStatus:
    """State, step of total, ETA and, when failed, the reason; a queued job's place in the
    queue and the running job it waits on (``waiting_on``)."""
    store: JobStore = _state(request).store
    job = _job_or_404(store, job_id)
    snapshot = store.snapshot(job_id)
    files = result_files.output_names(job.output_dir) if snapshot["state"] == DONE else None
    return JobStatus(**snapshot, files=files)


@protected.get("/jobs/{job_id}/events", responses={**ERRORS, 200: {"content": {"text/event-stream": {}}}})
async def job_events(request: HttpRequest, job_id: str,
                     last_event_id: str | None = Header(None, description="resume after this event id"),
                     after: int | None = Query(None, ge=0, le=sse.MAX_EVENT_ID,
                                               description="resume after this event id "
                                                           "(for clients that cannot set headers)")):
    """Server-sent events: queued, started, progress (with a PNG preview), done / failed /
    cancelled. Each event has an id; reconnect with Last-Event-ID to resume. While the job
    is queued, ``queue`` events (without an id) follow its place and the job it waits on."""
    state = _state(request)
    _job_or_404(state.store, job_id)
    resume_from = sse.parse_last_event_id(last_event_id) if last_event_id else after or 0
    return StreamingResponse(sse.event_stream(state.store, state.notifier, job_id, resume_from),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _resolve(state, job_request: Request) -> Resolved:
    resolved = state.registry.resolve(job_request)
    if state.models.get(resolved.model.name) is None:
        try:
            check_files(resolved.model, state.settings.hub_cache or None)
        except ModelLoadError as exc:
            raise ApiError(422, "model", str(exc).removeprefix("model: ")) from None
    return resolved


def _upload_gate(state) -> uploads.UploadGate:
    gate = getattr(state, "upload_gate", None)
    if gate is None:  # made on the first upload (it clears what a stopped server left)
        gate = state.upload_gate = uploads.UploadGate(state.settings)
    return gate


def _create_job(store: JobStore, job: uploads.ValidJob, client: str | None = None):
    """Queue a checked job: its .npz moves into a staging folder of the store (a rename on
    the same disk, no copy), which the store then turns into the job's folder."""
    needed = job.npz.stat().st_size
    try:
        staging = store.stage(b"")
        try:
            shutil.move(job.npz, staging / PASSES_FILE)
        except BaseException:
            store.discard(staging)
            raise
        return store.create(job.request.to_json(), None, job.request.steps, (job.request, job.passes), staging,
                            client=client)
    except OSError as exc:
        if is_disk_full(exc):
            raise insufficient_storage(exc, "body", needed, store.root) from None
        raise


def _finished_job(store: JobStore, job_id: str):
    job = _job_or_404(store, job_id)
    if job.state != DONE:
        raise ApiError(409, "job_id", f"job is {job.state}; results exist only once it is done")
    return job


def _build_result_zip(job) -> Path:
    path = job.folder / RESULT_ZIP
    if not path.exists():
        result_files.build_zip(job.output_dir, path)  # regular files only, never through a symlink
    return path


@protected.get("/jobs/{job_id}/result", responses={**ERRORS, 200: {"content": {"application/zip": {}}}})
async def job_result(request: HttpRequest, job_id: str) -> FileResponse:
    """All outputs of a finished job as one zip (views/NNNN.png, texture.png, metrics.json, ...)."""
    job = _finished_job(_state(request).store, job_id)
    path = await run_in_threadpool(_build_result_zip, job)
    return FileResponse(path, media_type="application/zip", filename=f"{job_id}.zip")


@protected.get("/jobs/{job_id}/files/{name:path}", responses={**ERRORS, 200: {"content": {"image/png": {}}}})
async def job_file(request: HttpRequest, job_id: str, name: str) -> FileResponse:
    """One output file, e.g. ``texture.png`` or ``views/0000.png``."""
    job = _finished_job(_state(request).store, job_id)
    parts = result_files.plain_parts(name)
    if parts is None:
        raise ApiError(400, "name", "not a plain relative path inside the job's outputs")
    path = result_files.output_file(job.output_dir, parts)
    if path is None:  # missing, or reached through a symlink: the zip skips those too
        raise ApiError(404, "name", f"no output file {name!r}")
    return FileResponse(path)


@protected.delete("/jobs/{job_id}", status_code=202, response_model=JobStatus, responses=ERRORS)
async def cancel_job(request: HttpRequest, job_id: str) -> JSONResponse:
    """Cancel: a queued job is cancelled at once, a running one stops before its next step."""
    store: JobStore = _state(request).store
    _job_or_404(store, job_id)
    try:
        snapshot = store.cancel(job_id)
    except JobConflict as exc:
        raise ApiError(409, "job_id", str(exc)) from None
    return JSONResponse(JobStatus(**snapshot).model_dump(), status_code=202)
