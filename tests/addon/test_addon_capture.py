"""The scene helpers capture builds on (errors, image_pixels, camera_projection, scene_objects,
uv_layers, scene_state): images, camera matrices, targets, UV maps, scoped scene state."""

from __future__ import annotations

import numpy as np
import pytest

import bpy
from blender_addon import camera_projection, image_pixels, scene_objects, scene_state, uv_layers
from blender_addon.errors import CaptureError
from addon_helpers import add_camera, add_monkey, add_plane
from zs_core import geometry


def test_numpy_image_round_trip_keeps_rows_top_to_bottom(scene):
    array = np.zeros((4, 6, 3), np.float32)
    array[0] = (1.0, 0.0, 0.0)  # top row red
    array[-1] = (0.0, 0.0, 1.0)  # bottom row blue
    image = image_pixels.numpy_to_image("ZS Test", array, non_color=True)
    assert tuple(image.size) == (6, 4) and image.is_float
    flat = np.empty(6 * 4 * 4, np.float32)
    image.pixels.foreach_get(flat)
    # Blender stores the bottom row first.
    np.testing.assert_allclose(flat[:4], (0.0, 0.0, 1.0, 1.0))
    back = image_pixels.image_to_numpy(image)
    assert back.shape == (4, 6, 4) and back.dtype == np.float32
    np.testing.assert_allclose(back[..., :3], array)
    np.testing.assert_allclose(back[..., 3], 1.0)


def test_numpy_to_image_never_overwrites_an_existing_image(scene):
    first = image_pixels.numpy_to_image("ZS Result", np.ones((8, 8), np.float32))
    second = image_pixels.numpy_to_image("ZS Result", np.zeros((8, 8), np.float32))
    assert first.name == "ZS Result" and second.name != first.name
    np.testing.assert_allclose(image_pixels.image_to_numpy(first)[..., :3], 1.0)


def test_camera_matrices_follow_the_core_conventions(scene):
    camera = add_camera(scene, "Cam", eye=(1.0, -5.0, 2.0), target=(0.2, 0.1, 0.3), lens=35.0)
    camera.data.shift_x = 0.1
    camera.data.clip_start, camera.data.clip_end = 0.2, 50.0
    camera.scale = (2.0, 2.0, 2.0)  # renderers ignore camera scale; so must the matrices
    world_to_camera, projection = camera_projection.camera_matrices(scene, camera, 80, 60)
    assert world_to_camera.dtype == np.float32 and projection.dtype == np.float32
    expected = geometry.perspective(35.0, 36.0, 80, 60, 0.2, 50.0, shift_x=0.1)
    np.testing.assert_allclose(projection, expected, rtol=1e-5, atol=1e-6)
    eye = geometry.camera_position(world_to_camera)
    np.testing.assert_allclose(eye, (1.0, -5.0, 2.0), atol=1e-5)
    # The target projects onto the optical axis (shifted by shift_x of the width).
    pixels, depth, in_front = geometry.project(np.array([0.2, 0.1, 0.3]), world_to_camera, projection, 80, 60)
    distance = np.linalg.norm(np.array([0.2, 0.1, 0.3]) - (1.0, -5.0, 2.0))
    assert in_front and depth == pytest.approx(distance, rel=1e-5)  # planar depth, scale-free
    np.testing.assert_allclose(pixels, (40.0 - 0.1 * 80, 30.0), atol=1e-3)


def test_target_objects_takes_selected_meshes_active_first(scene):
    first = add_plane(location=(3, 0, 0))
    second = add_monkey()
    camera = add_camera(scene, "Cam", eye=(0, -5, 0))
    for obj in (first, second, camera):
        obj.select_set(True)
    bpy.context.view_layer.objects.active = second
    assert scene_objects.target_objects(bpy.context) == [second, first]
    assert scene_objects.target_objects(names=[first.name]) == [first]
    with pytest.raises(CaptureError, match="'Nope' does not exist"):
        scene_objects.target_objects(names=["Nope"])
    with pytest.raises(CaptureError, match="not a mesh"):
        scene_objects.target_objects(names=[camera.name])
    for obj in (first, second):
        obj.select_set(False)
    with pytest.raises(CaptureError, match="select at least one mesh"):
        scene_objects.target_objects(bpy.context)


def test_missing_uv_map_is_an_error_unless_smart_uv_is_asked(scene):
    bpy.ops.mesh.primitive_cube_add()
    cube = bpy.context.active_object
    cube.name = "Bare Cube"
    cube.data.uv_layers.remove(cube.data.uv_layers[0])
    assert not uv_layers.has_uv(cube)
    with pytest.raises(CaptureError, match="'Bare Cube' has no UV map"):
        uv_layers.ensure_uv_map(cube)
    assert not uv_layers.has_uv(cube)  # never silently unwrapped
    name = uv_layers.ensure_uv_map(cube, smart_project=True)
    assert name == "ZS UV" and list(cube.data.uv_layers.keys()) == ["ZS UV"]
    uv = np.empty(len(cube.data.loops) * 2, np.float32)
    cube.data.uv_layers[name].data.foreach_get("uv", uv)
    assert uv.min() >= 0.0 and uv.max() <= 1.0 and np.ptp(uv) > 0.5
    assert bpy.context.active_object == cube and cube.mode == "OBJECT"


