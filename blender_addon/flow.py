"""One generation in Blender, as steps: check -> capture -> sample -> apply.

:class:`TextureGeneration` textures objects seen by cameras (or an orbit rig);
:class:`AnimationGeneration` re-styles a camera's shot over a frame range. The steps, in
this order:

    check()    every check (settings, objects, UV maps, cameras or the shot, the reference
               image's pixels, the server and its token, the model, LoRA and IP-Adapter
               names against the server's lists); nothing in the scene changes yet
    capture()  render the passes (an orbit or auto rig, completion cameras or a Smart UV map
               may be added first); the reference image's pixels join them
    submit()   start sampling: a server job on a worker thread (:class:`.jobs.RemoteJob`),
               or the injected in-process sampler, which runs to the end
    poll()     the sampling's state; its events go to ``progress``
    apply()    texture: new materials; animation: the frames as a new image sequence
    close()    revert what capture changed unless the result was applied

The modal Generate operator runs check and capture, then calls ``poll`` from its timer;
:mod:`.api` (and so ``blender -b`` batch runs and the ``zs`` command) runs every step to
the end with :meth:`Generation.run`. Imports: bpy, the standard library and numpy only.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import bpy
import numpy as np

from . import animation, apply, auto_rig, pass_render, rig, server_models
from .client import Client, ServerError
from .errors import CaptureError
from .jobs import FINISHED, RemoteJob
from .reference_image import read as read_reference
from .uv_layers import ensure_uv_map
from .wire import PROTOCOL_VERSION, Passes, ProtocolError, protocol

# sampler(request dict, passes, out_dir) -> metrics dict; writes the result layout
# (texture.png, views/NNNN.png or frames/NNNN.png, metrics.json ...) into out_dir.
Sampler = Callable[[dict, Passes, Path], dict]
# progress(event name, data): "rendering" {"done", "total", "unit": "view" | "frame"} after
# each rendered view or frame, then the sampling job's events (submitted, queued, queue while
# it waits, started, progress, done ...; the server's, or only "done" from an in-process sampler).
Progress = Callable[[str, dict], None]

SERVER_CHECK_TIMEOUT = 5.0  # seconds: the checks before rendering must not freeze the UI for long
POLL_INTERVAL = 0.1  # seconds between polls while running to the end
TEMPORARY_RIG = "ZS Rig (temporary)"
TEMPORARY_FILL = "ZS Fill (temporary)"  # completion cameras exist only while the capture renders


def check_server(client: Client) -> tuple[dict[str, int], server_models.Catalog]:
    """The server answers, speaks this protocol and accepts the token (ServerError
    otherwise) -> (its limits: ``max_steps``, ``max_views``, ... ; empty from an older
    server, what it offers: models, LoRAs, IP-Adapters). The lists also become the panel's
    (:func:`server_models.remember`)."""
    quick = Client(client.url, client.token, timeout=min(client.timeout, SERVER_CHECK_TIMEOUT))
    health = quick.health()
    spoken = health.get("protocol")
    if spoken is not None and spoken != PROTOCOL_VERSION:
        raise ServerError(f"the server at {client.url} speaks protocol {spoken}, this add-on {PROTOCOL_VERSION}; "
                          "update the one that is older")
    # Needs the token: a wrong one is a 401 now, not after the render.
    catalog = server_models.Catalog.from_answer(quick.models(), client.url, default=str(health.get("model") or ""))
    server_models.remember(catalog)
    return dict(health.get("limits") or {}), catalog


def check_limits(limits: dict[str, int], request, views: int, width: int, height: int, unit: str) -> None:
    """A job within the server's ``limits`` (from :func:`check_server`), checked before the
    capture: ProtocolError names the setting that is over."""
    wanted = [("steps", request.steps, "max_steps"), ("texture_size", request.texture_size, "max_texture_size"),
              (f"{unit}s", views, "max_frames" if unit == "frame" else "max_views"),
              ("width", width, "max_resolution"), ("height", height, "max_resolution")]
    if request.kind == protocol.ANIMATION:
        wanted = [entry for entry in wanted if entry[0] != "texture_size"]
    for name, value, limit in wanted:
        if limit in limits and value > limits[limit]:
            raise ProtocolError(name, f"{value} is over this server's limit of {limits[limit]} ({limit}); lower it, "
                                      f"or start the server with a higher ZS_{limit.upper()}")


class Generation:
    """The steps both kinds share. ``settings`` is the kind's settings object
    (``api.TextureSettings`` / ``api.AnimationSettings``); sampling runs in ``sampler``
    when given, else on ``client``'s server (neither: only check and capture can run).
    ``reference_image`` (a Blender image, an image file or an (H, W, 3) array; see
    :mod:`.reference_image`) steers every view or frame; its pixels are read at
    :meth:`check`.
    ``out_dir`` receives the job's outputs (None: a new folder); :meth:`close` removes a
    folder it made when the job did not finish, or always with ``temporary_outputs`` (the
    panel keeps only the applied texture). :meth:`close` reverts a Smart UV map capture
    added; an orbit rig built for a script stays (the result names its cameras)."""

    kind = ""
    unit = "view"

    def __init__(self, scene: bpy.types.Scene, settings, *, client: Client | None = None,
                 sampler: Sampler | None = None, progress: Progress | None = None, out_dir=None,
                 name: str = "ZS Texture", temporary_outputs: bool = False, reference_image=None):
        if client is not None and sampler is not None:
            raise CaptureError("give either a sampler or a server, not both")
        self.scene_name = scene.name
        self.settings = settings
        self.client = client
        self.sampler = sampler
        self.progress = progress
        self.name = name
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.request = None
        self.reference_source = reference_image
        self.reference = None  # (H', W', 3) float32 once checked, or None
        self.passes: Passes | None = None
        self.job: RemoteJob | None = None
        self.state = "new"
        self.error: str | None = None
        self.metrics: dict = {}
        self.applied = False
        self.temporary_outputs = temporary_outputs
        self._made_out_dir = False

    @property
    def scene(self) -> bpy.types.Scene | None:
        return bpy.data.scenes.get(self.scene_name)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    # ------------------------------------------------------------------ steps

    def check(self) -> "Generation":
        """Every check before the scene changes; raises CaptureError, ProtocolError or
        ServerError naming what is wrong."""
        self.request = self._check_scene()
        self.reference = read_reference(self.reference_source)
        if self.client is not None:
            limits, catalog = check_server(self.client)
            check_limits(limits, self.request, *self._size(), unit=self.unit)
            catalog.check(self.request)
        return self

    def capture(self) -> Passes:
        """Render the passes (after :meth:`check`), the reference image's pixels with them."""
        self.passes = self._render(self._rendered)
        self.passes.reference_image = self.reference
        return self.passes

    def submit(self) -> "Generation":
        """Start sampling the captured passes into the output folder."""
        if self.sampler is None and self.client is None:
            raise CaptureError("nothing to sample with: give a sampler or a server")
        folder = self._output_folder()
        if self.sampler is not None:
            self.state = "running"
            self.metrics = self._with_capture(dict(self.sampler(self.request.to_dict(), self.passes, folder) or {}),
                                              folder / protocol.METRICS_JSON)
            self.state = "done"
            self._emit("done", {"folder": folder})
            return self
        payload, field = self._upload()
        self.job = RemoteJob(self.client, self.request.to_dict(), payload, folder, field).start()
        self.state = "starting"
        return self

    def poll(self) -> str:
        """Drain the server job's events into ``progress`` -> the state (queued, running,
        done, failed, cancelled)."""
        if self.job is None:
            return self.state
        for name, data in self.job.poll():
            self._emit(name, data)
        self.state, self.error = self.job.state, self.job.error
        if self.state == "done":
            metrics = self.job.result_path / protocol.METRICS_JSON
            self.metrics = self._with_capture(json.loads(metrics.read_text()) if metrics.is_file() else {}, metrics)
        return self.state

    def cancel(self) -> None:
        """Cancel the server job (non-blocking)."""
        if self.job is not None:
            self.job.cancel()

    def wait(self, stop: threading.Event | None = None) -> None:
        """Poll until the job ends; ``stop`` set (or Ctrl+C) cancels it on the server.
        A failed or cancelled job is a ServerError."""
        try:
            while self.poll() not in FINISHED:
                if stop is not None and stop.is_set():
                    self.cancel()
                time.sleep(POLL_INTERVAL)
        except BaseException:
            self.cancel()
            raise
        if self.state == "failed":
            raise ServerError(self.error or "the job failed")
        if self.state == "cancelled":
            raise ServerError(f"job {self.job.job_id} was cancelled")

    def run(self, stop: threading.Event | None = None):
        """Every step to the end -> what :meth:`apply` returns; :meth:`close` runs on any
        failure after the check."""
        self.check()
        try:
            self.capture()
            self.submit()
            self.wait(stop)
            return self.apply()
        finally:
            self.close()

    def close(self) -> None:
        """Revert the scene changes of capture unless applied; remove a temporary output
        folder (and a new one of a run that did not finish)."""
        if not self.applied:
            self._revert()
        if self.out_dir is not None and self._made_out_dir and (self.temporary_outputs or self.state != "done"):
            shutil.rmtree(self.out_dir, ignore_errors=True)

    # ------------------------------------------------------------- plumbing

    def _emit(self, name: str, data: dict) -> None:
        if self.progress is not None:
            self.progress(name, data)

    def _rendered(self, done: int, total: int) -> None:
        self._emit("rendering", {"done": done, "total": total, "unit": self.unit})

    def _output_folder(self) -> Path:
        if self.out_dir is None:
            self.out_dir = self._new_out_dir()
            self._made_out_dir = True
        elif not self.out_dir.exists():
            self._made_out_dir = True
        self.out_dir.mkdir(parents=True, exist_ok=True)
        return self.out_dir

    def _new_out_dir(self) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"zs-{self.kind}-"))

    def _with_capture(self, metrics: dict, path: Path) -> dict:
        """The job's metrics with what the capture measured (:meth:`_capture_metrics`),
        written back into its metrics.json at ``path`` when there is one."""
        extra = self._capture_metrics()
        if not extra:
            return metrics
        metrics = dict(metrics, **extra)
        if path.is_file():
            path.write_text(json.dumps(metrics, indent=2, sort_keys=True))
        return metrics

    def _capture_metrics(self) -> dict:
        return {}

    def _check_scene(self):
        raise NotImplementedError

    def _size(self) -> tuple[int, int, int]:
        """(views or frames, width, height) the capture will render."""
        raise NotImplementedError

    def _render(self, on_view) -> Passes:
        raise NotImplementedError

    def _revert(self) -> None:
        pass

    def _upload(self) -> tuple[bytes, str]:
        """What goes to the server -> (bytes, form field): the captured passes as .npz."""
        return self.passes.to_npz_bytes(), "passes"


