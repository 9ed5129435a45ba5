"""The import rules of docs/architecture.md: the arrows between the top-level packages go

    zs_cli ──► server ──► zs_core        blender_addon ──► (zs_core/protocol.py, render_passes.py, by path)
    zs_cli ──► blender_addon

zs_core imports no other package of the project; server imports zs_core only; the add-on
imports none of them (it loads the stdlib + numpy files protocol.py and render_passes.py on its own) and never
pulls in torch, diffusers, transformers, pydantic or fastapi; light modules stay light.
Imports hidden in ``importlib.import_module("...")`` or ``__import__("...")`` strings count too."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLENDER = {"bpy", "bmesh", "mathutils"}
FORBIDDEN = {
    "zs_core": BLENDER | {"blender_addon", "server", "zs_cli"},
    "server": BLENDER | {"blender_addon", "zs_cli"},
    "blender_addon": {"torch", "diffusers", "transformers", "pydantic", "fastapi", "uvicorn", "starlette",
                      "safetensors", "scipy", "cv2", "PIL", "zs_core", "server", "zs_cli"},
}
LIGHT_MODULES = ("zs_core", "zs_core.protocol", "zs_core.render_passes", "zs_core.exr_sequence", "zs_core.noise_field", "zs_core.memory", "zs_core.families", "zs_core.geometry", "zs_core.bake", "zs_core.metrics",
                 "zs_core.coverage", "zs_core.scene", "zs_core.images", "zs_cli")
IMPORT_FUNCTIONS = {"import_module", "__import__"}
LOADED_BY_PATH = ("zs_core/protocol.py", "zs_core/render_passes.py", "zs_core/coverage.py")  # blender_addon/wire.py loads these


def imported_top_levels(source: str, filename: str = "<source>") -> set[str]:
    """Top-level package names ``source`` imports: import statements, and string literals
    passed to ``importlib.import_module`` / ``__import__``."""
    tree = ast.parse(source, filename=filename)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and _called_name(node.func) in IMPORT_FUNCTIONS and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str) and not first.value.startswith("."):
                names.add(first.value.split(".")[0])
    return names


def _called_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def python_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def run_blocked(blocked: set[str], code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter where importing any of ``blocked`` fails."""
    prelude = textwrap.dedent(f"""
        import sys, importlib.abc
        BLOCKED = {sorted(blocked)!r}
        class Blocker(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in BLOCKED:
                    raise ImportError(f'blocked import: {{name}}')
                return None
        sys.meta_path.insert(0, Blocker())
        sys.path.insert(0, {str(ROOT)!r})
    """)
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_packages_import_only_what_their_rules_allow(package):
    files = python_files(package) + ([ROOT / "__init__.py"] if package == "blender_addon" else [])
    for path in [p for p in files if p.exists()]:
        bad = imported_top_levels(path.read_text(), str(path)) & FORBIDDEN[package]
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize("source, found", [
    ("import server.app", {"server"}),
    ("from blender_addon import batch", {"blender_addon"}),
    ("import importlib\nimportlib.import_module('blender_addon.batch')", {"importlib", "blender_addon"}),
    ("from importlib import import_module\nimport_module('server')", {"importlib", "server"}),
    ("__import__('zs_cli.main')", {"zs_cli"}),
    ("from . import sibling", set()),
])
def test_the_rule_sees_import_statements_and_import_strings(source, found):
    assert imported_top_levels(source) == found


@pytest.mark.parametrize("path", LOADED_BY_PATH)
def test_files_the_add_on_loads_by_path_need_only_the_standard_library_and_numpy(path):
    source = (ROOT / path).read_text()
    assert imported_top_levels(source, path) <= set(sys.stdlib_module_names) | {"numpy", "__future__"}
    relative = [node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom) and node.level]
    assert not relative, f"{path} is loaded as a lone file: no relative imports"


def test_zs_core_and_server_import_without_blender_or_the_command():
    modules = [p.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".")
               for package in ("zs_core", "server") for p in python_files(package)]
    modules = [m.removesuffix(".__init__") for m in modules]
    result = run_blocked(BLENDER | {"blender_addon", "zs_cli"}, f"""
        import importlib
        for name in {modules!r}:
            importlib.import_module(name)
        print('imported', len({modules!r}))
    """)
    assert result.returncode == 0, result.stderr[-3000:]


def test_light_modules_do_not_load_torch():
    result = run_blocked({"torch", "diffusers", "transformers", "bpy"}, f"""
        import importlib
        for name in {list(LIGHT_MODULES)!r}:
            importlib.import_module(name)
    """)
    assert result.returncode == 0, result.stderr[-3000:]


def test_blocker_really_blocks():
    result = run_blocked({"json"}, "import json")
    assert result.returncode != 0 and "blocked import: json" in result.stderr
