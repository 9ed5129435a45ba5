"""One Ray worker of ``zs serve --ray`` (:mod:`.ray_pool`): a process holding its loaded
models and running one job at a time.

The pool makes :class:`JobActor` a threaded Ray actor (``max_concurrency`` > 1), so while
:meth:`JobActor.run_job` samples on one thread the server drains the job's events
(:meth:`JobActor.events`, a long poll), cancels it (:meth:`JobActor.cancel`) and asks what
the actor does (:meth:`JobActor.ping`) on others. The sampling is the embedded worker's
(:func:`.worker.sample_job`): the same model events, previews, LoRAs, memory plan and
cancel checks (between steps and inside the model blocks).

Nothing here needs a file system shared with the server: the request and the passes come
as bytes through Ray's object store, the job runs into a temporary folder of the actor's
machine, and its files go back as bytes with the metrics, for the server to write into the
job's folder as the embedded worker does. The models are another matter: the server sends
the entries of its list (:mod:`.model_registry`), which name paths, so every node needs the
models at the same paths (built-ins need nothing; a hub cache or models folder at the same
place on each node).

This module does not import ray: :mod:`.ray_pool` wraps the class with ``ray.remote``.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import tempfile
import threading
from pathlib import Path

from zs_core import distributed, sampler
from zs_core.protocol import Passes, Request

from . import durable
from .config import Settings
from .jobs import CANCELLED, DONE, FAILED, describe_os_error
from .model_cache import ModelCache, default_budget, load_entry
from .model_registry import ModelEntry, Resolved
from .worker import sample_job

log = logging.getLogger("zs.server")

# The items of a job's event buffer: ("progress", (step, total, eta_seconds, preview)) and
# ("event", (type, data)), in the order they happened.
PROGRESS, EVENT = "progress", "event"


class _Run:
    """One job on this actor: its buffered events, its cancel flag, whether it ended."""

    def __init__(self):
        self.changed = threading.Condition()
        self.items: list[tuple[str, tuple]] = []
        self.done = False
        self.cancel = threading.Event()

    def put(self, kind: str, payload: tuple) -> None:
        with self.changed:
            self.items.append((kind, payload))
            self.changed.notify_all()

    def end(self) -> None:
        with self.changed:
            self.done = True
            self.changed.notify_all()


class JobActor:
    """Holds the models loaded on its device (a :class:`.model_cache.ModelCache` of its own,
    the default model loaded at start) and runs the jobs the pool gives it, one at a time.

    ``threads``: torch's CPU threads (0: torch's default, e.g. on a GPU worker)."""

    def __init__(self, settings: Settings, default: ModelEntry, threads: int = 0):
        if threads:
            import torch

            torch.set_num_threads(threads)
        # The token stays on the server: a worker has no use for it.
        self.settings = dataclasses.replace(settings, token=None)
        components = self._load(default)
        self.device = components.device
        self.models = ModelCache(settings.model_memory_bytes or default_budget(components.device))
        self.models.put(default.name, components)
        self._lock = threading.Lock()
        self._one_job = threading.Lock()
        self._runs: dict[str, _Run] = {}
        self._stores: dict[str, object] = {}  # rendezvous hosted for split jobs, until they start
        self._current: str | None = None

    def _load(self, entry: ModelEntry):
        settings = self.settings
        return load_entry(entry, settings.device, settings.hub_cache or None, settings.model_dtype)

    # ------------------------------------------------------------ what the pool asks

    def ready(self) -> dict:
        """Where this actor runs, once its default model is loaded: ``node`` (the node's
        address), ``node_id``, ``pid``, ``device`` and the loaded ``models``."""
        import ray

        return {"node": ray.util.get_node_ip_address(), "node_id": ray.get_runtime_context().get_node_id(),
                "pid": os.getpid(), "device": str(self.device), **self.ping()}

    def ping(self) -> dict:
        """The heartbeat: the job it runs (or None) and its loaded models, least recently used first."""
        return {"job": self._current, "models": [entry["name"] for entry in self.models.loaded()],
                "loading": self.models.loading}

    def open_split(self, job_id: str, size: int) -> tuple[str, int]:
        """Host the rendezvous of a job split over ``size`` actors, this one its first
        worker -> (this node's address, the port the others join at)."""
        import ray

        host = ray.util.get_node_ip_address()
        store, port = distributed.open_store(host, size)
        with self._lock:
            self._stores[job_id] = store
        return host, port

    def run_job(self, job_id: str, request_json: bytes, passes_npz: bytes, resolved: Resolved,
                split: dict | None = None) -> dict:
        """Run one job (the pool's entry point) -> its outcome, with the actor's loaded
        ``models``: ``{"state": DONE, "files": {relative path: bytes}, "metrics"}``,
        ``{"state": CANCELLED}`` or ``{"state": FAILED, "error"}``. Never raises for what the
        job does: a failure is an outcome with its reason.

        ``split``: this actor's share of a job split over several (``{"rank", "size",
        "host", "port"}``, the rendezvous of :meth:`open_split` on rank 0): every actor
        samples its views; rank 0 returns the files, the others ``"files": {}`` and
        ``"metrics": None``."""
        run = self._run(job_id)
        # One job at a time: a job the server gave up on (and cancelled) may still be
        # stopping; the next one waits for it (a step at most).
        with self._one_job:
            outcome = self._run_job(job_id, run, request_json, passes_npz, resolved, split)
        return {**outcome, "models": self.ping()["models"]}  # what it holds now, for /v1/health

    def _run_job(self, job_id: str, run: _Run, request_json: bytes, passes_npz: bytes, resolved: Resolved,
                 split: dict | None) -> dict:
        with self._lock:
            self._current = job_id
            # Buffers of ended jobs nobody drained (the server gave up on them) go now.
            self._runs = {other: kept for other, kept in self._runs.items() if other == job_id or not kept.done}
            store = self._stores.pop(job_id, None)
        try:
            request = Request.from_json(request_json)
            passes = Passes.load(passes_npz)
            collective = None
            if split is not None:
                collective = distributed.GlooCollective(split["host"], split["port"], split["rank"], split["size"],
                                                        name=job_id, store=store)
            with tempfile.TemporaryDirectory(prefix="zs-job-") as folder:
                metrics = sample_job(self.models, self._load, self.settings, resolved, request, passes, Path(folder),
                                     progress=lambda *step: run.put(PROGRESS, step),
                                     event=lambda *event: run.put(EVENT, event),
                                     should_stop=run.cancel.is_set, collective=collective)
                files = {path.relative_to(folder).as_posix(): path.read_bytes()
                         for path in sorted(Path(folder).rglob("*")) if path.is_file()}
            return {"state": DONE, "files": files, "metrics": metrics}
        except sampler.Cancelled:
            return {"state": CANCELLED}
        except Exception as exc:  # the job fails, the worker goes on
            reason = failure_text(exc)
            log.error("job %s failed: %s", job_id, reason, exc_info=durable.os_error_in(exc) is None)
            gc.collect()  # e.g. after running out of memory: free what the failed run held
            return {"state": FAILED, "error": reason}
        finally:
            with self._lock:
                self._current = None
            run.end()

    def events(self, job_id: str, timeout: float) -> tuple[list[tuple[str, tuple]], bool]:
        """The job's events since the last call, waiting up to ``timeout`` s for one ->
        (events, ended): ``ended`` once :meth:`run_job` has returned and every event was
        handed out (the job's buffer is then dropped)."""
        run = self._run(job_id)
        with run.changed:
            if not run.items and not run.done:
                run.changed.wait(timeout)
            items, run.items = run.items, []
            ended = run.done
        if ended:
            with self._lock:
                self._runs.pop(job_id, None)
        return items, ended

    def cancel(self, job_id: str) -> None:
        """Stop the job at its next check (also when the call comes before :meth:`run_job`)."""
        self._run(job_id).cancel.set()

    def _run(self, job_id: str) -> _Run:
        with self._lock:
            return self._runs.setdefault(job_id, _Run())


def failure_text(exc: BaseException) -> str:
    """What failed a job on a worker, in words a client can act on."""
    error = durable.os_error_in(exc)
    if error is not None:
        where = f" ({error.filename})" if error.filename else ""
        return f"file system error on the worker: {describe_os_error(error)}{where}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
