"""The wire format: job request, per-view passes, and result layout.

This module is the one source of truth shared by the Blender add-on (relative import
inside the extension package), the server and the sampler. Standard library and numpy
only: it must import inside Blender.

A job is ``request.json`` (a :class:`Request`) plus ``passes.npz`` (a :class:`Passes`).
Arrays are float32 unless noted, views (or frames) first, pixel rows top to bottom.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import numpy as np

PROTOCOL_VERSION = 1

NOISE_MODES = ("iid", "fixed", "mixed", "progressive", "dependency", "surface")
# Animation with surface noise: how background pixels vary over frames ("auto": warped
# along the vector pass when there is one, else dependency).
BACKGROUND_NOISE_MODES = ("auto", "iid", "fixed", "mixed", "progressive", "dependency", "warped")
ATTENTION_MODES = ("self", "extended", "neighbors", "keyframes", "tma")
ANIMATION_ATTENTION = ("self", "keyframes", "tma")  # what an animation job takes
# Where an animation starts unless told otherwise: the CLI, the Blender panel and the
# script API all take these (the Request defaults stay neutral: no sync, self-attention).
ANIMATION_DEFAULTS = {"noise": "surface", "attention": "tma", "sync_strength": 0.9, "background_sync": 0.9,
                      "pixel_sync": 0.3}
KEYFRAME_POLICIES = ("first", "first_previous", "middle")
LAYOUTS = ("views", "grid")
SCHEDULERS = ("ddim", "dpmpp", "unipc")
JOB_KINDS = ("texture", "animation")

# Result layout inside a job's output folder / result zip.
VIEW_PNG = "views/{index:04d}.png"
FRAME_PNG = "frames/{index:04d}.png"
TEXTURE_PNG = "texture.png"
METRICS_JSON = "metrics.json"
CONTACT_SHEET_PNG = "contact_sheet.png"


class ProtocolError(ValueError):
    """Bad input. ``field`` names the offending request field or array."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


_FRAME_RANGE = re.compile(r"^\s*(-?\d+)\s*(?:(?:-|\.\.|:)\s*(-?\d+)\s*)?$")


def parse_frame_range(text: str) -> tuple[int, int]:
    """``"1-48"`` (also ``1..48``, ``1:48``) or ``"12"`` -> (first, last), both included.
    Raises :class:`ProtocolError` for ``frames`` naming the text."""
    match = _FRAME_RANGE.match(str(text))
    if match is None:
        raise ProtocolError("frames", f"{text!r} is not a frame range; write FIRST-LAST, e.g. 1-48")
    first = int(match.group(1))
    last = int(match.group(2)) if match.group(2) is not None else first
    if last < first:
        raise ProtocolError("frames", f"{text!r} ends before it starts; write FIRST-LAST with FIRST <= LAST")
    return first, last


def _check(condition: bool, field_name: str, message: str) -> None:
    if not condition:
        raise ProtocolError(field_name, message)


