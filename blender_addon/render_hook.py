"""What happens when a render with ZS passes ends: the camera sidecars, and Restyle After
Render (the opt-in hook).

Once a render of a view layer with ZS passes ends, this writes the frames' camera
sidecars (:func:`.zs_passes.write_sidecars`, on the main thread). When it was an animation
render with Restyle After Render on, the EXR files and sidecars then go to the
server as one animation job (the server decodes them, :mod:`zs_core.exr_sequence`), with
the ZS panel's Animation settings. When the job is done, its frames are written beside
the render output (``<render folder>/ZS_Restyle/frames/``) and loaded as a new image
sequence strip and camera background, as the panel's Generate loads them.

The render is never blocked or altered: the hook starts only once the render has
completed; in Blender's UI it runs on a timer (the network on a worker thread), and in
``blender -b -a`` it waits for the job after the render, so the farm node's command ends
with the frames on disk. A failure (no server, a refused job) is printed and shown in the
View Layer panel; the render's own files are untouched. Imports: bpy, the standard
library and numpy only.
"""

from __future__ import annotations

import io
import json
import threading
import zipfile
from pathlib import Path

import bpy
from bpy.app.handlers import persistent

from . import animation, flow, preferences, properties, zs_passes
from .client import Client, ServerError
from .errors import CaptureError
from .wire import ProtocolError, render_passes

NAME = "ZS Restyle"
POLL_SECONDS = 0.5
STATUS = {"text": ""}  # the last hook's state, drawn by the View Layer panel


class RenderedAnimation(flow.AnimationGeneration):
    """An animation job whose passes an ordinary render wrote: ``sidecars`` are the frames'
    JSON sidecars (each beside its EXR). Nothing is rendered here; the upload is a zip of
    the files, and :meth:`apply` loads the frames as the panel's Generate does."""

    def __init__(self, scene, settings, sidecars, **options):
        super().__init__(scene, settings, name=NAME, frames_base=render_folder(scene), **options)
        self.sidecars = [Path(path) for path in sidecars]

    def _check_scene(self):
        request = self.settings.check()
        cards = []
        for path in self.sidecars:
            try:
                cards.append(render_passes.parse_sidecar(json.loads(path.read_text(encoding="utf-8"))))
            except (OSError, ValueError) as exc:
                raise CaptureError(f"{path.name}: {exc}") from None
            if not path.with_suffix(".exr").is_file():
                raise CaptureError(f"the render wrote no {path.with_suffix('.exr').name} (the compositor's ZS Passes "
                                   "node did not run)")
        problems = sorted({problem for card in cards for problem in card["problems"]})
        if problems:
            raise CaptureError("the render's ZS passes are not usable: " + "; ".join(problems))
        if len(cards) < 2:
            raise CaptureError("an animation needs at least 2 rendered frames")
        first = cards[0]
        request.fps = first["fps"]
        camera = bpy.data.objects.get(first["camera"])
        self.camera_name = first["camera"]
        self.shot = animation.Shot([card["frame"] for card in cards], camera, [], None, True,
                                   first["width"], first["height"])
        return request

    def capture(self):
        return None  # the render wrote the passes

    def _upload(self) -> tuple[bytes, str]:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:  # EXRs are compressed already
            for sidecar in self.sidecars:
                for path in (sidecar.with_suffix(".exr"), sidecar):
                    archive.write(path, path.name)
        return buffer.getvalue(), "exr_sequence"


def render_folder(scene: bpy.types.Scene) -> Path:
    """The folder the render's own output goes to (its file path's folder)."""
    return Path(bpy.path.abspath(scene.render.filepath)).parent


def restyle(scene: bpy.types.Scene, sidecars, client: Client, blocking: bool) -> RenderedAnimation | None:
    """Start the job of one render's ZS passes -> the generation (None when it could not
    start; the reason is in :data:`STATUS` and printed). ``blocking`` waits for it and
    loads the frames before returning; otherwise a timer does that."""
    settings = properties.settings_for(scene.zs_texturing, "animation")
    generation = RenderedAnimation(scene, settings, sidecars, client=client, progress=_progress)
    try:
        generation.check()
        generation.submit()
    except (CaptureError, ProtocolError, ServerError, OSError, RuntimeError) as exc:  # RuntimeError: a job runs
        generation.close()
        _report(f"not restyled: {exc} (the render's files are untouched)")
        return None
    _report(f"job submitted: {len(sidecars)} frames")
    if blocking:
        _finish_blocking(generation)
    else:
        bpy.app.timers.register(lambda: _tick(generation), first_interval=POLL_SECONDS)
    return generation


def _finish_blocking(generation: RenderedAnimation) -> None:
    try:
        generation.wait()
        _apply(generation)
    except (ServerError, CaptureError) as exc:
        _report(f"not restyled: {exc} (the render's files are untouched)")
    finally:
        generation.close()


def _tick(generation: RenderedAnimation):
    """Timer callback: follow the job; load the frames when done -> seconds to the next call."""
    state = generation.poll()
    if state not in flow.FINISHED:
        return POLL_SECONDS
    try:
        if state == "done":
            _apply(generation)
        else:
            _report(f"not restyled: the job {state}: {generation.error or ''} (the render's files are untouched)")
    except CaptureError as exc:
        _report(f"not restyled: {exc}")
    finally:
        generation.close()
    return None


def _apply(generation: RenderedAnimation) -> None:
    loaded = generation.apply()
    folder = generation.out_dir
    _report(f"restyled {len(generation.shot.frames)} frames into {folder}; loaded as {loaded.image.name!r}")


def _progress(name: str, data: dict) -> None:
    if name == "progress":
        STATUS["text"] = f"restyling: step {data.get('step')}/{data.get('total')}"


def _report(text: str) -> None:
    STATUS["text"] = text
    print(f"ZS Restyle After Render: {text}")


@persistent
def _on_render_complete(scene, _depsgraph=None) -> None:
    _after_render(scene, completed=True)


@persistent
def _on_render_cancel(scene, _depsgraph=None) -> None:
    _after_render(scene, completed=False)  # the frames rendered so far still get their sidecars


def _after_render(scene, completed: bool) -> None:
    """On the main thread (a timer when the render ran on the render thread, as in
    Blender's window): write the sidecars, then restyle a completed animation render."""
    if threading.current_thread() is threading.main_thread():
        _finish(scene.name, completed)
    else:
        name = scene.name
        bpy.app.timers.register(lambda: _finish(name, completed), first_interval=0.0)


def _finish(scene_name: str, completed: bool) -> None:
    scene = bpy.data.scenes.get(scene_name)
    if scene is None:
        return
    written = zs_passes.write_sidecars(scene)
    if not completed:
        return
    for view_layer in zs_passes.enabled_layers(scene):
        sidecars = written.get(view_layer.name, [])
        if not view_layer.zs_passes.restyle_after_render or len(sidecars) < 2:
            continue  # a still render, or the hook is off
        prefs = preferences.get()
        client = Client(prefs.server_url, preferences.resolve_token(prefs))
        restyle(scene, sidecars, client, blocking=bpy.app.background)
        break  # one job per render: the first layer that asks


HANDLERS = (("render_complete", _on_render_complete), ("render_cancel", _on_render_cancel))
