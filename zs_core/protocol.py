"""The wire format: the parameter table, the job request, per-view passes, result layout.

This module is the one source of truth shared by the Blender add-on (which loads this
file on its own, see ``blender_addon/wire.py``), the server, the sampler and the ``zs``
command. Standard library and numpy only: it must import inside Blender.

Every user-facing parameter is declared once, in :data:`PARAMETERS`: its type, default per
job kind (texture / animation), range or choices, unit and one help line. The request
(:class:`Request`), the ``zs`` and ``blender -b`` flags (:func:`add_arguments`), the
panel's properties and the script API's settings (in the add-on), the server's
validation and its OpenAPI schema (:func:`request_schema`) are all derived from it.

A job is ``request.json`` (a :class:`Request`) plus ``passes.npz`` (a :class:`Passes`).
Arrays are float32 unless noted, views (or frames) first, pixel rows top to bottom.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import io
import json
import math
import re
import struct
import zipfile
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

PROTOCOL_VERSION = 1

TEXTURE, ANIMATION = "texture", "animation"
JOB_KINDS = (TEXTURE, ANIMATION)

# Result layout inside a job's output folder / result zip.
VIEW_PNG = "views/{index:04d}.png"
FRAME_PNG = "frames/{index:04d}.png"
TEXTURE_PNG = "texture.png"
METRICS_JSON = "metrics.json"
CONTACT_SHEET_PNG = "contact_sheet.png"
ANIMATION_MP4 = "animation.mp4"


class ProtocolError(ValueError):
    """Bad input. ``field`` names the offending request field or array."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


def _check(condition: bool, field_name: str, message: str) -> None:
    if not condition:
        raise ProtocolError(field_name, message)


# ------------------------------------------------------------------ the parameter table


@dataclass(frozen=True)
class Choice:
    """One value of a choice parameter: the value on the wire, a help line, a short label."""

    value: str
    help: str
    label: str = ""

    @property
    def title(self) -> str:
        return self.label or self.value.replace("_", " ").title()


_SAME = object()  # Parameter.animation: the same default as for textures


@dataclass(frozen=True)
class Parameter:
    """One user-facing parameter, declared once.

    ``default`` holds for texture jobs and, unless ``animation`` gives another, for
    animation jobs too. ``modes`` are the job kinds whose front ends offer it (empty: no
    front end does; the value is set by the program, e.g. ``fps`` from the Blender scene).
    ``wire`` False marks a capture setting: the Blender front ends use it to render the
    passes, it is not part of the request. ``low`` / ``high`` bound numbers (``soft_high``
    is where the panel's slider ends); ``choices`` list the values of a text choice and
    ``animation_choices`` the ones an animation takes. ``optional``: None is allowed
    (it means what ``help`` says, e.g. the scene's output size). ``aliases``: other flag
    names that still work."""

    name: str
    type: type
    default: Any
    help: str
    unit: str = ""
    label: str = ""
    modes: tuple[str, ...] = JOB_KINDS
    animation: Any = _SAME
    low: float | None = None
    high: float | None = None
    soft_high: float | None = None
    multiple_of: int | None = None
    max_length: int | None = None
    choices: tuple[Choice, ...] = ()
    animation_choices: tuple[str, ...] = ()
    optional: bool = False
    wire: bool = True
    aliases: tuple[str, ...] = ()
    # A list in one text: the flag (``flag_name``, e.g. ``--lora``) may be repeated and its
    # values are joined with LIST_SEPARATOR (see :func:`parse_loras`).
    repeatable: bool = False
    flag_name: str = ""
    # Words a flag takes for a value, e.g. ``--cameras auto`` for views 0: (word, value) pairs.
    words: tuple[tuple[str, Any], ...] = ()

    @property
    def title(self) -> str:
        return self.label or self.name.replace("_", " ").title()

    @property
    def flag(self) -> str:
        return self.flag_name or "--" + self.name.replace("_", "-")

    def default_for(self, kind: str) -> Any:
        return self.default if kind != ANIMATION or self.animation is _SAME else self.animation

    def values(self, kind: str | None = None) -> tuple[str, ...]:
        """The choice values (for ``kind``: an animation may take fewer)."""
        if kind == ANIMATION and self.animation_choices:
            return self.animation_choices
        return tuple(choice.value for choice in self.choices)

    def check(self, value: Any, kind: str = TEXTURE) -> Any:
        """``value`` checked for a ``kind`` job -> the value (an int for a float becomes a
        float); ProtocolError names the parameter and says what is wrong."""
        if value is None and self.optional:
            return None
        if isinstance(value, HugeNumber):
            raise ProtocolError(self.name, f"{value!r} is out of range")
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        _check(isinstance(value, self.type) and (self.type is bool or not isinstance(value, bool)), self.name,
               f"expected {self.type.__name__}, got {type(value).__name__}")
        if self.type is float:
            _check(math.isfinite(value), self.name, "must be a finite number")
        if self.choices:
            allowed = self.values(kind)
            if value not in allowed and value in self.values():
                raise ProtocolError(self.name, f"{value!r} is for texture jobs; an animation takes "
                                               f"{', '.join(allowed)}")
            _check(value in allowed, self.name, f"unknown value {value!r}; expected one of {', '.join(allowed)}")
        if self.low is not None:
            _check(self.low <= value <= self.high, self.name, f"{value} is outside [{_number(self.low)}, "
                                                              f"{_number(self.high)}]")
        if self.multiple_of:
            _check(value % self.multiple_of == 0, self.name,
                   f"{value} is not a multiple of {self.multiple_of}; try {max(value // self.multiple_of, 1) * self.multiple_of}")
        if self.max_length is not None:
            _check(len(value) <= self.max_length, self.name, f"longer than {self.max_length} characters")
        return value

    def describe(self, defaults: Mapping[str, Any]) -> str:
        """The help line with the unit and the default(s): ``defaults`` maps each job kind
        to its default (one default when they agree)."""
        shown = {kind: _shown(value) for kind, value in defaults.items()}
        if len(set(shown.values())) == 1:
            default = next(iter(shown.values()))
        else:
            default = ", ".join(f"{value} for {kind}" for kind, value in shown.items())
        unit = f", in {self.unit}" if self.unit else ""
        return f"{self.help}{unit} (default: {default})"


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _shown(value: Any) -> str:
    if value is None or value == "":
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return _number(value) if isinstance(value, float) else str(value)


