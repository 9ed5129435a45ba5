"""``zs farm BATCH.toml``: many texture / animation jobs on a ZS server, resumable.

A batch is a TOML file: ``[defaults]`` (any parameter of the table,
:data:`zs_core.protocol.PARAMETERS`, and ``kind``) and a list of ``[[job]]`` tables::

    [defaults]
    steps = 20
    [[job]]
    name = "statue"             # the output folder OUT/statue/ (default: the source's name)
    source = "statue.blend"     # a .blend, or a passes bundle (.npz); relative to the batch file
    objects = ["Statue"]        # .blend textures: the objects (animations: frames, camera, objects)
    prompt = "weathered bronze"

A key of ``[defaults]`` that a job's kind (or a bundle, for capture settings) does not take
is skipped for that job; the same key in the job itself is an error naming the job and
the key. Jobs run through a ZS server: ``--server URL``, or one started in this process on
a free 127.0.0.1 port (by default on Ray workers, ``zs serve --ray``'s machinery). The
passes of a .blend are rendered in a Ray task that asks for the ``bpy`` resource (a local
cluster the farm starts declares it where ``bpy`` imports; on a ``ray start`` cluster give
``--resources='{"bpy": N}'`` to the nodes that have Blender's module), else in this process.

Resumable: OUT/<name>/ holds the job's results and ``.farm.json`` with the hash of its
inputs and settings; a job whose ``metrics.json`` exists and whose hash matches is skipped.
A failed job is reported and the others go on (exit code 1).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import shutil
import sys
import tempfile
import threading
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from zs_core.protocol import (ANIMATION, JOB_KINDS, LIST_SEPARATOR, METRICS_JSON, PARAMETERS, TEXTURE, Passes,
                              ProtocolError, Request, defaults, parse_frame_range)

FARM_JSON = ".farm.json"
PASSES_NPZ = "passes.npz"  # the bundle of a .blend job, kept beside its results
REQUEST_JSON = "request.json"
JOB_KEYS = ("name", "source", "kind", "objects", "frames", "camera")  # a job's keys besides the parameters
BLEND_KEYS = ("objects", "frames", "camera")
BPY_RESOURCE = "bpy"  # the Ray resource of nodes whose workers can import Blender's module
HASH_VERSION = 1  # bump when what a job's output depends on changes meaning
START_SECONDS = 600.0  # the in-process server's start (Ray workers load their models first)


@dataclass
class FarmJob:
    """One job of a batch, checked: ``values`` holds every parameter its kind (and source) takes."""

    name: str
    source: Path
    kind: str
    values: dict
    given: frozenset  # the parameter names the batch set (the others are the table's defaults)
    objects: list[str] | None = None
    frames: tuple[int, int] | None = None
    camera: str | None = None
    digest: str = field(default="", compare=False)

    @property
    def blend(self) -> bool:
        return self.source.suffix == ".blend"


# ----------------------------------------------------------------------------- the batch file


def load_batch(path: Path) -> list[FarmJob]:
    """Read and check ``path`` -> its jobs; ValueError names the job and the key at fault."""
    path = Path(path)
    try:
        document = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    unknown = set(document) - {"defaults", "job"}
    if unknown:
        raise ValueError(f"{path}: unknown table {sorted(unknown)[0]!r}; expected [defaults] and [[job]]")
    shared = document.get("defaults", {})
    tables = document.get("job", [])
    if not isinstance(shared, dict) or not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ValueError(f"{path}: expected a [defaults] table and a list of [[job]] tables")
    for key in ("name", "source"):
        if key in shared:
            raise ValueError(f"defaults: {key!r} belongs to each job")
    for key in shared:
        if key not in JOB_KEYS and key not in PARAMETERS:
            raise ValueError(f"defaults: unknown key {key!r}")
    if not tables:
        raise ValueError(f"{path}: no [[job]] in the batch")
    jobs, names = [], set()
    for index, table in enumerate(tables):
        job = _job(index, table, shared, path.parent)
        if job.name in names:
            raise ValueError(f"job {job.name!r}: the name is used twice; give each job its own name")
        names.add(job.name)
        jobs.append(job)
    return jobs


def _job(index: int, table: dict, shared: dict, folder: Path) -> FarmJob:
    label = repr(table.get("name") or f"#{index + 1}")
    if "source" not in table:
        raise ValueError(f"job {label}: 'source' is missing (a .blend or a passes bundle .npz)")
    source = (folder / str(table["source"])).resolve()
    name = str(table.get("name") or source.stem)
    label = repr(name)
    if not name or name.startswith(".") or "/" in name or "\\" in name:
        raise ValueError(f"job {label}: name: a folder name without slashes that does not start with '.'")
    if source.suffix not in (".blend", ".npz"):
        raise ValueError(f"job {label}: source: expected a .blend file or a passes bundle (.npz), got {source.name!r}")
    if not source.is_file():
        raise ValueError(f"job {label}: source: {source} does not exist")
    kind = table.get("kind") or shared.get("kind") or _bundle_kind(source)
    if kind not in JOB_KINDS:
        raise ValueError(f"job {label}: kind: expected one of {', '.join(JOB_KINDS)}, got {kind!r}")
    blend = source.suffix == ".blend"
    values, given = defaults(kind, wire=None if blend else True), set()
    for key, value in {**shared, **table}.items():
        own = key in table  # a default that does not apply to this job is skipped
        if key in JOB_KEYS:
            if key in BLEND_KEYS and not blend and own:
                raise ValueError(f"job {label}: {key}: only for .blend sources")
            continue
        parameter = PARAMETERS.get(key)
        if parameter is None:
            raise ValueError(f"job {label}: unknown key {key!r}")
        if kind not in parameter.modes or (not parameter.wire and not blend):
            if own:
                where = f"{kind} jobs" if kind not in parameter.modes else "passes bundles (a capture setting)"
                raise ValueError(f"job {label}: {key}: not taken by {where}")
            continue
        if parameter.repeatable and isinstance(value, list):
            value = LIST_SEPARATOR.join(str(item) for item in value)
        try:
            values[key] = parameter.check(value, kind)
        except ProtocolError as exc:
            raise ValueError(f"job {label}: {exc}") from None
        given.add(key)
    objects = table.get("objects", shared.get("objects") if blend else None)
    if isinstance(objects, str):
        objects = [objects]
    if blend and kind == TEXTURE and not objects:
        raise ValueError(f"job {label}: objects: name the objects to texture")
    frames = table.get("frames", shared.get("frames") if blend else None)
    if frames is not None:
        if kind != ANIMATION:
            raise ValueError(f"job {label}: frames: only for animation jobs")
        try:
            frames = parse_frame_range(frames) if isinstance(frames, str) else tuple(int(f) for f in frames)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"job {label}: frames: {exc}") from None
    camera = table.get("camera", shared.get("camera") if blend else None)
    job = FarmJob(name, source, kind, values, frozenset(given), list(objects) if objects else None, frames,
                  camera)
    job.digest = job_digest(job)
    return job


def _bundle_kind(source: Path) -> str:
    """The kind of a bundle from the request.json written beside it (``--passes-only``), else texture."""
    request = source.with_name(REQUEST_JSON)
    if source.suffix == ".npz" and request.is_file():
        with contextlib.suppress(ValueError, OSError):
            return json.loads(request.read_text()).get("kind", TEXTURE)
    return TEXTURE


def job_digest(job: FarmJob) -> str:
    """The hash of everything a job's output depends on: its source's bytes and its settings."""
    content = hashlib.sha256()
    with open(job.source, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            content.update(chunk)
    described = {"version": HASH_VERSION, "kind": job.kind, "source": content.hexdigest(), "values": job.values,
                 "objects": job.objects, "frames": job.frames, "camera": job.camera}
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


def finished(job: FarmJob, out: Path) -> bool:
    """Whether OUT/<name>/ holds this job's results for the same inputs and settings."""
    folder = out / job.name
    try:
        recorded = json.loads((folder / FARM_JSON).read_text())
    except (OSError, ValueError):
        return False
    return (folder / METRICS_JSON).is_file() and recorded.get("hash") == job.digest


