"""Camera conventions: Blender's projection matrices, pixel coordinates, rays, texels."""

from __future__ import annotations

import math

import numpy as np
import pytest

from zs_core import geometry

# calc_matrix_camera(depsgraph, x=W, y=H) recorded from Blender 5.0.1 (bpy module):
# (kind, lens or ortho_scale, sensor, W, H, near, far, shift_x, shift_y, sensor_fit), matrix.
BLENDER_MATRICES = [
    (("PERSP", 50, 36, 320, 240, 0.1, 100, 0.0, 0.0, "AUTO"),
     [[2.7777777, 0, 0, 0], [0, 3.7037036, 0, 0], [0, 0, -1.002002, -0.2002002], [0, 0, -1, 0]]),
    (("PERSP", 35, 36, 240, 320, 0.5, 50, 0.1, -0.2, "AUTO"),
     [[2.5925925, 0, 0.2666667, 0], [0, 1.9444442, -0.4, 0], [0, 0, -1.020202, -1.010101], [0, 0, -1, 0]]),
    (("PERSP", 50, 24, 320, 240, 0.1, 100, 0.05, 0.1, "VERTICAL"),
     [[3.1250002, 0, 0.075, 0], [0, 4.1666665, 0.2, 0], [0, 0, -1.002002, -0.2002002], [0, 0, -1, 0]]),
    (("PERSP", 80, 30, 200, 300, 0.1, 100, 0.1, 0.1, "HORIZONTAL"),
     [[5.333333, 0, 0.2, 0], [0, 3.555556, 0.1333333, 0], [0, 0, -1.002002, -0.2002002], [0, 0, -1, 0]]),
    (("ORTHO", 4, None, 320, 240, 0.1, 100, 0.1, 0.2, "AUTO"),
     [[0.5, 0, 0, -0.2], [0, 0.6666667, 0, -0.5333333], [0, 0, -0.02002, -1.002002], [0, 0, 0, 1]]),
    (("ORTHO", 3, None, 240, 320, 1, 20, 0.0, 0.0, "AUTO"),
     [[0.8888889, 0, 0, 0], [0, 0.6666667, 0, 0], [0, 0, -0.1052632, -1.1052631], [0, 0, 0, 1]]),
]

IDENTITY = np.eye(4)  # a camera at the origin looking down -Z


def _matrix_for(kind, size, sensor, width, height, near, far, shift_x, shift_y, fit):
    if kind == "PERSP":
        return geometry.perspective(size, sensor, width, height, near, far, shift_x, shift_y, fit)
    return geometry.orthographic(size, width, height, near, far, shift_x, shift_y, fit)


@pytest.mark.parametrize("config, expected", BLENDER_MATRICES)
def test_projection_matches_blender(config, expected):
    np.testing.assert_allclose(_matrix_for(*config), expected, atol=2e-6, rtol=1e-6)


def test_point_straight_ahead_projects_to_the_image_centre():
    projection = geometry.perspective(50, 36, 256, 256)
    pixels, depth, in_front = geometry.project([0.0, 0.0, -5.0], IDENTITY, projection, 256, 256)
    np.testing.assert_allclose(pixels, [128.0, 128.0], atol=1e-9)
    assert depth == pytest.approx(5.0)
    assert in_front


def test_top_left_frustum_corner_projects_to_pixel_origin():
    # Field of view from the lens alone: half width / depth = (sensor / 2) / lens.
    width, height, depth = 256, 256, 7.0
    half = depth * 18.0 / 50.0
    pixels, _, _ = geometry.project([-half, half, -depth], IDENTITY, geometry.perspective(50, 36, width, height),
                                    width, height)
    np.testing.assert_allclose(pixels, [0.0, 0.0], atol=1e-9)


def test_orthographic_projection_of_known_points():
    projection = geometry.orthographic(4.0, 100, 100, near=0.1, far=100)
    points = [[1.0, 1.0, -5.0], [-2.0, -2.0, -50.0], [0.0, 0.0, -1.0]]
    pixels, depth, in_front = geometry.project(points, IDENTITY, projection, 100, 100)
    np.testing.assert_allclose(pixels, [[75.0, 25.0], [0.0, 100.0], [50.0, 50.0]], atol=1e-9)
    np.testing.assert_allclose(depth, [5.0, 50.0, 1.0])
    assert in_front.all()


