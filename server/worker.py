"""The one worker thread: takes jobs in FIFO order and runs each on the model it names.

A job is read back from its folder, its model, LoRAs and IP-Adapter resolved to entries of
the server's list (:mod:`.model_registry`; a name that left the list fails the job), its
model taken from the loaded ones or loaded (:mod:`.model_cache`; a ``model`` event before
and after a load), the job's LoRAs put on it, then sampled with
:func:`zs_core.run.run_job` into ``out.partial/`` and renamed to ``out/`` only when complete
and on disk. Every sampler step becomes a ``progress`` event with a small PNG preview.

The worker cannot die of a job or of the disk: anything the sampler or the store throws
fails that job with a reason ("disk full: ...", "its folder ... was removed from outside
the server", the exception) and the worker goes on; a job that cannot start now (a full
disk) stays queued and the worker retries with a backoff, so the queue resumes by itself
once there is space. A supervisor thread starts a new worker thread should one exit anyway
(and fails the job it held). :meth:`Worker.health` is the heartbeat /v1/health reports.

:func:`sample_job` (one job on its model, into a folder) is shared with the Ray workers of
``zs serve --ray`` (:mod:`.ray_actor`, :mod:`.ray_pool`).
"""

from __future__ import annotations

import base64
import gc
import io
import json
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Callable

from PIL import Image

from zs_core import loras, memory, run, sampler
from zs_core.protocol import METRICS_JSON, Passes, Request

from . import durable
from .config import Settings
from .jobs import (CANCELLED, DONE, FAILED, OUTPUT_DIR, PARTIAL_OUTPUT_DIR, PASSES_FILE, REMOVED_REASON, REQUEST_FILE,
                   RUNNING, Job, JobStore, StartDeferred, describe_os_error)
from .model_cache import ModelCache
from .model_registry import ModelEntry, ModelRegistry, Resolved

log = logging.getLogger("zs.server")

IDLE_TICK_SECONDS = 0.5  # how long take_next waits for a job: the heartbeat of an idle worker
BACKOFF_SECONDS = (0.2, 2.0)  # first and longest wait before retrying a job that could not start
SUPERVISE_SECONDS = 0.5
IDLE_STALE_SECONDS = 10.0  # an idle worker not seen for this long is reported
STEP_STALE_SECONDS = 900.0  # a running job without a step for this long is reported
MODEL_EVENT = "model"  # a job's model being loaded: {"model", "state": "loading" | "loaded", "message"}


def encode_preview(preview, max_side: int) -> dict:
    """(h, w, 3) uint8 -> {"preview_png": base64, "preview_width", "preview_height"}."""
    image = Image.fromarray(preview)
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # previews are small: favour speed
    return {"preview_png": base64.b64encode(buffer.getvalue()).decode("ascii"),
            "preview_width": image.width, "preview_height": image.height}


def output_files(job: Job) -> list[str]:
    """Relative paths (forward slashes) of a finished job's outputs, sorted."""
    root = job.output_dir
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def failure_reason(job: Job, exc: BaseException) -> str:
    """What failed a job, in words a client can act on."""
    error = durable.os_error_in(exc)
    if error is not None and error.errno in durable.NO_SPACE_ERRNOS:
        try:
            free = f"{durable.free_bytes(job.folder.parent)} bytes free"
        except OSError:
            free = "free space unknown"
        where = f" writing {error.filename}" if error.filename else ""
        return f"disk full: {error.strerror or error}{where} ({free})"
    if not job.folder.is_dir():
        return REMOVED_REASON.format(folder=job.folder) + " while it ran"
    if error is not None:
        return f"file system error: {describe_os_error(error)}" + (f" ({error.filename})" if error.filename else "")
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def store_reasons(store: JobStore, reasons: list[str], deferred: str | None) -> list[str]:
    """The store's part of a degraded health, besides ``reasons`` already given: too little
    free space, job states not on disk yet."""
    out = []
    space = store.space_problem()
    if space and space not in reasons and not (deferred or "").startswith("disk full"):
        out.append(space)
    unsynced = store.unsynced()
    if unsynced:
        first = next(iter(unsynced.items()))
        out.append(f"{len(unsynced)} job state(s) not on disk yet, retrying (job {first[0]}: {first[1]})")
    return out


def prune_jobs(store: JobStore, settings: Settings) -> None:
    """Prune old finished jobs (after each job), logging what went."""
    try:
        removed = store.prune(settings.job_max_age_seconds, settings.jobs_max_bytes, settings.prune_grace_seconds)
        if removed:
            log.info("pruned %d old job(s)", len(removed))
    except OSError:
        log.exception("pruning old jobs failed")