# ----------------------------------------------------------------------------- the passes of a .blend


def render_passes(blend_name: str, blend_bytes: bytes, kind: str, values: dict, objects, frames,
                  camera) -> tuple[bytes, str]:
    """Render a .blend's passes (``blender_addon.batch``'s passes-only path) -> (passes .npz
    bytes, request JSON). The file travels as bytes (no shared file system): external
    files it uses must be packed into it."""
    from blender_addon import batch

    with tempfile.TemporaryDirectory(prefix="zs-farm-") as scratch:
        source, out = Path(scratch) / blend_name, Path(scratch) / "out"
        source.write_bytes(blend_bytes)
        if kind == TEXTURE:
            batch.texture_blend(source, out, objects, values, passes_only=True)
        else:
            batch.animate_blend(source, out, values, camera=camera, frames=frames, objects=objects, passes_only=True)
        return (out / batch.PASSES_NPZ).read_bytes(), (out / batch.REQUEST_JSON).read_text()


class PassRenderer:
    """Renders .blend jobs' passes: in Ray tasks on nodes with the ``bpy`` resource when this
    process is connected to a cluster that has one, else here, on the main thread only
    (bpy crashes on others; :func:`farm` sees to it)."""

    def __init__(self):
        self._remote = None
        with contextlib.suppress(ImportError):
            import ray

            if ray.is_initialized() and ray.cluster_resources().get(BPY_RESOURCE, 0) > 0:
                # No CPUs asked: the sampling workers may hold them all; the bpy resource alone
                # bounds the renders at once on a node.
                self._remote = ray.remote(num_cpus=0, resources={BPY_RESOURCE: 1}, max_retries=1)(render_passes)

    @property
    def remote(self) -> bool:
        return self._remote is not None

    @property
    def where(self) -> str:
        return "Ray workers" if self._remote is not None else "this process"

    def __call__(self, job: FarmJob, log_folder: Path) -> tuple[bytes, str]:
        arguments = (job.source.name, job.source.read_bytes(), job.kind, job.values, job.objects, job.frames,
                     job.camera)
        if self._remote is not None:
            import ray
            from ray.exceptions import RayTaskError

            try:
                return ray.get(self._remote.remote(*arguments))
            except RayTaskError as exc:  # the render's own error (e.g. a missing object), not Ray's wrapping
                cause = getattr(exc, "cause", None)
                raise cause if isinstance(cause, Exception) else exc from None
        from . import blender

        blender.batch()  # a ValueError saying how to install bpy when it is missing
        with blender.log_to(log_folder):
            return render_passes(*arguments)


