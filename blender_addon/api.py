"""Python API for scripts: texture objects in one call.

    from blender_addon import api
    result = api.texture([bpy.data.objects["Suzanne"]],
                         settings=api.TextureSettings(prompt="old bronze", steps=20))
    result.materials, result.image, result.metrics

The flow: check everything (objects, UV maps, settings, the server) -> build an orbit
rig when no cameras are given -> render the passes (and texel maps) with Cycles ->
sample, either with an injected ``sampler`` callable (the ``zs`` CLI runs zs_core
in-process this way, so this module never imports torch) or on a ZS server over HTTP
-> apply the baked texture through new materials (:mod:`.apply`).

Imports: bpy, the standard library and numpy only.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import bpy

from . import apply, capture, passes, rig
from .capture import CaptureError
from .client import DEFAULT_URL, Client, ServerError
from .wire import Passes, Request

# sampler(request dict, passes, out_dir) -> metrics dict; writes the result layout
# (texture.png, views/NNNN.png, metrics.json ...) into out_dir.
Sampler = Callable[[dict, Passes, Path], dict]
# progress(event name, data): the server's events (queued, started, progress, done ...).
Progress = Callable[[str, dict], None]


@dataclass
class TextureSettings:
    """What to generate and how to capture it. Sampling fields map onto
    ``protocol.Request`` (``guidance`` -> ``guidance_scale``; ``extra`` may set any other
    Request field, e.g. ``{"control_end": 0.8}``); the rest drive the capture."""

    prompt: str = ""
    negative_prompt: str = "blurry, low quality"
    seed: int = 0
    steps: int = 20
    guidance: float = 7.5
    scheduler: str = "ddim"
    controlnet_scale: float = 1.0
    noise: str = "surface"
    attention: str = "extended"
    sync_strength: float = 1.0
    texture_size: int = 1024  # texels per side of the baked texture
    view_size: int = 512  # width and height of every view, a multiple of 8
    views: int = 6  # orbit rig cameras when no cameras are given
    elevation: float = 20.0  # orbit rig elevation, degrees
    uv_map: str | None = None  # None: each object's active render UV map
    smart_uv: bool = False  # objects without that UV map get a new Smart UV Project map
    extra: dict[str, Any] = field(default_factory=dict)

    _RENAMED = {"guidance": "guidance_scale"}
    _REQUEST_FIELDS = ("prompt", "negative_prompt", "seed", "steps", "guidance", "scheduler",
                       "controlnet_scale", "noise", "attention", "sync_strength", "texture_size")

    def request(self) -> Request:
        """The validated wire request (``ProtocolError`` names a bad field)."""
        fields = {self._RENAMED.get(name, name): getattr(self, name) for name in self._REQUEST_FIELDS}
        known = {f.name for f in dataclasses.fields(Request)}
        for name, value in self.extra.items():
            if name not in known or name == "kind":
                raise CaptureError(f"extra: {name!r} is not a request field")
            fields[name] = value
        return Request(kind="texture", **fields).validate()

    def check(self) -> Request:
        """Check the capture settings too -> the validated request."""
        for name, lowest, highest in (("view_size", 64, 4096), ("views", 1, 64)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value <= highest:
                raise CaptureError(f"{name}: expected an integer in [{lowest}, {highest}], got {value!r}")
        if self.view_size % 8:
            raise CaptureError(f"view_size: {self.view_size} is not a multiple of 8 (the model works on 8x8 blocks)")
        if not -89.0 <= self.elevation <= 89.0:
            raise CaptureError(f"elevation: {self.elevation} is outside [-89, 89] degrees")
        return self.request()


@dataclass
class TextureResult:
    """What :func:`texture` made: the new materials (one per object and source material),
    the new image, the baked texture PNG, the job's metrics, its output folder (views/,
    texture.png, metrics.json, contact_sheet.png), the cameras used and the server's job id."""

    materials: list
    image: Any
    texture_path: Path
    metrics: dict
    out_dir: Path
    cameras: list
    job_id: str | None = None


