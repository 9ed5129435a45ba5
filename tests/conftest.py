"""Shared fixtures: the built-in tiny models, loaded once per test session."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# `import bpy` writes user resources; keep them out of the home folder.
os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="zs-blender-"))
# Nothing in the suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny():
    from zs_core import models

    return models.load("tiny", device="cpu")


@pytest.fixture(scope="session")
def tiny_sdxl():
    from zs_core import models

    return models.load("tiny-sdxl", device="cpu")


@pytest.fixture(scope="session")
def tiny_dir(tiny, tmp_path_factory):
    from zs_core import models

    return models.save(tiny, tmp_path_factory.mktemp("tiny-model"))