# ----------------------------------------------------------------------------- the server


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _connect_ray(address: str, create: bool = True) -> bool:
    """Connect this process to Ray (``auto``: the cluster ``ray start`` made, else, with
    ``create``, a new local one that declares one ``bpy`` resource, one render at a time,
    where Blender's module imports) -> whether the farm connected (and so disconnects)."""
    import ray

    from .blender import bpy_available

    if ray.is_initialized():
        return False
    if address != "auto":
        ray.init(address=address, log_to_driver=False)
        return True
    try:
        ray.init(address="auto", log_to_driver=False)
    except ConnectionError:
        if not create:
            return False
        resources = {BPY_RESOURCE: 1} if bpy_available() else {}
        ray.init(address="local", resources=resources, include_dashboard=False, log_to_driver=False)
    return True


@contextlib.contextmanager
def ray_connection(address: str, create: bool = True):
    """Connected to Ray meanwhile (see :func:`_connect_ray`; "off": not), disconnected after
    when the farm connected."""
    owns = _connect_ray(address, create) if address != "off" else False
    try:
        yield
    finally:
        if owns:
            import ray

            ray.shutdown()


@contextlib.contextmanager
def local_server(args, data_dir: Path):
    """A ZS server in this process on a free loopback port (uvicorn in a thread), its jobs on
    Ray workers unless ``--ray off`` -> (URL, token)."""
    import uvicorn

    from server.app import create_app
    from server.config import Settings

    use_ray = args.ray != "off"
    with ray_connection(args.ray):
        settings = Settings.from_env(host="127.0.0.1", port=_free_port(), data_dir=data_dir,
                                     default_model=args.default_model, device=args.device,
                                     ray="auto" if use_ray else "", ray_workers=args.ray_workers)
        app = create_app(settings)
        server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning",
                                               timeout_graceful_shutdown=1, lifespan="on"))
        thread = threading.Thread(target=server.run, name="zs-farm-server", daemon=True)
        thread.start()
        deadline = time.monotonic() + START_SECONDS
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the farm's server did not start (see the log lines above)")
            time.sleep(0.05)
        try:
            yield f"http://{settings.host}:{settings.port}", app.state.token
        finally:
            server.should_exit = True
            thread.join(30)


# ----------------------------------------------------------------------------- running


class Bars:
    """tqdm bars: the batch's jobs (position 0) and one per running job's steps below it."""

    def __init__(self, total: int):
        self._lock = threading.Lock()
        self._free = list(range(1, 64))
        self.overall = tqdm(total=total, desc="farm", unit="job", file=sys.stderr, position=0)

    def job(self, name: str, total: int) -> tqdm:
        with self._lock:
            position = self._free.pop(0)
        bar = tqdm(total=total, desc=name, unit="step", file=sys.stderr, position=position, leave=False)
        bar.zs_position = position
        return bar

    def release(self, bar: tqdm | None) -> None:
        if bar is None:
            return
        bar.close()
        with self._lock:
            self._free.insert(0, bar.zs_position)

    def close(self) -> None:
        self.overall.close()


def _partial(out: Path, job: FarmJob) -> Path:
    return out / f".{job.name}.partial"


