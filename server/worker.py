"""The one worker thread: takes jobs in FIFO order and runs them on the loaded model.

A job is read back from its folder, sampled with :func:`zs_core.run.run_job` into
``out.partial/`` and renamed to ``out/`` only when complete. Every sampler step becomes a
``progress`` event with a small PNG preview. Any exception inside the sampler (out of
memory, a bug, bad data that slipped through) fails that job with the reason and the
worker carries on with the next one.
"""

from __future__ import annotations

import base64
import gc
import io
import logging
import shutil
import threading
import time

from PIL import Image

from zs_core import run, sampler
from zs_core.protocol import Passes, Request

from .config import Settings
from .jobs import CANCELLED, DONE, FAILED, OUTPUT_DIR, PARTIAL_OUTPUT_DIR, PASSES_FILE, REQUEST_FILE, Job, JobStore

log = logging.getLogger("zs.server")


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


class Worker:
    """Runs queued jobs one after another on ``components`` in a background thread."""

    def __init__(self, store: JobStore, components, settings: Settings):
        self.store = store
        self.components = components
        self.settings = settings
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="zs-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking jobs and interrupt the running one before its next step. The
        interrupted job keeps its ``running`` status on disk, so the next start marks it
        failed with "server restarted" (the same outcome as a crash)."""
        self._stopping.set()
        self.store.wake()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            job = self.store.take_next(timeout=0.5)
            if job is None:
                continue
            self._execute(job)
            if not self._stopping.is_set():
                self._prune()

    def _prune(self) -> None:
        try:
            removed = self.store.prune(self.settings.job_max_age_seconds, self.settings.jobs_max_bytes)
            if removed:
                log.info("pruned %d old job(s)", len(removed))
        except OSError:
            log.exception("pruning old jobs failed")

    def _execute(self, job: Job) -> None:
        partial = job.folder / PARTIAL_OUTPUT_DIR
        started = time.perf_counter()
        max_side = self.settings.preview_max_side

        def on_progress(progress: sampler.StepProgress) -> None:
            elapsed = time.perf_counter() - started
            eta = round(elapsed / progress.step * (progress.total - progress.step), 2)
            self.store.progress(job, progress.step, progress.total, eta, encode_preview(progress.preview, max_side))

        def should_stop() -> bool:
            return job.cancel_flag.is_set() or self._stopping.is_set()

        log.info("job %s started", job.id)
        try:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir()
            if job.preloaded is not None:
                (request, passes), job.preloaded = job.preloaded, None
            else:
                request = Request.from_json((job.folder / REQUEST_FILE).read_bytes())
                passes = Passes.load(job.folder / PASSES_FILE)
            metrics = run.run_job(self.components, request, passes, partial, progress=on_progress,
                                  cancel=should_stop)
            partial.rename(job.folder / OUTPUT_DIR)
        except sampler.Cancelled:
            shutil.rmtree(partial, ignore_errors=True)
            if self._stopping.is_set() and not job.cancel_flag.is_set():
                log.info("job %s interrupted by shutdown", job.id)
                return  # left "running" on disk on purpose: see stop()
            log.info("job %s cancelled", job.id)
            self.store.finish(job, CANCELLED)
        except Exception as exc:  # anything the sampler throws fails this job, not the server
            shutil.rmtree(partial, ignore_errors=True)
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            log.exception("job %s failed", job.id)
            self.store.finish(job, FAILED, error=reason)
            gc.collect()  # e.g. after running out of memory: free what the failed run held
        else:
            log.info("job %s done in %.1f s", job.id, time.perf_counter() - started)
            self.store.finish(job, DONE, extra={"files": output_files(job), "metrics": metrics,
                                                "result": f"/v1/jobs/{job.id}/result"})
