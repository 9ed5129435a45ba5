"""The FastAPI application: ``create_app(settings)`` and its lifespan.

Startup (once): read or create the token, recover the job store (re-queue queued jobs,
fail the job a previous run left running), prune old jobs, load the model, start the one
worker thread. Shutdown: stop the worker and end the event streams.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from . import errors, routes
from .config import Settings
from .jobs import JobStore
from .sse import Notifier
from .worker import Worker

log = logging.getLogger("zs.server")


def load_components(settings: Settings):
    from zs_core import models  # torch and diffusers load here, not on import of the server

    return models.load(settings.model, settings.controlnet, device=settings.device)


def create_app(settings: Settings, components=None) -> FastAPI:
    """The app for ``settings``. ``components`` (already loaded) skips the model load."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        store = JobStore(settings.jobs_dir)
        recovered = store.recover()
        if recovered["failed_on_restart"] or recovered["queued"]:
            log.info("recovered jobs: %d queued again, %d were running and are marked failed (%r)",
                     recovered["queued"], recovered["failed_on_restart"], "server restarted")
        store.prune(settings.job_max_age_seconds, settings.jobs_max_bytes)
        loaded = components
        if loaded is None:
            log.info("loading model %s (controlnet %s) on %s", settings.model, settings.controlnet or "default",
                     settings.device)
            loaded = await run_in_threadpool(load_components, settings)
        notifier = Notifier(asyncio.get_running_loop())
        store.add_listener(notifier.notify)
        worker = Worker(store, loaded, settings)
        app.state.store, app.state.components, app.state.notifier = store, loaded, notifier
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
    errors.install(app)
    app.include_router(routes.public)
    app.include_router(routes.protected)
    return app
