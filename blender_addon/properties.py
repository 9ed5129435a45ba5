"""The scene's ZS settings (``scene.zs_texturing``): one property per parameter of the
wire format's table (``protocol.PARAMETERS``), plus the panel's own state (mode, where the
views come from, output folders, the frame range, the running job's status).

Each parameter's property takes the table's name, label, help line, default, range and
choices, so the panel never offers a value the server refuses. A parameter both kinds
offer with different defaults or choices gets a property per kind: ``attention`` for
textures and ``anim_attention`` for animations (:func:`property_name`). Parameters that
may be None (an animation's width / height: the scene's output size) stay out of the
panel. :func:`settings_for` turns the properties into the script API's settings for the
mode, :func:`build_request` into a validated request. Imports: bpy, the standard library
and the add-on's own modules.
"""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty

from . import compat
from .settings import AnimationSettings, TextureSettings
from .wire import Request, protocol

INT_MAX = 2**31 - 1  # Blender's integer properties are 32-bit
MODES = [
    ("TEXTURE", "Texture", "Generate a UV texture for the selected objects from several views"),
    ("ANIMATION", "Animation", "Re-style the camera's shot over a frame range into consistent frames"),
]
KIND_OF_MODE = {"TEXTURE": protocol.TEXTURE, "ANIMATION": protocol.ANIMATION}
VIEW_SOURCES = [
    ("CAMERAS", "Selected Cameras", "Render from the selected camera objects"),
    ("RIG", "Orbit Rig", "Render from an orbit rig around the objects (built when missing)"),
]


def property_name(parameter: protocol.Parameter, kind: str) -> str:
    """The panel property holding ``parameter`` for ``kind`` jobs."""
    both = all(other in parameter.modes for other in protocol.JOB_KINDS)
    differs = both and (parameter.default_for(protocol.TEXTURE) != parameter.default_for(protocol.ANIMATION)
                        or parameter.values(protocol.TEXTURE) != parameter.values(protocol.ANIMATION))
    return f"anim_{parameter.name}" if differs and kind == protocol.ANIMATION else parameter.name


def panel_parameters(kind: str) -> tuple[protocol.Parameter, ...]:
    """The parameters the panel offers for ``kind`` jobs, in the table's order."""
    return tuple(parameter for parameter in protocol.offered(kind) if not parameter.optional)


def enum_items(parameter: protocol.Parameter, kind: str) -> list[tuple[str, str, str]]:
    allowed = parameter.values(kind)
    return [(choice.value, choice.title, _sentence(choice.help)) for choice in parameter.choices
            if choice.value in allowed]


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _property(parameter: protocol.Parameter, kind: str):
    """A bpy property for ``parameter`` with its ``kind`` default."""
    default = parameter.default_for(kind)
    common = dict(name=parameter.title, description=_sentence(parameter.help) + (
        f" ({parameter.unit})" if parameter.unit else ""))
    if parameter.choices:
        return EnumProperty(items=enum_items(parameter, kind), default=default, **common)
    if parameter.type is bool:
        return BoolProperty(default=default, **common)
    if parameter.type is str:
        return StringProperty(default=default, **common)
    limits = {}
    if parameter.low is not None:
        limits = dict(min=parameter.low, max=parameter.high)
    if parameter.soft_high is not None:
        limits["soft_max"] = parameter.soft_high
    if parameter.type is int:
        limits = {key: min(int(value), INT_MAX) for key, value in limits.items()}
        return IntProperty(default=default, step=parameter.multiple_of or 1, **limits, **common)
    factor = {"subtype": "FACTOR"} if (parameter.low, parameter.high) == (0.0, 1.0) else {}
    return FloatProperty(default=default, **limits, **factor, **common)


def _parameter_properties() -> dict:
    properties = {}
    for kind in protocol.JOB_KINDS:
        for parameter in panel_parameters(kind):
            properties.setdefault(property_name(parameter, kind), _property(parameter, kind))
    return properties


def _is_camera(_settings, obj) -> bool:
    return obj.type == "CAMERA"


# The panel's own state: not parameters of a job.
PANEL_STATE = {
    "mode": EnumProperty(name="Mode", items=MODES, default="TEXTURE",
                         description="Texture the objects, or re-style an animation"),
    "views_source": EnumProperty(name="Views", items=VIEW_SOURCES, default="RIG"),
    "output_folder": StringProperty(name="Output", default="//zs_textures/", subtype="DIR_PATH",
                                    options=compat.BLEND_RELATIVE_PATH,
                                    description="Folder for the texture images (// is next to the .blend; "
                                                "an unsaved file packs them)"),
    "use_scene_range": BoolProperty(name="Scene Frame Range", default=True,
                                    description="Render the scene's frame range (off: the range below)"),
    "anim_frame_start": IntProperty(name="Start", default=1, min=0, description="First frame to render"),
    "anim_frame_end": IntProperty(name="End", default=48, min=0, description="Last frame to render"),
    "anim_camera": PointerProperty(name="Camera", type=bpy.types.Object, poll=_is_camera,
                                   description="Camera whose shot is re-styled (empty: the scene's camera)"),
    "frames_folder": StringProperty(name="Frames", default="//zs_frames/", subtype="DIR_PATH",
                                    options=compat.BLEND_RELATIVE_PATH,
                                    description="Folder for the generated frames (// is next to the .blend; an "
                                                "unsaved file uses a temporary folder, moved here when it is "
                                                "saved)"),
    # The last job, for the panel (written by the Generate operator). Whether a job is
    # running is not stored here: a saved file would keep claiming it (see jobs.active).
    "status": StringProperty(name="Status", default=""),
    "progress": FloatProperty(name="Progress", default=0.0, min=0.0, max=1.0, subtype="FACTOR"),
    "job_id": StringProperty(name="Job", default=""),
}

ZS_Settings = type("ZS_Settings", (bpy.types.PropertyGroup,), {
    "__annotations__": {**_parameter_properties(), **PANEL_STATE},
    "__doc__": "The scene's ZS Texturing settings: the job's parameters and the panel's state",
})


def kind_of(settings) -> str:
    return KIND_OF_MODE[getattr(settings, "mode", "TEXTURE")]


def _value(parameter: protocol.Parameter, value):
    """A property's value as the table's type; floats back to the decimal that was typed
    (Blender stores them in single precision: 0.9 reads as 0.8999999761581421)."""
    if parameter.type is float:
        return float(f"{value:.7g}")
    return parameter.type(value)


def settings_for(settings, kind: str | None = None):
    """The panel's properties (a ZS_Settings, or anything with its attributes) ->
    ``TextureSettings`` / ``AnimationSettings`` of the mode's (or ``kind``'s) job."""
    kind = kind or kind_of(settings)
    cls = AnimationSettings if kind == protocol.ANIMATION else TextureSettings
    return cls(**{parameter.name: _value(parameter, getattr(settings, property_name(parameter, kind)))
                  for parameter in panel_parameters(kind)})


def build_request(settings) -> Request:
    """The scene settings -> a validated :class:`Request` of the mode's kind (raises
    ProtocolError naming the field)."""
    return settings_for(settings).request()


def animation_frames(settings, scene) -> tuple[int, int]:
    """(first, last) frame to render: the scene's range, or the settings' own."""
    if settings.use_scene_range:
        return scene.frame_start, scene.frame_end
    return settings.anim_frame_start, settings.anim_frame_end


classes = (ZS_Settings,)
