"""``zs serve --ray``: the server's jobs on a pool of Ray actors (:class:`.ray_actor.JobActor`),
one per GPU of the cluster (or per ``ray_threads`` CPUs without GPUs), each keeping its
loaded models.

:class:`RayWorkerPool` stands in for the embedded :class:`.worker.Worker` (``start``,
``stop``, ``health``): the HTTP API, the token, the job store with its persistence, the
admission caps and the limits do not change.

- Jobs: a dispatcher thread takes queued jobs from the store in FIFO order (a job whose
  worker was lost first) and gives each to an idle worker. A thread per running job
  (:meth:`RayWorkerPool._follow`) sends its request and passes as bytes (Ray's object
  store: no shared file system), drains the job's events into the store while it runs
  (``progress`` with its preview, ``model``: the embedded worker's shapes) and writes the
  files the actor returns into ``out.partial/``, committed to ``out/`` with
  :mod:`.durable`, as the embedded worker does.
- Split jobs: a job that is the only one waiting, while several workers are idle, runs on
  up to ``ray_split`` of them (:meth:`RayWorkerPool._workers_for`) with the one-worker
  result (:mod:`zs_core.distributed`): the first hosts the rendezvous of a Gloo group, each
  samples its range of the main views (or frames), and the first gathers them, samples
  the completion views (or pixel-syncs the frames), bakes and returns the files. An
  animation is split only over enough workers for ``chunk`` frames each (a worker runs its
  frames in one model call). A ``split`` event names the workers.
- Cancel: a store listener sends ``cancel`` to the job's actors at once; the sampler checks
  it between steps and inside the model blocks, as in the embedded worker (a split job's
  workers agree on it at each check, so they stop together).
- Faults: a worker that dies (``ray.kill``, its process or its node lost) fails its calls
  with RayActorError. Its slot gets a new actor, and the job runs again from the start on
  the next idle worker(s), after a ``retry`` event that says why; after MAX_ATTEMPTS lost
  workers the job fails. The other workers of a split job wait in a collective for the lost
  one: they are replaced too (a new actor loads its models again). A job whose result
  reached the server is finished there and never runs again. A monitor thread pings every
  worker, so an idle worker's death is found too and ``GET /v1/health`` can say when each
  was last seen.
- Shutdown: the actors are killed; a running job keeps its ``running`` status, so the next
  start marks it failed ("server restarted"), as with the embedded worker.

Several jobs run at once here: the job store keeps them all running (``running_jobs`` in
``GET /v1/health``), and a queued job's ``waiting_on`` names the one expected to end first.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from zs_core import distributed
from zs_core.protocol import NpzArchive, ProtocolError, Request

from . import durable
from .config import Settings
from .jobs import CANCELLED, DONE, FAILED, OUTPUT_DIR, PARTIAL_OUTPUT_DIR, PASSES_FILE, REQUEST_FILE, Job, JobStore
from .model_cache import ModelCache
from .model_registry import ModelEntry, ModelRegistry
from .ray_actor import EVENT, PROGRESS, JobActor
from .worker import IDLE_TICK_SECONDS, JobIntake, failure_reason, output_files, prune_jobs, store_reasons

log = logging.getLogger("zs.server")

STARTING, IDLE, RUNNING, RESTARTING, DEAD = "starting", "idle", "running", "restarting", "dead"
ALIVE = (IDLE, RUNNING)
RETRY_EVENT = "retry"  # {"attempt", "worker", "reason", "message"}: the job runs again after a lost worker
SPLIT_EVENT = "split"  # {"workers", "views", "message"}: the job runs over several workers
SHARE_GRACE_SECONDS = 10.0  # a split job's worker still running this long after the job ended is stuck
MAX_ATTEMPTS = 3  # runs of one job on workers that were lost before it fails
ACTOR_THREADS = 6  # a job (and the next one waiting for it), its event drain, a cancel, a ping
EVENT_WAIT_SECONDS = 0.25  # the long poll of a job's events
CALL_TIMEOUT_SECONDS = 30.0  # a call that has not answered by then is asked again (the loop checks for a stop)
PING_SECONDS = 1.0
MONITOR_SECONDS = 0.2
START_WAIT_SECONDS = 300.0  # start() waits this long for the workers' first models...
START_GRACE_SECONDS = 30.0  # ...and this long for the others once one is ready
RESPAWN_BACKOFF_SECONDS = (2.0, 60.0)  # after an actor whose start failed
RESOURCE_NAMES = {"num_cpus": "CPU", "num_gpus": "GPU"}  # actor options -> Ray's resource names


def worker_plan(settings: Settings, cluster: dict, nodes: list[dict]) -> tuple[int, dict, int]:
    """How many workers and what each takes -> (count, actor options, torch threads).

    With GPUs in the cluster (and a device other than ``cpu``): one worker per GPU
    (``num_gpus=1``; torch's own threads).
    Without: one per ``ray_threads`` CPUs, at least one, each taking that many CPUs (no more
    than the largest node has, nor than the cluster has for each of ``ray_workers``)."""
    gpus = int(cluster.get("GPU", 0)) if settings.device != "cpu" else 0
    if gpus:
        return settings.ray_workers or gpus, {"num_gpus": 1, "num_cpus": 1}, 0
    cpus = max(1, int(cluster.get("CPU", 1)))
    largest = max((int(node.get("Resources", {}).get("CPU", 0)) for node in nodes if node.get("Alive")),
                  default=cpus)
    threads = max(1, min(settings.ray_threads, largest or cpus))
    count = settings.ray_workers or max(1, cpus // threads)
    threads = max(1, min(threads, cpus // count))
    return count, {"num_cpus": threads, "num_gpus": 0}, threads


@dataclass
class Slot:
    """One place of the pool and the actor in it now (a lost actor is replaced in its slot)."""

    id: str  # w0, w1, ...
    resources: dict
    actor: object = None
    state: str = STARTING
    job: Job | None = None
    node: str | None = None  # its node's address
    node_id: str | None = None  # Ray's id of its node (several nodes may share an address)
    seen: float | None = None  # monotonic time of its last answer
    models: list[str] = field(default_factory=list)
    restarts: int = 0
    error: str | None = None  # why its last actor was lost or could not start
    ready_ref: object = None
    ping_ref: object = None
    pinged: float = 0.0
    respawn_at: float = 0.0
    failed_starts: int = 0

    def describe(self, now: float) -> dict:
        return {"id": self.id, "node": self.node, "node_id": self.node_id, "resources": self.resources,
                "state": self.state,
                "job": self.job.id if self.job is not None else None,
                "last_seen_seconds": round(now - self.seen, 3) if self.seen is not None else None,
                "models": list(self.models), "restarts": self.restarts, "error": self.error}


@dataclass
class Running:
    job: Job
    slots: list[Slot]  # the first is the one whose events and files are the job's
    actors: list
    sent: bool = False  # the actors have the job
    cancel_sent: bool = False


class WorkerLost(Exception):
    """A worker of a running job was lost (its RayActorError as the cause)."""

    def __init__(self, slot: Slot, actor, error: BaseException):
        super().__init__(short_reason(error))
        self.slot, self.actor, self.error = slot, actor, error


class ShareFailed(Exception):
    """A worker of a split job (not its first) failed its share: the job fails with its reason."""


class RayWorkerPool:
    """Runs queued jobs on Ray actors; the embedded Worker's interface (start, stop, health).

    ``default``: the default model's entry, which every actor loads when it starts."""

    def __init__(self, store: JobStore, models: ModelCache, registry: ModelRegistry, settings: Settings,
                 default: ModelEntry):
        self.store = store
        self.models = models  # the server's own (the checks at submission), not the workers'
        self.registry = registry
        self.settings = settings
        self.default = default
        self.restarts = 0
        self._lock = threading.Condition()  # guards the slots, the retry queue and the running jobs
        self._slots: list[Slot] = []
        self._retry: deque[tuple[Job, int]] = deque()  # (job, workers lost under it so far)
        self._running: dict[str, Running] = {}
        self._followers: set[threading.Thread] = set()
        self._stopping = threading.Event()
        self._intake = JobIntake(self._stopping)  # its ``deferred``: why the next job cannot start now
        self._owns_ray = False
        self._actor_class = None
        self._threads = 0
        self._dispatcher = threading.Thread(target=self._dispatch, name="zs-ray-dispatcher", daemon=True)
        self._monitor = threading.Thread(target=self._watch, name="zs-ray-monitor", daemon=True)

    # ------------------------------------------------------------ start, stop

    def start(self) -> None:
        """Connect to the cluster (``settings.ray``: "auto" is ``ray.init()``, else an address;
        an already connected process keeps its connection), start the workers and wait until
        they have loaded the default model (see START_WAIT_SECONDS)."""
        if not ray.is_initialized():
            ray.init(address=None if self.settings.ray == "auto" else self.settings.ray)
            self._owns_ray = True
        count, options, self._threads = worker_plan(self.settings, ray.cluster_resources(), ray.nodes())
        self._actor_class = ray.remote(JobActor).options(max_concurrency=ACTOR_THREADS, max_restarts=0, **options)
        resources = {RESOURCE_NAMES[name]: amount for name, amount in options.items() if amount}
        log.info("Ray cluster %s: starting %d worker(s), each %s", ray.get_runtime_context().gcs_address, count,
                 resources)
        with self._lock:
            self._slots = [Slot(f"w{index}", resources) for index in range(count)]
            for slot in self._slots:
                self._spawn_locked(slot)
            pending = [slot.ready_ref for slot in self._slots]
        # All of them, as the embedded server loads its model before it serves; but not for
        # long after the first: the rest may wait for resources the cluster does not have.
        deadline = time.monotonic() + START_WAIT_SECONDS
        while pending and (left := deadline - time.monotonic()) > 0:
            done, pending = ray.wait(pending, num_returns=1, timeout=left)
            if done:
                deadline = min(deadline, time.monotonic() + START_GRACE_SECONDS)
        self._check_ready()
        with self._lock:
            states = [slot.state for slot in self._slots]
        if IDLE not in states:
            log.error("no Ray worker is ready after %.0f s (%s); jobs wait for one", START_WAIT_SECONDS, states)
        self.store.add_listener(self._on_change)
        self._dispatcher.start()
        self._monitor.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking jobs and kill the actors. A running job keeps its ``running`` status
        on disk, so the next start marks it failed with "server restarted"."""
        self._stopping.set()
        self.store.wake()
        with self._lock:
            self._lock.notify_all()
        for thread in (self._dispatcher, self._monitor):
            if thread.is_alive():
                thread.join(timeout)
        with self._lock:
            actors = [slot.actor for slot in self._slots if slot.actor is not None]
            followers = list(self._followers)
        for actor in actors:
            _kill(actor)
        for thread in followers:
            thread.join(timeout)
        if self._owns_ray:
            ray.shutdown()

    # ------------------------------------------------------------ health

    def health(self) -> dict:
        """``{"status", "reasons", "worker", "workers"}``: ``workers`` one entry a worker (id,
        node, resources, state: starting / idle / running / restarting / dead, the job it
        runs, last_seen_seconds, its models, restarts, error); degraded when no worker is
        alive, or the store's disk lags as for the embedded worker."""
        now = time.monotonic()
        with self._lock:
            workers = [slot.describe(now) for slot in self._slots]
        alive = [worker for worker in workers if worker["state"] in ALIVE]
        reasons = []
        if not alive and not self._stopping.is_set():
            states = ", ".join(f"{worker['id']} {worker['state']}" + (f" ({worker['error']})" if worker["error"] else "")
                               for worker in workers) or "none started"
            reasons.append(f"no Ray worker is alive ({states}); jobs wait for one")
        if self._intake.deferred:
            reasons.append(self._intake.deferred)
        reasons += store_reasons(self.store, reasons, self._intake.deferred)
        seen = [worker["last_seen_seconds"] for worker in alive if worker["last_seen_seconds"] is not None]
        jobs = [worker["job"] for worker in workers if worker["job"] is not None]
        return {"status": "degraded" if reasons else "ok", "reasons": reasons,
                "worker": {"alive": bool(alive), "last_seen_seconds": min(seen) if seen else None,
                           "job": jobs[0] if jobs else None, "restarts": self.restarts},
                "workers": workers}

    # ------------------------------------------------------------ actors

    def _spawn_locked(self, slot: Slot) -> None:
        """A new actor in ``slot`` (its default model loads in the actor: ready_ref answers then)."""
        slot.actor = self._actor_class.remote(self.settings, self.default, self._threads)
        slot.ready_ref = slot.actor.ready.remote()
        slot.ping_ref, slot.job = None, None

    def _check_ready(self) -> None:
        """Slots whose new actor answered ``ready`` become idle; one whose start failed waits
        to be started again."""
        with self._lock:
            pending = {slot.ready_ref: slot for slot in self._slots if slot.ready_ref is not None}
        if not pending:
            return
        done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
        for ref in done:
            slot = pending[ref]
            try:
                info = ray.get(ref)
            except Exception as exc:  # RayActorError: its __init__ failed (model load) or it was lost
                with self._lock:
                    if slot.ready_ref is not ref:
                        continue
                    slot.failed_starts += 1
                    wait = min(RESPAWN_BACKOFF_SECONDS[0] * 2 ** (slot.failed_starts - 1), RESPAWN_BACKOFF_SECONDS[1])
                    slot.state, slot.error, slot.ready_ref = DEAD, short_reason(exc), None
                    slot.respawn_at = time.monotonic() + wait
                log.error("Ray worker %s could not start (%s); trying again in %.0f s", slot.id, slot.error, wait)
                continue
            with self._lock:
                if slot.ready_ref is not ref:
                    continue
                slot.state, slot.ready_ref, slot.failed_starts = IDLE, None, 0
                slot.node, slot.node_id = info["node"], info["node_id"]
                slot.models, slot.seen = info["models"], time.monotonic()
                self._lock.notify_all()
            log.info("Ray worker %s ready on %s (pid %s, %s)", slot.id, info["node"], info["pid"], info["device"])

    def _lost(self, slot: Slot, actor, exc: BaseException) -> None:
        """The actor of ``slot`` died: a new one takes its place (once, whoever notices first)."""
        with self._lock:
            if slot.actor is not actor or self._stopping.is_set():
                return
            slot.state, slot.error = RESTARTING, short_reason(exc)
            slot.restarts += 1
            self.restarts += 1
            self._spawn_locked(slot)
        log.error("Ray worker %s was lost (%s); starting a new one", slot.id, slot.error)
        _kill(actor)  # in case it lives on unreachable

    def _watch(self) -> None:
        """The monitor: actors that became ready, pings (last seen; a dead idle actor is
        found here), actors to start again."""
        while not self._stopping.wait(MONITOR_SECONDS):
            try:
                self._check_ready()
                self._check_pings()
            except Exception:  # the monitor must not end
                log.exception("watching the Ray workers failed")

    def _check_pings(self) -> None:
        now = time.monotonic()
        with self._lock:
            for slot in self._slots:
                if slot.state == DEAD and now >= slot.respawn_at:
                    slot.state = RESTARTING
                    self._spawn_locked(slot)
                elif slot.state in ALIVE and slot.ping_ref is None and now - slot.pinged >= PING_SECONDS:
                    slot.ping_ref, slot.pinged = slot.actor.ping.remote(), now
            pending = {slot.ping_ref: (slot, slot.actor) for slot in self._slots if slot.ping_ref is not None}
        if not pending:
            return
        done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
        for ref in done:
            slot, actor = pending[ref]
            try:
                info = ray.get(ref)
            except RayActorError as exc:
                self._lost(slot, actor, exc)
                continue
            except Exception:
                log.exception("pinging Ray worker %s failed", slot.id)
                info = None
            with self._lock:
                if slot.ping_ref is ref:
                    slot.ping_ref = None
                    if info is not None:
                        slot.seen, slot.models = time.monotonic(), info["models"]

    # ------------------------------------------------------------ dispatching

    def _dispatch(self) -> None:
        while not self._stopping.is_set():
            slot = self._idle_slot(IDLE_TICK_SECONDS)
            if slot is None:
                continue
            taken = self._intake.take(self._next_job)
            if taken is not None and taken[0] is not None:
                self._begin(*taken)

    def _idle_slot(self, timeout: float) -> Slot | None:
        with self._lock:
            slot = next((slot for slot in self._slots if slot.state == IDLE), None)
            if slot is None and not self._stopping.is_set():
                self._lock.wait(timeout)
                slot = next((slot for slot in self._slots if slot.state == IDLE), None)
            return slot

    def _next_job(self) -> tuple[Job | None, int]:
        """A job a lost worker held first, else the oldest queued one -> (job, attempts so far)."""
        with self._lock:
            if self._retry:
                return self._retry.popleft()
        self.store.flush()  # states the disk refused earlier
        return self.store.take_next(timeout=IDLE_TICK_SECONDS), 0

    def _workers_for(self, job: Job, share: tuple[int, int]) -> list[Slot]:
        """The idle workers ``job`` runs on: one, or as many as it can be split over
        (``share``: (most, fewest) workers, see :func:`split_share`; at most ``ray_split``)
        when no other job waits."""
        idle = [slot for slot in self._slots if slot.state == IDLE]
        most = min(len(idle), share[0], self.settings.ray_split or len(idle))
        if most < share[1] or (most > 1 and (self.store.queue_length() or self._retry)):
            most = 1  # too few to split, or others wait: a worker each serves them better
        return idle[:max(most, 1)]

    def _begin(self, job: Job, attempts: int) -> None:
        share = split_share(job) if self.settings.ray_split != 1 else (1, 1)
        with self._lock:
            slots = self._workers_for(job, share)
            if not slots:  # the idle worker was lost meanwhile: the job waits for the next one
                self._retry.appendleft((job, attempts))
                return
            actors = [slot.actor for slot in slots]
            for slot in slots:
                slot.state, slot.job = RUNNING, job
            self._running[job.id] = Running(job, slots, actors)
            follower = threading.Thread(target=self._follow, args=(slots, actors, job, attempts),
                                        name=f"zs-ray-job-{job.id}", daemon=True)
            self._followers.add(follower)
        follower.start()

    # ------------------------------------------------------------ one job

    def _follow(self, slots: list[Slot], actors: list, job: Job, attempts: int) -> None:
        """Run ``job`` on ``actors`` (one, or a split job's several) and bring its events and
        result into the store."""
        names = ", ".join(slot.id for slot in slots)
        log.info("job %s started on Ray worker%s %s%s", job.id, "s" if len(slots) > 1 else "", names,
                 f" (attempt {attempts + 1})" if attempts else "")
        started = time.perf_counter()
        pending: dict = {}  # a split job's run_job calls not returned yet: ref -> (slot, actor)
        try:
            outcome = self._run_on(slots, actors, job, pending)
            if outcome is not None:
                with self._lock:
                    if slots[0].actor is actors[0]:
                        slots[0].models = outcome["models"]
                self._finish(job, outcome, started)
        except WorkerLost as lost:
            if not self._stopping.is_set():
                self._lost(lost.slot, lost.actor, lost.error)
                self._replace_stuck(pending, exclude=lost.actor, grace=0.0,
                                    why=f"stopped with its split job when worker {lost.slot.id} was lost")
                self._again(job, attempts + 1, lost.slot, lost.error)
        except ShareFailed as failed:
            log.error("job %s failed: %s", job.id, failed)
            self._send_cancel(job.id)
            self.store.finish(job, FAILED, error=str(failed))
        except Exception as exc:  # the server's side of the job failed (its files, the disk): the job fails
            shutil.rmtree(job.folder / PARTIAL_OUTPUT_DIR, ignore_errors=True)
            reason = failure_reason(job, exc)
            log.error("job %s failed: %s", job.id, reason, exc_info=durable.os_error_in(exc) is None)
            self._send_cancel(job.id)  # it may still run there
            self.store.finish(job, FAILED, error=reason)
        finally:
            if not self._stopping.is_set():
                # A split job's worker that has not returned once the job ended waits in a
                # collective for one that is gone: it is replaced.
                self._replace_stuck(pending, grace=SHARE_GRACE_SECONDS, why="stuck after its split job ended")
            with self._lock:
                self._running.pop(job.id, None)
                self._followers.discard(threading.current_thread())
                for slot, actor in zip(slots, actors):
                    if slot.actor is actor and slot.state == RUNNING:
                        slot.state, slot.job = IDLE, None
                self._lock.notify_all()
        if not self._stopping.is_set():
            prune_jobs(self.store, self.settings)

    def _run_on(self, slots: list[Slot], actors: list, job: Job, pending: dict) -> dict | None:
        """Send the job, drain its (first worker's) events until it ends -> the first
        worker's outcome (None: the server is stopping). WorkerLost when a worker is lost,
        ShareFailed when a split job's other worker fails."""
        job.preloaded = None  # the actor decodes the bytes itself
        request_json = (job.folder / REQUEST_FILE).read_bytes()
        passes_npz = (job.folder / PASSES_FILE).read_bytes()
        resolved = self.registry.resolve(Request.from_json(request_json))  # the list may have changed meanwhile
        lead, actor = slots[0], actors[0]
        if len(actors) == 1:
            result = actor.run_job.remote(job.id, request_json, passes_npz, resolved)
        else:
            host, port = self._get(lead, actor, actor.open_split.remote(job.id, len(actors)))
            refs = [member.run_job.remote(job.id, request_json, passes_npz, resolved,
                                          {"rank": rank, "size": len(actors), "host": host, "port": port})
                    for rank, member in enumerate(actors)]
            result = refs[0]
            pending.update({ref: (slot, member) for ref, slot, member in zip(refs, slots, actors)})
            names = [slot.id for slot in slots]
            self.store.log_event(job, SPLIT_EVENT, {
                "workers": names, "message": f"split over {len(names)} workers ({', '.join(names)})"})
        with self._lock:
            self._running[job.id].sent = True
        if job.cancel_flag.is_set():  # cancelled before the listener could send it
            self._send_cancel(job.id)
        while not self._stopping.is_set():
            try:
                items, ended = self._get(lead, actor, actor.events.remote(job.id, EVENT_WAIT_SECONDS))
            except GetTimeoutError:
                continue
            lead.seen = time.monotonic()
            for kind, payload in items:
                if kind == PROGRESS:
                    self.store.progress(job, *payload)
                elif kind == EVENT:
                    self.store.log_event(job, *payload)
            self._check_shares(pending, result, timeout=0)
            if ended:
                outcome = self._get(lead, actor, result)
                pending.pop(result, None)
                if outcome["state"] == DONE:  # the others handed their views over before it baked
                    self._check_shares(pending, result, timeout=SHARE_GRACE_SECONDS)
                return outcome
        return None

    @staticmethod
    def _get(slot: Slot, actor, ref):
        """ray.get of one call of ``slot``'s ``actor``; its loss raises WorkerLost."""
        try:
            return ray.get(ref, timeout=CALL_TIMEOUT_SECONDS)
        except RayActorError as exc:
            raise WorkerLost(slot, actor, exc) from exc

    def _check_shares(self, pending: dict, lead, timeout: float) -> None:
        """The split job's other workers (not ``lead``, the first's call) that returned,
        waiting up to ``timeout`` for all: a lost one raises WorkerLost, a failed one
        ShareFailed."""
        others = [ref for ref in pending if ref != lead]
        if not others:
            return
        done, _ = ray.wait(others, num_returns=len(others), timeout=timeout)
        for ref in done:
            slot, actor = pending.pop(ref)
            outcome = self._get(slot, actor, ref)
            if outcome["state"] == FAILED:
                raise ShareFailed(f"worker {slot.id} of the split job: {outcome['error']}")

    def _replace_stuck(self, pending: dict, why: str, grace: float, exclude=None) -> None:
        """Replace the workers of ``pending`` that have not returned within ``grace`` s."""
        if not pending:
            return
        done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=grace)
        for ref, (slot, actor) in list(pending.items()):
            if ref not in done and actor is not exclude:
                self._lost(slot, actor, RuntimeError(why))
        pending.clear()

    def _finish(self, job: Job, outcome: dict, started: float) -> None:
        state = outcome["state"]
        if state == DONE:
            partial = job.folder / PARTIAL_OUTPUT_DIR
            shutil.rmtree(partial, ignore_errors=True)
            durable.make_dir(partial)
            for name, data in outcome["files"].items():
                target = partial / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)  # commit_tree syncs them
            durable.commit_tree(partial, job.folder / OUTPUT_DIR)
            log.info("job %s done in %.1f s", job.id, time.perf_counter() - started)
            self.store.finish(job, DONE, extra={"files": output_files(job), "metrics": outcome["metrics"],
                                                "result": f"/v1/jobs/{job.id}/result"})
        elif state == CANCELLED:
            log.info("job %s cancelled", job.id)
            self.store.finish(job, CANCELLED)
        else:
            log.error("job %s failed: %s", job.id, outcome["error"])
            self.store.finish(job, FAILED, error=outcome["error"])

    def _again(self, job: Job, attempts: int, slot: Slot, exc: BaseException) -> None:
        """After the worker under ``job`` was lost: run it again, or fail it after MAX_ATTEMPTS."""
        reason = short_reason(exc)
        if job.cancel_flag.is_set():
            self.store.finish(job, CANCELLED)
            return
        if attempts >= MAX_ATTEMPTS:
            self.store.finish(job, FAILED, error=f"its worker was lost {attempts} times; the last time: {reason}")
            return
        try:
            self.store.log_event(job, RETRY_EVENT, {
                "attempt": attempts + 1, "worker": slot.id, "reason": reason,
                "message": f"worker {slot.id} was lost while it ran the job ({reason}); "
                           f"the job runs again from the start on another worker"})
        except OSError:
            log.exception("job %s: logging its retry failed", job.id)
        with self._lock:
            self._retry.append((job, attempts))
            self._lock.notify_all()
        self.store.wake()  # the dispatcher may wait for a queued job

    # ------------------------------------------------------------ cancel

    def _on_change(self, job_id: str) -> None:
        """The store's listener: a cancel reaches the job's actor, or ends a job waiting to
        run again."""
        with self._lock:
            running = self._running.get(job_id)
            waiting = next((entry for entry in self._retry if entry[0].id == job_id), None)
            if waiting is not None and waiting[0].cancel_flag.is_set():
                self._retry.remove(waiting)
        if running is not None and running.job.cancel_flag.is_set():
            self._send_cancel(job_id)
        elif waiting is not None and waiting[0].cancel_flag.is_set():
            self.store.finish(waiting[0], CANCELLED)

    def _send_cancel(self, job_id: str) -> None:
        with self._lock:
            running = self._running.get(job_id)
            if running is None or not running.sent or running.cancel_sent:
                return
            running.cancel_sent = True
        for actor in running.actors:
            _call(actor.cancel, job_id)


