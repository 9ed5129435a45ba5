"""The built-in sphere scene: every pass agrees with the geometry and the conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from zs_core import geometry, scene
from zs_core.protocol import Passes

RADIUS = 1.0


@pytest.fixture(scope="module")
def passes() -> Passes:
    return scene.sphere_scene(views=6, width=256, height=256, texture_size=128, radius=RADIUS)


def equirectangular_uv(points: np.ndarray, radius: float) -> np.ndarray:
    """The documented UV map, written independently of the scene module."""
    u = np.arctan2(points[..., 1], points[..., 0]) / (2 * math.pi) + 0.5
    v = np.arccos(np.clip(-points[..., 2] / radius, -1, 1)) / math.pi
    return np.stack([u, v], axis=-1)


def wrapped_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| for uv, with u compared across the seam (u = 0 is u = 1)."""
    difference = np.abs(a - b)
    difference[..., 0] = np.minimum(difference[..., 0], 1.0 - difference[..., 0])
    return difference


def test_passes_validate_with_every_array(passes):
    passes.validate(require=("uv", "normal", "position", "world_to_camera", "projection",
                             "texel_position", "texel_normal", "texel_mask"))
    assert passes.depth.shape == (6, 256, 256)
    for name, array in passes.arrays().items():
        assert array.dtype == (np.bool_ if name.endswith("mask") else np.float32), name
    assert passes.texel_position.shape == (128, 128, 3)
    again = Passes.load(passes.to_npz_bytes())
    np.testing.assert_array_equal(again.position, passes.position)


def test_background_is_what_blender_writes(passes):
    background = ~passes.mask
    assert background.any() and passes.mask.any()
    assert (passes.depth[background] == 1e10).all()
    for name in ("uv", "normal", "position"):
        assert (getattr(passes, name)[background] == 0).all(), name
    assert background[:, 0, :].all() and background[:, :, -1].all()  # the sphere fits inside


def test_positions_lie_on_the_sphere_with_outward_normals(passes):
    position = passes.position[passes.mask]
    np.testing.assert_allclose(np.linalg.norm(position, axis=-1), RADIUS, atol=1e-5)
    np.testing.assert_allclose(passes.normal[passes.mask], position / RADIUS, atol=1e-6)


def test_positions_project_back_to_their_pixel_centres_and_depth(passes):
    for view in range(passes.views):
        mask = passes.mask[view]
        rows, cols = np.nonzero(mask)
        pixels, depth, in_front = geometry.project(passes.position[view][mask], passes.world_to_camera[view],
                                                   passes.projection[view], passes.width, passes.height)
        np.testing.assert_allclose(pixels, np.stack([cols + 0.5, rows + 0.5], axis=-1), atol=1e-3)
        np.testing.assert_allclose(depth, passes.depth[view][mask], rtol=1e-5)
        assert in_front.all()


def test_each_pixel_sees_the_nearest_surface(passes):
    # The visible hemisphere faces the camera: normal . (camera - position) > 0.
    for view in range(passes.views):
        eye = geometry.camera_position(passes.world_to_camera[view])
        mask = passes.mask[view]
        facing = np.einsum("ni,ni->n", passes.normal[view][mask], eye - passes.position[view][mask])
        assert (facing > -1e-4).all()


def test_depth_is_planar_not_ray_length(passes):
    view = 0
    eye = geometry.camera_position(passes.world_to_camera[view])
    mask = passes.mask[view]
    ray_length = np.linalg.norm(passes.position[view][mask] - eye, axis=-1)
    depth = passes.depth[view][mask]
    assert (depth <= ray_length + 1e-5).all()
    assert (ray_length - depth).max() > 0.01  # off-axis pixels differ measurably
    centre = passes.depth[view, 127:129, 127:129]
    np.testing.assert_allclose(centre, 3.2 - RADIUS, atol=2e-3)


def test_uv_is_the_equirectangular_map_of_the_position(passes):
    mask = passes.mask
    uv = passes.uv[mask]
    assert uv.min() >= 0 and uv.max() <= 1
    expected = equirectangular_uv(passes.position[mask].astype(np.float64), RADIUS)
    assert wrapped_difference(uv, expected).max() < 1e-5


