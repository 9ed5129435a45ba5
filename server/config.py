"""Server settings: where to listen, where jobs live, which model, and the input limits.

Every field can be overridden from the environment as ``ZS_<FIELD>`` (e.g. ``ZS_PORT``,
``ZS_DATA_DIR``, ``ZS_MAX_STEPS``); command-line options of ``zs serve`` win over both.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
TOKEN_FILE = "token"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
SWITCHES = ("auto", "on", "off")


def default_data_dir() -> Path:
    """The per-user data folder of the platform (XDG on Linux)."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "zs-texturing"


@dataclass
class Settings:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    data_dir: Path = field(default_factory=default_data_dir)
    # None: read <data_dir>/token, creating it (mode 0600) on first start.
    token: str | None = None
    default_model: str = "tiny"  # for jobs that name no model
    controlnet: str | None = None  # the default model's depth ControlNet (None: found as for the others)
    device: str = "auto"
    # Loaded models are kept in an LRU up to this many bytes of weights (server/model_cache.py);
    # 0: from the device (CUDA: its memory less headroom for the jobs; CPU: half the RAM).
    model_memory_bytes: int = 0
    # The Hugging Face hub cache the model list scans ("": huggingface_hub's, HF_HUB_CACHE).
    hub_cache: str = ""
    # How models run (zs_core/memory.py): "auto" chooses from the device's memory per job.
    dtype: str = "auto"  # auto (fp16 on GPUs, fp32 on the CPU), fp32, fp16 or bf16
    offload: str = "auto"  # model CPU offload: auto, on or off
    vae_tiling: str = "auto"  # decode large views in tiles: auto, on or off

    # Limits on what one job may ask for; each violation is a 4xx naming the field.
    max_upload_bytes: int = 1024 ** 3
    max_unpacked_bytes: int = 4 * 1024 ** 3  # the .npz arrays once decompressed
    max_views: int = 64
    max_frames: int = 1024  # animation jobs: frames run in chunks, so far more than views
    max_resolution: int = 2048  # largest view width or height, in pixels
    max_steps: int = 150
    max_texture_size: int = 4096
    max_request_bytes: int = 256 * 1024  # the request JSON part

    # Bounds shared by all uploads in flight (server/uploads.py); over them: 503 + Retry-After.
    max_uploads_bytes: int = 4 * 1024 ** 3  # bodies being received (spooled to disk), together
    max_uploads_memory_bytes: int = 4 * 1024 ** 3  # arrays being decoded and checked, together
    upload_wait_seconds: float = 30.0  # how long an upload waits for that memory before the 503
    # Host names answered besides the loopback names and --host (comma-separated; server/hosts.py).
    allowed_hosts: str = ""

    # Admission (server/admission.py): a submission over a cap is refused before its upload
    # is read, 429 (jobs) or 507 (bytes, disk space), with Retry-After.
    max_queued_jobs: int = 256  # queued jobs in total
    max_queued_jobs_per_client: int = 64  # per client: its address plus the X-ZS-Client header
    max_queued_bytes: int = 8 * 1024 ** 3  # the uploads of the queued jobs, on disk
    # Kept free on the data dir's disk: uploads that would leave less are refused (507), and
    # the next job waits to start until this much is free (its outputs need room).
    min_free_bytes: int = 128 * 1024 ** 2

    # Pruning of finished jobs (queued and running jobs are never pruned; neither is a job
    # finished less than prune_grace_seconds ago, or one being downloaded).
    job_max_age_seconds: float = 7 * 24 * 3600.0
    jobs_max_bytes: int = 20 * 1024 ** 3  # finished jobs' folders together
    prune_grace_seconds: float = 3600.0

    preview_max_side: int = 256  # SSE progress previews are downscaled to this
    recent_jobs: int = 100  # how many jobs GET /v1/jobs returns at most

    # Jobs on a pool of Ray workers (server/ray_pool.py) instead of the embedded worker thread:
    # "" (the embedded worker), "auto" (ray.init(): the cluster `ray start` made on this
    # machine, else a new local one) or a cluster's address.
    ray: str = ""
    # Ray workers: 0 is one per GPU of the cluster, or without GPUs one per ray_threads CPUs.
    ray_workers: int = 0
    ray_threads: int = 4  # CPU threads (and Ray CPUs) of a worker on a cluster without GPUs
    # The most workers one texture job is split over (zs_core/distributed.py), when it is
    # the only job waiting and that many are idle: 0 is every idle worker; 1 never splits.
    ray_split: int = 0

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).expanduser()
        for name, allowed in (("dtype", ("auto", "fp32", "fp16", "bf16")), ("offload", SWITCHES),
                              ("vae_tiling", SWITCHES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: expected one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.ray_workers < 0 or self.ray_threads < 1 or self.ray_split < 0:
            raise ValueError(f"ray_workers and ray_split must be 0 or more and ray_threads 1 or more, got "
                             f"{self.ray_workers}, {self.ray_split} and {self.ray_threads}")

    def switch(self, name: str) -> bool | None:
        """A memory option as the memory plan takes it: None (auto), True or False."""
        return {"auto": None, "on": True, "off": False}[getattr(self, name)]

    @property
    def model_dtype(self) -> str | None:
        """The dtype models are loaded in (None: the device's default)."""
        return None if self.dtype == "auto" else self.dtype

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def models_dir(self) -> Path:
        """Models, and loras/, controlnets/, ip_adapters/ beside them (server/model_registry.py)."""
        return self.data_dir / "models"

    @property
    def is_loopback(self) -> bool:
        return self.host in LOOPBACK_HOSTS or self.host.startswith("127.")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides) -> "Settings":
        """Defaults, then ``ZS_*`` variables, then ``overrides`` (None values are ignored)."""
        environ = os.environ if environ is None else environ
        values: dict = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(f"ZS_{f.name.upper()}")
            if raw is not None:
                values[f.name] = _parse(f.name, f.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def resolve_token(self) -> str:
        """The bearer token: the configured one, or the token file (created when missing)."""
        if self.token:
            return self.token
        return ensure_token_file(self.data_dir / TOKEN_FILE)


def _parse(name: str, annotation: str, raw: str):
    try:
        if annotation == "int":
            return int(raw)
        if annotation == "float":
            return float(raw)
    except ValueError:
        raise ValueError(f"ZS_{name.upper()}: expected a number, got {raw!r}") from None
    return raw


def ensure_token_file(path: Path) -> str:
    """Read the token at ``path``; create a random one (owner-only, 0600) if there is none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: two servers starting at once cannot both write a token.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        token = path.read_text().strip()
        if token:
            if os.name == "posix" and path.stat().st_mode & 0o077:
                os.chmod(path, 0o600)  # never leave a readable token behind
            return token
        path.unlink()
        return ensure_token_file(path)
    # Hex, not urlsafe base64: a token starting with "-" would read as an option in
    # `--token TOKEN` on any command line.
    token = secrets.token_hex(32)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token
