"""Generate: the panel's run of the one Blender flow (:mod:`..flow`).

The scene settings become the mode's settings (:func:`properties.settings_for`: the
chosen model, the LoRA list and the IP-Adapter included) and a flow generation: the
selected meshes seen by the selected cameras or a temporary orbit or auto rig, with
completion cameras for what those miss (texture), or the
camera's shot over the frame range (animation), with the Reference Image's pixels. On the main thread
(Blender) the generation checks everything, the server and the token included, then
renders the passes; its worker thread (:class:`jobs.RemoteJob`) uploads, follows the
events and downloads the result. A modal operator polls it from a timer, writes progress
into the scene settings, the status bar and the "ZS Preview" image, and on success
applies the result: ``zs.apply_result`` (new materials, originals untouched) or
``zs.load_animation`` (a new image sequence as the camera's background and a new Video
Sequencer strip), then pushes ONE undo step, :data:`UNDO_STEP`, holding all of it
(:func:`push_undo_step`).

Why an explicit push: an operator called from Python (``bpy.ops.zs.apply_result()``)
pushes no undo step of its own, whatever its ``UNDO`` option says (Blender raises the
undo depth around Python calls), and Generate itself has no ``UNDO`` option (a redo would
re-run the whole job). Without the push the result would silently join the artist's next
undo step. The modal run, the windowless ``execute`` and the sessions all apply through
:meth:`GenerateSession.apply`, so each of them pushes exactly this one step. Scripts
(:mod:`..api`, ``blender -b`` batch runs) push nothing: a script run from Blender's Text
Editor is one undo step already, and a ``blender -b`` run has no undo history.

The scene is left as it was unless the result is applied: rig and completion cameras
exist only for the capture, and a Smart UV map Generate added is removed again when the job fails or
is cancelled. A texture job's download folder is removed afterwards (the texture was
copied next to the .blend); an animation's frames stay in ``//zs_frames/<name>``.

:class:`GenerateSession` (texture) and :class:`AnimationSession` are the run without the
operator, so it can be driven without a window (tests, ``blender -b``):
:func:`session_for` picks one by the mode, ``start()`` then ``poll()`` until finished.
"""

from __future__ import annotations

import time
from pathlib import Path

import bpy

from .. import flow, jobs, preferences, properties
from ..client import Client, ServerError
from ..errors import CaptureError
from ..scene_objects import target_objects
from ..wire import ProtocolError, coverage, protocol
from . import preview

POLL_INTERVAL = 0.1  # seconds between polls of the blocking (windowless) path
UNDO_STEP = "ZS Generate"  # the name of the applied result in Edit > Undo History


class GenerateError(RuntimeError):
    """Generate cannot go on; the message is for the artist."""


def push_undo_step() -> None:
    """Make everything since the last undo step (the applied result, the Smart UV map
    capture added, the live preview) one undo step named :data:`UNDO_STEP`."""
    bpy.ops.ed.undo_push(message=UNDO_STEP)


def client_from_preferences(context) -> Client:
    """A client for the server and token of the add-on preferences."""
    prefs = preferences.get(context)
    return Client(prefs.server_url, preferences.resolve_token(prefs))


