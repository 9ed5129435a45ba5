"""DESIGN.md import rules: zs_core and server never need bpy; the add-on never pulls in
torch, diffusers, transformers, pydantic or fastapi; light modules stay light."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ADDON_FORBIDDEN = {"torch", "diffusers", "transformers", "pydantic", "fastapi", "uvicorn", "starlette",
                   "safetensors", "scipy", "cv2", "PIL", "zs_core", "server"}
CORE_FORBIDDEN = {"bpy", "bmesh", "mathutils", "blender_addon"}
LIGHT_CORE_MODULES = ("zs_core", "zs_core.protocol", "zs_core.geometry", "zs_core.bake", "zs_core.metrics",
                      "zs_core.scene", "zs_core.images", "zs_core.cli")


def imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


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


@pytest.mark.parametrize("package", ["zs_core", "server"])
def test_core_and_server_sources_never_import_blender(package):
    for path in python_files(package):
        bad = imported_top_levels(path) & CORE_FORBIDDEN
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_addon_sources_never_import_heavy_libraries():
    files = python_files("blender_addon") + [ROOT / "__init__.py"]
    for path in [p for p in files if p.exists()]:
        bad = imported_top_levels(path) & ADDON_FORBIDDEN
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_zs_core_and_server_import_without_bpy():
    modules = [p.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".")
               for package in ("zs_core", "server") for p in python_files(package)]
    modules = [m.removesuffix(".__init__") for m in modules]
    result = run_blocked(CORE_FORBIDDEN, f"""
        import importlib
        for name in {modules!r}:
            importlib.import_module(name)
        print('imported', len({modules!r}))
    """)
    assert result.returncode == 0, result.stderr[-3000:]


def test_light_core_modules_do_not_load_torch():
    present = [m for m in LIGHT_CORE_MODULES if (ROOT / (m.replace(".", "/") + ".py")).exists()
               or (ROOT / m / "__init__.py").exists()]
    result = run_blocked({"torch", "diffusers", "transformers"}, f"""
        import importlib
        for name in {present!r}:
            importlib.import_module(name)
    """)
    assert result.returncode == 0, result.stderr[-3000:]


def test_blocker_really_blocks():
    result = run_blocked({"json"}, "import json")
    assert result.returncode != 0 and "blocked import: json" in result.stderr