class TextureGeneration(Generation):
    """Texture ``objects`` (mesh objects) seen by ``cameras`` (None: an orbit rig of
    ``settings.views`` cameras, or with views 0 the auto rig; kept in the scene unless
    ``temporary_rig``), and with ``settings.complete`` by completion cameras aimed at what
    those miss (built for the capture only; the passes' ``completion`` marks their views).
    :meth:`check` plans the cameras (:func:`auto_rig.plan_cameras`; ``coverage`` is its
    report, which joins ``metrics`` as ``camera_coverage``). :meth:`apply` -> (new
    materials, new image); the texture PNG goes to ``image_folder`` (see
    :func:`apply.apply_texture`)."""

    kind = protocol.TEXTURE

    def __init__(self, scene, settings, objects, cameras=None, *, temporary_rig: bool = False,
                 image_folder=None, **options):
        super().__init__(scene, settings, **options)
        self.objects = list(objects)
        self.cameras = None if cameras is None else list(cameras)
        self.temporary_rig = temporary_rig
        self.image_folder = image_folder
        # Object name -> UV map; names, not objects: the panel applies after a long job, and an
        # object deleted meanwhile must be a clear error, not a dead reference.
        self.uv_maps: dict[str, str] = {}
        self._new_uv_maps: list[tuple[str, str]] = []  # (object name, UV map) added by capture
        self.camera_plan: auto_rig.CameraPlan | None = None
        self.coverage: dict = {}  # the camera plan's coverage report

    @property
    def views(self) -> int:
        """The views the capture renders, completion views included (known once checked)."""
        if self.camera_plan is not None:
            return self.camera_plan.views
        return len(self.cameras) if self.cameras else self.settings.views + self.settings.top_view

    def _size(self) -> tuple[int, int, int]:
        return self.views, self.settings.view_size, self.settings.view_size

    def _capture_metrics(self) -> dict:
        return {"camera_coverage": self.coverage} if self.coverage else {}

    def _check_scene(self):
        request = self.settings.check()
        if not self.objects:
            raise CaptureError("no mesh object to texture: select at least one mesh")
        for obj in self.objects:
            if obj.type != "MESH":
                raise CaptureError(f"object {obj.name!r} is a {obj.type.lower()}, not a mesh")
            if obj.hide_render:
                raise CaptureError(f"object {obj.name!r} is disabled in renders; enable it to texture it")
            if not self.settings.smart_uv:
                ensure_uv_map(obj, self.settings.uv_map or None, smart_project=False)  # changes nothing
        if self.cameras is not None:
            if not self.cameras:
                raise CaptureError("no camera given: pass cameras, or None for an orbit rig")
            for camera in self.cameras:
                if getattr(camera, "type", None) != "CAMERA":
                    raise CaptureError(f"{getattr(camera, 'name', camera)!r} is not a camera object")
        # Reads the scene only: the cameras (and how many views) are known before anything changes.
        self.camera_plan = auto_rig.plan_cameras(self.scene, self.objects, self.settings, self.cameras)
        self.coverage = self.camera_plan.report()
        return request

    def _render(self, on_view) -> Passes:
        settings, scene = self.settings, self.scene
        for obj in self.objects:
            before = {layer.name for layer in obj.data.uv_layers}
            self.uv_maps[obj.name] = ensure_uv_map(obj, settings.uv_map or None, smart_project=settings.smart_uv)
            if self.uv_maps[obj.name] not in before:
                self._new_uv_maps.append((obj.name, self.uv_maps[obj.name]))
        # One name for all objects, or else each object's active render map, which is what
        # ensure_uv_map picked: render_passes with None renders exactly those.
        names = set(self.uv_maps.values())
        uv_map = names.pop() if len(names) == 1 else None
        size = settings.view_size
        with self._rig(scene) as (main, fill):
            passes = pass_render.render_passes(scene, main + fill, self.objects, size, size, uv_map=uv_map,
                                               texture_size=settings.texture_size, on_view=on_view)
        if fill:
            passes.completion = np.arange(passes.views) >= len(main)
            passes.validate()
        return passes

    @contextlib.contextmanager
    def _rig(self, scene):
        """The planned cameras -> (main cameras, completion cameras). A rig (orbit or auto)
        is kept after the capture, or (``temporary_rig``) removed again; completion
        cameras built for the capture always are; the scene camera is restored."""
        scene_camera = scene.camera
        collection = TEMPORARY_RIG if self.temporary_rig else rig.RIG_COLLECTION
        try:
            main, fill = auto_rig.build_plan(scene, self.camera_plan, collection, TEMPORARY_FILL)
            if self.cameras is None and not self.temporary_rig:
                self.cameras = main
            yield main, fill
        finally:
            rig.remove_collection(scene, TEMPORARY_FILL)
            if self.temporary_rig and self.camera_plan.source != "cameras":
                rig.remove_collection(scene, TEMPORARY_RIG)
            if scene.camera is None or (self.temporary_rig and scene.camera != scene_camera):
                scene.camera = scene_camera

    def apply(self):
        """Put the texture on the objects through new materials -> (materials, image)."""
        texture = self.out_dir / protocol.TEXTURE_PNG
        if not texture.is_file():
            raise CaptureError(f"the job wrote no {protocol.TEXTURE_PNG} into {self.out_dir}; nothing to apply")
        objects = [_object(name) for name in self.uv_maps]
        result = apply.apply_texture(objects, texture, self.uv_maps, name=self.name, folder=self.image_folder)
        self.applied = True
        return result

    def _revert(self) -> None:
        for object_name, layer_name in self._new_uv_maps:
            obj = bpy.data.objects.get(object_name)
            layers = obj.data.uv_layers if obj is not None and obj.type == "MESH" else None
            if layers is not None and layer_name in layers:
                layers.remove(layers[layer_name])
        self._new_uv_maps.clear()