@dataclass
class Request:
    """What to generate and how. Every field is validated by :meth:`validate`."""

    prompt: str = ""
    negative_prompt: str = ""
    kind: str = "texture"
    seed: int = 0
    steps: int = 20
    guidance_scale: float = 7.5
    scheduler: str = "ddim"
    # ControlNet: conditioning scale and the guidance window as fractions of the steps.
    controlnet_scale: float = 1.0
    control_start: float = 0.0
    control_end: float = 1.0
    # Initial noise (see DESIGN.md "The methods").
    noise: str = "surface"
    noise_alpha: float = 1.0  # mixed / progressive (PYoCo) shared-noise ratio
    noise_lambda: float = 0.1  # dependency (ZS2) target divergence between frames
    background_noise: str = "auto"  # animation + surface noise: the background's model
    # Attention across views / frames.
    attention: str = "self"
    reference_view: int = 0  # neighbors: the extra view every view attends to
    reference_weight: float = 1.0  # neighbors: weight of the reference view's keys
    keyframes: str = "first"  # keyframes policy
    momentum: float = 0.5  # tma: mu
    layout: str = "views"  # "grid" tiles all views into one image
    chunk: int = 16  # animation: frames per model batch (attention also sees anchor frames)
    # UV latent synchronisation (texturing; sync_strength 0 turns it off).
    sync_strength: float = 0.0
    sync_end: float = 0.0  # sync while t / T is above this fraction (0: every step)
    sync_exponent_start: float = 1.0  # cos(theta)^p, p rising over the steps
    sync_exponent_end: float = 6.0
    # Animation: background x0 carried along the vector pass into the next frame (0: off).
    background_sync: float = 0.0
    # Animation: background surfaces with UV (passes.background_id) synced through their UV
    # at background_sync instead of along the vector pass.
    background_uv: bool = False
    # Animation: decoded frames carried frame to frame in pixels (object through UV, the rest
    # along the vector pass), the share each frame takes from the previous (0: off).
    pixel_sync: float = 0.0
    fps: float = 24.0  # animation: frame rate of the MP4 (the scene's, from Blender)
    texture_size: int = 1024

    _choices: ClassVar[dict[str, tuple[str, ...]]] = {
        "kind": JOB_KINDS,
        "noise": NOISE_MODES,
        "background_noise": BACKGROUND_NOISE_MODES,
        "attention": ATTENTION_MODES,
        "keyframes": KEYFRAME_POLICIES,
        "layout": LAYOUTS,
        "scheduler": SCHEDULERS,
    }
    _ranges: ClassVar[dict[str, tuple[float, float]]] = {
        "seed": (0, 2**63 - 1),
        "steps": (1, 1000),
        "guidance_scale": (0.0, 50.0),
        "controlnet_scale": (0.0, 5.0),
        "control_start": (0.0, 1.0),
        "control_end": (0.0, 1.0),
        "noise_alpha": (0.0, 100.0),
        "noise_lambda": (0.0, 2.0),
        "reference_view": (0, 10_000),
        "chunk": (1, 10_000),
        "reference_weight": (0.0, 100.0),
        "momentum": (0.0, 1.0),
        "sync_strength": (0.0, 1.0),
        "background_sync": (0.0, 1.0),
        "pixel_sync": (0.0, 1.0),
        "fps": (1.0, 1000.0),
        "sync_end": (0.0, 1.0),
        "sync_exponent_start": (0.0, 64.0),
        "sync_exponent_end": (0.0, 64.0),
        "texture_size": (16, 8192),
    }

    def validate(self) -> "Request":
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            expected = {"int": int, "float": float, "bool": bool}.get(f.type, str)
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
                setattr(self, f.name, value)
            _check(
                isinstance(value, expected) and (expected is bool or not isinstance(value, bool)),
                f.name,
                f"expected {expected.__name__}, got {type(value).__name__}",
            )
            if expected is float:
                _check(math.isfinite(value), f.name, "must be a finite number")
            if f.name in self._choices:
                _check(value in self._choices[f.name], f.name,
                       f"unknown value {value!r}; expected one of {', '.join(self._choices[f.name])}")
            if f.name in self._ranges:
                lo, hi = self._ranges[f.name]
                _check(lo <= value <= hi, f.name, f"{value} is outside [{lo}, {hi}]")
        _check(self.control_start <= self.control_end, "control_end",
               "must not be smaller than control_start")
        _check(len(self.prompt) <= 4000, "prompt", "longer than 4000 characters")
        if self.kind == "animation":
            _check(self.attention in ANIMATION_ATTENTION, "attention",
                   f"{self.attention!r} is for texture jobs; an animation takes {', '.join(ANIMATION_ATTENTION)}")
            _check(self.layout == "views", "layout", "an animation samples its frames as a batch; use layout 'views'")
        return self

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["protocol"] = PROTOCOL_VERSION
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Request":
        _check(isinstance(data, Mapping), "request", "expected a JSON object")
        data = dict(data)
        version = data.pop("protocol", PROTOCOL_VERSION)
        _check(version == PROTOCOL_VERSION, "protocol",
               f"version {version!r} is not supported (expected {PROTOCOL_VERSION})")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        _check(not unknown, unknown[0] if unknown else "request", "unknown field")
        return cls(**data).validate()

    @classmethod
    def from_json(cls, text: str | bytes) -> "Request":
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ProtocolError("request", f"not valid JSON ({exc})") from None
        return cls.from_dict(data)


