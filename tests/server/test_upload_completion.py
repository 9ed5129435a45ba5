"""The upload header check takes the passes' ``completion`` flags (V,) bool: one per view,
held to the views of the other arrays (server/uploads.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from server import uploads
from zs_core.protocol import ProtocolError

from zs_server_helpers import make_settings


def npz_of(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def views(count: int = 3, size: int = 16) -> dict[str, np.ndarray]:
    return {"depth": np.zeros((count, size, size), np.float32), "mask": np.ones((count, size, size), bool)}


@pytest.fixture
def settings(tmp_path):
    return make_settings(tmp_path)


def test_one_flag_per_view_passes(settings):
    uploads.open_passes(npz_of(**views(), completion=np.array([False, False, True])), settings).close()


@pytest.mark.parametrize("flags", [np.zeros(4, bool), np.zeros((3, 1), bool)], ids=["too many", "2-D"])
def test_flags_that_do_not_match_the_views_are_refused(settings, flags):
    with pytest.raises(ProtocolError) as raised:
        uploads.open_passes(npz_of(**views(), completion=flags), settings)
    assert raised.value.field == "completion"