class AnimationGeneration(Generation):
    """Re-style the shot of ``camera`` (an object, a name, or None: the scene's camera) over
    ``frames`` (None: the scene's range; ``"1-48"``, a range or ``(first, last)``).
    ``objects`` (None: every mesh that renders) are the targets whose surface the noise and
    UV sync follow. The output folder defaults to a new ``//zs_frames/<name>`` next to
    the saved .blend (``frames_base`` overrides the base). :meth:`apply` ->
    :class:`animation.LoadedFrames`."""

    kind = protocol.ANIMATION
    unit = "frame"

    def __init__(self, scene, settings, camera=None, objects=None, frames=None, *, frames_base=None,
                 name: str = "ZS Animation", **options):
        super().__init__(scene, settings, name=name, **options)
        self.camera = camera
        self.objects = None if objects is None else list(objects)
        self.frames = frames
        self.frames_base = frames_base
        self.shot: animation.Shot | None = None
        self.camera_name = ""
        self.frame_paths: list[Path] = []

    def _check_scene(self):
        request = self.settings.check()
        scene = self.scene
        request.fps = scene.render.fps / scene.render.fps_base
        self.shot = animation.check_shot(scene, request, self.camera, self.objects, self.frames,
                                         self.settings.uv_map or None, self.settings.width, self.settings.height)
        self.camera_name = self.shot.camera.name  # by name: the camera may go while the job runs
        return request

    def _size(self) -> tuple[int, int, int]:
        return len(self.shot.frames), self.shot.width, self.shot.height

    def _render(self, on_view) -> Passes:
        return self.shot.render(self.scene, on_view=on_view)

    def _new_out_dir(self) -> Path:
        base = self.frames_base
        if base is None and bpy.data.filepath:
            base = Path(bpy.data.filepath).parent / animation.FRAMES_FOLDER
        return animation.new_out_dir(base, self.name)

    def apply(self) -> animation.LoadedFrames:
        """Load the frames as a new image sequence (camera background, Video Sequencer)."""
        shot = self.shot
        self.frame_paths = animation.frame_files(self.out_dir / Path(protocol.FRAME_PNG).parent, len(shot.frames))
        loaded = animation.load_frames(self.scene, _object(self.camera_name), self.frame_paths, shot.frames[0],
                                       name=self.name)
        self.applied = True
        return loaded


def _object(name: str) -> bpy.types.Object:
    obj = bpy.data.objects.get(name)
    if obj is None:
        raise CaptureError(f"object {name!r} no longer exists (renamed or deleted during the job?)")
    return obj
