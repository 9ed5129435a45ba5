"""The .npz header check of uploads (server/uploads.py): every array the protocol sizes by
views (or frames) and pixels, or by texels, is held to the server's limits before anything
is decompressed."""

from __future__ import annotations

import io

import numpy as np
import pytest

from server import uploads
from zs_core import protocol
from zs_core.protocol import ProtocolError

from zs_server_helpers import make_settings


def npz_of(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def small_arrays(views: int = 2, size: int = 16) -> dict[str, np.ndarray]:
    """Every per-view array of the protocol, at sizes within the limits, in its dtype."""
    return {name: np.zeros((views, size, size, *trailing), protocol.ARRAY_DTYPES[name][0])
            for name, (trailing, _) in protocol.VIEW_ARRAYS.items()}


@pytest.fixture
def settings(tmp_path):
    return make_settings(tmp_path)  # 8 views, 256 pixels, 1024 texels a side


def test_arrays_within_the_limits_pass(settings):
    uploads.open_passes(npz_of(**small_arrays()), settings).close()


@pytest.mark.parametrize("shape, field", [((2, 16, 264), "width"), ((2, 264, 16), "height"), ((9, 16, 16), "views")])
def test_an_oversized_background_id_is_refused(settings, shape, field):
    arrays = small_arrays() | {"background_id": np.zeros(shape, np.int32)}
    with pytest.raises(ProtocolError) as raised:
        uploads.open_passes(npz_of(**arrays), settings)
    assert raised.value.field == field and "background_id" in str(raised.value)


def test_frames_of_every_per_view_array_count_against_max_frames(settings):
    settings.max_frames = 4
    for name in protocol.VIEW_ARRAYS:
        arrays = small_arrays(views=4) | {name: small_arrays(views=5)[name]}
        with pytest.raises(ProtocolError, match=f"^frames: 5 frames in {name};"):
            uploads.open_passes(npz_of(**arrays), settings, animation=True)