class JobIntake:
    """Takes the next job for a worker loop, surviving the store: a job that cannot start
    now (a full disk: StartDeferred) waits with a doubling backoff, a bug in the store is
    logged and waited out; ``deferred`` says why no job starts (None once one does)."""

    def __init__(self, stopping: threading.Event):
        self.deferred: str | None = None
        self._stopping = stopping
        self._backoff = BACKOFF_SECONDS[0]

    def take(self, take_next: Callable[[], object]):
        """``take_next()`` (after flushing what the disk refused earlier) -> its job, or None
        when there is none or it could not be taken (then after the backoff)."""
        try:
            return self._took(take_next())
        except StartDeferred as exc:
            if self.deferred != str(exc):
                log.warning("%s", exc)
            self.deferred = str(exc)
            self._stopping.wait(self._backoff)
            self._backoff = min(self._backoff * 2, BACKOFF_SECONDS[1])
        except Exception as exc:  # a bug in the store must not end the worker
            log.exception("taking the next job failed")
            self.deferred = f"taking the next job failed: {type(exc).__name__}: {exc}"
            self._stopping.wait(BACKOFF_SECONDS[1])
        return None

    def _took(self, job):
        if self.deferred:
            log.info("jobs start again")
        self.deferred, self._backoff = None, BACKOFF_SECONDS[0]
        return job


