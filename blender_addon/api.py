"""Python API for scripts: texture objects, or re-style an animation, in one call.

    from blender_addon import api
    result = api.texture([bpy.data.objects["Suzanne"]],
                         settings=api.TextureSettings(prompt="old bronze", steps=20))
    result.materials, result.image, result.metrics

    shot = api.animate(None, ["Suzanne"], "1-48", api.AnimationSettings(prompt="old bronze"))
    shot.image, shot.strip, shot.frame_paths, shot.metrics["temporal_warp_error"]

The flow: check everything (objects, UV maps, cameras, frames, settings, the server) ->
render the passes with Cycles (texture: every camera, plus texel maps, with an orbit rig
when no cameras are given; animation: one camera over a frame range, with the vector
pass) -> sample, either with an injected ``sampler`` callable (the ``zs`` CLI runs zs_core
in-process this way, so this module never imports torch) or on a ZS server over HTTP ->
texture: apply the baked texture through new materials (:mod:`.apply`); animation: load
the frames as a new image sequence, shown as the camera's background and as a Video
Sequencer strip (:mod:`.animation`).

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

from . import animation, apply, capture, passes, rig
from .capture import CaptureError
from .client import DEFAULT_URL, Client, ServerError
from .wire import Passes, Request, protocol

# sampler(request dict, passes, out_dir) -> metrics dict; writes the result layout
# (texture.png, views/NNNN.png or frames/NNNN.png, metrics.json ...) into out_dir.
Sampler = Callable[[dict, Passes, Path], dict]
# progress(event name, data): "rendering" {"done", "total", "unit": "view" | "frame"} after
# each rendered view or frame, then the sampling job's events (queued, started, progress,
# done ...; the server's, or none from an in-process sampler).
Progress = Callable[[str, dict], None]


def _rendering(progress: Progress | None, unit: str):
    """A passes ``on_view`` callback reporting "rendering" events to ``progress``."""
    if progress is None:
        return None
    return lambda done, total: progress("rendering", {"done": done, "total": total, "unit": unit})


@dataclass
class _SamplingSettings:
    """The sampling fields both jobs share; they map onto ``protocol.Request``
    (``guidance`` -> ``guidance_scale``)."""

    prompt: str = ""
    negative_prompt: str = "blurry, low quality"
    seed: int = 0
    steps: int = 20
    guidance: float = 7.5
    scheduler: str = "ddim"
    controlnet_scale: float = 1.0
    noise: str = "surface"
    extra: dict[str, Any] = field(default_factory=dict)  # any other Request field

    _SAMPLING_FIELDS = ("prompt", "negative_prompt", "seed", "steps", "guidance", "scheduler", "controlnet_scale",
                        "noise")


@dataclass
class TextureSettings(_SamplingSettings):
    """What to generate and how to capture it. Sampling fields map onto
    ``protocol.Request`` (``guidance`` -> ``guidance_scale``; ``extra`` may set any other
    Request field, e.g. ``{"control_end": 0.8}``); the rest drive the capture."""

    attention: str = "extended"
    sync_strength: float = 1.0
    texture_size: int = 1024  # texels per side of the baked texture
    view_size: int = 512  # width and height of every view, a multiple of 8
    views: int = 6  # orbit rig cameras when no cameras are given
    elevation: float = 20.0  # orbit rig elevation, degrees
    uv_map: str | None = None  # None: each object's active render UV map
    smart_uv: bool = False  # objects without that UV map get a new Smart UV Project map

    _REQUEST_FIELDS = _SamplingSettings._SAMPLING_FIELDS + ("attention", "sync_strength", "texture_size")

    def request(self) -> Request:
        """The validated wire request (``ProtocolError`` names a bad field)."""
        return _request("texture", self, self._REQUEST_FIELDS)

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


_RENAMED = {"guidance": "guidance_scale"}
REQUEST_FIELDS = frozenset(f.name for f in dataclasses.fields(Request))


def _request(kind: str, settings, names: Sequence[str]) -> Request:
    """``settings``' sampling fields ``names`` (+ its ``extra``) -> a validated Request."""
    fields = {_RENAMED.get(name, name): getattr(settings, name) for name in names}
    for name, value in settings.extra.items():
        if name not in REQUEST_FIELDS or name == "kind":
            raise CaptureError(f"extra: {name!r} is not a request field")
        fields[name] = value
    return Request(kind=kind, **fields).validate()


