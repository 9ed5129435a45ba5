"""Generate: capture the passes, run the job on the server, apply the result.

Main thread (Blender): check the settings, the server and the token; render the passes
(texture mode: :func:`passes.render_passes` of the views, texel maps at the texture size;
animation mode: :func:`passes.render_frame_passes` of the camera over the frame range,
with the vector pass). Worker thread (:class:`jobs.RemoteJob`): upload, follow the events,
download the result (``texture.png``; an animation's frames). The main thread polls the
worker from a modal operator's timer, writes progress into the scene settings, the status
bar and the "ZS Preview" image, and on success applies the texture through
``zs.apply_result`` (one undo step, new materials, originals untouched), or loads the
frames through ``zs.load_animation`` (one undo step: a new image sequence as the camera's
background image and a new Video Sequencer strip).

The scene is left as it was unless the result is applied: orbit-rig cameras are
temporary (built for the capture and removed right after), and a Smart UV map Generate
added is removed again when the job fails or is cancelled. Server down and a rejected
token are found before anything is rendered; so are, for an animation, frames outside the
scene's range, a missing camera and objects without the UV map surface noise needs.

:class:`GenerateSession` (texture) and :class:`AnimationSession` are the whole flow
without the operator, so it can be driven without a window (tests, ``blender -b``):
:func:`session_for` picks one by the mode, ``start()`` then ``poll()`` until finished.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import bpy

from .. import animation, capture, passes, preferences, rig
from ..capture import CaptureError
from ..client import Client, ServerError
from ..properties import animation_frames, build_request
from ..wire import PROTOCOL_VERSION, ProtocolError, protocol
from . import jobs, preview

TEMPORARY_RIG = "ZS Rig (temporary)"
PREFLIGHT_TIMEOUT = 5.0  # seconds: the checks before rendering must not freeze the UI for long
POLL_INTERVAL = 0.1  # seconds between polls of the blocking (windowless) path
# The extension installs from 4.2 on (rig, apply, panels work there), but passes.py uses
# the compositor API of 5.0 (scene.compositing_node_group, File Output items).
MIN_CAPTURE_VERSION = (5, 0, 0)


class GenerateError(RuntimeError):
    """Generate cannot go on; the message is for the artist."""


def client_from_preferences(context) -> Client:
    """A client for the server and token of the add-on preferences."""
    prefs = preferences.get(context)
    return Client(prefs.server_url, preferences.resolve_token(prefs))


@dataclass
class _Changes:
    """What Generate changed in the scene before the result, to undo on failure."""

    uv_layers: list[tuple[str, str]] = field(default_factory=list)  # (object name, new UV map)

    def revert(self) -> None:
        for object_name, layer_name in self.uv_layers:
            obj = bpy.data.objects.get(object_name)
            layers = obj.data.uv_layers if obj is not None and obj.type == "MESH" else None
            if layers is not None and layer_name in layers:
                layers.remove(layers[layer_name])
        self.uv_layers.clear()


class GenerateSession:
    """One Generate run for ``scene`` with ``client``'s server.

    ``start(context)`` checks, captures and starts the worker (raises GenerateError with a
    clear message; the scene is unchanged then). ``poll()`` -> state ("queued",
    "running", "done", "failed", "cancelled") and writes progress into the settings and
    the preview image. After "done", ``apply()`` applies the texture; after "failed"
    ``error`` says why. ``close()`` reverts temporary changes unless applied and removes
    the download folder.
    """

    def __init__(self, scene: bpy.types.Scene, client: Client):
        self.scene_name = scene.name
        self.client = client
        self.job: jobs.RemoteJob | None = None
        self.objects: list[str] = []
        self.uv_maps: dict[str, str] = {}
        self.views = 0
        self.applied = False
        self.error: str | None = None
        self._changes = _Changes()
        self._download = Path(tempfile.mkdtemp(prefix="zs-job-"))
        self._last_step = -1

    # ----------------------------------------------------------------- start

    @property
    def scene(self) -> bpy.types.Scene | None:
        return bpy.data.scenes.get(self.scene_name)

    @property
    def settings(self):
        scene = self.scene
        return scene.zs_texturing if scene is not None else None

    def start(self, context) -> "GenerateSession":
        """Validate, check the server, capture (main thread), start the worker thread."""
        if bpy.app.version < MIN_CAPTURE_VERSION:
            raise GenerateError("rendering the passes needs Blender 5.0 or newer (its compositor API); "
                                f"this is Blender {bpy.app.version_string}")
        settings = self.settings
        try:
            request = build_request(settings)
        except ProtocolError as exc:
            raise GenerateError(f"invalid setting {exc}") from None
        try:
            plan = self._plan(context, settings, request)  # every check; nothing changes yet
        except CaptureError as exc:
            raise GenerateError(str(exc)) from None
        if jobs.active() is not None and jobs.active().alive:
            raise GenerateError("a ZS job is already running; wait for it or cancel it")
        self._preflight()
        self._set_status(plan["status"], 0.0)
        try:
            passes_ = self._render(context, settings, request, plan)
            npz = passes_.to_npz_bytes()
        except (CaptureError, ProtocolError) as exc:
            self._changes.revert()
            self._set_status("")
            raise GenerateError(str(exc)) from None
        except BaseException:
            self._changes.revert()
            self._set_status("")
            raise
        self.views = passes_.views
        self.job = jobs.RemoteJob(self.client, request.to_dict(), npz, self._result_folder(), result=self.RESULT)
        try:
            self.job.start()
        except RuntimeError as exc:
            self._changes.revert()
            raise GenerateError(str(exc)) from None
        self._set_status("Uploading", 0.0, job_id="")
        return self

    # The texture flow's steps (AnimationSession overrides them).
    RESULT: str | None = jobs.TEXTURE_FILE  # what the worker downloads (None: the whole result)

    def _plan(self, context, settings, request) -> dict:
        """Check what the capture needs -> what it renders ("status": what the panel says)."""
        size = int(settings.view_resolution)
        if size % 8:
            raise GenerateError(f"View Size must be a multiple of 8 (the model works on 8x8 blocks), "
                                f"got {size}; try {max(8, size // 8 * 8)}")
        objects = capture.target_objects(context)
        cameras = self._cameras(context, settings)  # validated before the network checks
        count = len(cameras) if cameras else int(settings.rig_count) + settings.rig_top_view
        return {"size": size, "objects": objects, "cameras": cameras, "status": f"Rendering {count} views"}

    def _render(self, context, settings, request, plan):
        objects = plan["objects"]
        uv_maps = self._uv_maps(objects, settings)
        passes_ = self._capture(context, objects, plan["cameras"], uv_maps, plan["size"], request.texture_size)
        self.objects = [obj.name for obj in objects]
        self.uv_maps = {obj.name: uv_maps[obj] for obj in objects}
        return passes_

    def _result_folder(self) -> Path:
        return self._download

    def _cameras(self, context, settings) -> list[bpy.types.Object] | None:
        """The selected cameras (by name), or None for the orbit rig (built at capture)."""
        if settings.views_source == "RIG":
            return None
        cameras = sorted((obj for obj in context.selected_objects if obj.type == "CAMERA"), key=lambda o: o.name)
        if not cameras:
            raise GenerateError("no camera selected: select camera objects, or set Views to Orbit Rig")
        return cameras

    def _preflight(self) -> None:
        """Server reachable, same protocol, token accepted: before anything is rendered."""
        quick = Client(self.client.url, self.client.token, timeout=PREFLIGHT_TIMEOUT)
        try:
            health = quick.health()
            spoken = health.get("protocol")
            if spoken is not None and spoken != PROTOCOL_VERSION:
                raise GenerateError(f"the server at {self.client.url} speaks protocol {spoken}, this add-on "
                                    f"{PROTOCOL_VERSION}; update the one that is older")
            quick.models()  # needs the token: a wrong one is a 401 now, not after the render
        except ServerError as exc:
            raise GenerateError(str(exc)) from None

    def _uv_maps(self, objects, settings) -> dict:
        """Object -> UV map to texture; a Smart UV map added here is recorded for revert."""
        wanted = settings.uv_map.strip() or None
        uv_maps = {}
        for obj in objects:
            before = {layer.name for layer in obj.data.uv_layers}
            uv_maps[obj] = capture.ensure_uv_map(obj, wanted, smart_project=settings.smart_uv)
            if uv_maps[obj] not in before:
                self._changes.uv_layers.append((obj.name, uv_maps[obj]))
        return uv_maps

    def _capture(self, context, objects, cameras, uv_maps, size: int, texture_size: int):
        """Render the passes; the UV map of each object is made the render one for the
        capture (passes.render_passes restores it). Rig cameras exist only meanwhile."""
        scene = context.scene
        # One name for all objects, or else (UV Map empty) each object's active render map,
        # which is what ``_uv_maps`` picked: render_passes with None renders exactly those.
        names = set(uv_maps.values())
        uv_map = names.pop() if len(names) == 1 else None
        if cameras is not None:
            return passes.render_passes(scene, cameras, objects, size, size, uv_map=uv_map,
                                        texture_size=texture_size, on_view=self._rendered)
        settings = self.settings
        scene_camera = scene.camera
        try:
            cameras = rig.build_orbit_rig(scene, objects, count=int(settings.rig_count),
                                          elevation_deg=float(settings.rig_elevation),
                                          top_views=int(settings.rig_top_view), width=size, height=size,
                                          collection_name=TEMPORARY_RIG)
            return passes.render_passes(scene, cameras, objects, size, size, uv_map=uv_map,
                                        texture_size=texture_size, on_view=self._rendered)
        finally:
            rig.clear_rig(scene, TEMPORARY_RIG)
            collection = bpy.data.collections.get(TEMPORARY_RIG)
            if collection is not None and not collection.all_objects:
                bpy.data.collections.remove(collection)
            if scene.camera != scene_camera:
                scene.camera = scene_camera

    UNIT = "views"

    def _rendered(self, done: int, total: int) -> None:
        """After each rendered view: the status, and the cursor's progress (Blender shows it
        while the capture blocks the window; the operator began it before the capture)."""
        self._set_status(f"Rendered {done}/{total} {self.UNIT}")
        window_manager = bpy.context.window_manager
        if window_manager is not None and not bpy.app.background:
            window_manager.progress_update(int(100 * done / max(total, 1)))

    # ------------------------------------------------------------------ poll

    def poll(self) -> str:
        """Drain the worker; update status, progress, job id and the preview -> state."""
        job = self.job
        latest_preview = None
        for message in job.poll():
            if message[0] == "progress" and message[3] is not None:
                latest_preview = message[3]  # only the newest is worth decoding
        if latest_preview is not None:
            try:
                preview.show(latest_preview)
            except ValueError:
                pass  # a preview Blender cannot read is skipped; the job goes on
        state = job.state
        if job.cancel_requested and state not in jobs.FINISHED:
            self._set_status("Cancelling")
        elif state == "queued":
            self._set_status("Queued on the server", 0.0, job.job_id)
        elif state == "running":
            total = max(job.total, 1)
            self._set_status(f"Step {job.step}/{total}" if job.step else "Started", job.step / total, job.job_id)
        elif state == "done":
            self._set_status("Applying", 1.0, job.job_id)
        elif state == "failed":
            self.error = job.error
            self._set_status(f"Failed: {job.error}", 0.0, job.job_id)
        elif state == "cancelled":
            self._set_status("Cancelled", 0.0, job.job_id)
        return state

    @property
    def finished(self) -> bool:
        return self.job is not None and self.job.finished

    def cancel(self) -> None:
        """Cancel the job on the server (non-blocking)."""
        if self.job is not None:
            self.job.cancel()

    # ---------------------------------------------------------------- finish

    def apply(self) -> set:
        """Apply the downloaded texture with ``zs.apply_result`` -> the operator's result."""
        items = [{"name": name, "uv_map": self.uv_maps[name]} for name in self.objects]
        settings = self.settings
        folder = output_folder(settings.output_folder) if settings is not None else None
        result = bpy.ops.zs.apply_result(filepath=str(self.job.result_path), objects=items,
                                         folder=str(folder) if folder else "")
        self.applied = "FINISHED" in result
        if self.applied:
            self._set_status(f"Done: texture on {len(self.objects)} object(s)", 1.0)
        return result

    def close(self) -> None:
        """Revert temporary changes (unless applied) and remove the download folder."""
        if not self.applied:
            self._changes.revert()
        shutil.rmtree(self._download, ignore_errors=True)

    def _set_status(self, text: str, progress: float | None = None, job_id: str | None = None) -> None:
        settings = self.settings
        if settings is None:  # the scene was deleted meanwhile
            return
        settings.status = text
        if progress is not None:
            settings.progress = min(max(float(progress), 0.0), 1.0)
        if job_id is not None:
            settings.job_id = job_id or ""


