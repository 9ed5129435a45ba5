"""Consistency metrics on constructed data whose right answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from zs_core import bake, geometry, metrics, scene

NOISE_MEAN_ABS = 2.0 / math.sqrt(math.pi)  # E|X - Y| for independent X, Y ~ N(0, 1)


def smooth_texture(size: int) -> np.ndarray:
    """(T, T, 3) float32, smooth and positive."""
    uv = geometry.texel_uv(size)
    u, v = uv[..., 0], uv[..., 1]
    return np.stack([0.2 + 0.6 * v, 0.5 + 0.3 * np.sin(2 * np.pi * u), 0.4 + 0.2 * np.cos(2 * np.pi * v)],
                    axis=-1).astype(np.float32)


@pytest.fixture(scope="module")
def passes():
    return scene.sphere_scene(views=4, width=128, height=128, texture_size=128)


@pytest.fixture(scope="module")
def texture():
    return smooth_texture(128)


@pytest.fixture(scope="module")
def images(passes, texture):
    return bake.render(texture, passes.uv, passes.mask)


def one_pixel_per_texel(views: int, texels: int):
    """uv (V, t, t, 2) at the centres of a t x t grid, all views alike; mask all True."""
    centres = geometry.texel_uv(texels).astype(np.float32)
    uv = np.broadcast_to(centres, (views, texels, texels, 2)).copy()
    return uv, np.ones((views, texels, texels), bool)


# ------------------------------------------------------------------ cross-view disagreement


def test_identical_views_do_not_disagree(passes, images):
    copies = np.repeat(images[:1], 3, axis=0)
    uv = np.repeat(passes.uv[:1], 3, axis=0)
    mask = np.repeat(passes.mask[:1], 3, axis=0)
    assert metrics.cross_view_disagreement(copies, uv, mask, texels=64) == pytest.approx(0.0, abs=1e-12)


def test_independent_unit_noise_disagrees_by_about_one():
    uv, mask = one_pixel_per_texel(4, 64)
    noise = np.random.default_rng(0).normal(size=(4, 64, 64, 3))
    assert metrics.cross_view_disagreement(noise, uv, mask, texels=64) == pytest.approx(1.0, abs=0.05)


def test_one_offset_view_disagrees_by_offset_over_sqrt_views():
    # k views, one shifted by c: per texel the unbiased variance is c^2 / k.
    views, offset = 4, 0.5
    uv, mask = one_pixel_per_texel(views, 32)
    base = np.random.default_rng(1).uniform(size=(1, 32, 32, 3))
    images = np.repeat(base, views, axis=0)
    images[2] += offset
    expected = offset / math.sqrt(views)
    assert metrics.cross_view_disagreement(images, uv, mask, texels=32) == pytest.approx(expected, rel=1e-9)


# ---------------------------------------------------------------------------- bake residual


def test_views_rendered_from_one_texture_leave_no_residual(passes, images):
    residual = metrics.bake_residual(images, passes)
    assert len(residual["per_view"]) == 4
    assert max(residual["per_view"]) < 0.003
    assert residual["mean"] == pytest.approx(np.mean(residual["per_view"]))


def test_an_offset_view_leaves_exactly_its_offset(passes, images, texture):
    shifted = images.copy()
    shifted[2][passes.mask[2]] += 0.1
    residual = metrics.bake_residual(shifted, passes, texture=texture)
    assert residual["per_view"][2] == pytest.approx(0.1, abs=0.002)
    assert max(residual["per_view"][:2] + residual["per_view"][3:]) < 0.002
    assert residual["mean"] == pytest.approx(0.1 / 4, abs=0.002)
    # Baked from the views themselves, the shifted view is the odd one out.
    baked = metrics.bake_residual(shifted, passes)
    assert int(np.argmax(baked["per_view"])) == 2 and baked["per_view"][2] > 0.01


# -------------------------------------------------------------------------- temporal warp


def pattern(height: int, width: int, shift_cols: float = 0.0, shift_rows: float = 0.0) -> np.ndarray:
    """A smooth (H, W, 3) pattern, moved by (shift_cols, shift_rows) pixels."""
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    x, y = cols - shift_cols, rows - shift_rows
    return np.stack([np.sin(x / 9.0), np.cos(y / 7.0), np.sin((x + y) / 11.0)], axis=-1).astype(np.float32)


def uniform_vector(frames: int, height: int, width: int, cols: float, rows: float) -> np.ndarray:
    vector = np.zeros((frames, height, width, 2), np.float32)
    vector[..., 0], vector[..., 1] = cols, rows
    return vector


def test_a_static_sequence_has_no_warp_error(passes, images):
    frames = np.repeat(images[:1], 3, axis=0)
    uv = np.repeat(passes.uv[:1], 3, axis=0)
    mask = np.repeat(passes.mask[:1], 3, axis=0)
    assert metrics.temporal_warp_error(frames, uv=uv, mask=mask) == pytest.approx(0.0, abs=1e-12)
    still = np.repeat(pattern(48, 64)[None], 3, axis=0)
    assert metrics.temporal_warp_error(still, vector=np.zeros((3, 48, 64, 2), np.float32)) == 0.0


@pytest.mark.parametrize("cols, rows, tolerance", [(3.0, -2.0, 1e-6), (2.5, 1.25, 0.005)])
def test_a_pattern_moved_by_the_vector_field_has_no_warp_error(cols, rows, tolerance):
    frames = np.stack([pattern(48, 64, cols * i, rows * i) for i in range(3)])
    vector = uniform_vector(3, 48, 64, cols, rows)
    assert metrics.temporal_warp_error(frames, vector=vector) < tolerance
    # Control: the opposite motion does not line the frames up.
    assert metrics.temporal_warp_error(frames, vector=-vector) > 0.05


def test_independent_noise_frames_have_a_large_warp_error():
    noise = np.random.default_rng(2).normal(size=(3, 64, 64, 3)).astype(np.float32)
    by_vector = metrics.temporal_warp_error(noise, vector=np.zeros((3, 64, 64, 2), np.float32))
    uv, mask = one_pixel_per_texel(3, 64)
    by_uv = metrics.temporal_warp_error(noise, uv=uv, mask=mask, texels=64)
    assert by_vector == pytest.approx(NOISE_MEAN_ABS, abs=0.03)
    assert by_uv == pytest.approx(NOISE_MEAN_ABS, abs=0.03)


def test_object_pixels_follow_the_surface_across_views(passes, images):
    # Two views of the sphere as two frames: the object turned, its UV follows it.
    frames, uv, mask = images[:2], passes.uv[:2], passes.mask[:2]
    turned = metrics.temporal_warp_error(frames, uv=uv, mask=mask, texels=32)
    assert turned < 0.01
    noisy = frames + np.random.default_rng(3).normal(scale=0.2, size=frames.shape).astype(np.float32)
    assert metrics.temporal_warp_error(noisy, uv=uv, mask=mask, texels=32) > 5 * turned


def test_uv_for_the_object_and_vectors_for_the_background(passes, images):
    # The whole picture (object and background) slides 3 pixels right.
    first = np.where(passes.mask[0][..., None], images[0], pattern(128, 128))
    frames = np.stack([first, np.roll(first, 3, axis=1)])
    uv = np.stack([passes.uv[0], np.roll(passes.uv[0], 3, axis=1)])
    mask = np.stack([passes.mask[0], np.roll(passes.mask[0], 3, axis=1)])
    vector = uniform_vector(2, 128, 128, 3.0, 0.0)
    assert metrics.temporal_warp_error(frames, uv=uv, mask=mask, vector=vector) < 1e-6
    assert metrics.temporal_warp_error(frames, uv=uv, mask=mask, vector=0 * vector) > 0.01
    # Apart: a wrong vector pass spoils the background alone; the object is matched through UV.
    parts = metrics.temporal_warp_errors(frames, uv=uv, mask=mask, vector=0 * vector)
    assert parts["object"] < 1e-6 < 0.01 < parts["background"]
    assert parts["object"] < parts["all"] < parts["background"]
    assert metrics.temporal_warp_errors(frames, uv=uv, mask=mask)["background"] is None


def test_temporal_warp_error_needs_a_correspondence():
    with pytest.raises(ValueError, match="^uv:"):
        metrics.temporal_warp_error(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="^vector:"):
        metrics.temporal_warp_error(np.zeros((2, 8, 8, 3), np.float32), vector=np.zeros((2, 8, 9, 2)))


# ----------------------------------------------------------------------------- seam energy


def two_islands(size: int = 32, gap: tuple[int, int] = (15, 17)) -> np.ndarray:
    """(T, T) bool: left and right islands separated by a gap of columns."""
    texel_mask = np.ones((size, size), bool)
    texel_mask[:, gap[0]:gap[1]] = False
    return texel_mask


def test_a_smooth_texture_has_no_seam():
    # Every adjacent pair differs by exactly a: borders look like the interior.
    rows, cols = np.mgrid[0:32, 0:32]
    ramp = (0.01 * (rows + cols))[..., None].repeat(3, axis=-1)
    energy = metrics.seam_energy(ramp, two_islands())
    assert energy["islands"] == 2
    assert energy["border_pairs"] == 2 * 32  # two island edges, one pair per row each
    assert energy["ratio"] == pytest.approx(1.0)


def test_a_colour_step_between_touching_islands_is_a_seam():
    rows, cols = np.mgrid[0:32, 0:32]
    islands = np.where(cols < 16, 1, 2)
    texture = 0.01 * (rows + cols) + np.where(cols < 16, 0.0, 1.0)
    energy = metrics.seam_energy(texture, np.ones((32, 32), bool), islands=islands)
    assert energy["border_pairs"] == 32
    assert energy["border"] == pytest.approx(1.01)
    assert energy["ratio"] > 50


def test_unpadded_background_is_a_seam_and_padding_removes_it():
    rows, cols = np.mgrid[0:32, 0:32]
    texel_mask = two_islands(gap=(12, 20))
    texture = np.where(texel_mask, 0.5 + 0.01 * (rows + cols), 0.0)[..., None]
    unpadded = metrics.seam_energy(texture, texel_mask)
    assert unpadded["ratio"] > 20
    # Pad like the bake: copy the nearest island texel into the gap.
    padded = texture.copy()
    padded[:, 12:16] = texture[:, 11:12]
    padded[:, 16:20] = texture[:, 20:21]
    assert metrics.seam_energy(padded, texel_mask)["ratio"] < 1.0


def test_seam_energy_edge_cases():
    flat = np.full((8, 8, 3), 0.3)
    assert metrics.seam_energy(flat, two_islands(8, (3, 5)))["ratio"] == 1.0
    whole = metrics.seam_energy(flat, np.ones((8, 8), bool))
    assert whole["border_pairs"] == 0 and math.isnan(whole["ratio"])
    with pytest.raises(ValueError, match="^texture:"):
        metrics.seam_energy(np.zeros((8, 9, 3)), np.ones((8, 8), bool))