_NOISE = (
    Choice("iid", "independent noise per view or frame", "IID"),
    Choice("fixed", "the same noise in every view or frame"),
    Choice("mixed", "shared plus individual noise (PYoCo mixed)"),
    Choice("progressive", "each view's noise builds on the previous one (PYoCo progressive)"),
    Choice("dependency", "correlated noise between consecutive views (ZS2)"),
    Choice("surface", "one noise texture on the surface: the same point gets the same noise everywhere"),
)
_BACKGROUND_NOISE = (
    Choice("auto", "warped along the motion vectors (the vector pass) when there is one, else dependency"),
    Choice("iid", "new noise every frame (flickers)", "IID"),
    Choice("fixed", "the same noise every frame (sticks to the screen)"),
    Choice("mixed", "shared plus individual noise per frame (PYoCo mixed)"),
    Choice("progressive", "each frame's noise builds on the previous one (PYoCo progressive)"),
    Choice("dependency", "correlated noise between consecutive frames (ZS2)"),
    Choice("warped", "carried along the motion vectors, like the surface noise"),
)
_ATTENTION = (
    Choice("self", "stock self-attention: every view on its own"),
    Choice("extended", "every view attends to all views (most consistent, slowest)"),
    Choice("neighbors", "each view attends to its ring neighbours and a reference view"),
    Choice("keyframes", "views attend to key views (first, previous, middle)"),
    Choice("tma", "temporal momentum attention (ZS2)", "TMA"),
)
_KEYFRAMES = (
    Choice("first", "every view attends to the first"),
    Choice("first_previous", "every view attends to the first and the previous one"),
    Choice("middle", "every view attends to the middle one"),
)
_SCHEDULERS = (
    Choice("ddim", "DDIM", "DDIM"),
    Choice("dpmpp", "DPM++ multistep", "DPM++"),
    Choice("dpmpp_2m_karras", "DPM++ 2M with Karras sigmas", "DPM++ 2M Karras"),
    Choice("unipc", "UniPC", "UniPC"),
    Choice("euler", "Euler", "Euler"),
    Choice("euler_a", "Euler ancestral (fresh noise each step, from the job's noise model)", "Euler a"),
    Choice("lcm", "LCM: few-step sampling (4-8 steps) for LCM models and LoRAs", "LCM"),
    Choice("tcd", "TCD: few-step sampling (4-8 steps) for TCD / Hyper-SD style models and LoRAs", "TCD"),
)
_LAYOUTS = (
    Choice("views", "the views are the batch"),
    Choice("grid", "all views tiled into one image (with self attention)"),
)

_FRACTION = dict(low=0.0, high=1.0)  # a share: the panel shows a factor slider
_TEXTURE_ONLY = (TEXTURE,)
_ANIMATION_ONLY = (ANIMATION,)