class AnimationSession(GenerateSession):
    """Generate in Animation mode: the camera's shot over the frame range.

    Checks (before anything renders): frames inside the scene's range, the camera (the
    setting, else the scene's) in the scene, the target meshes (the selected ones, else
    every mesh that renders) with the UV map surface noise / UV sync need. The whole result
    is downloaded into a new folder under the Frames setting (``//zs_frames/<name>``; a
    temporary folder for an unsaved file), and ``apply()`` loads the frames with
    ``zs.load_animation`` (one undo step). A job that fails or is cancelled leaves no folder.
    """

    RESULT = None  # the whole result: frames/, metrics.json, contact_sheet.png ...
    NAME = "ZS Animation"
    UNIT = "frames"

    def __init__(self, scene: bpy.types.Scene, client: Client):
        super().__init__(scene, client)
        self.camera_name = ""
        self.frames: list[int] = []
        self.out_dir: Path | None = None

    def _plan(self, context, settings, request) -> dict:
        scene = self.scene
        try:
            objects = capture.target_objects(context)
        except CaptureError:  # nothing selected: every mesh that renders is a target
            objects = None
        shot = animation.check_shot(scene, request, settings.anim_camera or None, objects,
                                    animation_frames(settings, scene), settings.uv_map.strip() or None)
        return {"shot": shot, "status": f"Rendering {len(shot.frames)} frames of {shot.width}x{shot.height}"}

    def _render(self, context, settings, request, plan):
        shot = plan["shot"]
        passes_ = shot.render(context.scene, on_view=self._rendered)
        self.camera_name = shot.camera.name
        self.frames = shot.frames
        self.objects = [obj.name for obj in shot.objects]
        self.out_dir = animation.new_out_dir(output_folder(settings.frames_folder), self.NAME)
        return passes_

    def _result_folder(self) -> Path:
        return self.out_dir

    @property
    def frames_dir(self) -> Path | None:
        return None if self.out_dir is None else self.out_dir / Path(protocol.FRAME_PNG).parent

    def apply(self) -> set:
        """Load the downloaded frames with ``zs.load_animation`` -> the operator's result."""
        result = bpy.ops.zs.load_animation(directory=str(self.frames_dir), frame_start=self.frames[0],
                                           frame_count=len(self.frames), camera=self.camera_name,
                                           scene=self.scene_name, name=self.NAME)
        self.applied = "FINISHED" in result
        if self.applied:
            self._set_status(f"Done: {len(self.frames)} frames from frame {self.frames[0]} "
                             f"(camera background, Video Sequencer)", 1.0)
        return result

    def close(self) -> None:
        """As for a texture; also remove the new frames folder unless the job finished
        (finished frames stay, so they can be loaded by hand if loading failed)."""
        super().close()
        if self.out_dir is not None and (self.job is None or self.job.state != "done"):
            shutil.rmtree(self.out_dir, ignore_errors=True)


