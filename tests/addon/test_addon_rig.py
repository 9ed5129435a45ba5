"""blender_addon.rig: orbit rig geometry and the cameras it builds in Blender."""

from __future__ import annotations

import math

import numpy as np
import pytest

import bpy
from addon_helpers import add_monkey
from blender_addon import pass_render, rig
from zs_core import geometry


def test_look_at_and_quaternion_match_the_core_camera_convention():
    for eye, target in [((3.0, -4.0, 2.0), (0.1, 0.2, 0.3)), ((0.0, 0.0, 5.0), (0.0, 0.0, 0.0))]:
        rotation = rig.look_at_rotation(eye, target)
        expected = geometry.look_at(eye, target)[:3, :3]
        forward = np.subtract(target, eye) / np.linalg.norm(np.subtract(target, eye))
        np.testing.assert_allclose(-rotation[:, 2], forward, atol=1e-12)  # looks down -Z
        np.testing.assert_allclose(np.linalg.det(rotation), 1.0, atol=1e-12)
        if abs(forward[2]) < 0.99:  # away from the pole both frames are the same
            np.testing.assert_allclose(rotation, expected, atol=1e-12)
        w, x, y, z = rig.rotation_to_quaternion(rotation)
        back = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                         [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                         [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])
        np.testing.assert_allclose(back, rotation, atol=1e-12)


def test_fit_distance_fits_the_sphere_in_the_narrow_field_of_view():
    distance = rig.fit_distance(1.0, 50.0, 200, 100, margin=1.0)
    half_narrow = math.atan(18.0 / 50.0 * 100 / 200)
    assert distance * math.sin(half_narrow) == pytest.approx(1.0)
    assert rig.fit_distance(1.0, 50.0, 100, 100, margin=1.2) == pytest.approx(1.2 / math.sin(math.atan(0.36)))


def test_orbit_rig_cameras_all_frame_the_object_and_rebuilding_replaces_them(scene):
    monkey = add_monkey(location=(1.0, 2.0, 0.5))
    cameras = rig.build_orbit_rig(scene, [monkey], count=5, elevation_deg=25.0, top_views=1, width=48, height=48)
    assert [c.name for c in cameras] == [f"ZS Cam {i:02d}" for i in range(5)] + ["ZS Top 00"]
    collection = bpy.data.collections[rig.RIG_COLLECTION]
    assert set(collection.objects) == set(cameras) and scene.camera == cameras[0]
    # Every camera is at the same distance from the box centre and looks at it.
    centre, _ = rig.bounding_sphere(rig.world_corners(scene, [monkey]))
    eyes = np.array([tuple(c.matrix_world.translation) for c in cameras])
    distances = np.linalg.norm(eyes - centre, axis=1)
    np.testing.assert_allclose(distances, distances[0], rtol=1e-6)
    np.testing.assert_allclose(eyes[-1, :2], centre[:2], atol=1e-6)  # the top view is above
    heights = (eyes[:5, 2] - centre[2]) / distances[:5]
    np.testing.assert_allclose(heights, math.sin(math.radians(25.0)), atol=1e-6)
    result = pass_render.render_passes(scene, cameras, [monkey], 48, 48)
    for view in range(6):
        mask = result.mask[view]
        assert mask.sum() > 100, view  # every camera sees Suzanne ...
        border = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
        assert not border.any(), view  # ... whole: framed to fit
        rows, cols = np.nonzero(mask)
        assert abs(rows.mean() - 24) < 8 and abs(cols.mean() - 24) < 8  # aimed at the centre

    again = rig.build_orbit_rig(scene, [monkey], count=3, width=48, height=48)
    assert len(again) == 3 and set(bpy.data.collections[rig.RIG_COLLECTION].objects) == set(again)
    assert len(bpy.data.cameras) == 3 and len([o for o in bpy.data.objects if o.type == "CAMERA"]) == 3
    assert scene.camera == again[0]
    assert len([c for c in bpy.data.collections if c.name.startswith(rig.RIG_COLLECTION)]) == 1


def test_rig_keeps_the_users_camera_and_other_objects(scene):
    monkey = add_monkey()
    user_data = bpy.data.cameras.new("User")
    user_camera = bpy.data.objects.new("User", user_data)
    scene.collection.objects.link(user_camera)
    scene.camera = user_camera
    first = rig.build_orbit_rig(scene, [monkey], count=2)
    lamp = bpy.data.objects.new("Lamp", bpy.data.lights.new("Lamp", "POINT"))
    bpy.data.collections[rig.RIG_COLLECTION].objects.link(lamp)
    rig.build_orbit_rig(scene, [monkey], count=2)
    assert scene.camera == user_camera and "Lamp" in bpy.data.collections[rig.RIG_COLLECTION].objects
    assert len(rig.rig_cameras()) == 2 and len(first) == 2
    assert len(bpy.data.cameras) == 3  # the user's + the rig's two