def prepare(job: FarmJob, out: Path, render: PassRenderer) -> tuple[Path, dict, bytes]:
    """A job's hidden folder (its results land there first, moved into place whole), request
    and passes: a bundle's, or a .blend's rendered (kept beside the results)."""
    partial = _partial(out, job)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    if job.blend:
        npz, request_text = render(job, partial)
        (partial / PASSES_NPZ).write_bytes(npz)
        (partial / REQUEST_JSON).write_text(request_text)
        return partial, json.loads(request_text), npz
    wire = {name: value for name, value in job.values.items() if name in Request.__dataclass_fields__}
    if job.kind == TEXTURE and "texture_size" not in job.given:
        passes = Passes.load(job.source)
        if passes.texel_position is not None:  # the bundle's texel maps
            wire["texture_size"] = passes.texel_position.shape[0]
    return partial, Request(kind=job.kind, **wire).validate().to_dict(), job.source.read_bytes()


def sample(job: FarmJob, out: Path, prepared: tuple[Path, dict, bytes], client, bars: Bars) -> str:
    """Submit a prepared job, follow it and download its results into OUT/<name>/ -> the
    server's job id."""
    partial, request, npz = prepared
    job_id = client.submit(request, npz)
    bar = None
    try:
        for name, data in client.events(job_id):
            if name == "started" and bar is None:
                bar = bars.job(job.name, data.get("total") or request.get("steps"))
            elif name == "progress" and bar is not None:
                bar.update(data["step"] - bar.n)
            elif name in ("failed", "cancelled"):
                reason = data.get("error") or data.get("reason") or ""
                raise RuntimeError(f"the server's job {job_id} {name}" + (f": {reason}" if reason else ""))
    finally:
        bars.release(bar)
    client.download_result(job_id, partial)
    (partial / FARM_JSON).write_text(json.dumps({"hash": job.digest, "job_id": job_id, "source": str(job.source),
                                                 "kind": job.kind, "settings": job.values}, indent=2, default=str))
    final = out / job.name
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    return job_id


def farm(args) -> int:
    """``zs farm``: run the batch's unfinished jobs -> 0, or 1 when any failed."""
    batch_path = Path(args.batch)
    jobs = load_batch(batch_path)
    out = Path(args.out) if args.out else batch_path.with_suffix("")
    todo = [job for job in jobs if not finished(job, out)]
    for job in jobs:
        if job not in todo:
            print(f"zs farm: {job.name}: done before, settings unchanged: skipped", file=sys.stderr)
    if not todo:
        print(f"zs farm: all {len(jobs)} jobs done ({out})", file=sys.stderr)
        return 0
    out.mkdir(parents=True, exist_ok=True)
    from blender_addon.client import Client

    with contextlib.ExitStack() as stack:
        if args.server:
            from . import blender

            url, token = args.server, args.token or blender.local_token()
            if args.ray != "off" and importlib.util.find_spec("ray") is not None:
                # .blend passes on the cluster's bpy workers, if this machine is part of one.
                stack.enter_context(ray_connection(args.ray, create=False))
        else:
            if args.ray != "off" and importlib.util.find_spec("ray") is None:
                raise ValueError("--ray: Ray is not installed here; pip install 'zs-texturing[ray]', or --ray off")
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="zs-farm-server-")))
            url, token = stack.enter_context(local_server(args, data_dir))
        client = Client(url, token, timeout=30.0)
        render = PassRenderer()
        if any(job.blend for job in todo):
            print(f"zs farm: .blend passes render in {render.where}", file=sys.stderr)
        bars = Bars(len(todo))
        stack.callback(bars.close)
        failures = {}

        def failed(job: FarmJob, exc: Exception) -> None:
            shutil.rmtree(_partial(out, job), ignore_errors=True)
            failures[job.name] = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
            tqdm.write(f"zs farm: {job.name}: failed: {failures[job.name]}", file=sys.stderr)
            bars.overall.update(1)

        def one(job: FarmJob, prepared=None) -> None:
            try:
                sample(job, out, prepared or prepare(job, out, render), client, bars)
            except Exception as exc:  # one job's failure is reported; the others go on
                failed(job, exc)
                return
            bars.overall.update(1)

        here = [job for job in todo if job.blend and not render.remote]
        with ThreadPoolExecutor(max_workers=max(1, args.parallel), thread_name_prefix="zs-farm") as pool:
            for job in todo:
                if job not in here:
                    pool.submit(one, job)
            for job in here:  # bpy runs on the main thread only; the others sample meanwhile
                try:
                    prepared = prepare(job, out, render)
                except Exception as exc:
                    failed(job, exc)
                    continue
                pool.submit(one, job, prepared)
    skipped = len(jobs) - len(todo)
    print(f"zs farm: {len(todo) - len(failures)} done, {skipped} skipped, {len(failures)} failed ({out})",
          file=sys.stderr)
    return 1 if failures else 0
