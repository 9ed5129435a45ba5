"""The FastAPI application: ``create_app(settings)`` and its lifespan.

Startup (once): make the data dir owner-only, read or create the token, recover the job
store (re-queue queued jobs, fail the job a previous run left running, quarantine what
cannot be read), prune old jobs, load the model, start the supervised worker thread.
Shutdown: stop the worker and end the event streams. Admission control
(:mod:`.admission`) and the download holds (:mod:`.downloads`) live on the app.
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
from .sse import Notifier
from .worker import Worker

log = logging.getLogger("zs.server")


def load_components(settings: Settings):
    from zs_core import models  # torch and diffusers load here, not on import of the server

    return models.load(settings.default_model, settings.controlnet, device=settings.device)


def create_app(settings: Settings, components=None) -> FastAPI:
    """The app for ``settings``. ``components`` (already loaded) skips the model load."""
    secure_data_dir(settings.data_dir)

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
        if loaded is None:
            log.info("loading model %s (controlnet %s) on %s", settings.default_model, settings.controlnet or "default",
                     settings.device)
            loaded = await run_in_threadpool(load_components, settings)
        notifier = Notifier(asyncio.get_running_loop())
        store.add_listener(notifier.notify)
        worker = Worker(store, loaded, settings)
        app.state.store, app.state.components, app.state.notifier = store, loaded, notifier
        app.state.worker = worker
        worker.start()
        log.info("model %s ready on %s; jobs in %s", loaded.name, loaded.device, settings.jobs_dir)
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
    app.state.components = None
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