def test_sensor_fit_auto_spans_the_larger_dimension():
    depth = 4.0
    half_sensor = depth * 18.0 / 50.0  # half of the fitted dimension, at that depth
    landscape = geometry.perspective(50, 36, 320, 240)
    points = [[half_sensor, 0.0, -depth], [0.0, half_sensor * 240 / 320, -depth]]
    pixels, _, _ = geometry.project(points, IDENTITY, landscape, 320, 240)
    np.testing.assert_allclose(pixels, [[320.0, 120.0], [160.0, 0.0]], atol=1e-9)
    portrait = geometry.perspective(50, 36, 240, 320)
    points = [[half_sensor * 240 / 320, 0.0, -depth], [0.0, half_sensor, -depth]]
    pixels, _, _ = geometry.project(points, IDENTITY, portrait, 240, 320)
    np.testing.assert_allclose(pixels, [[240.0, 160.0], [120.0, 0.0]], atol=1e-9)


def test_lens_shift_moves_the_image_by_the_larger_dimension():
    width, height = 320, 240
    point = [0.3, -0.2, -6.0]
    plain, _, _ = geometry.project(point, IDENTITY, geometry.perspective(50, 36, width, height), width, height)
    shifted, _, _ = geometry.project(point, IDENTITY, geometry.perspective(50, 36, width, height, shift_x=0.1,
                                                                           shift_y=0.1), width, height)
    # Shifting the window right / up moves the content left / down by 0.1 * 320 px each.
    np.testing.assert_allclose(shifted - plain, [-32.0, 32.0], atol=1e-9)


def test_points_behind_the_camera_are_flagged():
    projection = geometry.perspective(50, 36, 64, 64)
    pixels, depth, in_front = geometry.project([[0, 0, 3.0], [0, 0, -3.0]], IDENTITY, projection, 64, 64)
    assert list(in_front) == [False, True]
    assert depth[0] == pytest.approx(-3.0)
    assert np.isnan(pixels[0]).all() and np.isfinite(pixels[1]).all()


def test_look_at_follows_blender_camera_axes():
    eye, target = np.array([3.0, -2.0, 1.5]), np.array([0.5, 0.0, 0.2])
    matrix = geometry.look_at(eye, target)
    rotation = matrix[:3, :3]
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(rotation) == pytest.approx(1.0)
    forward = (target - eye) / np.linalg.norm(target - eye)
    np.testing.assert_allclose(-rotation[:, 2], forward, atol=1e-12)
    assert rotation[2, 1] > 0  # camera +Y leans towards world up
    assert abs(rotation[2, 0]) < 1e-12  # camera +X stays horizontal
    np.testing.assert_allclose(matrix[:3, 3], eye)
    # Blender's Vector.to_track_quat('-Z', 'Y') for the same direction (recorded from bpy 5.0.1).
    np.testing.assert_allclose(geometry.look_at([3.0, -2.0, 1.5], [0, 0, 0])[:3, :3],
                               [[0.5547002, -0.3195994, 0.7682213],
                                [0.8320503, 0.2130663, -0.5121475],
                                [0.0, 0.9232871, 0.3841106]], atol=1e-6)
    # The target lands in the image centre.
    world_to_camera = np.linalg.inv(matrix)
    pixels, depth, _ = geometry.project(target, world_to_camera, geometry.perspective(50, 36, 64, 48), 64, 48)
    np.testing.assert_allclose(pixels, [32.0, 24.0], atol=1e-9)
    assert depth == pytest.approx(np.linalg.norm(target - eye))
    np.testing.assert_allclose(geometry.camera_position(world_to_camera), eye, atol=1e-12)


def test_look_at_straight_down_still_gives_a_frame():
    matrix = geometry.look_at([0, 0, 5.0], [0, 0, 0])
    assert np.isfinite(matrix).all()
    np.testing.assert_allclose(matrix[:3, 2], [0, 0, 1.0], atol=1e-12)
    assert np.linalg.det(matrix[:3, :3]) == pytest.approx(1.0)


CAMERAS = {
    "perspective": (geometry.perspective(35, 36, 48, 32, near=0.1, far=100, shift_x=0.07, shift_y=-0.05), 48, 32),
    "orthographic": (geometry.orthographic(3.0, 40, 56, near=0.5, far=30, shift_x=-0.1), 40, 56),
}


