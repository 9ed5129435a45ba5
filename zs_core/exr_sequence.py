"""A frame sequence rendered with the "ZS passes" view-layer setting -> animation passes.

An ordinary Blender render with that setting on writes, per frame, a multilayer OpenEXR
(Depth, Normal, UV, Position, Object Index, Vector) and a JSON sidecar beside it with the
camera's matrices (:mod:`zs_core.render_passes` defines both). This module reads such a
sequence with OpenEXR's Python bindings and decodes it with the same decoder the
add-on's own capture uses, so ``zs animate renders/shot_####.exr`` and the server get the
arrays a capture of the same shot would. Blender's own multilayer render output
(``ViewLayer.Depth.Z`` ... in one part, ``IndexOB`` for the object index) reads too.

Headers are checked against the caller's limits before any pixel is read. Imports:
numpy, OpenEXR, the standard library.
"""

from __future__ import annotations

import glob
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import OpenEXR

from . import render_passes
from .protocol import Passes, ProtocolError

# Component letters in the order their values are stacked on the last axis.
_COMPONENT_ORDER = {letter: rank for rank, letters in enumerate(("XRU", "YGV", "ZB", "WA")) for letter in letters}
_PASS_ALIASES = {"IndexOB": "Object Index", "Z": "Depth"}  # Blender's render-output names
_NEEDED = ("Depth", "Normal", "UV", "Position", "Vector")


@dataclass
class RenderedShot:
    """A decoded sequence: ``passes`` (frames first, with uv, mask and vector), the frame
    numbers, the camera's name, the frame rate and the EXR files read."""

    passes: Passes
    frames: list[int]
    camera: str
    fps: float
    files: list[Path]


def sequence_files(source) -> list[Path]:
    """``shot_####.exr`` (a run of ``#`` is any frame number), a glob, a folder of EXRs or
    one EXR -> the existing files, in frame order. Raises ProtocolError when none exists."""
    text = str(source)
    path = Path(text)
    if path.is_dir():
        found = list(path.glob("*.exr"))
    elif "#" in path.name:
        found = _expand_hashes(path)
    elif any(char in text for char in "*?["):
        found = [Path(p) for p in glob.glob(text)]
    else:
        found = [path] if path.is_file() else []
    if not found:
        raise ProtocolError("exr", f"no EXR file matches {text}")
    return sorted(found, key=_frame_key)


def _expand_hashes(pattern: Path) -> list[Path]:
    """Files whose name has digits (any count) where ``pattern`` has its run of ``#``."""
    regex = _hash_regex(pattern.name)
    folder = pattern.parent
    return [p for p in folder.iterdir() if regex.fullmatch(p.name)] if folder.is_dir() else []


def _hash_regex(name: str) -> re.Pattern:
    parts = re.split(r"#+", name)
    return re.compile(r"\d+".join(re.escape(part) for part in parts))


def _frame_key(path: Path) -> tuple[int, str]:
    digits = re.findall(r"\d+", path.stem)
    return (int(digits[-1]) if digits else 0, path.name)


def sidecar_path(exr: Path) -> Path:
    """The camera sidecar the setting writes beside each EXR."""
    return exr.with_suffix(render_passes.SIDECAR_SUFFIX)


def read_layers(path: Path, max_size: int | None = None) -> dict[str, np.ndarray]:
    """One multilayer EXR -> pass name -> (H, W, C) float32, rows top to bottom.

    Channel names are ``[layer.]pass.component``; components stack in X Y Z W / R G B A
    order. ``max_size`` caps width and height, checked on the header before any pixel is
    read. Raises ProtocolError naming the file."""
    try:
        header = OpenEXR.File(str(path), header_only=True)
        for part in header.parts:
            (x0, y0), (x1, y1) = part.header["dataWindow"]
            width, height = int(x1) - int(x0) + 1, int(y1) - int(y0) + 1
            if max_size is not None and max(width, height) > max_size:
                raise ProtocolError("exr", f"{path.name}: {width}x{height} pixels; this server takes at most "
                                           f"{max_size} a side")
        image = OpenEXR.File(str(path), separate_channels=True)
    except ProtocolError:
        raise
    except Exception as exc:  # OpenEXR raises plain exceptions for unreadable or truncated files
        raise ProtocolError("exr", f"{path.name} is not a readable OpenEXR file ({exc})") from None
    grouped: dict[str, list[tuple[int, np.ndarray]]] = {}
    for part in image.parts:
        for name, channel in part.channels.items():
            pieces = name.split(".")
            if len(pieces) < 2:
                continue  # a plain R / G / B image: no named pass
            pass_name = _PASS_ALIASES.get(pieces[-2], pieces[-2])
            grouped.setdefault(pass_name, []).append((_COMPONENT_ORDER.get(pieces[-1], 9), channel.pixels))
    return {name: np.stack([pixels for _rank, pixels in sorted(channels, key=lambda item: item[0])],
                           axis=-1).astype(np.float32, copy=False)
            for name, channels in grouped.items()}


