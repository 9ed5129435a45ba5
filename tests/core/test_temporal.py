"""Frame-to-frame link matrices (vector pass, UV pass) and the carry chain, on constructed
frames where the right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from zs_core import bake, metrics, scene, temporal


def shifted(image: np.ndarray, d_col: int, d_row: int) -> np.ndarray:
    """``image (H, W, C)`` moved by whole pixels (content at p goes to p + d); zeros enter."""
    out = np.zeros_like(image)
    height, width = image.shape[:2]
    out[max(d_row, 0):height + min(d_row, 0), max(d_col, 0):width + min(d_col, 0)] = \
        image[max(-d_row, 0):height - max(d_row, 0), max(-d_col, 0):width - max(d_col, 0)]
    return out


def test_vector_links_move_pixels_by_their_motion():
    rng = np.random.default_rng(0)
    frame = rng.random((12, 10, 3))
    motion = np.broadcast_to(np.array([2.0, 1.0], np.float32), (12, 10, 2))
    everywhere = np.ones((12, 10), bool)
    link = temporal.vector_links(motion, everywhere, everywhere)
    moved = (link @ frame.reshape(-1, 3)).reshape(frame.shape)
    np.testing.assert_allclose(moved, shifted(frame, 2, 1), atol=1e-12)
    covered = np.asarray(link.sum(axis=1)).reshape(12, 10)
    assert covered[:1].sum() == 0 and covered[:, :2].sum() == 0 and covered[1:, 2:].min() == 1


def test_vector_links_split_a_half_pixel_move_and_respect_source_and_target():
    motion = np.broadcast_to(np.array([0.5, 0.0], np.float32), (4, 6, 2))
    source = np.ones((4, 6), bool)
    target = np.ones((4, 6), bool)
    target[:, 3] = False  # e.g. the object covers column 3 in the next frame
    link = temporal.vector_links(motion, source, target).toarray()
    assert link[0 * 6 + 2, 0 * 6 + 2] == pytest.approx(0.5) and link[0 * 6 + 2, 0 * 6 + 1] == pytest.approx(0.5)
    assert not link[3::6].any()  # nothing lands on a pixel that may not receive
    source[0, 0] = False
    assert not temporal.vector_links(motion, source, target).toarray()[:, 0].any()


def test_vector_links_leave_no_holes_where_the_picture_expands():
    """A zoom in by 15%: every pixel of the next frame that came from inside the image is
    linked (rows sum to 1), and carrying a linear ramp gives the ramp at the new places."""
    height = width = 40
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    centre = (width - 1) / 2
    motion = np.stack([(cols - centre) * 0.15, (rows - centre) * 0.15], axis=-1)
    everywhere = np.ones((height, width), bool)
    link = temporal.vector_links(motion, everywhere, everywhere)
    covered = np.asarray(link.sum(axis=1)).reshape(height, width)
    inner = slice(4, -4)
    np.testing.assert_allclose(covered[inner, inner], 1.0)
    ramp = cols.reshape(-1, 1)
    carried = (link @ ramp).reshape(height, width)
    expected = centre + (cols - centre) / 1.15  # where each next-frame pixel was
    np.testing.assert_allclose(carried[inner, inner], expected[inner, inner], atol=0.02)


def test_vector_links_give_disoccluded_pixels_nothing():
    """The left half slides 3 px right over a still right half: the 3 columns it uncovers
    are new content. Where both halves land (columns 8-10) the motion alone cannot tell
    which is in front: a pixel is linked to one consistent source or left alone."""
    height, width = 8, 16
    motion = np.zeros((height, width, 2))
    motion[:, :8, 0] = 3.0
    everywhere = np.ones((height, width), bool)
    link = temporal.vector_links(motion, everywhere, everywhere).toarray()
    covered = link.sum(axis=1).reshape(height, width)
    assert not covered[:, :3].any()  # uncovered: nothing came from there
    assert np.allclose(covered[:, 3:8], 1.0) and np.allclose(covered[:, 11:], 1.0)
    assert link[0 * width + 5, 0 * width + 2] == pytest.approx(1.0)  # column 2 moved to 5
    assert link[0 * width + 12, 0 * width + 12] == pytest.approx(1.0)  # the still half stays
    assert set(np.round(np.unique(covered[:, 8:11]), 6)) <= {0.0, 1.0}


def test_uv_links_carry_a_texture_between_frames_of_a_moving_object():
    shot = scene.animated_scene(frames=2, width=96, height=96)
    size = 64
    grid = np.linspace(0, 1, size, dtype=np.float32)
    texture = np.stack(np.meshgrid(grid, grid) + [np.full((size, size), 0.5, np.float32)], axis=-1)  # smooth
    frames = bake.render(texture, shot.uv, shot.mask)  # (2, H, W, 3), the texture on the object
    link = temporal.uv_links(shot.uv, shot.mask, size)
    carried = link @ frames[0].reshape(-1, 3)
    covered = np.asarray(link.sum(axis=1)).ravel()
    good = covered > 0.99
    assert good.sum() > 0.5 * shot.mask[1].sum()  # most of the object was seen in frame 0
    expected = frames[1].reshape(-1, 3)
    np.testing.assert_allclose(carried[good] / covered[good, None], expected[good], atol=0.03)
    assert not covered.reshape(96, 96)[~shot.mask[1]].any()  # only object pixels are linked


def test_carry_keeps_frame_zero_and_new_pixels_and_follows_strength():
    rng = np.random.default_rng(1)
    values = rng.random((3, 20, 2))
    identity = [temporal.sparse.identity(20, format="csr")] * 2
    np.testing.assert_array_equal(temporal.carry(values, identity, 0.0), values)
    full = temporal.carry(values, identity, 1.0)
    np.testing.assert_allclose(full, np.broadcast_to(values[:1], values.shape))
    half = temporal.carry(values, identity, 0.5)
    np.testing.assert_allclose(half[1], 0.5 * values[1] + 0.5 * values[0])
    np.testing.assert_allclose(half[2], 0.5 * values[2] + 0.5 * half[1])
    nothing = [temporal.sparse.csr_matrix((20, 20))] * 2  # every point new in every frame
    np.testing.assert_array_equal(temporal.carry(values, nothing, 1.0), values)
    with pytest.raises(ValueError, match="links"):
        temporal.carry(values, identity[:1], 0.5)


def test_carrying_a_flickering_sequence_lowers_its_warp_error():
    shot = scene.animated_scene(frames=5, width=64, height=64)
    rng = np.random.default_rng(2)
    frames = rng.random((5, 64, 64, 3)).astype(np.float32)  # independent frames: all flicker
    links = temporal.frame_links(shot.uv, shot.mask, shot.vector, texels=48)
    carried = temporal.carry(frames.reshape(5, -1, 3), links, 0.8).reshape(frames.shape)
    before = metrics.temporal_warp_error(frames, shot.uv, shot.mask, shot.vector, texels=48)
    after = metrics.temporal_warp_error(carried.astype(np.float32), shot.uv, shot.mask, shot.vector, texels=48)
    assert after < 0.5 * before
