"""The extension package: manifest, the zip Blender's own tool builds, and a real install.

The tool is the bl_pkg ``blender_ext.py`` inside the bpy wheel, run under plain Python
(as ``blender --command extension build`` would). The built zip is installed with
``bpy.ops.extensions.package_install_files`` into the user repository of a fresh
Blender (a subprocess with its own BLENDER_USER_RESOURCES, so nothing of this test
session, e.g. an already loaded protocol module, can hide a missing file), enabled,
inspected and disabled again.
"""

from __future__ import annotations

import json
import runpy
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

import bpy

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = Path(bpy.utils.system_resource("SCRIPTS"))  # bpy/<version>/scripts inside the wheel
BLENDER_EXT = SCRIPTS / "addons_core" / "bl_pkg" / "cli" / "blender_ext.py"
VALID_TAGS = SCRIPTS / "modules" / "_bpy_internal" / "extensions" / "tags.py"
MODULE = "bl_ext.user_default.zs_texturing"


def blender_ext(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BLENDER_EXT), *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


@pytest.fixture(scope="module")
def manifest() -> dict:
    return tomllib.loads((ROOT / "blender_manifest.toml").read_text())


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """The zip `zs extension` builds (the README's command), with Blender's own tool."""
    import zs_cli

    out = tmp_path_factory.mktemp("extension")
    assert zs_cli.main(["extension", "--out", str(out)]) == 0
    (path,) = out.glob("*.zip")
    return path