@pytest.mark.parametrize("kind", sorted(CAMERAS))
def test_pixel_rays_round_trip_to_pixel_centres(kind):
    projection, width, height = CAMERAS[kind]
    world_to_camera = np.linalg.inv(geometry.look_at([2.0, -4.0, 1.0], [0.1, 0.2, -0.3]))
    origins, directions = geometry.pixel_rays(world_to_camera, projection, width, height)
    assert origins.shape == directions.shape == (height, width, 3)
    np.testing.assert_allclose(np.linalg.norm(directions, axis=-1), 1.0, atol=1e-12)
    points = origins + 5.0 * directions
    pixels, depth, in_front = geometry.project(points, world_to_camera, projection, width, height)
    rows, cols = np.mgrid[:height, :width]
    np.testing.assert_allclose(pixels[..., 0], cols + 0.5, atol=1e-7)
    np.testing.assert_allclose(pixels[..., 1], rows + 0.5, atol=1e-7)
    assert in_front.all()
    camera_directions = directions @ world_to_camera[:3, :3].T
    np.testing.assert_allclose(depth, 5.0 * -camera_directions[..., 2], atol=1e-9)


def test_perspective_rays_start_at_the_camera_and_orthographic_rays_are_parallel():
    eye = np.array([2.0, -4.0, 1.0])
    world_to_camera = np.linalg.inv(geometry.look_at(eye, [0, 0, 0]))
    origins, _ = geometry.pixel_rays(world_to_camera, CAMERAS["perspective"][0], 48, 32)
    np.testing.assert_allclose(origins, np.broadcast_to(eye, origins.shape), atol=1e-9)
    origins, directions = geometry.pixel_rays(world_to_camera, CAMERAS["orthographic"][0], 40, 56)
    np.testing.assert_allclose(directions, np.broadcast_to(directions[0, 0], directions.shape), atol=1e-12)
    assert np.ptp(origins[..., 0]) > 1.0  # spread over the camera plane, not one point
    assert geometry.is_orthographic(CAMERAS["orthographic"][0])
    assert not geometry.is_orthographic(CAMERAS["perspective"][0])


def test_texel_uv_convention():
    uv = geometry.texel_uv(4)
    assert uv.shape == (4, 4, 2)
    np.testing.assert_allclose(uv[0, 0], [0.125, 0.875])  # top-left texel: small u, large v
    np.testing.assert_allclose(uv[3, 1], [0.375, 0.125])
    texel = geometry.uv_to_texel(uv, 4)
    rows, cols = np.mgrid[:4, :4]
    np.testing.assert_allclose(texel, np.stack([cols + 0.5, rows + 0.5], axis=-1))


@pytest.mark.parametrize("call, argument", [
    (lambda: geometry.project(np.zeros((5, 2)), IDENTITY, np.eye(4), 8, 8), "points"),
    (lambda: geometry.project(np.zeros(3), np.eye(3), np.eye(4), 8, 8), "world_to_camera"),
    (lambda: geometry.project(np.zeros(3), IDENTITY, np.full((4, 4), np.nan), 8, 8), "projection"),
    (lambda: geometry.project(np.zeros(3), IDENTITY, np.eye(4), 0, 8), "width"),
    (lambda: geometry.pixel_rays(IDENTITY, np.eye(4), 8, 2.5), "height"),
    (lambda: geometry.pixel_rays("camera", np.eye(4), 8, 8), "world_to_camera"),
    (lambda: geometry.perspective(0, 36, 8, 8), "lens_mm"),
    (lambda: geometry.perspective(50, math.inf, 8, 8), "sensor_mm"),
    (lambda: geometry.perspective(50, 36, 8, 8, near=1, far=0.5), "far"),
    (lambda: geometry.perspective(50, 36, 8, 8, sensor_fit="WIDE"), "sensor_fit"),
    (lambda: geometry.orthographic(-1, 8, 8), "ortho_scale"),
    (lambda: geometry.orthographic(1, 8, 8, shift_x=math.nan), "shift_x"),
    (lambda: geometry.look_at([0, 0, 1], [0, 0, 1]), "target"),
    (lambda: geometry.look_at([0, 0], [0, 0, 1]), "eye"),
    (lambda: geometry.texel_uv(0), "texture_size"),
])
def test_bad_input_names_the_argument(call, argument):
    with pytest.raises(ValueError, match=f"^{argument}:"):
        call()
