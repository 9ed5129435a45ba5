"""blender_addon.texels: triangles rasterised in UV space (pure numpy)."""

from __future__ import annotations

import numpy as np

from blender_addon import texels
from zs_core import geometry


def square(uv_low=(0.1, 0.2), uv_high=(0.6, 0.7), z=0.0, normal=(0.0, 0.0, 1.0)):
    """Two triangles over a UV square (sharing the diagonal) whose world position is the
    affine map (u, v) -> (2u, 3v, z): -> (tri_uv (2, 3, 2), tri_position, tri_normal)."""
    (u0, v0), (u1, v1) = uv_low, uv_high
    corners = np.array([[u0, v0], [u1, v0], [u1, v1], [u0, v1]])
    tri_uv = corners[[[0, 1, 2], [0, 2, 3]]]
    tri_position = np.concatenate([2 * tri_uv[..., :1], 3 * tri_uv[..., 1:], np.full(tri_uv.shape[:2] + (1,), z)], -1)
    tri_normal = np.broadcast_to(np.array(normal, float) * 2.0, tri_position.shape)  # not unit: normalised
    return tri_uv.astype(np.float32), tri_position, tri_normal


def test_a_square_island_covers_exactly_the_texel_centres_inside_it():
    size = 40
    position, normal, covered = texels.rasterize(*square(), size)
    uv = geometry.texel_uv(size)
    inside = (uv[..., 0] > 0.1) & (uv[..., 0] < 0.6) & (uv[..., 1] > 0.2) & (uv[..., 1] < 0.7)
    np.testing.assert_array_equal(covered, inside)  # no hole along the shared diagonal either
    expected = np.stack([2 * uv[..., 0], 3 * uv[..., 1], np.zeros(uv.shape[:2])], -1)
    np.testing.assert_allclose(position[covered], expected[covered], atol=1e-5)
    np.testing.assert_allclose(normal[covered], np.broadcast_to([0.0, 0.0, 1.0], normal[covered].shape), atol=1e-6)
    assert not position[~covered].any() and not normal[~covered].any()


def test_corner_normals_are_interpolated_and_normalised():
    tri_uv = np.array([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]], np.float32)
    tri_position = np.zeros((1, 3, 3))
    tri_normal = np.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    _, normal, covered = texels.rasterize(tri_uv, tri_position, tri_normal, 16)
    uv = geometry.texel_uv(16)[covered]
    weights = np.stack([1 - uv[:, 0] - uv[:, 1], uv[:, 0], uv[:, 1]], -1)
    expected = weights / np.linalg.norm(weights, axis=-1, keepdims=True)
    np.testing.assert_allclose(normal[covered], expected, atol=1e-5)


def test_later_triangles_win_and_earlier_maps_can_be_drawn_over():
    first = texels.rasterize(*square(z=1.0), 32)
    position, _, covered = texels.rasterize(*square((0.4, 0.4), (0.9, 0.9), z=2.0), 32, *first)
    uv = geometry.texel_uv(32)
    overlap = covered & (uv[..., 0] > 0.4) & (uv[..., 0] < 0.6) & (uv[..., 1] > 0.4) & (uv[..., 1] < 0.7)
    assert overlap.sum() > 20 and np.all(position[overlap][:, 2] == 2.0)
    only_first = covered & (uv[..., 0] < 0.4)
    assert only_first.sum() > 20 and np.all(position[only_first][:, 2] == 1.0)


def test_many_small_triangles_span_several_chunks(monkeypatch):
    monkeypatch.setattr(texels, "CANDIDATES_PER_CHUNK", 50)
    grid = np.linspace(0.0, 1.0, 9)
    parts = [square((a, b), (a + 0.125, b + 0.125)) for a in grid[:-1] for b in grid[:-1]]
    tri_uv, tri_position, tri_normal = (np.concatenate(p) for p in zip(*parts))
    position, _, covered = texels.rasterize(tri_uv, tri_position, tri_normal, 64)
    assert covered.all()  # the islands tile the whole square
    uv = geometry.texel_uv(64)
    np.testing.assert_allclose(position[..., 0], 2 * uv[..., 0], atol=1e-5)


def test_a_triangle_larger_than_a_chunk_is_drawn_in_bands_with_the_same_result(monkeypatch):
    tri_uv, tri_position, tri_normal = square((0.0, 0.0), (1.0, 1.0))
    whole = texels.rasterize(tri_uv, tri_position, tri_normal, 48)
    monkeypatch.setattr(texels, "CANDIDATES_PER_CHUNK", 100)  # each box spans 2304 candidates
    banded = texels.rasterize(tri_uv, tri_position, tri_normal, 48)
    for a, b in zip(whole, banded):
        np.testing.assert_array_equal(a, b)
    assert banded[2].all()


def test_slivers_and_non_finite_uvs_draw_nothing():
    line = np.array([[[0.1, 0.1], [0.5, 0.5], [0.9, 0.9000001]]], np.float32)  # collinear up to rounding
    broken = np.array([[[np.nan, 0.1], [0.5, 0.5], [0.9, 0.2]]], np.float32)
    corners = np.zeros((1, 3, 3))
    for uv in (line, broken):
        _, _, covered = texels.rasterize(uv, corners, corners, 64)
        assert not covered.any()