def test_manifest_follows_blenders_rules(manifest):
    assert manifest["schema_version"] == "1.0.0"
    assert (manifest["id"], manifest["name"], manifest["type"]) == ("zs_texturing", "ZS Texturing", "add-on")
    assert manifest["blender_version_min"] == "4.2.0"
    assert manifest["license"] == ["SPDX:GPL-3.0-or-later"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert manifest["version"] == project["version"]  # one version for the add-on and the package
    tagline = manifest["tagline"]
    assert len(tagline) < 64 and tagline[-1].isalnum()
    allowed = runpy.run_path(str(VALID_TAGS))["addons"]
    assert manifest["tags"] and set(manifest["tags"]) <= allowed
    assert set(manifest["permissions"]) == {"network", "files"}
    for reason in manifest["permissions"].values():
        assert reason[0].islower() and reason[-1].isalnum() and len(reason) <= 64, reason
    assert manifest["build"]["paths_exclude_pattern"]


def test_blenders_validator_accepts_the_manifest():
    result = blender_ext("validate", "--valid-tags", str(VALID_TAGS), str(ROOT))
    assert result.returncode == 0 and "Success" in result.stdout, result.stdout + result.stderr


SHIPPED_PACKAGES = ("blender_addon", "zs_core", "server", "zs_cli")  # the add-on + the server source


def test_the_zip_holds_what_blender_runs_and_the_server_source(package):
    with zipfile.ZipFile(package) as archive:
        names = set(archive.namelist())
    sources = {p.relative_to(ROOT).as_posix() for package in SHIPPED_PACKAGES for p in (ROOT / package).rglob("*.py")
               if "__pycache__" not in p.parts}
    expected = {"blender_manifest.toml", "__init__.py", "pyproject.toml", "README.md"} | sources
    assert names == expected, f"extra: {sorted(names - expected)}, missing: {sorted(expected - names)}"
    for forbidden in ("tests/", "bench/", ".venv/", "out/", "docs/", "__pycache__", ".pyc", "egg-info"):
        assert not any(forbidden in name for name in names), forbidden
    print(f"extension zip: {package.stat().st_size / 1024:.1f} KiB, {len(names)} files")


INSTALL_SCRIPT = textwrap.dedent("""
    import json, sys, time
    import bpy

    zip_path, module = sys.argv[1], sys.argv[2]
    out = {}
    started = time.perf_counter()
    out["install"] = sorted(bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default",
                                                                       enable_on_install=False))
    out["install_seconds"] = time.perf_counter() - started
    started = time.perf_counter()
    out["enable"] = sorted(bpy.ops.preferences.addon_enable(module=module))
    out["enable_seconds"] = time.perf_counter() - started
    out["addon_file"] = sys.modules[module].__file__
    out["protocol_file"] = sys.modules["_zs_texturing_wire_protocol"].__file__
    out["panels"] = [name for name in ("ZS_PT_main", "ZS_PT_method", "ZS_PT_output") if hasattr(bpy.types, name)]
    out["operators"] = sorted(name for name in dir(bpy.ops.zs))
    out["generate_poll"] = bpy.ops.zs.generate.poll()
    out["scene_settings"] = hasattr(bpy.context.scene, "zs_texturing")
    out["server_url"] = bpy.context.preferences.addons[module].preferences.server_url
    out["torch_loaded"] = "torch" in sys.modules
    setup = sys.modules[module + ".blender_addon.server_setup"]  # what Set Up Server installs by default
    out["setup_source"] = str(setup.resolve_source(""))
    out["setup_entries"] = setup.source_entries(setup.resolve_source(""))
    out["disable"] = sorted(bpy.ops.preferences.addon_disable(module=module))
    out["panels_after"] = [name for name in ("ZS_PT_main", "ZS_PT_method") if hasattr(bpy.types, name)]
    out["operators_after"] = sorted(name for name in dir(bpy.ops.zs))
    out["scene_settings_after"] = hasattr(bpy.context.scene, "zs_texturing")
    print("RESULT " + json.dumps(out))
""")


def test_install_enable_and_disable_in_a_fresh_blender(package, tmp_path):
    script = tmp_path / "install.py"
    script.write_text(INSTALL_SCRIPT)
    env = {"BLENDER_USER_RESOURCES": str(tmp_path / "user"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    # cwd outside the repository: the add-on must come from the installed zip only.
    result = subprocess.run([sys.executable, str(script), str(package), MODULE], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path, env=env)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert result.returncode == 0 and lines, result.stdout[-3000:] + result.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    installed = tmp_path / "user" / "extensions" / "user_default" / "zs_texturing"
    assert out["install"] == ["FINISHED"] and out["enable"] == ["FINISHED"]
    assert Path(out["addon_file"]) == installed / "__init__.py"
    assert Path(out["protocol_file"]) == installed / "zs_core" / "protocol.py"
    assert out["panels"] == ["ZS_PT_main", "ZS_PT_method", "ZS_PT_output"]
    assert {"generate", "cancel", "apply_result", "build_rig", "check_server", "start_server"} <= set(out["operators"])
    assert out["generate_poll"] and out["scene_settings"]
    assert out["server_url"] == "http://127.0.0.1:8765"  # preferences found under the extension's id
    assert not out["torch_loaded"]
    assert Path(out["setup_source"]) == installed  # the extension's folder holds the server source
    assert out["setup_entries"] == ["pyproject.toml", "README.md", *sorted(SHIPPED_PACKAGES)]
    assert out["disable"] == ["FINISHED"]
    assert out["panels_after"] == [] and out["operators_after"] == [] and not out["scene_settings_after"]
    print(f"install {out['install_seconds']:.2f} s, enable {out['enable_seconds']:.2f} s")


def test_the_root_init_is_not_part_of_the_python_package(tmp_path):
    """setuptools lists its packages explicitly, so the root __init__.py (Blender's entry)
    never lands in the wheel, and the wheel holds no manifest either."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "__init__.py", "blender_manifest.toml"):
        shutil.copy(ROOT / name, source / name)
    for package in ("zs_core", "server", "blender_addon", "zs_cli"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(tmp_path / "wheel"), str(source)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/")[0] for name in archive.namelist() if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"zs_core", "server", "blender_addon", "zs_cli"}