class GenerateSession:
    """One Generate run for ``scene`` with ``client``'s server (texture mode).

    ``start(context)`` checks, captures and starts the job (raises GenerateError with a
    clear message; the scene is unchanged then). ``poll()`` -> state ("queued",
    "running", "done", "failed", "cancelled") and writes progress into the settings and
    the preview image. After "done", ``apply()`` applies the result; after "failed"
    ``error`` says why. ``close()`` reverts temporary changes unless applied.
    """

    UNIT = "views"

    def __init__(self, scene: bpy.types.Scene, client: Client):
        self.scene_name = scene.name
        self.client = client
        self.generation: flow.Generation | None = None
        self.error: str | None = None
        self.applied = False
        self._latest_preview: bytes | None = None  # the newest preview of a poll: only it is decoded

    @property
    def scene(self) -> bpy.types.Scene | None:
        return bpy.data.scenes.get(self.scene_name)

    @property
    def settings(self):
        scene = self.scene
        return scene.zs_texturing if scene is not None else None

    @property
    def job(self) -> jobs.RemoteJob | None:
        return None if self.generation is None else self.generation.job

    @property
    def views(self) -> int:
        passes = None if self.generation is None else self.generation.passes
        return 0 if passes is None else passes.views

    @property
    def finished(self) -> bool:
        return self.job is not None and self.job.finished

    # ----------------------------------------------------------------- start

    def start(self, context) -> "GenerateSession":
        """Check (settings, scene, server), capture (main thread), start the job."""
        try:
            options = properties.settings_for(self.settings)
            options.check()  # a bad setting is named before the scene is looked at
            self.generation = self._generation(context, options)
            self.generation.check()
        except ProtocolError as exc:
            raise GenerateError(f"invalid setting {exc}") from None
        except (CaptureError, ServerError) as exc:
            raise GenerateError(str(exc)) from None
        running = jobs.active()
        if running is not None and running.alive:
            raise GenerateError("a ZS job is already running; wait for it or cancel it")
        self._set_status(self._rendering_status(), 0.0)
        try:
            self.generation.capture()
            self.generation.submit()
        except BaseException as exc:
            self.generation.close()
            self._set_status("")
            if isinstance(exc, (CaptureError, ProtocolError, RuntimeError)):
                raise GenerateError(str(exc)) from None
            raise
        self._set_status("Uploading", 0.0, job_id="")
        return self

    def _generation(self, context, options) -> flow.Generation:
        cameras = self._cameras(context)
        return flow.TextureGeneration(self.scene, options, target_objects(context), cameras,
                                      temporary_rig=True, image_folder=self._image_folder(),
                                      client=self.client, progress=self._on_event, temporary_outputs=True,
                                      reference_image=self.settings.reference_image)

    def _rendering_status(self) -> str:
        generation = self.generation
        fill = generation.coverage.get("views_completion", 0)
        return f"Rendering {generation.views} views" + (f" ({fill} completion)" if fill else "")

    def _cameras(self, context) -> list[bpy.types.Object] | None:
        """The selected cameras (by name), or None for the orbit or auto rig (built at capture)."""
        if self.settings.views_source in ("RIG", "AUTO"):
            return None
        cameras = sorted((obj for obj in context.selected_objects if obj.type == "CAMERA"), key=lambda o: o.name)
        if not cameras:
            raise GenerateError("no camera selected: select camera objects, or set Views to Orbit Rig or Auto Rig")
        return cameras

    def _image_folder(self) -> Path | None:
        settings = self.settings
        return output_folder(settings.output_folder) if settings is not None else None

    # ------------------------------------------------------------------ poll

    def _on_event(self, name: str, data: dict) -> None:
        """The generation's events -> the panel's status (rendering) and the preview."""
        if name == "rendering":
            self._set_status(f"Rendered {data['done']}/{data['total']} {self.UNIT}")
            window_manager = bpy.context.window_manager
            if window_manager is not None and not bpy.app.background:
                window_manager.progress_update(int(100 * data["done"] / max(data["total"], 1)))
        elif name == "progress" and data.get("preview") is not None:
            self._latest_preview = data["preview"]

    def poll(self) -> str:
        """Drain the job; update status, progress, job id and the preview -> state."""
        generation = self.generation
        state = generation.poll()
        if self._latest_preview is not None:
            try:
                preview.show(self._latest_preview)
            except ValueError:
                pass  # a preview Blender cannot read is skipped; the job goes on
            self._latest_preview = None
        job = generation.job
        if job.cancel_requested and state not in jobs.FINISHED:
            self._set_status("Cancelling")
        elif state == "queued":  # behind other jobs: say which place and what runs ahead
            self._set_status(jobs.queue_text(job.queue_position, job.waiting_on), 0.0, job.job_id)
        elif state == "running":
            total = max(job.total, 1)
            self._set_status(f"Step {job.step}/{total}" if job.step else "Started", job.step / total, job.job_id)
        elif state == "done":
            self._set_status("Applying", 1.0, job.job_id)
        elif state == "failed":
            self.error = generation.error
            self._set_status(f"Failed: {generation.error}", 0.0, job.job_id)
        elif state == "cancelled":
            self._set_status("Cancelled", 0.0, job.job_id)
        return state

    def cancel(self) -> None:
        """Cancel the job on the server (non-blocking)."""
        if self.generation is not None:
            self.generation.cancel()

    # ---------------------------------------------------------------- finish

    def apply(self) -> set:
        """Apply the downloaded texture with ``zs.apply_result``, as one undo step -> the
        operator's result."""
        generation = self.generation
        items = [{"name": name, "uv_map": uv_map} for name, uv_map in generation.uv_maps.items()]
        folder = self._image_folder()
        result = bpy.ops.zs.apply_result(filepath=str(generation.out_dir / protocol.TEXTURE_PNG), objects=items,
                                         folder=str(folder) if folder else "")
        report = generation.coverage
        seen = f"; {coverage.describe(report, short=True)}" if report else ""
        self._applied("FINISHED" in result, f"Done: texture on {len(items)} object(s){seen}")
        return result

    def _applied(self, applied: bool, status: str) -> None:
        self.applied = self.generation.applied = applied
        if applied:
            self._set_status(status, 1.0)
            push_undo_step()

    def close(self) -> None:
        """Revert temporary changes (unless applied) and remove the download folder."""
        if self.generation is not None:
            self.generation.close()

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
    temporary folder for an unsaved file, moved next to it when it is saved: see
    :mod:`..temporary_frames`), and ``apply()`` loads the frames with ``zs.load_animation``
    (one undo step). A job that fails or is cancelled leaves no folder.
    """

    NAME = "ZS Animation"
    UNIT = "frames"

    def _generation(self, context, options) -> flow.Generation:
        settings = self.settings
        try:
            objects = target_objects(context)
        except CaptureError:  # nothing selected: every mesh that renders is a target
            objects = None
        return flow.AnimationGeneration(self.scene, options, settings.anim_camera or None, objects,
                                        properties.animation_frames(settings, self.scene),
                                        frames_base=output_folder(settings.frames_folder), name=self.NAME,
                                        client=self.client, progress=self._on_event,
                                        reference_image=settings.reference_image)

    def _rendering_status(self) -> str:
        shot = self.generation.shot
        return f"Rendering {len(shot.frames)} frames of {shot.width}x{shot.height}"

    @property
    def frames(self) -> list[int]:
        shot = None if self.generation is None else self.generation.shot
        return [] if shot is None else shot.frames

    @property
    def out_dir(self) -> Path | None:
        return None if self.generation is None else self.generation.out_dir

    @property
    def frames_dir(self) -> Path | None:
        return None if self.out_dir is None else self.out_dir / Path(protocol.FRAME_PNG).parent

    def apply(self) -> set:
        """Load the downloaded frames with ``zs.load_animation`` -> the operator's result."""
        shot = self.generation.shot
        result = bpy.ops.zs.load_animation(directory=str(self.frames_dir), frame_start=shot.frames[0],
                                           frame_count=len(shot.frames), camera=self.generation.camera_name,
                                           scene=self.scene_name, name=self.NAME)
        self._applied("FINISHED" in result, f"Done: {len(shot.frames)} frames from frame {shot.frames[0]} "
                                            f"(camera background, Video Sequencer)")
        return result


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
    # No UNDO here: a redo of this operator would re-run the whole job; the applied result
    # is one undo step of its own (push_undo_step, see the module docstring).
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
        if session is None:  # finished already (an error inside the last timer event ends twice)
            return {"CANCELLED"}
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
        except (RuntimeError, ReferenceError) as exc:  # the apply reported an error; a datablock is gone
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        finally:
            session.close()
            self._session = None


classes = (ZS_OT_generate,)
