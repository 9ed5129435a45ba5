"""Frames of an unsaved file follow it when it is saved.

An animation generated in a .blend that was never saved has no folder next to it, so its
outputs go to a temporary folder (``<temp>/zs-animation-*/frames/NNNN.png``, see
:func:`animation.new_out_dir`), which the system may empty at any time. When the file gets
a path (Save, Save As; not Save Copy, which leaves the open file without one),
:func:`on_save_post` moves every such folder the file uses next to it, into
``//zs_frames/<name>/`` (a free name: an existing folder is never overwritten), points the
image sequences and Video Sequencer strips at the new place with ``//`` paths (a camera's
background image shows the image datablock, so it follows), says so on the console and in
the panel's status, and saves the file once more: the handler runs after the file was
written, and the file on disk must not point at the folder that was just emptied.

Undo: the undo steps from before the move still hold the temporary paths. After an undo or
redo, :func:`on_undo_redo` points what came back with them at where the frames went.

Imports: bpy and the standard library only.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import bpy
from bpy.app.handlers import persistent

from . import animation, apply, compat
from .wire import protocol

# Temporary output folder -> where it went, for this Blender session (see on_undo_redo).
_moved: dict[Path, Path] = {}
_saving = False  # our own save inside on_save_post: its handlers have nothing to do


def temporary_output(path: Path) -> Path | None:
    """The add-on's temporary output folder (``<temp>/zs-animation-*``) that holds
    ``path`` (resolved), or None."""
    temp = Path(tempfile.gettempdir()).resolve()
    for folder in path.parents:
        if folder.parent == temp:
            return folder if folder.name.startswith(animation.TEMPORARY_PREFIX) else None
    return None


def _image_strips(strips):
    """Image strips of a Video Sequencer (meta strips opened)."""
    for strip in strips:
        if strip.type == "IMAGE":
            yield strip
        elif strip.type == "META":
            yield from _image_strips(compat.strips(strip))


def _users() -> list[tuple[object, str, Path]]:
    """(datablock, its path property, the resolved path) of every local image file and
    image strip folder."""
    found = []
    for image in bpy.data.images:
        if image.library is None and image.source in ("FILE", "SEQUENCE") and image.filepath \
                and image.packed_file is None:
            found.append((image, "filepath", Path(bpy.path.abspath(image.filepath)).resolve()))
    for scene in bpy.data.scenes:
        if scene.library is None and scene.sequence_editor is not None:
            for strip in _image_strips(compat.strips(scene.sequence_editor)):
                if strip.directory:
                    found.append((strip, "directory", Path(bpy.path.abspath(strip.directory)).resolve()))
    return found


def _blend_relative(path: Path, folder: bool) -> str:
    try:
        text = bpy.path.relpath(str(path))
    except ValueError:  # another drive (Windows): keep it absolute
        text = str(path)
    return text.rstrip("/\\") + "/" if folder else text


def _point(users, old: Path, new: Path) -> None:
    """Point every user of a path inside ``old`` at the same path inside ``new``."""
    for datablock, prop, path in users:
        if path.is_relative_to(old):
            setattr(datablock, prop, _blend_relative(new / path.relative_to(old), folder=prop == "directory"))


def _folder_name(users) -> str:
    """The folder name for a moved output: its image's (or strip's) name without Blender's
    ".001" suffix, as a file name."""
    names = [datablock.name for datablock, prop, _ in users if prop == "filepath"]
    names += [datablock.name for datablock, _, _ in users]
    return apply.file_stem(re.sub(r"\.\d{3,}$", "", names[0]))


def _frames_base(scene) -> Path:
    """Where moved frames go: the panel's Frames folder when it is next to the .blend,
    else ``//zs_frames``."""
    folder = str(getattr(getattr(scene, "zs_texturing", None), "frames_folder", "") or "")
    return Path(bpy.path.abspath(folder if folder.startswith("//") else f"//{animation.FRAMES_FOLDER}"))


def move_temporary_frames(scene=None) -> list[str]:
    """Move the temporary output folders this (saved) file uses next to it and point their
    users there -> one message per folder ("moved N frames to //zs_frames/NAME")."""
    users = _users()
    outputs: dict[Path, list] = {}
    for user in users:
        output = temporary_output(user[2])
        if output is not None:
            outputs.setdefault(output, []).append(user)
    messages = []
    base = _frames_base(scene or bpy.context.scene)
    for output, using in outputs.items():
        if not output.is_dir():
            continue  # already gone (the system emptied its temporary folder): nothing to move
        target = apply.free_path(base, _folder_name(using), suffix="")
        try:
            base.mkdir(parents=True, exist_ok=True)
            shutil.move(str(output), str(target))
        except OSError as exc:
            if output.is_dir():  # a move across drives copies first: drop a partial copy
                shutil.rmtree(target, ignore_errors=True)
            messages.append(f"could not move the frames in {output} next to the file ({exc}); they stay there")
            continue
        _moved[output] = target
        _point(using, output, target)
        sequences = {target / path.parent.relative_to(output) for datablock, prop, path in using
                     if prop == "filepath" and datablock.source == "SEQUENCE"}
        frames = sum(animation.count_frames(folder) for folder in sequences or
                     [target / Path(protocol.FRAME_PNG).parent])
        messages.append(f"moved {frames} frames to {_blend_relative(target, folder=True)}")
    return messages


def _report(messages: list[str], scenes) -> None:
    text = "; ".join(messages)
    print(f"ZS Texturing: {text}")
    for scene in scenes:
        settings = getattr(scene, "zs_texturing", None)
        if settings is not None:
            settings.status = text[:1].upper() + text[1:]


@persistent
def on_save_post(filepath, *_args) -> None:
    """After a save: move temporary frames next to the file, then save it again."""
    global _saving
    if _saving or not bpy.data.filepath or Path(filepath).resolve() != Path(bpy.data.filepath).resolve():
        return  # our own save, or a copy (the open file keeps no path or another one)
    scene = bpy.context.scene
    moved_before = len(_moved)
    messages = move_temporary_frames(scene)
    if messages:
        _report(messages, [scene])
    if len(_moved) == moved_before:
        return  # nothing moved: the file on disk is right as it is
    _saving = True
    try:
        bpy.ops.wm.save_mainfile()
    except RuntimeError as exc:
        _report(messages + [f"saving the new paths failed ({exc}): save the file again"], [scene])
    finally:
        _saving = False


@persistent
def on_undo_redo(*_args) -> None:
    """After an undo or redo: what points into a moved temporary folder points at its new place."""
    if not _moved:
        return
    users = _users()
    for old, new in _moved.items():
        if not old.exists():
            _point(users, old, new)


HANDLERS = (("save_post", on_save_post), ("undo_post", on_undo_redo), ("redo_post", on_undo_redo))