PARAMETERS: dict[str, Parameter] = {p.name: p for p in (
    # What to generate.
    Parameter("prompt", str, "", "what to generate", max_length=4000),
    Parameter("negative_prompt", str, "blurry, low quality", "what not to generate", max_length=4000),
    Parameter("seed", int, 0, "same seed, same settings: same result", low=0, high=2**63 - 1),
    Parameter("steps", int, 20, "denoising steps (more: slower, finer)", low=1, high=1000, soft_high=100),
    Parameter("guidance_scale", float, 7.5, "classifier-free guidance: how strictly to follow the prompt",
              label="Guidance", low=0.0, high=50.0, soft_high=20.0, aliases=("--guidance",)),
    Parameter("scheduler", str, "ddim", "the diffusers scheduler", choices=_SCHEDULERS),
    # The model and what adapts it (a server lists what it has: GET /v1/models).
    Parameter("model", str, "", "the model: a name from the server's list; on this machine also a diffusers "
              "folder, a .safetensors file or a hub id (empty: the server's default; tiny for zs)", max_length=1024),
    Parameter("loras", str, "", "LoRAs on the model, each FILE_OR_NAME[:WEIGHT] (weight 1 when left out); "
              "repeat the flag for more", label="LoRAs", max_length=8192, repeatable=True, flag_name="--lora"),
    Parameter("reference_strength", float, 0.6, "reference image (IP-Adapter): how strongly its look steers "
              "every view or frame", low=0.0, high=2.0, soft_high=1.0),
    Parameter("ip_adapter", str, "", "IP-Adapter weights for the reference image: a name from the server's "
              "list, a file or a hub id (empty: the default for the model's family)", label="IP-Adapter",
              max_length=1024),
    # ControlNet: conditioning scale and the guidance window as fractions of the steps.
    Parameter("controlnet_scale", float, 1.0, "how strongly each view's depth steers the image",
              label="ControlNet Strength", low=0.0, high=5.0, soft_high=2.0),
    Parameter("control_start", float, 0.0, "ControlNet acts from this fraction of the steps", **_FRACTION),
    Parameter("control_end", float, 1.0, "ControlNet acts until this fraction of the steps", **_FRACTION),
    # Initial noise.
    Parameter("noise", str, "surface", "how the starting noise is drawn", choices=_NOISE),
    Parameter("noise_alpha", float, 1.0, "mixed / progressive noise: the shared-noise ratio alpha (PYoCo)",
              low=0.0, high=100.0, soft_high=10.0),
    Parameter("noise_lambda", float, 0.1, "dependency noise: the divergence lambda between neighbours (ZS2)",
              low=0.0, high=2.0),
    Parameter("background_noise", str, "auto", "surface noise in an animation: how the background's noise moves",
              choices=_BACKGROUND_NOISE, modes=_ANIMATION_ONLY),
    # Attention across views / frames.
    Parameter("attention", str, "extended", "which views (frames) each one attends to while denoising",
              animation="tma", choices=_ATTENTION, animation_choices=("self", "keyframes", "tma")),
    Parameter("reference_view", int, 0, "neighbors attention: the view every view also attends to",
              low=0, high=10_000, modes=_TEXTURE_ONLY),
    Parameter("reference_weight", float, 1.0, "neighbors attention: the weight of the reference view's keys",
              low=0.0, high=100.0, soft_high=4.0, modes=_TEXTURE_ONLY),
    Parameter("keyframes", str, "first", "keyframes attention: the anchors attended to", label="Anchor Frames",
              choices=_KEYFRAMES),
    Parameter("momentum", float, 0.5, "tma attention: momentum mu (0: self attention, 1: the first frame only)",
              **_FRACTION),
    Parameter("layout", str, "views", "how the views meet the model", choices=_LAYOUTS, animation_choices=("views",),
              modes=_TEXTURE_ONLY),
    Parameter("chunk", int, 16, "frames per model batch (fewer: less memory; the result is the same)",
              label="Chunk Size", low=1, high=10_000, soft_high=64, modes=_ANIMATION_ONLY),
    # Synchronisation through UV space (0 turns it off).
    Parameter("sync_strength", float, 1.0, "fuse the views (frames) through the UV texture at every step "
              "(0: off; below 1 lets them differ, e.g. with lighting)", animation=0.9, **_FRACTION),
    Parameter("sync_end", float, 0.0, "sync while t/T is above this fraction (0: every step)", **_FRACTION),
    Parameter("sync_exponent_start", float, 1.0, "sync weight cos(theta)^p: p at the first step",
              low=0.0, high=64.0, soft_high=16.0),
    Parameter("sync_exponent_end", float, 6.0, "sync weight cos(theta)^p: p at the last step",
              low=0.0, high=64.0, soft_high=16.0),
    # Animation: the background and the decoded frames.
    Parameter("background_sync", float, 0.0, "sync the background at every step: other UV-mapped meshes "
              "through their UV maps (background_uv), the rest carried along the motion vectors (0: off)",
              animation=0.9, modes=_ANIMATION_ONLY, **_FRACTION),
    Parameter("background_uv", bool, False, "sync the other UV-mapped meshes (floor, walls) through their UV "
              "maps, where the capture tells them apart, instead of along the motion vectors",
              label="Background Through UV", animation=True, modes=_ANIMATION_ONLY),
    Parameter("pixel_sync", float, 0.0, "pull the finished frames' UV-mapped surfaces towards one texture of "
              "all frames, in pixels (0: off)", animation=0.9, modes=_ANIMATION_ONLY, **_FRACTION),
    Parameter("fps", float, 24.0, "frame rate of the animation's MP4 (the Blender scene's)", unit="frames/s",
              low=1.0, high=1000.0, modes=()),
    Parameter("texture_size", int, 1024, "side of the square baked texture", unit="texels", low=16, high=8192,
              soft_high=4096, modes=_TEXTURE_ONLY),
    # Capture settings of the Blender front ends (not on the wire).
    Parameter("view_size", int, 512, "width and height of every rendered view (a multiple of 8)", unit="pixels",
              low=64, high=4096, soft_high=2048, multiple_of=8, modes=_TEXTURE_ONLY, wire=False),
    Parameter("views", int, 6, "cameras of the orbit rig built when no cameras are given; auto (or 0): cameras "
              "chosen from the objects' geometry until they see 98% of what can be seen from outside at a usable "
              "angle, within the view budget", label="Cameras", low=0, high=64, soft_high=16, modes=_TEXTURE_ONLY,
              wire=False, aliases=("--cameras",), words=(("auto", 0),)),
    Parameter("view_budget", int, 12, "auto cameras: at most this many views", label="Auto Budget", low=1, high=64,
              soft_high=16, modes=_TEXTURE_ONLY, wire=False),
    Parameter("elevation", float, 20.0, "orbit rig: height of the ring above the objects' centre",
              unit="degrees", low=-89.0, high=89.0, modes=_TEXTURE_ONLY, wire=False),
    Parameter("top_view", bool, False, "orbit rig: add a camera looking straight down", modes=_TEXTURE_ONLY,
              wire=False),
    Parameter("uv_map", str, "", "UV map to texture or follow (none: each object's active render UV map)",
              label="UV Map", max_length=255, wire=False),
    Parameter("smart_uv", bool, False, "objects without the UV map get a new Smart UV Project map",
              label="Smart UV Project", modes=_TEXTURE_ONLY, wire=False),
    Parameter("complete", bool, True, "completion views aimed at the surface the cameras miss or see only at "
              "grazing angles, so it is generated, not copied from the nearest seen texel", label="Completion Views",
              modes=_TEXTURE_ONLY, wire=False),
    Parameter("width", int, None, "frame width (none: the scene's output size, rounded to a multiple of 8)",
              unit="pixels", low=64, high=4096, multiple_of=8, optional=True, modes=_ANIMATION_ONLY, wire=False),
    Parameter("height", int, None, "frame height (none: the scene's output size, rounded to a multiple of 8)",
              unit="pixels", low=64, high=4096, multiple_of=8, optional=True, modes=_ANIMATION_ONLY, wire=False),
)}

