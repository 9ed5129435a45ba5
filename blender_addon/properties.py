"""The scene's ZS settings (``scene.zs_texturing``): one property per parameter of the
wire format's table (``protocol.PARAMETERS``), plus the panel's own state (mode, where the
views come from, output folders, the frame range, the model, LoRA and IP-Adapter lists,
the reference image, the running job's status).

Each parameter's property takes the table's name, label, help line, default, range and
choices, so the panel never offers a value the server refuses. A parameter both kinds
offer with different defaults or choices gets a property per kind: ``attention`` for
textures and ``anim_attention`` for animations (:func:`property_name`). Parameters that
may be None (an animation's width / height: the scene's output size) stay out of the
panel. :func:`settings_for` turns the properties into the script API's settings for the
mode, :func:`build_request` into a validated request.

Models: ``model`` and ``ip_adapter`` hold the names the request sends; the dropdowns
``model_choice`` and ``ip_adapter_choice`` are views of them offering the server's lists
(:data:`server_models.CATALOG`, filled by Connect). LoRAs: ``lora_list`` holds (name,
weight) entries, and the table's ``loras`` text is a view of it (``protocol.format_loras``;
setting the text parses it into the list). The reference image is ``reference_image``, any
Blender image; its pixels travel in the passes (:mod:`.reference_image`). Imports: bpy,
the standard library and the add-on's own modules.
"""

from __future__ import annotations

import bpy
from bpy.props import (BoolProperty, CollectionProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty,
                       StringProperty)

from . import compat, server_models
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
    ("AUTO", "Auto Rig", "Render from cameras chosen from the objects' geometry until they see 98% of what can be "
                         "seen from outside at a usable angle, within the view budget"),
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
        return StringProperty(default=default, **VIEWS.get(parameter.name, {}), **common)
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


# ------------------------------------------------------------------ models and LoRAs

DEFAULT_CHOICE = "<default>"  # a dropdown's first entry: "" in the request (the server's / family's default)
LORA_WEIGHTS = (-4.0, 4.0)  # what protocol.parse_loras accepts


class ZS_LoraEntry(bpy.types.PropertyGroup):
    """One entry of the LoRA list: ``name`` (the server's name for it) and its weight."""

    weight: FloatProperty(name="Weight", default=1.0, min=LORA_WEIGHTS[0], max=LORA_WEIGHTS[1], soft_min=0.0,
                          soft_max=2.0, description="How strongly the LoRA applies (1: as trained; negative: "
                                                    "the opposite)")


def _decimal(value: float) -> float:
    """A single-precision property's value as the decimal that was typed (0.9, not
    0.8999999761581421)."""
    return float(f"{value:.7g}")


def lora_entries(settings) -> list[tuple[str, float]]:
    """The LoRA list -> [(name, weight)], entries without a name left out."""
    return [(entry.name.strip(), _decimal(entry.weight)) for entry in getattr(settings, "lora_list", ())
            if entry.name.strip()]


def _get_loras(settings) -> str:
    return protocol.format_loras(lora_entries(settings))


def _set_loras(settings, text: str) -> None:
    # A bad text raises ProtocolError; Blender prints it and the list stays as it was.
    entries = protocol.parse_loras(text)
    settings.lora_list.clear()
    for name, weight in entries:
        entry = settings.lora_list.add()
        entry.name, entry.weight = name, weight
    settings.lora_index = 0


# Table parameters whose property is a view of the panel's own state.
VIEWS = {"loras": {"get": _get_loras, "set": _set_loras}}

# The dropdowns' current items by property: Blender keeps no copy of a dynamic enum's
# strings, so Python must hold them for as long as the menu may show them.
_CHOICE_ITEMS: dict[str, list] = {}


def _model_items(settings) -> list[tuple]:
    catalog = server_models.CATALOG
    default = f" ({catalog.default})" if catalog.default else ""
    items = [(DEFAULT_CHOICE, "Server Default" + default, "The model the server loads when a job names none",
              "NONE", 0)]
    for offer in catalog.models or ():
        family = f" ({server_models.family_title(offer.family)})" if offer.family else ""
        items.append((offer.name, offer.name + family, offer.detail or offer.name, "NONE", len(items)))
    return _with_current(items, settings.model, "model")


def _ip_adapter_items(settings) -> list[tuple]:
    catalog = server_models.CATALOG
    items = [(DEFAULT_CHOICE, "Family Default", "The server's IP-Adapter for the model's family", "NONE", 0)]
    for offer in catalog.ip_adapters or ():
        problem = catalog.ip_adapter_problem(offer.name, settings.model)
        family = f" ({server_models.family_title(offer.family)})" if offer.family else ""
        items.append((offer.name, offer.name + family, problem or offer.name, "ERROR" if problem else "NONE",
                      len(items)))
    return _with_current(items, settings.ip_adapter, "IP-Adapter")


