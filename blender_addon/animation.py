"""Animation on the Blender side: the checks before a frame capture, and the generated
frames loaded back into the scene as an image sequence.

An animation job renders one camera over a range of consecutive frames
(:func:`pass_render.render_frame_passes`, with the vector pass) and gets back
``frames/NNNN.png`` (0-based, the wire format's ``FRAME_PNG``). :func:`load_frames` then
adds, without touching anything that exists:

- a NEW image datablock (source ``SEQUENCE``) reading those files;
- a NEW background image on the camera showing it, timed to the frame range
  (visible in the camera view; ``show_background_images`` is turned on);
- a NEW image strip in the Video Sequencer, on the first channel that is free over the
  range, starting at the range's first frame.

No ``bpy.ops`` inside, so the whole load falls into one undo step: the one an operator
with ``{'REGISTER', 'UNDO'}`` pushes when run from the interface, or the one Generate
pushes after it. Imports: bpy, the standard library and numpy only.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import bpy

from . import apply, compat, pass_render
from .datablocks import unique_name
from .errors import CaptureError
from .scene_objects import background_surfaces
from .uv_layers import has_uv
from .wire import protocol

FRAMES_FOLDER = "zs_frames"  # next to the .blend: //zs_frames/<name>/frames/NNNN.png
# An unsaved file's outputs: <temp>/zs-animation-*/ (moved next to the file when it is saved:
# see temporary_frames.py).
TEMPORARY_PREFIX = "zs-animation-"
MAX_CHANNEL = 128  # the Video Sequencer's channel count


# ----------------------------------------------------------------------- frame range


def parse_frames(text: str) -> tuple[int, int]:
    """``"1-48"`` (also ``1..48``, ``1:48``) or ``"12"`` -> (first, last), both included.
    Raises :class:`CaptureError` naming the text."""
    try:
        return protocol.parse_frame_range(text)
    except protocol.ProtocolError as exc:
        raise CaptureError(str(exc)) from None


def range_text(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}-{last}"


def frame_list(frames, scene: bpy.types.Scene) -> list[int]:
    """The frames to render, checked against ``scene``'s frame range.

    ``frames``: None (the scene's range), ``"A-B"``, a ``range`` of step 1, or a pair
    ``(first, last)`` (both included). Frames outside the scene's range are an error
    naming them: the scene's animation is what gets rendered.
    """
    if frames is None:
        first, last = scene.frame_start, scene.frame_end
    elif isinstance(frames, str):
        first, last = parse_frames(frames)
    elif isinstance(frames, range):
        if frames.step != 1 or len(frames) == 0:
            raise CaptureError(f"frames: {frames!r} is not a non-empty range of consecutive frames")
        first, last = frames[0], frames[-1]
    else:
        try:
            first, last = (int(value) for value in frames)
        except (TypeError, ValueError):
            raise CaptureError(f"frames: expected 'FIRST-LAST', a range or (first, last), got {frames!r}") from None
        if last < first:
            raise CaptureError(f"frames: ({first}, {last}) ends before it starts")
    low, high = scene.frame_start, scene.frame_end
    outside = [range_text(a, b) for a, b in ((first, min(last, low - 1)), (max(first, high + 1), last)) if a <= b]
    if outside:
        raise CaptureError(f"frames {range_text(first, last)}: frame(s) {' and '.join(outside)} are outside the "
                           f"frame range {range_text(low, high)} of scene {scene.name!r}; pick frames inside it "
                           f"or extend the scene's range")
    return list(range(first, last + 1))


# --------------------------------------------------------------------------- targets


def scene_camera(scene: bpy.types.Scene, camera=None, frames: Sequence[int] | None = None) -> bpy.types.Object:
    """The camera to animate from: ``camera`` (an object or its name), else the scene's
    active camera. It must be a camera object that is part of ``scene`` and, over
    ``frames`` (when given), render in every frame; the scene's camera must stay the same
    one (timeline markers can switch it)."""
    chosen = camera is not None
    if camera is None:
        camera = scene.camera
        if camera is None:
            raise CaptureError(f"scene {scene.name!r} has no active camera: add a camera and make it active "
                               "(Ctrl+Numpad 0), or name one")
    elif isinstance(camera, str):
        found = bpy.data.objects.get(camera)
        if found is None:
            raise CaptureError(f"camera {camera!r} does not exist")
        camera = found
    if getattr(camera, "type", None) != "CAMERA":
        raise CaptureError(f"{getattr(camera, 'name', camera)!r} is not a camera object")
    if scene.objects.get(camera.name) != camera:
        raise CaptureError(f"camera {camera.name!r} is not in scene {scene.name!r}; link it to the scene "
                           "or pick one of its cameras")
    if frames:
        _check_camera_over(scene, camera, list(frames), chosen)
    return camera


def _check_camera_over(scene, camera, frames: list[int], chosen: bool) -> None:
    """Step through ``frames`` (the scene's frame is restored): CaptureError when the
    scene's camera switches (unless a camera was chosen) or ``camera`` is disabled in
    renders in some of them."""
    current = (scene.frame_current, scene.frame_subframe)
    switched, hidden = {}, []
    try:
        for frame in frames:
            scene.frame_set(frame)
            if not chosen and scene.camera != camera:
                switched.setdefault(getattr(scene.camera, "name", "no camera"), []).append(frame)
            if camera.hide_render:
                hidden.append(frame)
    finally:
        scene.frame_set(current[0], subframe=current[1])
    if switched:
        others = "; ".join(f"{name!r} in frame(s) {_frame_list_text(numbers)}" for name, numbers in switched.items())
        raise CaptureError(f"the scene's camera changes during the shot (timeline markers): {camera.name!r} at the "
                           f"start, {others}; name the camera to render")
    if hidden:
        raise CaptureError(f"camera {camera.name!r} is disabled in renders in frame(s) {_frame_list_text(hidden)} "
                           "of the shot")


def _frame_list_text(frames: list[int]) -> str:
    """[1, 2, 3, 7] -> "1-3, 7"."""
    runs, start = [], frames[0]
    for previous, frame in zip(frames, frames[1:] + [None]):
        if frame != previous + 1:
            runs.append(range_text(start, previous))
            start = frame
    return ", ".join(runs)


def scene_meshes(scene: bpy.types.Scene) -> list[bpy.types.Object]:
    """Every mesh object of ``scene`` that renders, by name."""
    meshes = sorted((obj for obj in scene.objects if obj.type == "MESH" and not obj.hide_render),
                    key=lambda obj: obj.name)
    if not meshes:
        raise CaptureError(f"scene {scene.name!r} has no mesh object to animate")
    return meshes


def check_targets(objects: Sequence[bpy.types.Object], uv_map: str | None, uv_needed: bool) -> bool:
    """Check the target meshes before anything renders -> whether to capture the UV pass.

    Objects disabled in renders are an error. Without a UV map (``uv_map``, or any UV map
    when None) an object is an error when ``uv_needed``; otherwise the capture goes without
    the UV pass (then there is no temporal metric on the objects either)."""
    for obj in objects:
        if obj.hide_render:
            raise CaptureError(f"object {obj.name!r} is disabled in renders; enable it to animate it")
    missing = [obj.name for obj in objects
               if not (uv_map in obj.data.uv_layers if uv_map else has_uv(obj))]
    if missing and uv_needed:
        what = f"no UV map named {uv_map!r}" if uv_map else "no UV map"
        raise CaptureError(f"object {missing[0]!r} has {what}; surface noise and temporal UV sync follow the "
                           "surface through its UVs: unwrap it, or use another noise with UV sync at 0")
    return not missing


def frame_size(scene: bpy.types.Scene, width: int | None = None, height: int | None = None) -> tuple[int, int]:
    """Frame width and height: the ones given (checked against the parameter table:
    ProtocolError names a bad one), else the scene's output size (resolution times its
    percentage) rounded to multiples of 8 and into the table's range, so the camera
    frames the same shot."""
    render = scene.render
    scale = render.resolution_percentage / 100.0
    defaults = {"width": render.resolution_x * scale, "height": render.resolution_y * scale}
    sizes = []
    for name, value in (("width", width), ("height", height)):
        parameter = protocol.PARAMETERS[name]
        if value is None:
            value = min(max(int(round(defaults[name] / parameter.multiple_of)) * parameter.multiple_of,
                            parameter.low), parameter.high)
        sizes.append(parameter.check(value, protocol.ANIMATION))
    return sizes[0], sizes[1]


@dataclass
class Shot:
    """What an animation renders, every check passed: the scene frames, the camera, the
    target meshes, the UV map they follow (None: each one's active render map), whether
    the UV pass is captured, the frame size, and whether the other UV-mapped meshes are
    told apart (``background_id``, for ``background_uv``)."""

    frames: list[int]
    camera: Any
    objects: list
    uv_map: str | None
    with_uv: bool
    width: int
    height: int
    background_ids: bool = False

    def render(self, scene: bpy.types.Scene, on_view: pass_render.ViewCallback | None = None):
        """The passes of every frame (with the vector pass) -> the add-on's Passes;
        ``on_view(rendered, total)`` after each frame."""
        return pass_render.render_frame_passes(scene, self.camera, self.objects, self.frames, self.width,
                                               self.height, uv_map=self.uv_map, with_vector=True,
                                               with_uv=self.with_uv, on_view=on_view,
                                               background_ids=self.background_ids)


def check_shot(scene: bpy.types.Scene, request, camera=None, objects=None, frames=None, uv_map: str | None = None,
               width: int | None = None, height: int | None = None) -> Shot:
    """Every check an animation needs before anything renders -> the :class:`Shot`.

    ``frames`` as :func:`frame_list`, ``camera`` as :func:`scene_camera`, ``objects``
    (None: every mesh that renders) as :func:`check_targets` against ``request``'s needs,
    ``width`` / ``height`` as :func:`frame_size`."""
    if not compat.writes_motion_to_next_frame():
        raise CaptureError(compat.NO_MOTION_TO_NEXT_FRAME)
    numbers = frame_list(frames, scene)
    camera = scene_camera(scene, camera, numbers)
    every_mesh = objects is None
    objects = scene_meshes(scene) if every_mesh else list(objects)
    with_uv = check_targets(objects, uv_map, bool(request.uv_pass_uses()))
    # background_uv (on by default) where there is a background to sync through UV: none
    # when every mesh is a target or no other mesh has a UV map (then the vector pass alone).
    background_ids = bool(request.background_uv and with_uv and not every_mesh
                          and background_surfaces(scene, objects))
    width, height = frame_size(scene, width, height)
    return Shot(numbers, camera, objects, uv_map, with_uv, width, height, background_ids=background_ids)


def new_out_dir(base, name: str) -> Path:
    """A new folder for one animation's outputs: ``base/<name>`` (``<name>_001`` ... when
    taken; not created yet), or a new temporary folder when ``base`` is None."""
    if base is None:
        return Path(tempfile.mkdtemp(prefix=TEMPORARY_PREFIX))
    return apply.free_path(Path(base), apply.file_stem(name), suffix="")


# ------------------------------------------------------------------------- the result


def frame_files(folder, count: int) -> list[Path]:
    """``folder/0000.png`` ... for ``count`` frames (the wire format's numbering); all must exist."""
    folder = Path(folder)
    files = [folder / Path(protocol.FRAME_PNG.format(index=index)).name for index in range(count)]
    missing = [path.name for path in files if not path.is_file()]
    if missing:
        raise CaptureError(f"the job wrote {count - len(missing)} of {count} frames into {folder} "
                           f"(missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}); nothing to load")
    return files


def count_frames(folder) -> int:
    """How many consecutive frame files ``0000.png``, ``0001.png`` ... ``folder`` holds."""
    folder = Path(folder)
    count = 0
    while (folder / Path(protocol.FRAME_PNG.format(index=count)).name).is_file():
        count += 1
    return count


@dataclass
class LoadedFrames:
    """What :func:`load_frames` added: the image sequence, the camera background image
    that shows it, the Video Sequencer strip, and the frames they cover."""

    image: Any
    background: Any
    strip: Any
    frame_start: int
    frame_count: int

    @property
    def frame_end(self) -> int:
        return self.frame_start + self.frame_count - 1


def load_frames(scene: bpy.types.Scene, camera: bpy.types.Object, files: Sequence, frame_start: int,
                name: str = "ZS Animation") -> LoadedFrames:
    """Show the frame files (consecutive numbers, e.g. from :func:`frame_files`) from scene
    frame ``frame_start`` on: a new image sequence datablock, a new background image of
    ``camera`` and a new image strip in ``scene``'s Video Sequencer. Paths are relative to
    the saved .blend where possible. Nothing that exists is changed, apart from adding the
    background image to the camera (and showing its background images)."""
    files = [Path(path).resolve() for path in files]
    if not files:
        raise CaptureError("no frame to load")
    folder = files[0].parent
    numbers = [_frame_number(path) for path in files]
    if any(path.parent != folder for path in files) or numbers != list(range(numbers[0], numbers[0] + len(files))):
        raise CaptureError(f"frames: expected consecutively numbered files in one folder, got "
                           f"{', '.join(path.name for path in files[:4])} ...")
    for path in files:
        if not path.is_file():
            raise CaptureError(f"frame file {path} does not exist")
    if camera.type != "CAMERA":
        raise CaptureError(f"{camera.name!r} is not a camera object")
    count = len(files)

    image = bpy.data.images.load(str(files[0]), check_existing=False)
    image.name = unique_name(bpy.data.images, name)
    image.source = "SEQUENCE"
    relative_first = _relative(files[0])
    if relative_first != str(files[0]):
        image.filepath = relative_first

    data = camera.data
    background = data.background_images.new()
    background.source = "IMAGE"
    background.image = image
    user = background.image_user
    # Blender shows file number (frame - frame_start + 1) + frame_offset.
    user.frame_start, user.frame_duration, user.frame_offset = frame_start, count, numbers[0] - 1
    background.alpha = 1.0
    background.frame_method = "FIT"
    data.show_background_images = True

    editor = scene.sequence_editor or scene.sequence_editor_create()
    channel = free_channel(editor, frame_start, frame_start + count)
    strip = compat.strips(editor).new_image(name=name, filepath=str(files[0]), channel=channel, frame_start=frame_start,
                                    fit_method="FIT")
    for path in files[1:]:
        strip.elements.append(path.name)
    directory = _relative(folder)
    if directory != str(folder):
        strip.directory = directory.rstrip("/\\") + "/"
    return LoadedFrames(image=image, background=background, strip=strip, frame_start=frame_start,
                        frame_count=count)


def free_channel(editor, start: int, end: int) -> int:
    """The lowest Video Sequencer channel with no strip over frames [start, end)."""
    busy = {strip.channel for strip in compat.strips(editor)
            if strip.frame_final_start < end and strip.frame_final_end > start}
    for channel in range(1, MAX_CHANNEL + 1):
        if channel not in busy:
            return channel
    raise CaptureError(f"every Video Sequencer channel is taken over frames {start}-{end - 1}; free one")


def _frame_number(path: Path) -> int:
    match = re.search(r"(\d+)$", path.stem)
    if match is None:
        raise CaptureError(f"frame file {path.name!r} has no frame number")
    return int(match.group(1))


def _relative(path: Path) -> str:
    """``//``-relative to the saved .blend when possible, else the absolute path."""
    if not bpy.data.filepath:
        return str(path)
    try:
        return bpy.path.relpath(str(path))
    except ValueError:  # another drive (Windows)
        return str(path)


__all__ = ["parse_frames", "frame_list", "scene_camera", "scene_meshes", "check_targets", "frame_size",
           "Shot", "check_shot",
           "new_out_dir", "count_frames", "frame_files", "load_frames", "LoadedFrames",
           "FRAMES_FOLDER", "TEMPORARY_PREFIX"]