def session_for(scene: bpy.types.Scene, client: Client) -> GenerateSession:
    """The session of the scene settings' mode: texture or animation."""
    settings = scene.zs_texturing
    cls = AnimationSession if settings.mode == "ANIMATION" else GenerateSession
    return cls(scene, client)


def output_folder(text: str) -> Path | None:
    """The Output setting -> a folder, or None where the file must be packed instead
    (a ``//`` path while the .blend is unsaved, or an empty setting)."""
    text = (text or "").strip()
    if not text or (text.startswith("//") and not bpy.data.filepath):
        return None
    return Path(bpy.path.abspath(text))


def run_blocking(session: GenerateSession, timeout: float | None = None) -> str:
    """Poll ``session`` until its job finishes (windowless use) -> the final state."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        state = session.poll()
        if state in jobs.FINISHED:
            return state
        if deadline is not None and time.monotonic() > deadline:
            session.cancel()
            raise GenerateError(f"the job did not finish within {timeout:g} s; it was cancelled")
        time.sleep(POLL_INTERVAL)


class ZS_OT_generate(bpy.types.Operator):
    """Render the passes and generate on the ZS server: a texture applied as new materials, or (Animation mode) frames loaded as an image sequence"""

    bl_idname = "zs.generate"
    bl_label = "Generate"
    # No UNDO here: the apply at the end is its own undo step (zs.apply_result), and a
    # redo of this operator would re-run the whole job.
    bl_options = {"REGISTER"}

    _session: GenerateSession | None = None
    _timer = None

    @classmethod
    def poll(cls, context):
        if context.scene is None or not hasattr(context.scene, "zs_texturing"):
            return False
        running = jobs.active()
        return running is None or not running.alive

    def invoke(self, context, event):
        if bpy.app.background or context.window is None:
            return self.execute(context)  # no event loop to drive a modal operator
        wm = context.window_manager
        wm.progress_begin(0, 100)  # the capture's views, then the job's steps
        try:
            started = self._start(context)
        except BaseException:
            wm.progress_end()
            raise
        if not started:
            wm.progress_end()
            return {"CANCELLED"}
        self._timer = wm.event_timer_add(0.2, window=context.window)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        session = self._session
        try:
            if event.type == "ESC" and event.value == "PRESS":
                session.cancel()
                return self._end(context, "cancelled")
            if event.type != "TIMER":
                return {"PASS_THROUGH"}
            state = session.poll()
            if session.job.cancel_requested and state not in jobs.FINISHED:
                return self._end(context, "cancelled")  # the Cancel button: stop at once
            self._show_progress(context)
            if state in jobs.FINISHED:
                return self._end(context, state)
            return {"PASS_THROUGH"}
        except Exception as exc:  # a modal handler must always end cleanly
            session.cancel()
            self.report({"ERROR"}, f"ZS Texturing: {type(exc).__name__}: {exc}")
            return self._end(context, "failed", report=False)

    def cancel(self, context):
        """Blender ends the modal run itself (a file is loaded, the window closes)."""
        if self._session is not None:
            self._session.cancel()
            self._end(context, "cancelled", report=False)

    def execute(self, context):
        if not self._start(context):
            return {"CANCELLED"}
        try:
            state = run_blocking(self._session)
        except GenerateError as exc:
            self.report({"ERROR"}, str(exc))
            state = "failed"
        return self._finish(state)

    def _start(self, context) -> bool:
        try:
            self._session = session_for(context.scene, client_from_preferences(context)).start(context)
        except (GenerateError, ServerError) as exc:
            self._session = None
            self.report({"ERROR"}, str(exc))
            return False
        return True

    def _show_progress(self, context) -> None:
        settings = self._session.settings
        if settings is None:
            return
        context.window_manager.progress_update(int(round(100 * settings.progress)))
        if context.workspace is not None:
            context.workspace.status_text_set(f"ZS Texturing: {settings.status}  (Esc to cancel)")
        for area in context.screen.areas if context.screen else ():
            if area.type in ("VIEW_3D", "IMAGE_EDITOR"):
                area.tag_redraw()

    def _end(self, context, state: str, report: bool = True):
        wm = context.window_manager
        if self._timer is not None:
            wm.event_timer_remove(self._timer)
            self._timer = None
        wm.progress_end()
        if context.workspace is not None:
            context.workspace.status_text_set(None)
        return self._finish(state, report)

    def _finish(self, state: str, report: bool = True):
        session = self._session
        try:
            if state == "done":
                result = session.apply()
                return {"FINISHED"} if "FINISHED" in result else {"CANCELLED"}
            if report and state == "failed":
                self.report({"ERROR"}, session.error or "the job failed")
            elif report and state == "cancelled":
                session._set_status("Cancelled", 0.0)
                self.report({"WARNING"}, "ZS job cancelled")
            return {"CANCELLED"}
        except RuntimeError as exc:  # zs.apply_result reported an error
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        finally:
            session.close()
            self._session = None


classes = (ZS_OT_generate,)
