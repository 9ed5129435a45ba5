"""zs_core.exr_sequence: EXR frames + sidecars -> animation passes, with OpenEXR's own writer
making the files (Blender's render-output channel naming: ``ViewLayer.Depth.Z``, ``IndexOB``;
the File Output node's multi-part naming is covered by the bpy tests)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from exr_shots import write_shot
from zs_core import exr_sequence, render_passes
from zs_core.protocol import ProtocolError

def test_a_sequence_decodes_to_the_passes_it_was_written_from(tmp_path):
    passes, folder = write_shot(tmp_path / "renders")
    for source in (folder / "shot_####.exr", folder, str(folder / "shot_*.exr")):
        shot = exr_sequence.read_shot(source)
        assert shot.frames == [1, 2, 3, 4] and shot.fps == 25.0 and shot.camera == "Camera"
        got = shot.passes
        assert np.array_equal(got.mask, passes.mask)
        np.testing.assert_array_equal(got.depth, passes.depth)
        np.testing.assert_array_equal(got.vector, passes.vector)
        on = passes.mask
        for name in ("uv", "normal", "position"):
            np.testing.assert_array_equal(getattr(got, name)[on], getattr(passes, name)[on], err_msg=name)
            assert not getattr(got, name)[~on].any(), name  # only target pixels carry surface data
        np.testing.assert_allclose(got.world_to_camera, passes.world_to_camera, atol=1e-6)
        np.testing.assert_allclose(got.projection, passes.projection, atol=1e-6)


def test_frames_sort_by_number_not_by_name(tmp_path):
    _passes, folder = write_shot(tmp_path / "r", frames=range(998, 1002))
    assert [path.name for path in exr_sequence.sequence_files(folder / "shot_####.exr")] == [
        "shot_0998.exr", "shot_0999.exr", "shot_1000.exr", "shot_1001.exr"]
    assert exr_sequence.read_shot(folder).frames == [998, 999, 1000, 1001]


def test_every_fault_names_the_file_and_the_reason(tmp_path):
    _passes, folder = write_shot(tmp_path / "cut", first_frame_camera="Other")
    with pytest.raises(ProtocolError, match="shot_0002.exr: camera 'Camera' differs from the first frame's 'Other'"):
        exr_sequence.read_shot(folder)
    _passes, folder = write_shot(tmp_path / "blurred", problems=["motion blur is on"])
    with pytest.raises(ProtocolError, match="shot_0001.exr: the render could not write usable ZS passes: motion blur"):
        exr_sequence.read_shot(folder)
    _passes, folder = write_shot(tmp_path / "big")
    with pytest.raises(ProtocolError, match="32x32 pixels; this server takes at most 16 a side"):
        exr_sequence.read_shot(folder, max_size=16)
    with pytest.raises(ProtocolError, match="4 frames; this server takes at most 3"):
        exr_sequence.read_shot(folder, max_frames=3)
    (folder / "shot_0004.json").write_text(json.dumps({"format": "zs-passes", "version": 9}))
    with pytest.raises(ProtocolError, match="shot_0004.json: sidecar version 9"):
        exr_sequence.read_shot(folder)
    (folder / "shot_0004.json").write_text("[" * 100_000)  # nested too deep for the JSON parser
    with pytest.raises(ProtocolError, match="shot_0004.json"):
        exr_sequence.read_shot(folder)
    with pytest.raises(ProtocolError, match="an animation needs at least 2 frames"):
        exr_sequence.read_shot(folder / "shot_0001.exr")
    with pytest.raises(ProtocolError, match="no EXR file matches"):
        exr_sequence.read_shot(tmp_path / "nothing_####.exr")


def test_a_sidecar_with_bad_values_is_refused():
    good = render_passes.make_sidecar(1, "Camera", 8, 8, np.eye(4), np.eye(4))
    assert render_passes.parse_sidecar(json.loads(json.dumps(good)))["frame"] == 1
    for key, value, words in (("width", 0, "out of range"), ("frame", 1.5, "frame: expected an integer"),
                              ("projection", [[1, 2]], "expected a 4x4 matrix"),
                              ("world_to_camera", [[float("nan")] * 4] * 4, "not finite"),
                              ("fps", -1, "fps: expected a positive number"),
                              ("projection", [["a"] * 4] * 4, "expected numbers")):
        with pytest.raises(ValueError, match=words):
            render_passes.parse_sidecar(dict(good, **{key: value}))