@dataclass
class AnimationSettings(_SamplingSettings):
    """What to generate for an animation and how to capture it. Sampling fields map onto
    ``protocol.Request`` as in :class:`TextureSettings` (``extra`` sets any other field);
    ``width`` / ``height`` None take the scene's output size (rounded to multiples of 8).

    noise "surface" keeps each surface point's noise over the frames ("fixed": the same
    noise image every frame, what frame-by-frame tools do); ``background_noise`` is how
    the rest of the picture's noise moves; ``attention`` "keyframes" (anchor policy
    ``keyframes``: first, first_previous, middle) or "tma" (temporal momentum
    ``momentum``); ``chunk`` frames per model batch; ``sync_strength`` fuses the object's
    frames through its UVs every step (< 1 leaves room for lighting changes);
    ``background_sync`` carries the background along the vector pass (``background_uv``:
    the other UV-mapped meshes through their UVs instead); ``pixel_sync`` carries the
    decoded frames from frame to frame in pixels (0: off)."""

    background_noise: str = "auto"
    attention: str = protocol.ANIMATION_DEFAULTS["attention"]
    keyframes: str = "first"
    momentum: float = 0.5
    chunk: int = 16
    sync_strength: float = protocol.ANIMATION_DEFAULTS["sync_strength"]
    background_sync: float = protocol.ANIMATION_DEFAULTS["background_sync"]
    pixel_sync: float = protocol.ANIMATION_DEFAULTS["pixel_sync"]
    background_uv: bool = False
    width: int | None = None
    height: int | None = None
    uv_map: str | None = None  # None: each object's active render UV map

    _REQUEST_FIELDS = _SamplingSettings._SAMPLING_FIELDS + (
        "background_noise", "attention", "keyframes", "momentum", "chunk", "sync_strength", "background_sync",
        "pixel_sync", "background_uv")

    def request(self) -> Request:
        """The validated wire request, kind "animation" (``ProtocolError`` names a bad field)."""
        return _request("animation", self, self._REQUEST_FIELDS)

    def check(self, scene=None) -> Request:
        """Check the capture settings too (frame size against ``scene``) -> the request."""
        request = self.request()
        animation.frame_size(scene or bpy.context.scene, self.width, self.height)
        return request


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
    http://127.0.0.1:8765) with ``token``; ``progress(event, data)`` sees each rendered
    view, then the server's events. ``out_dir`` keeps the job's outputs (default: a new
    temporary folder); ``image_folder`` is where the texture PNG goes (see :func:`apply.apply_texture`).
    Every check (objects, UV maps, cameras, settings, server and token) runs before the
    scene is changed; errors are :class:`CaptureError`, ``ProtocolError`` or
    :class:`ServerError` naming what is wrong.
    """
    settings = settings or TextureSettings()
    request = settings.check()
    scene = scene or bpy.context.scene
    objects = _resolve_objects(objects, "texture")
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
    client = _client(sampler, server, token)

    # From here on the scene changes: UV maps asked for, the rig, then the capture.
    uv_maps = {obj: capture.ensure_uv_map(obj, settings.uv_map, smart_project=settings.smart_uv)
               for obj in objects}
    if cameras is None:
        cameras = rig.build_orbit_rig(scene, objects, count=settings.views, elevation_deg=settings.elevation,
                                      width=settings.view_size, height=settings.view_size)
    captured = passes.render_passes(scene, cameras, objects, settings.view_size, settings.view_size,
                                    uv_map=settings.uv_map, texture_size=settings.texture_size,
                                    on_view=_rendering(progress, "view"))
    out_dir = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="zs-texture-"))
    out_dir.mkdir(parents=True, exist_ok=True)

    job_id, metrics = _sample(request, captured, out_dir, sampler, client, progress, stop)
    texture_path = out_dir / "texture.png"
    if not texture_path.is_file():
        raise CaptureError(f"the job wrote no texture.png into {out_dir}; nothing to apply")
    materials, image = apply.apply_texture(objects, texture_path, uv_maps, name=name, folder=image_folder)
    return TextureResult(materials=materials, image=image, texture_path=texture_path, metrics=dict(metrics or {}),
                         out_dir=out_dir, cameras=list(cameras), job_id=job_id)


@dataclass
class AnimationResult:
    """What :func:`animate` made: the new image sequence, the camera background image and
    the Video Sequencer strip showing it, the frame files (``out_dir/frames/NNNN.png``),
    the job's metrics and output folder (frames/, metrics.json, contact_sheet.png), the
    camera, the scene frames rendered and the server's job id."""

    image: Any
    background: Any
    strip: Any
    frame_paths: list[Path]
    metrics: dict
    out_dir: Path
    camera: Any
    frames: list[int]
    job_id: str | None = None

    @property
    def frame_start(self) -> int:
        return self.frames[0]

    @property
    def frame_end(self) -> int:
        return self.frames[-1]