class Worker:
    """Runs queued jobs one after another, each on its model, in a supervised background thread.

    ``load(entry)`` loads a model of the registry's list (:func:`.model_cache.load_entry`)."""

    def __init__(self, store: JobStore, models: ModelCache, registry: ModelRegistry, settings: Settings,
                 load: Callable[[ModelEntry], object]):
        self.store = store
        self.models = models
        self.registry = registry
        self.settings = settings
        self._load = load
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._supervisor = threading.Thread(target=self._supervise, name="zs-worker-supervisor", daemon=True)
        self._seen = time.monotonic()  # the heartbeat: loop turns, sampler steps
        self._job: Job | None = None  # the job the worker thread holds
        self._intake = JobIntake(self._stopping)  # its ``deferred``: why the next job cannot start now
        self._crash: str | None = None  # how the last worker thread ended
        self.restarts = 0

    def start(self) -> None:
        self._spawn()
        self._supervisor.start()

    def _spawn(self) -> None:
        self._thread = threading.Thread(target=self._run, name="zs-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking jobs and interrupt the running one before its next step. The
        interrupted job keeps its ``running`` status on disk, so the next start marks it
        failed with "server restarted" (the same outcome as a crash)."""
        self._stopping.set()
        self.store.wake()
        if self._supervisor.is_alive():
            self._supervisor.join(timeout)
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------ health

    def health(self) -> dict:
        """``{"status": "ok" | "degraded", "reasons": [...], "worker": {...}}``: degraded when
        the worker is not taking jobs (thread gone, disk full, stuck) or the disk lags behind."""
        now = time.monotonic()
        alive = self._thread is not None and self._thread.is_alive()
        job, seen = self._job, now - self._seen
        reasons = []
        if not alive and not self._stopping.is_set():
            reasons.append(f"the worker thread is not running ({self._crash or 'not started'}); "
                           "the supervisor restarts it")
        elif self._intake.deferred:
            reasons.append(self._intake.deferred)
        elif job is None and seen > IDLE_STALE_SECONDS:
            reasons.append(f"the worker has not been seen for {seen:.0f} s")
        elif job is not None and seen > STEP_STALE_SECONDS:
            reasons.append(f"job {job.id} has made no step for {seen:.0f} s")
        reasons += store_reasons(self.store, reasons, self._intake.deferred)
        return {"status": "degraded" if reasons else "ok", "reasons": reasons,
                "worker": {"alive": alive, "last_seen_seconds": round(seen, 3), "job": job.id if job else None,
                           "restarts": self.restarts}}

    # ------------------------------------------------------------ threads

    def _supervise(self) -> None:
        while not self._stopping.wait(SUPERVISE_SECONDS):
            if self._thread is None or self._thread.is_alive():
                continue
            self.restarts += 1
            log.error("the worker thread ended (%s); starting a new one (restart %d)", self._crash, self.restarts)
            job, self._job = self._job, None
            if job is not None and job.state == RUNNING:
                shutil.rmtree(job.folder / PARTIAL_OUTPUT_DIR, ignore_errors=True)
                self.store.finish(job, FAILED, error=f"the worker stopped unexpectedly ({self._crash})")
            self._spawn()

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # noted for the supervisor and /v1/health, then the thread ends
            self._crash = f"{type(exc).__name__}: {exc}"
            raise

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._seen = time.monotonic()
            job = self._intake.take(self._take_next)
            if job is None:
                continue
            self._job = job
            self._execute(job)
            self._job = None
            if not self._stopping.is_set():
                prune_jobs(self.store, self.settings)

    def _take_next(self) -> Job | None:
        self.store.flush()  # states the disk refused earlier
        return self.store.take_next(timeout=IDLE_TICK_SECONDS)

    # ------------------------------------------------------------ one job

    def _execute(self, job: Job) -> None:
        partial = job.folder / PARTIAL_OUTPUT_DIR
        log.info("job %s started", job.id)
        started = time.perf_counter()
        try:
            metrics = self._sample(job, partial)
            files = output_files(job)
        except sampler.Cancelled:
            shutil.rmtree(partial, ignore_errors=True)
            if self._stopping.is_set() and not job.cancel_flag.is_set():
                log.info("job %s interrupted by shutdown", job.id)
                return  # left "running" on disk on purpose: see stop()
            log.info("job %s cancelled", job.id)
            self.store.finish(job, CANCELLED)
        except Exception as exc:  # anything the sampler or the disk throws fails this job, not the server
            shutil.rmtree(partial, ignore_errors=True)
            reason = failure_reason(job, exc)
            log.error("job %s failed: %s", job.id, reason, exc_info=durable.os_error_in(exc) is None)
            self.store.finish(job, FAILED, error=reason)
            gc.collect()  # e.g. after running out of memory: free what the failed run held
        else:
            log.info("job %s done in %.1f s", job.id, time.perf_counter() - started)
            self.store.finish(job, DONE, extra={"files": files, "metrics": metrics,
                                                "result": f"/v1/jobs/{job.id}/result"})

    def _sample(self, job: Job, partial) -> dict:
        """Inputs -> outputs in ``out/`` (fsynced, owner-only) -> the metrics."""

        def should_stop() -> bool:
            self._seen = time.monotonic()
            return job.cancel_flag.is_set() or self._stopping.is_set()

        def on_progress(step: int, total: int, eta: float, preview: dict) -> None:
            self._seen = time.monotonic()
            self.store.progress(job, step, total, eta, preview)

        def on_event(event_type: str, data: dict) -> None:
            self._seen = time.monotonic()
            self.store.log_event(job, event_type, data)

        shutil.rmtree(partial, ignore_errors=True)
        durable.make_dir(partial)
        if job.preloaded is not None:
            (request, passes), job.preloaded = job.preloaded, None
        else:
            request = Request.from_json((job.folder / REQUEST_FILE).read_bytes())
            passes = Passes.load(job.folder / PASSES_FILE)
        resolved = self.registry.resolve(request)  # again: the list may have changed while it was queued
        metrics = sample_job(self.models, self._load, self.settings, resolved, request, passes, partial,
                             progress=on_progress, event=on_event, should_stop=should_stop)
        durable.commit_tree(partial, job.folder / OUTPUT_DIR)
        return metrics


def sample_job(models: ModelCache, load: Callable[[ModelEntry], object], settings: Settings, resolved: Resolved,
               request: Request, passes: Passes, out_dir: Path, *,
               progress: Callable[[int, int, float, dict], None], event: Callable[[str, dict], None],
               should_stop: Callable[[], bool], collective=None) -> dict | None:
    """One job on its model, the part the embedded worker and a Ray worker
    (:mod:`.ray_actor`) share: the model taken from ``models`` (loaded with ``load`` if
    it is not there; ``model`` events before and after), the job's LoRAs put on it, the
    memory plan applied, :func:`zs_core.run.run_job` run into ``out_dir`` and
    ``metrics.json`` written there -> the metrics. ``progress(step, total, eta_seconds,
    preview)`` gets each step with its PNG preview (:func:`encode_preview`);
    ``event(type, data)`` the other events; ``should_stop()`` True raises
    :class:`zs_core.sampler.Cancelled` at the next step. ``collective``: the job is split
    over several workers (:mod:`zs_core.distributed`; a Ray worker's share): None on every
    worker but the first, which writes the files."""
    started = time.perf_counter()

    def on_progress(step: sampler.StepProgress) -> None:
        eta = round((time.perf_counter() - started) / step.step * (step.total - step.step), 2)
        progress(step.step, step.total, eta, encode_preview(step.preview, settings.preview_max_side))

    def on_load(name: str, seconds: float | None) -> None:
        if seconds is None:
            event(MODEL_EVENT, {"model": name, "state": "loading", "message": f"loading model {name}"})
        else:
            event(MODEL_EVENT, {"model": name, "state": "loaded", "seconds": round(seconds, 3),
                                "message": f"model loaded in {seconds:.1f} s"})

    model = resolved.model
    with models.use(model.name, lambda: load(model), model.bytes, on_load) as components:
        if should_stop():
            raise sampler.Cancelled()
        adapt(components, resolved.lora_files)
        memory.apply(components, memory.plan_for_job(components, request, passes,
                                                     offload=settings.switch("offload"),
                                                     vae_tiling=settings.switch("vae_tiling")))
        metrics = run.run_job(components, resolved.core_request(request), passes, out_dir,
                              progress=on_progress, cancel=should_stop, collective=collective)
    if metrics is None:  # another worker of a split job writes the result
        return None
    # The result names the entries as the client did, not where they are on the server.
    metrics["request"] = request.to_dict()
    (Path(out_dir) / METRICS_JSON).write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return metrics


def adapt(components, lora_files: list[tuple[str, float]]) -> None:
    """Put the job's LoRAs (files, weights) on the model and take the previous job's off
    (:func:`zs_core.loras.apply` keeps loaded adapters for a later job that names them);
    a model without active LoRAs is left alone for a job without any."""
    if lora_files or loras.state(components).active:
        loras.apply(components, lora_files)
