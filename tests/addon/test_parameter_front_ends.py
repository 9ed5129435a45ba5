"""The Blender front ends derive every parameter from the wire format's table: the panel's
properties (name, default, range, choices), the script API's settings and the `blender -b`
batch flags; each builds the same request from its defaults as the zs command and the
server. (The zs command, the request and the OpenAPI schema: tests/test_parameter_table.py.)"""

from __future__ import annotations

import dataclasses

import pytest

bpy = pytest.importorskip("bpy")

import zs_cli  # noqa: E402
from blender_addon import api, batch, properties  # noqa: E402
from blender_addon.wire import protocol  # noqa: E402
from zs_core.protocol import Request as CoreRequest  # noqa: E402

KINDS = (protocol.TEXTURE, protocol.ANIMATION)
BATCH_OPTIONS = {"help", "blend", "objects", "out", "server", "token", "passes_only", "use_scene_cameras", "frames",
                 "camera", "reference_image"}


@pytest.fixture
def registered(scene):
    bpy.utils.register_class(properties.ZS_Settings)
    bpy.types.Scene.zs_probe = bpy.props.PointerProperty(type=properties.ZS_Settings)
    yield scene.zs_probe
    del bpy.types.Scene.zs_probe
    bpy.utils.unregister_class(properties.ZS_Settings)


def test_the_panel_has_a_property_per_parameter_with_the_tables_default_range_and_choices(registered):
    rna = properties.ZS_Settings.bl_rna.properties
    derived = set()
    for kind in KINDS:
        for parameter in properties.panel_parameters(kind):
            name = properties.property_name(parameter, kind)
            derived.add(name)
            prop = rna[name]
            assert prop.name == parameter.title and parameter.help[1:] in prop.description
            if parameter.choices:
                assert [item.identifier for item in prop.enum_items] == list(parameter.values(kind))
                assert prop.default == parameter.default_for(kind)
            elif parameter.type is float:
                assert prop.default == pytest.approx(parameter.default_for(kind))
            else:
                assert prop.default == parameter.default_for(kind), name
            if parameter.low is not None:
                assert prop.hard_min == pytest.approx(parameter.low)
                # Blender's integers are 32-bit: the seed's range ends there in the panel.
                assert prop.hard_max == pytest.approx(min(parameter.high, properties.INT_MAX))
    own = {prop.identifier for prop in rna} - {"rna_type", "name"}
    assert own - derived == set(properties.PANEL_STATE)  # everything else is the panel's own state
    assert "anim_attention" in derived and "anim_sync_strength" in derived and "anim_seed" not in derived


def test_the_api_settings_are_the_tables_fields_and_defaults():
    for cls, kind in ((api.TextureSettings, protocol.TEXTURE), (api.AnimationSettings, protocol.ANIMATION)):
        fields = {field.name: field.default for field in dataclasses.fields(cls)}
        assert fields == protocol.defaults(kind)


@pytest.mark.parametrize("build, kind", [(batch.build_parser, protocol.TEXTURE),
                                         (batch.build_animate_parser, protocol.ANIMATION)])
def test_the_batch_flags_are_the_tables(build, kind):
    parser = build()
    found = {action.dest: action for action in parser._actions}
    assert set(found) - BATCH_OPTIONS == {parameter.name for parameter in protocol.offered(kind)}
    for parameter in protocol.offered(kind):
        assert parameter.flag in found[parameter.name].option_strings


def test_every_front_end_builds_the_same_request_from_its_defaults(registered):
    for kind in KINDS:
        server = CoreRequest.from_dict({"kind": kind}).to_dict()
        settings = (api.AnimationSettings if kind == protocol.ANIMATION else api.TextureSettings)()
        registered.mode = "ANIMATION" if kind == protocol.ANIMATION else "TEXTURE"
        parser = batch.build_animate_parser() if kind == protocol.ANIMATION else batch.build_parser()
        arguments = parser.parse_args(["--object", "A", "--out", "o"] if kind == protocol.TEXTURE else ["--out", "o"])
        batch_settings = type(settings).from_values(protocol.values_from_arguments(arguments, kind))
        command = zs_cli.build_parser().parse_args(["texture" if kind == protocol.TEXTURE else "animate", "x.npz",
                                                    "--out", "o"])
        command_settings = type(settings).from_values(protocol.values_from_arguments(command, kind))
        requests = {"api": settings.request(), "panel": properties.build_request(registered),
                    "batch": batch_settings.request(), "zs": command_settings.request()}
        for name, request in requests.items():
            assert request.to_dict() == server, (kind, name)


def test_a_panel_value_reaches_the_request_unrounded(registered):
    registered.mode = "ANIMATION"
    registered.anim_sync_strength, registered.pixel_sync, registered.noise_lambda = 0.7, 0.35, 0.05
    request = properties.build_request(registered)
    assert (request.sync_strength, request.pixel_sync, request.noise_lambda) == (0.7, 0.35, 0.05)
    registered.mode, registered.view_size = "TEXTURE", 100  # Blender's step of 8 is for dragging only
    with pytest.raises(protocol.ProtocolError, match="view_size: 100 is not a multiple of 8"):
        properties.settings_for(registered).check()


def test_flag_help_shows_each_default():
    animation, texture = batch.build_animate_parser().format_help(), batch.build_parser().format_help()
    assert "(default: tma)" in animation and "(default: extended)" in texture
    assert "(default: 0.9)" in animation and "(default: 1)" in texture  # sync_strength per kind