def test_smart_uv_adds_a_new_layer_and_never_touches_existing_ones(scene):
    monkey = add_monkey()
    layers = monkey.data.uv_layers
    before = np.empty(len(monkey.data.loops) * 2, np.float32)
    layers["UVMap"].data.foreach_get("uv", before)
    with pytest.raises(CaptureError, match="no UV map named 'Fresh'"):
        uv_layers.ensure_uv_map(monkey, "Fresh")
    assert uv_layers.ensure_uv_map(monkey, "Fresh", smart_project=True) == "Fresh"
    layers = monkey.data.uv_layers
    assert list(layers.keys()) == ["UVMap", "Fresh"]
    assert layers.active.name == "UVMap" and layers["UVMap"].active_render
    after = np.empty_like(before)
    layers["UVMap"].data.foreach_get("uv", after)
    np.testing.assert_array_equal(before, after)
    assert uv_layers.ensure_uv_map(monkey) == "UVMap"


def _settings_snapshot(scene):
    render, cycles, layer = scene.render, scene.cycles, scene.view_layers[0]
    return dict(engine=render.engine, x=render.resolution_x, y=render.resolution_y,
                pct=render.resolution_percentage, samples=cycles.samples, filter=cycles.filter_width,
                filter_type=cycles.pixel_filter_type, denoise=cycles.use_denoising,
                transparent=render.film_transparent, view=scene.view_settings.view_transform,
                camera=scene.camera, frame=scene.frame_current, compositing=render.use_compositing,
                z=layer.use_pass_z, uv=layer.use_pass_uv,
                index=layer.use_pass_object_index, blur=render.use_motion_blur,
                persistent=render.use_persistent_data, bounces=cycles.max_bounces,
                combined=layer.use_pass_combined)


def _scramble(scene, camera):
    scene.render.engine = "CYCLES"
    scene.render.resolution_x, scene.render.resolution_y = 31, 17
    scene.render.resolution_percentage = 100
    scene.cycles.samples, scene.cycles.filter_width = 1, 0.01
    scene.cycles.pixel_filter_type, scene.cycles.use_denoising = "BOX", False
    scene.render.film_transparent = True
    scene.view_settings.view_transform = "Standard"
    scene.camera = camera
    scene.frame_set(42)
    scene.render.use_compositing = False
    layer = scene.view_layers[0]
    layer.use_pass_z = layer.use_pass_uv = layer.use_pass_object_index = True
    scene.render.use_motion_blur = True
    scene.render.use_persistent_data = True
    scene.cycles.max_bounces = 0
    layer.use_pass_combined = False


def _user_settings(scene):
    user_camera = add_camera(scene, "User Cam", eye=(0, -6, 1))
    scene.camera = user_camera
    scene.render.engine = "BLENDER_WORKBENCH"
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 123, 77, 50
    scene.cycles.samples, scene.cycles.filter_width = 17, 1.7
    scene.cycles.use_denoising = True
    scene.frame_set(3)
    return user_camera


def test_preserved_render_settings_restores_everything_also_on_error(scene):
    _user_settings(scene)
    other = add_camera(scene, "Other", eye=(5, 0, 0))
    before = _settings_snapshot(scene)
    with scene_state.preserved_render_settings(scene):
        _scramble(scene, other)
        assert _settings_snapshot(scene) != before
    assert _settings_snapshot(scene) == before
    with pytest.raises(RuntimeError, match="boom"):
        with scene_state.preserved_render_settings(scene):
            _scramble(scene, other)
            raise RuntimeError("boom")
    assert _settings_snapshot(scene) == before


def test_scoped_pass_index_render_uv_and_selection(scene):
    monkey = add_monkey()
    monkey.data.uv_layers.new(name="Second")
    monkey.pass_index = 5
    plane = add_plane(location=(4, 0, 0))
    plane.pass_index = 1
    view_layer = bpy.context.view_layer
    monkey.select_set(False)
    plane.select_set(True)
    view_layer.objects.active = plane
    assert scene_objects.unused_pass_indices(scene, [monkey], 1) == [2]  # 1 is the plane's
    with scene_state.preserved_selection(view_layer), scene_state.temporary_pass_index([monkey], 2), \
            uv_layers.temporary_render_uv({monkey: "Second"}):
        assert monkey.pass_index == 2 and monkey.data.uv_layers["Second"].active_render
        plane.select_set(False)
        monkey.select_set(True)
        view_layer.objects.active = monkey
    assert monkey.pass_index == 5 and monkey.data.uv_layers["UVMap"].active_render
    assert plane.select_get() and not monkey.select_get() and view_layer.objects.active == plane


def test_smart_uv_from_edit_mode_of_another_object_restores_that_mode(scene):
    plane = add_plane(location=(3, 0, 0))
    bpy.ops.mesh.primitive_cube_add()
    cube = bpy.context.active_object
    cube.data.uv_layers.remove(cube.data.uv_layers[0])
    cube.select_set(False)  # else Edit Mode would take the cube along (multi-object editing)
    plane.select_set(True)
    bpy.context.view_layer.objects.active = plane
    bpy.ops.object.mode_set(mode="EDIT")
    assert cube.mode == "OBJECT"
    assert uv_layers.ensure_uv_map(cube, smart_project=True) == "ZS UV"
    assert bpy.context.view_layer.objects.active == plane and plane.mode == "EDIT"
    assert cube.mode == "OBJECT"
    bpy.ops.object.mode_set(mode="OBJECT")