def texture(objects: Sequence, cameras: Sequence | None = None, settings: TextureSettings | None = None, *,
            server: str | None = None, token: str | None = None, sampler: Sampler | None = None,
            progress: Progress | None = None, out_dir=None, image_folder=None, name: str = "ZS Texture",
            scene=None, stop: threading.Event | None = None) -> TextureResult:
    """Texture ``objects`` (mesh objects or their names) seen by ``cameras`` (None: a new
    orbit rig of ``settings.views`` cameras) -> :class:`TextureResult`.

    Sampling runs in ``sampler`` when given, else on the server at ``server`` (default
    http://127.0.0.1:8765) with ``token``; ``progress(event, data)`` sees the server's
    events. ``out_dir`` keeps the job's outputs (default: a new temporary folder);
    ``image_folder`` is where the texture PNG goes (see :func:`apply.apply_texture`).
    Every check (objects, UV maps, cameras, settings, server and token) runs before the
    scene is changed; errors are :class:`CaptureError`, ``ProtocolError`` or
    :class:`ServerError` naming what is wrong.
    """
    settings = settings or TextureSettings()
    request = settings.check()
    scene = scene or bpy.context.scene
    objects = _resolve_objects(objects)
    for obj in objects:
        if obj.hide_render:
            raise CaptureError(f"object {obj.name!r} is disabled in renders; enable it to texture it")
        if not settings.smart_uv:
            capture.ensure_uv_map(obj, settings.uv_map, smart_project=False)  # raises, changes nothing
    if cameras is not None:
        cameras = list(cameras)
        if not cameras:
            raise CaptureError("no camera given: pass cameras, or None for an orbit rig")
        for camera in cameras:
            if getattr(camera, "type", None) != "CAMERA":
                raise CaptureError(f"{getattr(camera, 'name', camera)!r} is not a camera object")
    client = None
    if sampler is None:
        client = Client(server or DEFAULT_URL, token)
        client.health()
        client.models()  # needs the token: a wrong one fails here, before any change
    elif server is not None:
        raise CaptureError("give either a sampler or a server, not both")

    # From here on the scene changes: UV maps asked for, the rig, then the capture.
    uv_maps = {obj: capture.ensure_uv_map(obj, settings.uv_map, smart_project=settings.smart_uv)
               for obj in objects}
    if cameras is None:
        cameras = rig.build_orbit_rig(scene, objects, count=settings.views, elevation_deg=settings.elevation,
                                      width=settings.view_size, height=settings.view_size)
    captured = passes.render_passes(scene, cameras, objects, settings.view_size, settings.view_size,
                                    uv_map=settings.uv_map, texture_size=settings.texture_size)
    out_dir = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="zs-texture-"))
    out_dir.mkdir(parents=True, exist_ok=True)

    job_id = None
    if sampler is not None:
        metrics = sampler(request.to_dict(), captured, out_dir)
    else:
        job_id, metrics = _run_on_server(client, request, captured, out_dir, progress, stop)
    texture_path = out_dir / "texture.png"
    if not texture_path.is_file():
        raise CaptureError(f"the job wrote no texture.png into {out_dir}; nothing to apply")
    materials, image = apply.apply_texture(objects, texture_path, uv_maps, name=name, folder=image_folder)
    return TextureResult(materials=materials, image=image, texture_path=texture_path, metrics=dict(metrics or {}),
                         out_dir=out_dir, cameras=list(cameras), job_id=job_id)


def _resolve_objects(objects) -> list:
    if isinstance(objects, (str, bpy.types.Object)):
        objects = [objects]
    objects = list(objects or [])
    if not objects:
        raise CaptureError("no mesh object to texture: pass at least one")
    names = [obj for obj in objects if isinstance(obj, str)]
    found = {obj.name: obj for obj in capture.target_objects(names=names)} if names else {}
    resolved = [found[obj] if isinstance(obj, str) else obj for obj in objects]
    for obj in resolved:
        if obj.type != "MESH":
            raise CaptureError(f"object {obj.name!r} is a {obj.type.lower()}, not a mesh")
    return list({obj.as_pointer(): obj for obj in resolved}.values())


def _run_on_server(client: Client, request: Request, captured: Passes, out_dir: Path,
                   progress: Progress | None, stop: threading.Event | None) -> tuple[str, dict]:
    """Submit, follow the events to the end, download the result -> (job id, metrics).
    A failed or cancelled job, or ``stop`` / Ctrl+C while it runs (the job is then
    cancelled on the server), is a ServerError."""
    job_id = client.submit(request.to_dict(), captured.to_npz_bytes())
    final = None
    try:
        for name, data in client.events(job_id, stop=stop):
            if progress is not None:
                progress(name, data)
            final = (name, data)
    except BaseException:
        _cancel_quietly(client, job_id)
        raise
    if final is None or final[0] not in ("done", "failed", "cancelled"):
        _cancel_quietly(client, job_id)
        raise ServerError(f"stopped following job {job_id}; it was cancelled on the server")
    name, data = final
    if name == "failed":
        raise ServerError(f"job {job_id} failed on the server: {data.get('error', 'no reason given')}")
    if name == "cancelled":
        raise ServerError(f"job {job_id} was cancelled")
    client.download_result(job_id, out_dir)
    metrics_path = out_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else data.get("metrics", {})
    return job_id, metrics


def _cancel_quietly(client: Client, job_id: str) -> None:
    try:
        client.cancel(job_id)
    except ServerError:
        pass
