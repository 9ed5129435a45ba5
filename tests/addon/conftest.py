"""Add-on tests run the real Blender-as-a-module (bpy); each test starts from an empty scene."""

from __future__ import annotations

import pytest

try:
    import bpy
except ImportError:  # bpy is an optional test dependency: skip the add-on tests without it
    bpy = None
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture
def scene():
    """A fresh, empty scene (factory settings), the context scene."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    return bpy.context.scene