def test_texel_maps_follow_the_texel_uv_convention(passes):
    size = passes.texel_position.shape[0]
    position = passes.texel_position.astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(position, axis=-1), RADIUS, atol=1e-5)
    np.testing.assert_allclose(passes.texel_normal, position / RADIUS, atol=1e-6)
    assert passes.texel_mask.all()
    assert wrapped_difference(equirectangular_uv(position, RADIUS), geometry.texel_uv(size)).max() < 1e-5
    # Landmarks: row 0 (v = 1) is the north pole, the last row the south pole, the
    # middle of the image is the equator facing +X (u = 0.5), column 0 sits at the seam (-X).
    assert (position[0, :, 2] > 0.99 * RADIUS).all()
    assert (position[-1, :, 2] < -0.99 * RADIUS).all()
    np.testing.assert_allclose(position[size // 2, size // 2], [RADIUS, 0, 0], atol=0.05)
    np.testing.assert_allclose(position[size // 2, 0], [-RADIUS, 0, 0], atol=0.05)


def test_rows_run_top_to_bottom_and_the_image_is_not_mirrored(passes):
    north_pole = np.array([0.0, 0.0, RADIUS])
    for view in range(passes.views):
        pixels, _, _ = geometry.project(north_pole, passes.world_to_camera[view], passes.projection[view],
                                        passes.width, passes.height)
        assert pixels[1] < passes.height / 2  # the camera is above the equator: the pole is high
        z = passes.position[view, ..., 2]
        mask = passes.mask[view]
        half = passes.height // 2
        assert z[:half][mask[:half]].mean() > z[half:][mask[half:]].mean()
    # View 0 looks from -Y towards +Y, so its image right is world +X.
    half = passes.width // 2
    x = passes.position[0, ..., 0]
    assert x[:, half:][passes.mask[0][:, half:]].min() > 0
    assert x[:, :half][passes.mask[0][:, :half]].max() < 0


def test_ring_cameras_are_evenly_spaced_and_look_at_the_origin():
    world_to_camera, projection = scene.ring_cameras(4, distance=5.0, elevation_deg=30.0, lens_mm=35.0,
                                                     width=64, height=48)
    assert world_to_camera.shape == projection.shape == (4, 4, 4)
    eyes = np.array([geometry.camera_position(matrix) for matrix in world_to_camera])
    np.testing.assert_allclose(np.linalg.norm(eyes, axis=-1), 5.0)
    np.testing.assert_allclose(eyes[:, 2], 5.0 * math.sin(math.radians(30.0)))
    horizontal = 5.0 * math.cos(math.radians(30.0))
    np.testing.assert_allclose(eyes[:, :2], [[0, -horizontal], [horizontal, 0], [0, horizontal], [-horizontal, 0]],
                               atol=1e-12)
    for matrix in world_to_camera:
        pixels, _, _ = geometry.project(np.zeros(3), matrix, projection[0], 64, 48)
        np.testing.assert_allclose(pixels, [32.0, 24.0], atol=1e-9)
    np.testing.assert_allclose(projection[0], geometry.perspective(35.0, 36.0, 64, 48))


def texel_view_counts(passes: Passes, tolerance: float = 0.05) -> np.ndarray:
    """How many views see each texel (T*T,), visibility checked against the position pass."""
    texels = passes.texel_position.reshape(-1, 3).astype(np.float64)
    counts = np.zeros(len(texels), int)
    for view in range(passes.views):
        pixels, _, in_front = geometry.project(texels, passes.world_to_camera[view], passes.projection[view],
                                               passes.width, passes.height)
        index = np.floor(np.nan_to_num(pixels, nan=-1.0)).astype(int)
        inside = in_front & (index >= 0).all(-1) & (index < [passes.width, passes.height]).all(-1)
        cols, rows = np.clip(index[:, 0], 0, passes.width - 1), np.clip(index[:, 1], 0, passes.height - 1)
        surface = passes.position[view, rows, cols]
        counts += inside & passes.mask[view, rows, cols] & (np.linalg.norm(surface - texels, axis=-1) < tolerance)
    return counts


def test_views_overlap_on_the_surface(passes):
    counts = texel_view_counts(passes)
    assert (counts >= 2).mean() > 0.6
    counts = counts.reshape(passes.texel_mask.shape)
    # Six cameras 60 degrees apart, each seeing about +-70 degrees of longitude (minus
    # grazing angles): every point of the equator is seen by two or three of them.
    equator = counts[counts.shape[0] // 2]
    assert equator.min() == 2 and equator.max() == 3
    # Texels near the bottom pole face away from the raised cameras.
    assert (counts[-1] == 0).all()


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="^distance:"):
        scene.sphere_scene(views=2, width=16, height=16, distance=0.5)
    with pytest.raises(ValueError, match="^views:"):
        scene.sphere_scene(views=0, width=16, height=16)
    with pytest.raises(ValueError, match="^width:"):
        scene.sphere_scene(views=2, width=0, height=16)