# name -> (trailing shape after the leading view axis, dtype kind); None = any size.
_VIEW_ARRAYS: dict[str, tuple[tuple[int | None, ...], str]] = {
    "depth": ((), "f"),
    "normal": ((3,), "f"),
    "uv": ((2,), "f"),
    "position": ((3,), "f"),
    "mask": ((), "b"),
    "vector": ((2,), "f"),
    "background_id": ((), "i"),
}
_CAMERA_ARRAYS = ("world_to_camera", "projection")
_DTYPES = {"f": np.dtype(np.float32), "b": np.dtype(np.bool_), "i": np.dtype(np.int32)}


def _in_unit_square(values: np.ndarray) -> bool:
    """Every value finite and in [0, 1] (NaN fails both comparisons)."""
    return bool(values.min(initial=0.0) >= 0.0 and values.max(initial=1.0) <= 1.0)
_TEXEL_ARRAYS: dict[str, tuple[tuple[int, ...], str]] = {
    "texel_position": ((3,), "f"),
    "texel_normal": ((3,), "f"),
    "texel_mask": ((), "b"),
}


@dataclass
class Passes:
    """Per-view render passes in the wire layout.

    depth (V, H, W) float32 camera-space distance, background >= 1e9;
    normal (V, H, W, 3) world space; uv (V, H, W, 2) in [0, 1]; position (V, H, W, 3)
    world space; mask (V, H, W) bool target pixels; vector (V, H, W, 2) optional, pixels
    to the next frame; background_id (V, H, W) int32 optional: k >= 1 where the pixel sees
    the k-th background surface (a non-target object with a UV map, whose UV is then in
    ``uv`` there), 0 elsewhere (targets, the world, objects without UV);
    world_to_camera, projection (V, 4, 4); texel_position,
    texel_normal (T, T, 3) and texel_mask (T, T) bool, optional (texturing only).
    """

    depth: np.ndarray
    mask: np.ndarray
    uv: np.ndarray | None = None
    normal: np.ndarray | None = None
    position: np.ndarray | None = None
    vector: np.ndarray | None = None
    background_id: np.ndarray | None = None
    world_to_camera: np.ndarray | None = None
    projection: np.ndarray | None = None
    texel_position: np.ndarray | None = None
    texel_normal: np.ndarray | None = None
    texel_mask: np.ndarray | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def views(self) -> int:
        return int(self.depth.shape[0])

    @property
    def height(self) -> int:
        return int(self.depth.shape[1])

    @property
    def width(self) -> int:
        return int(self.depth.shape[2])

    def arrays(self) -> dict[str, np.ndarray]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extras"}
        out = {k: v for k, v in out.items() if v is not None}
        out.update(self.extras)
        return out

    def validate(self, *, require: tuple[str, ...] = ()) -> "Passes":
        """Check shapes, dtypes and values; raise :class:`ProtocolError` naming the array."""
        for name in require:
            _check(getattr(self, name, None) is not None, name, "missing from the passes")
        _check(isinstance(self.depth, np.ndarray) and self.depth.ndim == 3, "depth",
               f"expected shape (V, H, W), got {getattr(self.depth, 'shape', None)}")
        v, h, w = self.depth.shape
        _check(v >= 1 and h >= 8 and w >= 8, "depth", f"expected at least 1 view of 8x8, got {self.depth.shape}")
        for name, (trailing, kind) in _VIEW_ARRAYS.items():
            array = getattr(self, name)
            if array is None:
                continue
            expected = (v, h, w, *trailing)
            _check(isinstance(array, np.ndarray) and array.shape == expected, name,
                   f"expected shape {_shape_text(expected)}, got {getattr(array, 'shape', None)}")
            _check(array.dtype == _DTYPES[kind], name, f"expected dtype {_DTYPES[kind].name}, got {array.dtype}")
        _check(bool(self.mask.any()), "mask", "no view sees the target object (all masks are empty)")
        if self.background_id is not None:
            _check(self.uv is not None, "background_id", "needs the uv pass (background surfaces are in its UV)")
            _check(bool((self.background_id >= 0).all()), "background_id", "negative ids")
            _check(not bool((self.mask & (self.background_id > 0)).any()), "background_id",
                   "target pixels must have id 0")
            if not _in_unit_square(self.uv):  # whole array first; gather only on a failure
                _check(_in_unit_square(self.uv[self.background_id > 0]), "uv",
                       "values outside [0, 1] or not finite on background surface pixels")
        _check(not np.isnan(self.depth).any(), "depth", "contains NaN")
        # Whole-array checks first (no gather); only a failure looks at the target pixels.
        for name in ("uv", "normal", "position", "vector"):
            array = getattr(self, name)
            if array is not None and not np.isfinite(array).all():
                _check(bool(np.isfinite(array[self.mask]).all()), name, "contains NaN or inf on target pixels")
        if self.uv is not None and not _in_unit_square(self.uv):
            seen = self.uv[self.mask]
            _check(bool(((seen >= 0.0) & (seen <= 1.0)).all()), "uv", "values outside [0, 1] on target pixels")
        for name in _CAMERA_ARRAYS:
            array = getattr(self, name)
            if array is None:
                continue
            _check(isinstance(array, np.ndarray) and array.shape == (v, 4, 4), name,
                   f"expected shape ({v}, 4, 4), got {getattr(array, 'shape', None)}")
            _check(bool(np.isfinite(array).all()), name, "contains NaN or inf")
        texel_size = None
        for name, (trailing, kind) in _TEXEL_ARRAYS.items():
            array = getattr(self, name)
            if array is None:
                continue
            if texel_size is None:
                texel_size = array.shape[0] if getattr(array, "ndim", 0) >= 2 else -1
            expected = (texel_size, texel_size, *trailing)
            _check(isinstance(array, np.ndarray) and array.shape == expected, name,
                   f"expected shape {_shape_text(('T', 'T', *trailing))} with T={texel_size}, "
                   f"got {getattr(array, 'shape', None)}")
            _check(array.dtype == _DTYPES[kind], name, f"expected dtype {_DTYPES[kind].name}, got {array.dtype}")
        return self

    def to_npz_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **self.arrays())
        return buffer.getvalue()

    def save(self, path) -> None:
        with open(path, "wb") as handle:
            handle.write(self.to_npz_bytes())

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> "Passes":
        known = {f.name for f in dataclasses.fields(cls)} - {"extras"}
        _check("depth" in arrays, "depth", "missing from the passes")
        _check("mask" in arrays, "mask", "missing from the passes")
        kwargs = {k: np.asarray(a) for k, a in arrays.items() if k in known}
        extras = {k: np.asarray(a) for k, a in arrays.items() if k not in known}
        return cls(**kwargs, extras=extras)

    @classmethod
    def load(cls, source) -> "Passes":
        """Load from a path, a file object or bytes of an .npz (no pickles)."""
        if isinstance(source, (bytes, bytearray)):
            source = io.BytesIO(source)
        try:
            with np.load(source, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except (OSError, ValueError, EOFError, KeyError) as exc:
            raise ProtocolError("passes", f"not a readable .npz archive ({exc})") from None
        except Exception as exc:  # zipfile.BadZipFile and friends from a truncated upload
            raise ProtocolError("passes", f"not a readable .npz archive ({type(exc).__name__}: {exc})") from None
        return cls.from_arrays(arrays)


def _shape_text(shape: tuple) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"