def split_share(job: Job) -> tuple[int, int]:
    """(most, fewest) workers ``job`` can be split over, (1, 1) when it cannot
    (:func:`zs_core.distributed.check_split`), read from the job's files (the request and
    the passes' array headers): most is its main views or frames; an animation runs a
    worker's frames in one model call, so it needs enough workers for ``chunk`` frames
    each at most."""
    try:
        request = Request.from_json((job.folder / REQUEST_FILE).read_bytes())
        with NpzArchive(job.folder / PASSES_FILE) as archive:
            views = archive.headers["depth"].shape[0]
            flags = archive.array("completion") if "completion" in archive.headers else None
        if flags is not None:
            views -= int(flags.astype(bool).sum())
        distributed.check_split(request, _Headers(views))
        fewest = -(-views // request.chunk) if request.kind == "animation" else 2
        return max(views, 1), max(fewest, 2)
    except (ProtocolError, OSError, KeyError):  # not splittable; the worker reports a bad job
        return 1, 1


@dataclass
class _Headers:
    """What :func:`zs_core.distributed.check_split` reads of the passes, without them."""

    views: int
    completion: None = None


def short_reason(exc: BaseException, limit: int = 300) -> str:
    """A Ray error in one line: its first line and, when it has more, the first sentence of
    its last (the cause: "The actor is dead because it was killed by `ray.kill`.")."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    text = lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1].split('. ')[0].rstrip('.')}."
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _call(method, *args) -> None:
    """Fire and forget: an actor that is gone has nothing left to stop."""
    try:
        method.remote(*args)
    except Exception:
        log.debug("a call to a Ray worker failed", exc_info=True)


def _kill(actor) -> None:
    try:
        ray.kill(actor)
    except Exception:
        log.debug("killing a Ray worker failed", exc_info=True)