WIRE_PARAMETERS = tuple(p for p in PARAMETERS.values() if p.wire)

NOISE_MODES = PARAMETERS["noise"].values()
BACKGROUND_NOISE_MODES = PARAMETERS["background_noise"].values()
ATTENTION_MODES = PARAMETERS["attention"].values()
KEYFRAME_POLICIES = PARAMETERS["keyframes"].values()
LAYOUTS = PARAMETERS["layout"].values()
SCHEDULERS = PARAMETERS["scheduler"].values()


def offered(kind: str, *, wire: bool | None = None) -> tuple[Parameter, ...]:
    """The parameters front ends offer for ``kind`` jobs (``wire`` True: request fields
    only, False: capture settings only)."""
    return tuple(p for p in PARAMETERS.values() if kind in p.modes and (wire is None or p.wire == wire))


def defaults(kind: str, *, wire: bool | None = None) -> dict[str, Any]:
    """Name -> default of every parameter offered for ``kind`` jobs."""
    return {p.name: p.default_for(kind) for p in offered(kind, wire=wire)}


# ----------------------------------------------------------------------------- flags


def _selected(parameter: Parameter, wire: bool, capture: bool | Sequence[str]) -> bool:
    """Whether a front end asking for ``wire`` parameters and ``capture`` settings (all,
    none, or those named) takes ``parameter``."""
    if parameter.wire:
        return wire
    return capture if isinstance(capture, bool) else parameter.name in capture