def read_shot(source, max_frames: int | None = None, max_size: int | None = None) -> RenderedShot:
    """An EXR sequence with its sidecars (see :func:`sequence_files`) -> :class:`RenderedShot`.

    Every frame needs its sidecar; frames must be consecutive (the vector pass is each
    pixel's motion to the next frame), of one camera and one size. The target mask is
    the sidecar's ``target_pass_index`` (0: every object the ray hits)."""
    files = sequence_files(source)
    if max_frames is not None and len(files) > max_frames:
        raise ProtocolError("frames", f"{len(files)} frames; this server takes at most {max_frames}")
    if len(files) < 2:
        raise ProtocolError("exr", f"an animation needs at least 2 frames; found {len(files)} ({files[0].name})")
    sidecars = [_load_sidecar(path) for path in files]
    frames = [card["frame"] for card in sidecars]
    _check_sequence(files, sidecars, frames)
    first = sidecars[0]
    height, width = first["height"], first["width"]
    marker = first["target_pass_index"] or render_passes.EVERY_OBJECT
    arrays = render_passes.allocate_views(len(files), height, width, with_vector=True)
    for index, path in enumerate(files):
        raw = read_layers(path, max_size)
        missing = [name for name in _NEEDED if name not in raw]
        if marker is not render_passes.EVERY_OBJECT and "Object Index" not in raw:
            missing.append("Object Index")
        if missing:
            raise ProtocolError("exr", f"{path.name} has no {', '.join(missing)} pass (has {', '.join(sorted(raw))}); "
                                       "render with the ZS passes setting on")
        if raw["Depth"].shape[:2] != (height, width):
            raise ProtocolError("exr", f"{path.name} is {raw['Depth'].shape[1]}x{raw['Depth'].shape[0]} pixels; its "
                                       f"sidecar says {width}x{height}")
        render_passes.decode_view(raw, marker, arrays, index)
    passes = Passes(**arrays,
                    world_to_camera=np.array([card["world_to_camera"] for card in sidecars], np.float32),
                    projection=np.array([card["projection"] for card in sidecars], np.float32))
    return RenderedShot(passes.validate(), frames, first["camera"], first["fps"], files)


def _load_sidecar(exr: Path) -> dict:
    path = sidecar_path(exr)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProtocolError("exr", f"{exr.name} has no camera sidecar {path.name}: render it with the ZS passes "
                                   "setting on (View Layer properties), which writes one per frame") from None
    except OSError as exc:
        raise ProtocolError("exr", f"cannot read {path.name} ({exc.strerror or exc})") from None
    try:
        return render_passes.parse_sidecar(json.loads(text))
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("exr", f"{path.name}: {exc}") from None


def _check_sequence(files: list[Path], sidecars: list[dict], frames: list[int]) -> None:
    for path, card in zip(files, sidecars):
        if card["problems"]:
            raise ProtocolError("exr", f"{path.name}: the render could not write usable ZS passes: "
                                       + "; ".join(card["problems"]))
    gaps = [(a, b) for a, b in zip(frames, frames[1:]) if b != a + 1]
    if gaps:
        raise ProtocolError("exr", f"frames must be consecutive (the vector pass is the motion to the next frame); "
                                   f"{gaps[0][0]} is followed by {gaps[0][1]}")
    first = sidecars[0]
    for path, card in zip(files[1:], sidecars[1:]):
        for key in ("camera", "width", "height", "target_pass_index"):
            if card[key] != first[key]:
                raise ProtocolError("exr", f"{path.name}: {key} {card[key]!r} differs from the first frame's "
                                           f"{first[key]!r}; give one shot (one camera, one size) at a time")


__all__ = ["RenderedShot", "sequence_files", "sidecar_path", "read_layers", "read_shot"]
