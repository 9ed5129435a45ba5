"""Every user-facing parameter is declared once, in zs_core/protocol.py's table, and every
front end outside Blender derives from it: the request, the `zs` flags and the server's
OpenAPI schema (the Blender front ends are checked in tests/addon/test_parameter_front_ends.py).
A parameter declared anywhere else (a flag, a field with a default) fails here."""

from __future__ import annotations

import argparse
import ast
import dataclasses
from pathlib import Path

import pytest

import zs_cli
from zs_core import protocol
from zs_core.protocol import ANIMATION, PARAMETERS, TEXTURE, ProtocolError, Request

ROOT = Path(__file__).resolve().parents[1]
# The zs command's options that are not parameters of a job: where things go, which model.
CLI_OPTIONS = {"help", "source", "out", "controlnet", "device", "objects", "use_scene_cameras", "frames",
               "camera", "server", "token", "passes_only", "animation", "size", "host", "port", "data_dir",
               "reference_image", "dtype", "offload", "vae_tiling"}


def subcommand(name: str) -> argparse.ArgumentParser:
    parser = zs_cli.build_parser()
    (commands,) = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return commands.choices[name]


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {action.dest: action for action in parser._actions}


def test_the_request_is_the_tables_wire_parameters_with_their_defaults_per_kind():
    fields = [field.name for field in dataclasses.fields(Request)]
    assert fields == ["kind"] + [p.name for p in protocol.WIRE_PARAMETERS]
    for kind in protocol.JOB_KINDS:
        request = Request(kind=kind)
        for parameter in protocol.WIRE_PARAMETERS:
            assert getattr(request, parameter.name) == parameter.default_for(kind), (kind, parameter.name)
        assert Request.from_dict({"kind": kind}) == request.validate()


@pytest.mark.parametrize("parameter", [p for p in PARAMETERS.values() if p.wire], ids=lambda p: p.name)
def test_the_request_checks_each_parameters_type_and_range(parameter):
    kind = parameter.modes[0] if parameter.modes else TEXTURE
    wrong_type = 1.5 if parameter.type in (int, str, bool) else "text"
    with pytest.raises(ProtocolError) as raised:
        Request.from_dict({"kind": kind, parameter.name: wrong_type})
    assert raised.value.field == parameter.name
    if parameter.high is not None:
        with pytest.raises(ProtocolError, match="outside") as raised:
            Request.from_dict({"kind": kind, parameter.name: parameter.type(parameter.high) + 1})
        assert raised.value.field == parameter.name
    if parameter.choices:
        with pytest.raises(ProtocolError, match="expected one of"):
            Request.from_dict({"kind": kind, parameter.name: "no-such-choice"})


@pytest.mark.parametrize("command, kinds", [("texture", (TEXTURE,)), ("animate", (ANIMATION,)),
                                            ("demo", (TEXTURE, ANIMATION))])
def test_the_zs_flags_are_the_tables(command, kinds):
    parser = subcommand(command)
    found = options(parser)
    wanted = {p.name for p in PARAMETERS.values() if any(kind in p.modes for kind in kinds)
              and (p.wire or command != "demo" or p.name in zs_cli.commands.DEMO_CAPTURE)}
    assert set(found) - CLI_OPTIONS == wanted
    for name in wanted:
        parameter, action = PARAMETERS[name], found[name]
        assert parameter.flag in action.option_strings and action.default is None
        for kind in kinds:
            if kind in parameter.modes and command != "demo":
                assert f"default: {protocol._shown(parameter.default_for(kind))}" in action.help, name
        if parameter.choices:
            assert parameter.values() == tuple(parameter.values())
        if parameter.high is not None:  # out of range: argparse refuses it, naming the range
            with pytest.raises(SystemExit):
                parser.parse_args(["x.npz", "--out", "o", parameter.flag, str(parameter.type(parameter.high) + 1)]
                                  if command != "demo" else [parameter.flag, str(parameter.type(parameter.high) + 1)])