def add_arguments(parser, kinds: Sequence[str], *, wire: bool = True, capture: bool | Sequence[str] = True,
                  overrides: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """Add a flag for every parameter offered for any of ``kinds`` to ``parser`` (an
    argparse parser or group): the request's (``wire``) and the capture settings
    (``capture``: all, none or those named). Flags default to None, so
    :func:`values_from_arguments` can tell what was given; the help line shows the
    defaults (``overrides``: kind -> name -> a front end's own default, e.g. the demo's)."""
    overrides = overrides or {}
    for parameter in PARAMETERS.values():
        offered_kinds = [kind for kind in kinds if kind in parameter.modes]
        if not offered_kinds or not _selected(parameter, wire, capture):
            continue
        shown = {kind: overrides.get(kind, {}).get(parameter.name, parameter.default_for(kind))
                 for kind in offered_kinds}
        names = (parameter.flag, *parameter.aliases)
        help_text = parameter.describe(shown).replace("%", "%%")
        if len(offered_kinds) < len(kinds):
            help_text += f"; {' and '.join(offered_kinds)} only"
        if parameter.type is bool:
            parser.add_argument(*names, dest=parameter.name, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
            continue
        # A parser of one kind checks values for that kind (an animation's attention choices).
        kind = offered_kinds[0] if len(kinds) == 1 else TEXTURE
        if parameter.repeatable:
            parser.add_argument(*names, dest=parameter.name, action="append", default=None,
                                metavar=_metavar(parameter, None), help=help_text)
            continue
        parser.add_argument(*names, dest=parameter.name, type=_flag_type(parameter, kind), default=None,
                            metavar=_metavar(parameter, kind if len(kinds) == 1 else None), help=help_text)


def _metavar(parameter: Parameter, kind: str | None) -> str:
    if parameter.choices:
        return "{" + ",".join(parameter.values(kind)) + "}"
    return "|".join([{int: "N", float: "X", str: "TEXT"}[parameter.type], *(word for word, _ in parameter.words)])


def _flag_type(parameter: Parameter, kind: str):
    """argparse ``type``: text -> the parameter's type, checked for ``kind`` (range, choices)."""

    def parse(text: str):
        try:
            value = dict(parameter.words)[text] if text in dict(parameter.words) else parameter.type(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {parameter.type.__name__}, got {text!r}") from None
        try:
            return parameter.check(value, kind)
        except ProtocolError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{parameter.name}: ")) from None

    parse.__name__ = parameter.type.__name__
    return parse


def values_from_arguments(arguments, kind: str, *, wire: bool = True, capture: bool | Sequence[str] = True,
                          overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Parsed flags (from :func:`add_arguments`) -> name -> value of every parameter
    offered for ``kind`` (those selected as in :func:`add_arguments`): the given value, else
    ``overrides``' or the table's default. A flag given that ``kind`` does not take is a
    ProtocolError naming it."""
    overrides = overrides or {}
    for parameter in PARAMETERS.values():
        if kind not in parameter.modes and getattr(arguments, parameter.name, None) is not None:
            takes = " and ".join(parameter.modes) or "no"
            raise ProtocolError(parameter.name, f"{parameter.flag} is for {takes} jobs, not {kind}")
    values = {}
    for parameter in offered(kind):
        if not _selected(parameter, wire, capture):
            continue
        given = getattr(arguments, parameter.name, None)
        if parameter.repeatable and isinstance(given, list):
            given = LIST_SEPARATOR.join(given)
        if given is None:
            given = overrides.get(parameter.name, parameter.default_for(kind))
        values[parameter.name] = parameter.check(given, kind)
    return values


# ----------------------------------------------------------------------------- the request


class _KindDefault:
    """A Request field not given takes its default for the request's kind."""

    def __repr__(self) -> str:
        return "<the kind's default>"


KIND_DEFAULT = _KindDefault()


class _RequestMethods:
    """Validation and (de)serialisation of :class:`Request` (its fields come from the table)."""

    def __post_init__(self) -> None:
        kind = self.kind if self.kind in JOB_KINDS else TEXTURE
        for parameter in WIRE_PARAMETERS:
            if getattr(self, parameter.name) is KIND_DEFAULT:
                setattr(self, parameter.name, parameter.default_for(kind))

    def validate(self) -> "Request":
        _check(isinstance(self.kind, str) and self.kind in JOB_KINDS, "kind",
               f"unknown value {self.kind!r}; expected one of {', '.join(JOB_KINDS)}")
        for parameter in WIRE_PARAMETERS:
            setattr(self, parameter.name, parameter.check(getattr(self, parameter.name), self.kind))
        _check(self.control_start <= self.control_end, "control_end", "must not be smaller than control_start")
        parse_loras(self.loras)
        return self

    def uv_pass_uses(self) -> tuple[str, ...]:
        """What in this request needs the UV pass, in words for an error message (empty:
        nothing does): surface noise, UV sync. (background_uv and pixel_sync use it where
        the passes have it.)"""
        uses = []
        if self.noise == "surface":
            uses.append("surface noise")
        if self.sync_strength > 0:
            uses.append("UV sync" if self.kind == TEXTURE else "temporal UV sync")
        return tuple(uses)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["protocol"] = PROTOCOL_VERSION
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Request":
        """A request object (missing fields take their kind's default) -> validated."""
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
        """Request JSON -> validated. Hostile JSON (nested 100k deep, integers of thousands
        of digits) is a ProtocolError like any other bad request, never another exception."""
        try:
            data = json.loads(text, parse_int=_parse_int)
        except RecursionError:  # the C decoder gives up near the recursion limit
            raise ProtocolError("request", f"nested deeper than {MAX_JSON_DEPTH} levels") from None
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise ProtocolError("request", f"not valid JSON ({exc})") from None
        _check(_nesting(data) <= MAX_JSON_DEPTH, "request", f"nested deeper than {MAX_JSON_DEPTH} levels")
        return cls.from_dict(data)


MAX_JSON_DEPTH = 8  # a request is one flat object; nothing valid nests deeper than 1
MAX_INT_DIGITS = 40  # far beyond any parameter's range (a seed is < 2**63: 19 digits)


class HugeNumber:
    """An integer literal too long to be a parameter. Kept unconverted (Python refuses to
    convert more than 4300 digits, and converting is quadratic) so that the parameter it
    was given for can name itself in the error."""

    def __init__(self, literal: str):
        self.digits = len(literal.lstrip("-"))

    def __repr__(self) -> str:
        return f"a number of {self.digits} digits"


def _parse_int(literal: str) -> int | HugeNumber:
    return int(literal) if len(literal) <= MAX_INT_DIGITS else HugeNumber(literal)


def _nesting(value: Any) -> int:
    """How deeply JSON containers nest in ``value`` (0 for a scalar), without recursion."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if deepest > MAX_JSON_DEPTH:
                break
            pending.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


LIST_SEPARATOR = "|"  # between the entries of a repeatable parameter (not allowed in Windows paths)
MAX_LORAS = 16


def parse_loras(text: str) -> tuple[tuple[str, float], ...]:
    """``"a.safetensors:0.7|style"`` -> ``(("a.safetensors", 0.7), ("style", 1.0))``.

    A trailing ``:NUMBER`` is the weight (1 when left out; a Windows drive's ``C:`` is
    never one). ProtocolError for ``loras`` names a bad weight or too many entries."""
    entries = []
    for entry in str(text).split(LIST_SEPARATOR):
        entry = entry.strip()
        if not entry:
            continue
        name, weight = entry, 1.0
        head, colon, tail = entry.rpartition(":")
        if colon and head and not tail.startswith(("/", "\\")):
            try:
                weight = float(tail)
                name = head.strip()
            except ValueError:
                pass
        _check(name != "", "loras", f"{entry!r} has a weight but no name")
        _check(math.isfinite(weight) and -4.0 <= weight <= 4.0, "loras",
               f"the weight of {name!r} must be a number in [-4, 4], got {tail!r}")
        entries.append((name, weight))
    _check(len(entries) <= MAX_LORAS, "loras", f"{len(entries)} LoRAs; at most {MAX_LORAS}")
    return tuple(entries)


def format_loras(entries: Sequence[tuple[str, float]]) -> str:
    """The inverse of :func:`parse_loras`."""
    return LIST_SEPARATOR.join(f"{name}:{weight:g}" for name, weight in entries)


Request = dataclasses.make_dataclass(
    "Request",
    [("kind", str, field(default=TEXTURE))]
    + [(p.name, p.type, field(default=KIND_DEFAULT)) for p in WIRE_PARAMETERS],
    bases=(_RequestMethods,),
    namespace={"__module__": __name__, "__doc__": (
        "What to generate and how: ``kind`` (texture or animation) and one field per wire "
        "parameter of :data:`PARAMETERS`; a field not given takes its default for the kind. "
        ":meth:`validate` checks every field against the table.")},
)


def request_schema() -> dict[str, Any]:
    """The request JSON as a JSON Schema (for the server's OpenAPI document)."""
    properties: dict[str, Any] = {
        "kind": {"type": "string", "enum": list(JOB_KINDS), "default": TEXTURE, "description": "the job kind"},
        "protocol": {"type": "integer", "enum": [PROTOCOL_VERSION], "description": "the wire format version"},
    }
    json_types = {str: "string", int: "integer", float: "number", bool: "boolean"}
    for parameter in WIRE_PARAMETERS:
        schema: dict[str, Any] = {"type": json_types[parameter.type], "default": parameter.default,
                                  "description": parameter.describe(
                                      {kind: parameter.default_for(kind) for kind in JOB_KINDS})}
        if parameter.choices:
            schema["enum"] = list(parameter.values())
        if parameter.low is not None:
            schema["minimum"], schema["maximum"] = parameter.low, parameter.high
        if parameter.max_length is not None:
            schema["maxLength"] = parameter.max_length
        properties[parameter.name] = schema
    return {"type": "object", "properties": properties, "additionalProperties": False,
            "description": "A field left out takes its default for the job kind (see each description)."}


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


def frame_range_argument(text: str) -> tuple[int, int]:
    """argparse ``type`` of a ``--frames`` flag: :func:`parse_frame_range` with its error
    as argparse's."""
    try:
        return parse_frame_range(text)
    except ProtocolError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("frames: ")) from None


# ----------------------------------------------------------------------------- the passes

# name -> (trailing shape after the leading view axis, dtype kind); None = any size.
VIEW_ARRAYS: dict[str, tuple[tuple[int | None, ...], str]] = {
    "depth": ((), "f"),
    "normal": ((3,), "f"),
    "uv": ((2,), "f"),
    "position": ((3,), "f"),
    "mask": ((), "b"),
    "vector": ((2,), "f"),
    "background_id": ((), "i"),
}
CAMERA_ARRAYS = ("world_to_camera", "projection")
_DTYPES = {"f": np.dtype(np.float32), "b": np.dtype(np.bool_), "i": np.dtype(np.int32)}


def _in_unit_square(values: np.ndarray) -> bool:
    """Every value finite and in [0, 1] (NaN fails both comparisons)."""
    return bool(values.min(initial=0.0) >= 0.0 and values.max(initial=1.0) <= 1.0)


TEXEL_ARRAYS: dict[str, tuple[tuple[int, ...], str]] = {
    "texel_position": ((3,), "f"),
    "texel_normal": ((3,), "f"),
    "texel_mask": ((), "b"),
}
# Every array a passes bundle may hold -> the dtypes it may have (cameras: any float).
ARRAY_DTYPES: dict[str, tuple[np.dtype, ...]] = {
    **{name: (_DTYPES[kind],) for name, (_, kind) in VIEW_ARRAYS.items()},
    **{name: (np.dtype(np.float32), np.dtype(np.float64)) for name in CAMERA_ARRAYS},
    **{name: (_DTYPES[kind],) for name, (_, kind) in TEXEL_ARRAYS.items()},
    "reference_image": (np.dtype(np.float32),),
    "completion": (np.dtype(np.bool_),),
}
REFERENCE_IMAGE_SIDES = (16, 4096)  # smallest and largest side of a reference image, in pixels


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
    texel_normal (T, T, 3) and texel_mask (T, T) bool, optional (texturing only);
    reference_image (H', W', 3) float32 RGB in [0, 1], optional: the look every view or
    frame is steered towards (IP-Adapter; any size, not tied to the views);
    completion (V,) bool, optional (texturing only): True marks a completion view, aimed at
    surface the other views miss or see only at grazing angles. Completion views are sampled
    after the others with what those textured held fixed, and baked only where the others
    did not see the surface well (zs_core/completion.py).
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
    reference_image: np.ndarray | None = None
    completion: np.ndarray | None = None

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
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {k: v for k, v in out.items() if v is not None}

    def validate(self, *, require: tuple[str, ...] = ()) -> "Passes":
        """Check shapes, dtypes and values; raise :class:`ProtocolError` naming the array."""
        for name in require:
            _check(getattr(self, name, None) is not None, name, "missing from the passes")
        _check(isinstance(self.depth, np.ndarray) and self.depth.ndim == 3, "depth",
               f"expected shape (V, H, W), got {getattr(self.depth, 'shape', None)}")
        v, h, w = self.depth.shape
        _check(v >= 1 and h >= 8 and w >= 8, "depth", f"expected at least 1 view of 8x8, got {self.depth.shape}")
        for name, (trailing, kind) in VIEW_ARRAYS.items():
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
        for name in CAMERA_ARRAYS:
            array = getattr(self, name)
            if array is None:
                continue
            _check(isinstance(array, np.ndarray) and array.shape == (v, 4, 4), name,
                   f"expected shape ({v}, 4, 4), got {getattr(array, 'shape', None)}")
            _check(bool(np.isfinite(array).all()), name, "contains NaN or inf")
        texel_size = None
        for name, (trailing, kind) in TEXEL_ARRAYS.items():
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
        if self.reference_image is not None:
            self._validate_reference_image()
        if self.completion is not None:
            self._validate_completion()
        return self

    def _validate_completion(self) -> None:
        flags = self.completion
        _check(isinstance(flags, np.ndarray) and flags.shape == (self.views,), "completion",
               f"expected shape ({self.views},), got {getattr(flags, 'shape', None)}")
        _check(flags.dtype == np.bool_, "completion", f"expected dtype bool, got {flags.dtype}")
        _check(not bool(flags.all()), "completion", "every view is a completion view; at least one must not be")
        for name in ("uv", "world_to_camera", "projection", "texel_position", "texel_normal", "texel_mask"):
            _check(getattr(self, name) is not None, "completion", f"completion views need the {name} array")

    def select(self, views) -> "Passes":
        """The passes of ``views`` (indices, in that order): every per-view array and camera
        sliced; the texel maps and the reference image shared."""
        views = np.asarray(list(views), dtype=np.int64)
        per_view = {*VIEW_ARRAYS, *CAMERA_ARRAYS, "completion"}
        return Passes(**{name: (value[views] if name in per_view else value)
                         for name, value in self.arrays().items()})

    @property
    def main_views(self) -> np.ndarray:
        """Indices (V',) int64 of the views that are not completion views."""
        if self.completion is None:
            return np.arange(self.views)
        return np.flatnonzero(~self.completion)

    def _validate_reference_image(self) -> None:
        image, (low, high) = self.reference_image, REFERENCE_IMAGE_SIDES
        _check(isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3, "reference_image",
               f"expected an RGB image (H, W, 3), got shape {getattr(image, 'shape', None)}")
        _check(image.dtype == np.float32, "reference_image", f"expected dtype float32, got {image.dtype}")
        _check(low <= min(image.shape[:2]) and max(image.shape[:2]) <= high, "reference_image",
               f"{image.shape[1]}x{image.shape[0]} pixels; each side must be in [{low}, {high}]")
        _check(_in_unit_square(image), "reference_image", "values outside [0, 1] or not finite")

    def to_npz_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **self.arrays())
        return buffer.getvalue()

    def save(self, target) -> None:
        """Write the .npz to ``target`` (a path or a binary file) as it is compressed, array
        by array (no copy of the whole archive in memory)."""
        if hasattr(target, "write"):
            np.savez_compressed(target, **self.arrays())
            return
        with open(target, "wb") as handle:
            np.savez_compressed(handle, **self.arrays())

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> "Passes":
        _check("depth" in arrays, "depth", "missing from the passes")
        _check("mask" in arrays, "mask", "missing from the passes")
        unknown = sorted(set(arrays) - set(ARRAY_DTYPES))
        _check(not unknown, unknown[0] if unknown else "passes",
               f"unknown array; the passes hold only {', '.join(ARRAY_DTYPES)}")
        return cls(**{k: np.asarray(a) for k, a in arrays.items()})

    @classmethod
    def load(cls, source) -> "Passes":
        """Load from a path, a binary file or bytes of an .npz (no pickles, only the
        protocol's arrays; every header is checked before its data is inflated, see
        :class:`NpzArchive`)."""
        with NpzArchive(source) as archive:
            return archive.passes()


def _shape_text(shape: tuple) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


# ------------------------------------------------------------------ reading a .npz safely

NPY_MAGIC = b"\x93NUMPY"
MAX_NPY_HEADER_BYTES = 4096  # numpy writes 128 or so; its own reader reads any length first
MAX_NPZ_DIRECTORY_BYTES = 64 * 1024
_READ_CHUNK = 1 << 18  # numpy's own read size


@dataclass(frozen=True)
class ArrayHeader:
    """What one .npy member declares: its shape and dtype, and so its size once inflated."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


class NpzArchive:
    """A passes .npz opened for reading: the zip directory is bounded before it is read
    (:func:`zip_directory`), only the protocol's arrays are accepted (an unknown member is
    a ProtocolError naming it) and every member's .npy header is read and checked (dtype,
    no pickles, and that the member holds exactly the bytes its shape declares) before any
    array data is inflated. ``headers`` maps each array to its :class:`ArrayHeader`, so a
    caller can hold the shapes to its limits first; :meth:`passes` then reads the arrays,
    each into memory of exactly its declared size. ``source``: a path, a binary file or bytes."""

    def __init__(self, source):
        if isinstance(source, (bytes, bytearray, memoryview)):
            source = io.BytesIO(source)
        self._file = open(source, "rb") if not hasattr(source, "read") else None
        handle = self._file or source
        self.headers: dict[str, ArrayHeader] = {}
        self._members: dict[str, zipfile.ZipInfo] = {}
        try:
            entries, size = zip_directory(handle)
            _check(entries <= len(ARRAY_DTYPES) and size <= MAX_NPZ_DIRECTORY_BYTES, "passes",
                   f"the archive lists {entries} members in {size} bytes; passes hold at most "
                   f"{len(ARRAY_DTYPES)} arrays")
            self._zip = zipfile.ZipFile(handle)
            for info in self._zip.infolist():
                self._read_header(info)
        except ProtocolError:
            self.close()
            raise
        except Exception as exc:  # not a zip, a truncated one, a bad header: all the file's fault
            self.close()
            raise ProtocolError("passes", f"not a readable .npz archive ({type(exc).__name__}: {exc})") from None

    def _read_header(self, info: zipfile.ZipInfo) -> None:
        name = info.filename.removesuffix(".npy")
        _check(info.filename.endswith(".npy") and name in ARRAY_DTYPES, name or "passes",
               f"unknown array {info.filename!r} in the passes; they hold only {', '.join(ARRAY_DTYPES)}")
        _check(name not in self.headers, name, "given twice in the passes")
        with self._zip.open(info) as member:
            header = read_npy_header(member, name)
            offset = member.tell()
        allowed = ARRAY_DTYPES[name]
        _check(header.dtype in allowed, name, f"declared dtype {header.dtype.str}; expected "
                                              f"{' or '.join(dtype.name for dtype in allowed)}")
        _check(info.file_size == offset + header.nbytes, name,
               f"declares shape {_shape_text(header.shape)} {header.dtype.name} ({header.nbytes} bytes) but its "
               f"member holds {info.file_size - offset} bytes of data")
        self.headers[name] = header
        self._members[name] = info

    @property
    def declared_bytes(self) -> int:
        """The memory every array takes once read."""
        return sum(header.nbytes for header in self.headers.values())

    def passes(self) -> Passes:
        """Read every array (checked headers only) -> :class:`Passes` (not validated yet)."""
        try:
            return Passes.from_arrays({name: self._read_array(name) for name in self.headers})
        except ProtocolError:
            raise
        except Exception as exc:  # a corrupt deflate stream, a CRC error
            raise ProtocolError("passes", f"not a readable .npz archive ({type(exc).__name__}: {exc})") from None

    def array(self, name: str) -> np.ndarray:
        """One array (its header checked), without reading the others."""
        try:
            return self._read_array(name)
        except ProtocolError:
            raise
        except Exception as exc:
            raise ProtocolError(name, f"not readable ({type(exc).__name__}: {exc})") from None

    def _read_array(self, name: str) -> np.ndarray:
        header = self.headers[name]
        count = math.prod(header.shape)
        array = np.empty(count, header.dtype)
        target = array.view(np.uint8)
        with self._zip.open(self._members[name]) as member:
            read_npy_header(member, name)  # checked already; this skips it
            filled = 0
            while filled < header.nbytes:
                read = member.readinto(target[filled:filled + _READ_CHUNK])
                _check(read > 0, name, f"truncated: {filled} of {header.nbytes} bytes")
                filled += read
        if header.fortran_order:
            return array.reshape(header.shape[::-1]).transpose()
        return array.reshape(header.shape)

    def close(self) -> None:
        if getattr(self, "_zip", None) is not None:
            self._zip.close()
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> "NpzArchive":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_npy_header(stream, name: str) -> ArrayHeader:
    """The header at the start of a .npy ``stream`` (left at the first data byte). Its
    declared length is checked before the header is read: numpy's own reader reads
    whatever length the file claims (up to 4 GiB) before it checks it."""
    magic = stream.read(8)
    _check(len(magic) == 8 and magic[:6] == NPY_MAGIC and magic[6] in (1, 2, 3), name, "not a .npy array")
    length_format = "<H" if magic[6] == 1 else "<I"
    length_bytes = stream.read(struct.calcsize(length_format))
    _check(len(length_bytes) == struct.calcsize(length_format), name, "truncated .npy header")
    (length,) = struct.unpack(length_format, length_bytes)
    _check(length <= MAX_NPY_HEADER_BYTES, name, f".npy header of {length} bytes; at most "
                                                 f"{MAX_NPY_HEADER_BYTES} are read")
    text = stream.read(length)
    _check(len(text) == length, name, "truncated .npy header")
    try:
        fields = ast.literal_eval(text.decode("utf-8" if magic[6] == 3 else "latin1"))
        shape, fortran_order = fields["shape"], fields["fortran_order"]
        dtype = np.lib.format.descr_to_dtype(fields["descr"])
    except Exception as exc:  # anything literal_eval or numpy refuse: a malformed header
        raise ProtocolError(name, f"unreadable .npy header ({type(exc).__name__})") from None
    _check(isinstance(shape, tuple) and all(type(size) is int and size >= 0 for size in shape), name,
           f"shape {shape!r} is not a tuple of sizes")
    _check(isinstance(fortran_order, bool), name, "fortran_order is not true or false")
    _check(not dtype.hasobject, name, "object arrays (pickles) are refused")
    return ArrayHeader(name, shape, dtype, fortran_order)


def zip_directory(handle) -> tuple[int, int]:
    """(entries, bytes) of a zip's central directory, read from its end records alone.

    ``zipfile.ZipFile`` reads the whole directory into memory and makes an object per
    entry, so a caller bounds both first. Reads the end-of-directory record the way
    zipfile finds it (no comment, else the last signature in the final 64 KiB) and its
    zip64 form when the archive has one. Raises ValueError when there is none."""
    handle.seek(0, io.SEEK_END)
    size = handle.tell()
    tail_length = min(size, 22 + 0xFFFF)
    handle.seek(size - tail_length)
    tail = handle.read(tail_length)
    no_comment = tail[-22:-18] == b"PK\x05\x06" and tail[-2:] == b"\x00\x00"
    found = len(tail) - 22 if no_comment else tail.rfind(b"PK\x05\x06")
    if found < 0 or len(tail) - found < 22:
        raise ValueError("no end of central directory record")
    _, _, _, _, entries, directory_bytes, _, _ = struct.unpack("<4s4H2LH", tail[found:found + 22])
    locator_at = size - tail_length + found - 20
    if locator_at >= 0:
        handle.seek(locator_at)
        locator = handle.read(20)
        if locator[:4] == b"PK\x06\x07":
            (record_at,) = struct.unpack("<Q", locator[8:16])
            handle.seek(record_at)
            record = handle.read(56)
            if len(record) == 56 and record[:4] == b"PK\x06\x06":
                entries, directory_bytes = struct.unpack("<QQ", record[32:48])
    return entries, directory_bytes
