"""The FastAPI application: ``create_app(settings)`` and its lifespan.

Startup (once): make the data dir owner-only, read or create the token, recover the job
store (re-queue queued jobs, fail the job a previous run left running, quarantine what
cannot be read), prune old jobs, load the default model into the cache of loaded models,
start the supervised worker thread (or, with ``settings.ray``, the pool of Ray workers of
:mod:`.ray_pool`). Shutdown: stop the worker and end the event streams.
Admission control (:mod:`.admission`), the download holds (:mod:`.downloads`), the list of
models (:mod:`.model_registry`) and the loaded ones (:mod:`.model_cache`) live on the app.
"""

from __future__ import annotations

import asyncio
import logging
import os
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from . import durable, errors, hosts, routes
from .admission import Admission
from .config import Settings
from .downloads import DownloadHolds
from .jobs import JobStore, describe_os_error
from .model_cache import ModelCache, check_files, default_budget, load_entry
from .model_registry import SETTING, Entry, ModelEntry, ModelRegistry
from .sse import Notifier
from .worker import Worker

log = logging.getLogger("zs.server")


def default_entry(settings: Settings, registry: ModelRegistry) -> ModelEntry:
    """The default model's entry of the list, its files checked; ModelLoadError naming every
    missing file (and the ``hf download`` command) when it cannot be loaded."""
    from zs_core import models  # torch and diffusers load here, not on import of the server

    cache_dir = settings.hub_cache or None
    entry = registry.listing().models.get(settings.default_model)
    if entry is None:
        # Not a built-in, a file, a folder nor a cached pipeline. Offline the check raises,
        # naming every missing file; online, the load at start downloads it: the one download
        # a server makes (a job never makes one).
        info = models.check_available(settings.default_model, settings.controlnet, cache_dir=cache_dir)
        control = info.controlnet
        return ModelEntry(settings.default_model, info.family, settings.default_model, SETTING,
                          (Entry(control.name, info.family, control.path or control.name, SETTING),), 0)
    check_files(entry, cache_dir)
    return entry


def create_app(settings: Settings, components=None) -> FastAPI:
    """The app for ``settings``. ``components`` (already loaded: the default model) skips
    its load."""
    secure_data_dir(settings.data_dir)
    registry = ModelRegistry(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        store = JobStore(settings.jobs_dir, min_free_bytes=settings.min_free_bytes)
        recovered = store.recover()
        if recovered["failed_on_restart"] or recovered["queued"] or recovered["quarantined"]:
            log.info("recovered jobs: %d queued again, %d were running and are marked failed (%r), "
                     "%d unreadable moved to %s", recovered["queued"], recovered["failed_on_restart"],
                     "server restarted", recovered["quarantined"], store.quarantine)
        try:
            store.prune(settings.job_max_age_seconds, settings.jobs_max_bytes, settings.prune_grace_seconds)
        except OSError:
            log.exception("pruning old jobs failed")
        loaded = components
        entry = await run_in_threadpool(default_entry, settings, registry) if loaded is None or settings.ray else None
        if loaded is None:
            # With Ray the workers load their own models: the server's copy only checks
            # submissions, on the CPU.
            device = "cpu" if settings.ray else settings.device
            log.info("loading model %s (controlnet %s) on %s", entry.name, entry.controlnets[0].name, device)
            loaded = await run_in_threadpool(load_entry, entry, device, settings.hub_cache or None,
                                              settings.model_dtype)
        budget = settings.model_memory_bytes or default_budget(loaded.device)
        cache = ModelCache(budget)
        cache.put(settings.default_model, loaded)
        notifier = Notifier(asyncio.get_running_loop())
        store.add_listener(notifier.notify)
        if settings.ray:
            from .ray_pool import RayWorkerPool  # ray is imported only here: the embedded worker needs none

            worker = RayWorkerPool(store, cache, registry, settings, entry)
        else:
            worker = Worker(store, cache, registry, settings,
                            lambda entry: load_entry(entry, settings.device, settings.hub_cache or None,
                                                     settings.model_dtype))
        app.state.store, app.state.models, app.state.notifier = store, cache, notifier
        app.state.device = loaded.device
        app.state.worker = worker
        await run_in_threadpool(worker.start)  # Ray: connects and waits for the workers' models
        log.info("model %s ready on %s (loaded models kept up to %d bytes); jobs in %s", settings.default_model,
                 loaded.device, budget, settings.jobs_dir)
        try:
            yield
        finally:
            notifier.close()
            await run_in_threadpool(worker.stop)

    app = FastAPI(
        title="ZS Texturing server",
        version=routes._version(),
        description="Consistent multi-view texturing jobs on a local model. "
                    "Send `Authorization: Bearer <token>`; the token is in `<data-dir>/token`.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.token = settings.resolve_token()
    app.state.registry = registry
    app.state.models = None
    app.state.device = None
    app.state.store = None
    app.state.worker = None
    app.state.admission = Admission(settings)
    errors.install(app)
    app.add_exception_handler(OSError, _disk_error)
    app.add_middleware(DownloadHolds)  # pruning leaves a job alone while it is downloaded
    app.add_middleware(hosts.HostCheck, settings=settings)  # 421 for a foreign Host (DNS rebinding)
    app.include_router(routes.public)
    app.include_router(routes.protected)
    return app


async def _disk_error(request, exc: OSError):
    """A write the server's disk refused (ENOSPC, EIO ...) is no bug of the client's: 507 when
    the disk is full, else 503; both say what failed and when to retry."""
    status = 507 if durable.is_no_space(exc) else 503
    return errors.error_response(status, "server", f"the server could not use its disk: {describe_os_error(exc)}",
                                 {"Retry-After": "30"})


def secure_data_dir(path) -> None:
    """The data dir holds prompts, uploads and outputs: owner-only (0700), like all below it."""
    path.mkdir(parents=True, exist_ok=True, mode=durable.DIR_MODE)
    if os.name == "posix" and path.stat().st_mode & 0o077:
        path.chmod(durable.DIR_MODE)