def animate(camera=None, objects=None, frames=None, settings: AnimationSettings | None = None, *,
            server: str | None = None, token: str | None = None, sampler: Sampler | None = None,
            progress: Progress | None = None, out_dir=None, name: str = "ZS Animation", scene=None,
            stop: threading.Event | None = None) -> AnimationResult:
    """Re-style the shot of ``camera`` (an object or its name; None: the scene's camera)
    over ``frames`` (None: the scene's range; ``"1-48"``, a range or ``(first, last)``)
    -> :class:`AnimationResult`.

    ``objects`` (mesh objects or names; None: every mesh that renders) are the targets:
    their surface carries the noise and the UV sync from frame to frame. Sampling runs in
    ``sampler`` or on ``server`` as in :func:`texture`. ``out_dir`` receives the job's
    outputs (default: ``//zs_frames/<name>/`` next to the saved .blend, else a new
    temporary folder). The frames come back as a new image sequence, shown as a new
    background image of the camera and a new Video Sequencer strip at the first frame.
    Every check (frames inside the scene's range, the camera, UV maps where surface noise
    or UV sync need them, settings, server and token) runs before anything renders.
    """
    settings = settings or AnimationSettings()
    request = settings.request()
    scene = scene or bpy.context.scene
    if "fps" not in settings.extra:
        request.fps = scene.render.fps / scene.render.fps_base
    targets = None if objects is None else _resolve_objects(objects, "animate")
    shot = animation.check_shot(scene, request, camera, targets, frames, settings.uv_map, settings.width,
                                settings.height)
    client = _client(sampler, server, token)

    captured = shot.render(scene, on_view=_rendering(progress, "frame"))
    out_dir = Path(out_dir) if out_dir is not None else animation.default_out_dir(name)
    out_dir.mkdir(parents=True, exist_ok=True)
    job_id, metrics = _sample(request, captured, out_dir, sampler, client, progress, stop)
    files = animation.frame_files(out_dir / Path(protocol.FRAME_PNG).parent, len(shot.frames))
    loaded = animation.load_frames(scene, shot.camera, files, shot.frames[0], name=name)
    return AnimationResult(image=loaded.image, background=loaded.background, strip=loaded.strip, frame_paths=files,
                           metrics=dict(metrics or {}), out_dir=out_dir, camera=shot.camera, frames=shot.frames,
                           job_id=job_id)


def _client(sampler: Sampler | None, server: str | None, token: str | None) -> Client | None:
    """The server client, checked (reachable, token accepted), or None with a sampler."""
    if sampler is not None:
        if server is not None:
            raise CaptureError("give either a sampler or a server, not both")
        return None
    client = Client(server or DEFAULT_URL, token)
    client.health()
    client.models()  # needs the token: a wrong one fails here, before any change
    return client


def _sample(request: Request, captured: Passes, out_dir: Path, sampler: Sampler | None, client: Client | None,
            progress: Progress | None, stop: threading.Event | None) -> tuple[str | None, dict]:
    """Run the job in ``sampler`` or on ``client``'s server -> (job id or None, metrics)."""
    if sampler is not None:
        return None, sampler(request.to_dict(), captured, out_dir)
    return _run_on_server(client, request, captured, out_dir, progress, stop)


def _resolve_objects(objects, verb: str = "texture") -> list:
    if isinstance(objects, (str, bpy.types.Object)):
        objects = [objects]
    objects = list(objects or [])
    if not objects:
        raise CaptureError(f"no mesh object to {verb}: pass at least one")
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