def _with_current(items: list[tuple], current: str, what: str) -> list[tuple]:
    """``items`` plus the current name when the server's list lacks it (a file saved with
    another server, a name set by a script), so the dropdown shows what is sent."""
    if current and all(item[0] != current for item in items):
        items.append((current, f"{current} (not on the server)", f"This {what} is not in the server's list; "
                      "Connect refreshes it", "ERROR", len(items)))
    return items


def _choice_view(key: str, field: str, items_of, **common) -> EnumProperty:
    """A dropdown showing the text property ``field`` among ``items_of(settings)``; picking
    an entry writes its name (the first entry: "") into ``field``."""

    def items(settings, _context):
        _CHOICE_ITEMS[key] = items_of(settings)
        return _CHOICE_ITEMS[key]

    def get(settings) -> int:
        current = getattr(settings, field) or DEFAULT_CHOICE
        return next((item[4] for item in items(settings, None) if item[0] == current), 0)

    def set_(settings, number: int) -> None:
        for identifier, *_label, value in items(settings, None):
            if value == number:
                setattr(settings, field, "" if identifier == DEFAULT_CHOICE else identifier)
                return

    return EnumProperty(items=items, get=get, set=set_, **common)


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
    # The Model panel: dropdowns over the model / ip_adapter names, the LoRA list, the image.
    "model_choice": _choice_view("model", "model", _model_items, name="Model",
                                 description="The server's model for this job (Connect lists them)"),
    "lora_list": CollectionProperty(type=ZS_LoraEntry, name="LoRAs",
                                    description="LoRAs applied to the model, each with its weight"),
    "lora_index": IntProperty(name="Active LoRA", default=0, min=0),
    "reference_image": PointerProperty(name="Reference Image", type=bpy.types.Image,
                                       description="The look every view or frame is steered towards (IP-Adapter; "
                                                   "any image: opened, packed or generated)"),
    "ip_adapter_choice": _choice_view("ip_adapter", "ip_adapter", _ip_adapter_items, name="IP-Adapter",
                                      description="The server's IP-Adapter weights for the reference image"),
    # The last job, for the panel (written by the Generate operator). Whether a job is
    # running is not stored here: a saved file would keep claiming it (see jobs.active).
    "status": StringProperty(name="Status", default=""),
    "progress": FloatProperty(name="Progress", default=0.0, min=0.0, max=1.0, subtype="FACTOR"),
    "job_id": StringProperty(name="Job", default=""),
}

# Properties holding the add-on's own PropertyGroups, added once ZS_Settings is registered:
# a PropertyGroup must be registered before a property can hold it, and ZS_Settings
# registers on its own too (the parameter tests register just it).
_ATTACHED = {"lora_list": ZS_LoraEntry}


def _register(cls) -> None:
    """Called by bpy.utils.register_class once ZS_Settings is registered."""
    for name, item_class in _ATTACHED.items():
        if not item_class.is_registered:
            bpy.utils.register_class(item_class)
        setattr(cls, name, PANEL_STATE[name])


def _unregister(cls) -> None:
    """Called by bpy.utils.unregister_class before ZS_Settings is unregistered."""
    for name, item_class in _ATTACHED.items():
        if name in cls.bl_rna.properties:
            delattr(cls, name)
        if item_class.is_registered:
            bpy.utils.unregister_class(item_class)


ZS_Settings = type("ZS_Settings", (bpy.types.PropertyGroup,), {
    "__annotations__": {**_parameter_properties(),
                        **{name: prop for name, prop in PANEL_STATE.items() if name not in _ATTACHED}},
    "__doc__": "The scene's ZS Texturing settings: the job's parameters and the panel's state",
    "register": classmethod(_register),
    "unregister": classmethod(_unregister),
})


def kind_of(settings) -> str:
    return KIND_OF_MODE[getattr(settings, "mode", "TEXTURE")]


def _value(parameter: protocol.Parameter, value):
    """A property's value as the table's type; floats back to the decimal that was typed
    (Blender stores them in single precision: 0.9 reads as 0.8999999761581421)."""
    if parameter.type is float:
        return _decimal(value)
    return parameter.type(value)


def settings_for(settings, kind: str | None = None):
    """The panel's properties (a ZS_Settings, or anything with its attributes) ->
    ``TextureSettings`` / ``AnimationSettings`` of the mode's (or ``kind``'s) job. Views
    from the Auto Rig are views 0 (the table's "auto")."""
    kind = kind or kind_of(settings)
    cls = AnimationSettings if kind == protocol.ANIMATION else TextureSettings
    values = {parameter.name: _value(parameter, getattr(settings, property_name(parameter, kind)))
              for parameter in panel_parameters(kind)}
    if kind == protocol.TEXTURE and getattr(settings, "views_source", "") == "AUTO":
        values["views"] = 0
    return cls(**values)


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