def test_zs_flags_left_out_give_the_tables_defaults_and_the_same_request_as_the_server():
    for command, kind in (("texture", TEXTURE), ("animate", ANIMATION)):
        args = subcommand(command).parse_args(["bundle.npz", "--out", "o"])
        values = protocol.values_from_arguments(args, kind)
        assert values == protocol.defaults(kind)
        wire = {name: value for name, value in values.items() if PARAMETERS[name].wire}
        assert Request(kind=kind, **wire).validate() == Request.from_dict({"kind": kind})


def test_a_flag_for_the_other_kind_is_an_error():
    args = subcommand("demo").parse_args(["--texture-size", "256", "--animation"])
    with pytest.raises(ProtocolError, match="--texture-size is for texture jobs, not animation"):
        protocol.values_from_arguments(args, ANIMATION)
    assert zs_cli.main(["demo", "--frames", "1-4", "--out", "unused"]) == 2  # --frames is the animation demo's


def test_the_openapi_request_schema_is_the_tables(tmp_path):
    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.config import Settings

    settings = Settings(data_dir=tmp_path, token="t", default_model="tiny")
    # base_url: the server answers only to its own names (server/hosts.py), not "testserver".
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        document = client.get("/openapi.json").json()
    form = document["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    schema = form["properties"]["request"]["contentSchema"]
    assert set(schema["properties"]) == {"kind", "protocol"} | {p.name for p in protocol.WIRE_PARAMETERS}
    for parameter in protocol.WIRE_PARAMETERS:
        entry = schema["properties"][parameter.name]
        assert entry["default"] == parameter.default
        assert entry.get("minimum") == parameter.low and entry.get("maximum") == parameter.high
        assert entry.get("enum") == (list(parameter.values()) if parameter.choices else None)


# ------------------------------------------------------------------ declared nowhere else

SCANNED = ("zs_core", "server", "zs_cli", "blender_addon")
FRONT_ENDS = ("server", "zs_cli", "blender_addon")  # where a keyword default would be a user-facing one


def scanned_files():
    for package in SCANNED:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name != "protocol.py":
                yield package, path


def test_no_parameter_is_declared_outside_the_table():
    """No flag string of a parameter and no class field named like one with a default,
    anywhere but the table; no keyword default named like one in the front ends (a copy
    would drift from the table). The sampling core's own functions may take defaults."""
    flags = {flag: p.name for p in PARAMETERS.values() for flag in (p.flag, *p.aliases)}
    names = set(PARAMETERS)
    found = []
    for package, path in scanned_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in flags:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} flag {node.value}")
            elif isinstance(node, ast.ClassDef):
                for statement in node.body:
                    if (isinstance(statement, ast.AnnAssign) and _declares(statement.value)
                            and isinstance(statement.target, ast.Name) and statement.target.id in names):
                        found.append(f"{path.relative_to(ROOT)}:{statement.lineno} field {statement.target.id}")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and package in FRONT_ENDS:
                arguments = node.args.args + node.args.kwonlyargs
                defaults = [None] * (len(node.args.args) - len(node.args.defaults)) + node.args.defaults \
                    + node.args.kw_defaults
                for argument, default in zip(arguments, defaults):
                    if argument.arg in names and _declares(default):
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}({argument.arg}=...)")
    assert not found, "parameters declared outside zs_core/protocol.py's table:\n" + "\n".join(found)


def _declares(default: ast.expr | None) -> bool:
    """A default that declares a value: not None (which says "not given") nor a dataclass
    ``field(...)`` without a default (a derived attribute)."""
    if default is None or (isinstance(default, ast.Constant) and default.value is None):
        return False
    if isinstance(default, ast.Call) and getattr(default.func, "id", None) == "field":
        return any(keyword.arg in ("default", "default_factory") for keyword in default.keywords)
    return True
