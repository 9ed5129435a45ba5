"""blender_addon.pass_render on real Cycles renders: every array checked against the geometry."""

from __future__ import annotations

import numpy as np
import pytest

import bpy
from addon_helpers import (add_camera, add_monkey, add_plane, add_user_compositor, compositor_state, data_counts,
                           moving_cube_shot, needs_motion_vectors, world_matrix)
from blender_addon import compat, pass_render, rig, uv_layers
from blender_addon.errors import CaptureError
from zs_core import geometry


# ----------------------------------------------------------------------------- helpers


def suzanne(scene, size=64, views=4, **options):
    """Suzanne seen by a 4-camera orbit rig -> (object, cameras, Passes)."""
    monkey = add_monkey()
    cameras = rig.build_orbit_rig(scene, [monkey], count=views, elevation_deg=20.0, width=size, height=size)
    return monkey, cameras, pass_render.render_passes(scene, cameras, [monkey], size, size, **options)


def to_local(obj, points):
    """World points (N, 3) -> the object's local space."""
    inverse = np.linalg.inv(world_matrix(obj))
    return points @ inverse[:3, :3].T + inverse[:3, 3]


def world_normals(obj, local_normals):
    """Object-space normals (N, 3) -> unit world normals (inverse transpose)."""
    normals = local_normals @ np.linalg.inv(world_matrix(obj)[:3, :3])
    return normals / np.linalg.norm(normals, axis=-1, keepdims=True)


def mesh_samples(obj, local_points, uv_map="UVMap"):
    """Closest surface points of ``obj`` (no modifiers) -> (distance (N,), face normal
    (N, 3) local, uv (N, 2) interpolated barycentrically in the hit face)."""
    mesh = obj.data
    mesh.calc_loop_triangles()
    count = len(mesh.loop_triangles)
    triangle_loops = np.empty(count * 3, np.int32)
    mesh.loop_triangles.foreach_get("loops", triangle_loops)
    triangle_loops = triangle_loops.reshape(count, 3)
    triangle_faces = np.empty(count, np.int32)
    mesh.loop_triangles.foreach_get("polygon_index", triangle_faces)
    loop_vertices = np.empty(len(mesh.loops), np.int32)
    mesh.loops.foreach_get("vertex_index", loop_vertices)
    coordinates = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("co", coordinates)
    coordinates = coordinates.reshape(-1, 3).astype(np.float64)
    loop_uv = np.empty(len(mesh.loops) * 2, np.float32)
    mesh.uv_layers[uv_map].data.foreach_get("uv", loop_uv)
    loop_uv = loop_uv.reshape(-1, 2)
    distances, normals, uvs = [], [], []
    for point in local_points:
        found, location, normal, face = obj.closest_point_on_mesh(tuple(point))
        assert found
        location = np.array(location)
        best = None
        for triangle in np.flatnonzero(triangle_faces == face):
            corners = coordinates[loop_vertices[triangle_loops[triangle]]]
            weights = _barycentric(location, corners)
            if best is None or weights.min() > best[0].min():
                best = (weights, triangle)
        weights, triangle = best
        distances.append(np.linalg.norm(location - point))
        normals.append(np.array(normal))
        uvs.append(weights @ loop_uv[triangle_loops[triangle]])
    return np.array(distances), np.array(normals), np.array(uvs)


def _barycentric(point, corners):
    a, b, c = corners
    v0, v1, v2 = b - a, c - a, point - a
    d00, d01, d11 = v0 @ v0, v0 @ v1, v1 @ v1
    d20, d21 = v2 @ v0, v2 @ v1
    denominator = d00 * d11 - d01 * d01
    v = (d11 * d20 - d01 * d21) / denominator
    w = (d00 * d21 - d01 * d20) / denominator
    return np.array([1.0 - v - w, v, w])


def project_numpy(points, world_to_camera, projection, width, height):
    """World points (N, 3) -> ([col, row] (N, 2) rows top-down, planar depth (N,))."""
    camera = points @ world_to_camera[:3, :3].T + world_to_camera[:3, 3]
    clip = camera @ projection[:, :3].T + projection[:, 3]
    ndc = clip[:, :2] / clip[:, 3:4]
    return np.stack([(ndc[:, 0] + 1) * 0.5 * width, (1 - ndc[:, 1]) * 0.5 * height], -1), -camera[:, 2]


def settings_and_state(scene, objects):
    render, cycles, layer = scene.render, scene.cycles, scene.view_layers[0]
    return dict(engine=render.engine, size=(render.resolution_x, render.resolution_y,
                                            render.resolution_percentage),
                samples=cycles.samples, filter=(cycles.filter_width, cycles.pixel_filter_type),
                camera=scene.camera, frame=scene.frame_current, compositing=render.use_compositing,
                tree=compositor_state(scene), view=scene.view_settings.view_transform,
                flags=(layer.use_pass_z, layer.use_pass_uv, layer.use_pass_position,
                       layer.use_pass_object_index, layer.use_pass_vector),
                pass_index=[obj.pass_index for obj in objects],
                render_uv=[uv_layers.active_render_uv_name(obj) for obj in objects],
                uv_layers=[list(obj.data.uv_layers.keys()) for obj in objects],
                materials=[[slot.material for slot in obj.material_slots] for obj in objects],
                selected=sorted(obj.name for obj in bpy.context.selected_objects),
                active=bpy.context.view_layer.objects.active)


# ------------------------------------------------------------------------------- tests


def test_suzanne_passes_agree_with_the_mesh(scene):
    monkey, cameras, result = suzanne(scene, size=64)
    assert result.views == 4 and (result.height, result.width) == (64, 64)
    assert all(result.mask[v].sum() > 200 for v in range(4))
    for name in ("depth", "uv", "normal", "position", "world_to_camera", "projection"):
        assert getattr(result, name).dtype == np.float32, name
    rng = np.random.default_rng(0)
    for view in range(4):
        rows, cols = np.nonzero(result.mask[view])
        pick = rng.choice(len(rows), 80, replace=False)
        rows, cols = rows[pick], cols[pick]
        position = result.position[view, rows, cols].astype(np.float64)
        distance, face_normal, uv = mesh_samples(monkey, to_local(monkey, position))
        assert distance.max() < 1e-4  # the position pass lies on the surface
        error = np.abs(uv - result.uv[view, rows, cols]).max(axis=1)
        assert np.median(error) < 1e-4 and np.mean(error < 2e-3) >= 0.97, error
        # Suzanne is flat shaded: the normal pass is the world face normal.
        cosine = np.einsum("ij,ij->i", world_normals(monkey, face_normal), result.normal[view, rows, cols])
        assert np.mean(cosine > 0.999) >= 0.97
    background = ~result.mask
    assert np.all(result.depth[background] == pass_render.BACKGROUND_DEPTH)
    assert np.all(result.uv[background] == 0) and np.all(result.position[background] == 0)
    assert np.all(result.normal[background] == 0)


def test_positions_project_onto_pixel_centres_with_the_returned_matrices(scene):
    monkey = add_monkey()
    cameras = rig.build_orbit_rig(scene, [monkey], count=3, width=80, height=56)
    cameras[1].scale = (1.5, 1.5, 1.5)  # renderers ignore camera scale: the matrices must too
    cameras[2].data.shift_y = 0.05
    result = pass_render.render_passes(scene, cameras, [monkey], 80, 56)
    for view in range(3):
        rows, cols = np.nonzero(result.mask[view])
        position = result.position[view, rows, cols].astype(np.float64)
        w2c = result.world_to_camera[view].astype(np.float64)
        projection = result.projection[view].astype(np.float64)
        pixels, depth = project_numpy(position, w2c, projection, 80, 56)
        np.testing.assert_allclose(pixels, np.stack([cols + 0.5, rows + 0.5], -1), atol=0.02)
        np.testing.assert_allclose(depth, result.depth[view, rows, cols], rtol=1e-5, atol=1e-5)
        core_pixels, core_depth, in_front = geometry.project(position, w2c, projection, 80, 56)
        assert in_front.all()
        np.testing.assert_allclose(core_pixels, pixels, atol=1e-4)


def test_depth_is_planar_not_ray_length(scene):
    add_plane(size=40.0)  # fills the view
    camera = add_camera(scene, "Top", eye=(0.0, 0.0, 6.0), lens=20.0)
    plane = bpy.data.objects["Plane"]
    result = pass_render.render_passes(scene, [camera], [plane], 64, 48)
    assert result.mask.all()
    np.testing.assert_allclose(result.depth, 6.0, atol=1e-4)
    ray_length = np.linalg.norm(result.position - np.array([0.0, 0.0, 6.0], np.float32), axis=-1)
    assert ray_length.max() - 6.0 > 1.0  # the corners would differ if depth were ray length
    np.testing.assert_allclose(result.position[..., 2], 0.0, atol=1e-5)
    np.testing.assert_allclose(result.normal, np.broadcast_to([0, 0, 1], result.normal.shape), atol=1e-5)
    # The plane's UV is (x + 20, y + 20) / 40.
    np.testing.assert_allclose(result.uv, (result.position[..., :2] + 20.0) / 40.0, atol=1e-5)


def test_rows_are_top_to_bottom_and_non_targets_keep_depth_only(scene):
    bpy.ops.mesh.primitive_cube_add(size=0.6, location=(0.0, 1.2, 0.0))
    target = bpy.context.active_object
    bpy.ops.mesh.primitive_cube_add(size=0.6, location=(0.0, -1.2, 0.0))
    other = bpy.context.active_object
    camera = add_camera(scene, "Top", eye=(0.0, 0.0, 8.0))  # image up = world +Y
    result = pass_render.render_passes(scene, [camera], [target], 80, 48)
    rows = np.nonzero(result.mask[0].any(axis=1))[0]
    assert rows.size and rows.max() < 24  # the +Y cube is in the upper half: first rows
    other_pixels = (result.depth[0] < 1e9) & ~result.mask[0]
    other_rows = np.nonzero(other_pixels.any(axis=1))[0]
    assert other_rows.size and other_rows.min() >= 24
    assert np.all(result.uv[0][other_pixels] == 0) and np.all(result.position[0][other_pixels] == 0)
    assert other.pass_index == 0 and target.pass_index == 0


def test_texel_maps_of_a_transformed_plane(scene):
    plane = add_plane(size=2.0, location=(0.3, -0.2, 0.5), rotation=(0.3, 0.2, 0.1))
    plane.scale = (1.5, 0.5, 1.0)
    layer = plane.data.uv_layers["UVMap"]
    uv = np.empty(len(plane.data.loops) * 2, np.float32)
    layer.data.foreach_get("uv", uv)
    offset = np.tile(np.array([0.1, 0.2], np.float32), len(plane.data.loops))
    layer.data.foreach_set("uv", uv * 0.5 + offset)  # island [0.1, 0.6] x [0.2, 0.7]
    plane.data.update()  # bulk writes are not seen by the evaluated mesh until then (Blender 4.x)
    size = 20
    position, normal, mask = pass_render.bake_texel_maps(scene, [plane], {plane: "UVMap"}, size)
    assert position.shape == (size, size, 3) and mask.dtype == np.bool_
    texel_uv = geometry.texel_uv(size)
    inside = ((texel_uv[..., 0] > 0.1) & (texel_uv[..., 0] < 0.6) & (texel_uv[..., 1] > 0.2)
              & (texel_uv[..., 1] < 0.7))
    np.testing.assert_array_equal(mask, inside)  # row 0 is v = 1: the island sits in rows 6..15
    local = np.zeros(texel_uv.shape[:2] + (3,))
    local[..., 0] = (texel_uv[..., 0] - 0.1) / 0.5 * 2.0 - 1.0
    local[..., 1] = (texel_uv[..., 1] - 0.2) / 0.5 * 2.0 - 1.0
    matrix = world_matrix(plane)
    expected = local @ matrix[:3, :3].T + matrix[:3, 3]
    np.testing.assert_allclose(position[mask], expected[mask], atol=3e-3)
    expected_normal = world_normals(plane, np.array([[0.0, 0.0, 1.0]]))[0]
    np.testing.assert_allclose(normal[mask], np.broadcast_to(expected_normal, normal[mask].shape), atol=1e-4)
    assert np.all(position[~mask] == 0) and np.all(normal[~mask] == 0)


def test_suzanne_texel_maps_lie_on_the_surface_facing_out(scene):
    monkey = add_monkey()
    monkey.rotation_euler = (0.4, 0.0, 0.7)
    monkey.scale = (1.3, 0.8, 1.0)
    cameras = rig.build_orbit_rig(scene, [monkey], count=2, width=48, height=48)
    result = pass_render.render_passes(scene, cameras, [monkey], 48, 48, texture_size=64)
    mask = result.texel_mask
    assert 0.3 < mask.mean() < 0.95
    distance, face_normal, uv = mesh_samples(monkey, to_local(monkey, result.texel_position[mask].astype(np.float64)))
    assert np.quantile(distance, 0.99) < 2e-3
    cosine = np.einsum("ij,ij->i", world_normals(monkey, face_normal), result.texel_normal[mask])
    assert np.mean(cosine > 0.99) > 0.95
    # The surface point of texel (i, j) has the UV of that texel's centre (orientation).
    texel_error = np.abs(uv - geometry.texel_uv(64)[mask]).max(axis=1) * 64
    assert np.quantile(texel_error, 0.95) < 0.6


def test_capture_restores_the_scene_and_leaves_nothing_behind(scene):
    monkey = add_monkey()
    monkey.data.uv_layers.new(name="Second")
    monkey.data.uv_layers["Second"].active_render = True
    monkey.pass_index = 3
    user_material = compat.new_material("User Material")
    monkey.data.materials.append(user_material)
    cameras = rig.build_orbit_rig(scene, [monkey], count=2, width=48, height=48)
    user_camera = add_camera(scene, "User Cam", eye=(0.0, -7.0, 1.0))
    scene.camera = user_camera
    scene.render.engine = "BLENDER_WORKBENCH"
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 321, 123, 50
    scene.cycles.samples, scene.cycles.filter_width = 64, 1.5
    scene.frame_set(7)
    add_user_compositor(scene)
    monkey.select_set(False)
    user_camera.select_set(True)
    bpy.context.view_layer.objects.active = user_camera
    before, counts = settings_and_state(scene, [monkey]), data_counts()
    images = sorted(image.name for image in bpy.data.images)  # 4.5's compositor tree comes with a viewer image

    result = pass_render.render_passes(scene, cameras, [monkey], 48, 48, uv_map="UVMap", texture_size=32)
    assert result.mask.any() and result.texel_mask.any()
    assert settings_and_state(scene, [monkey]) == before
    assert data_counts() == counts
    assert sorted(image.name for image in bpy.data.images) == images


@pytest.mark.parametrize("failing, at_call", [("_read_exr", 3), ("_mesh_triangles", 1)])
def test_capture_restores_the_scene_when_it_fails_midway(scene, monkeypatch, failing, at_call):
    monkey = add_monkey()
    monkey.pass_index = 9
    cameras = rig.build_orbit_rig(scene, [monkey], count=3, width=32, height=32)
    scene.camera = None
    scene.render.engine = "BLENDER_WORKBENCH"
    before, counts = settings_and_state(scene, [monkey]), data_counts()
    original = getattr(pass_render, failing)
    calls = []

    def fail_later(*args, **kwargs):
        calls.append(1)
        if len(calls) == at_call:
            raise RuntimeError("simulated failure")
        return original(*args, **kwargs)

    monkeypatch.setattr(pass_render, failing, fail_later)
    with pytest.raises(RuntimeError, match="simulated failure"):
        pass_render.render_passes(scene, cameras, [monkey], 32, 32, texture_size=32, uv_map="UVMap")
    assert len(calls) == at_call
    assert settings_and_state(scene, [monkey]) == before
    assert data_counts() == counts
    assert not [obj.name for obj in bpy.data.objects if obj.name.startswith("ZS Bake")]


def test_uv_pass_reads_the_requested_uv_map(scene):
    monkey = add_monkey()
    loops = len(monkey.data.loops)
    base = np.empty(loops * 2, np.float32)
    monkey.data.uv_layers["UVMap"].data.foreach_get("uv", base)
    monkey.data.uv_layers.new(name="Shifted").data.foreach_set("uv", base * 0.5 + 0.25)
    cameras = rig.build_orbit_rig(scene, [monkey], count=2, width=48, height=48)
    default = pass_render.render_passes(scene, cameras, [monkey], 48, 48)
    shifted = pass_render.render_passes(scene, cameras, [monkey], 48, 48, uv_map="Shifted")
    np.testing.assert_array_equal(default.mask, shifted.mask)
    m = default.mask
    np.testing.assert_allclose(shifted.uv[m], default.uv[m] * 0.5 + 0.25, atol=1e-5)
    assert monkey.data.uv_layers["UVMap"].active_render


def test_object_without_uv_map_is_an_error_until_it_has_one(scene):
    bpy.ops.mesh.primitive_cube_add()
    cube = bpy.context.active_object
    cube.name = "No UV Cube"
    cube.data.uv_layers.remove(cube.data.uv_layers[0])
    camera = add_camera(scene, "Cam", eye=(3.0, -4.0, 2.5))
    with pytest.raises(CaptureError, match="'No UV Cube' has no UV map"):
        pass_render.render_passes(scene, [camera], [cube], 32, 32)
    assert len(cube.data.uv_layers) == 0
    uv_layers.ensure_uv_map(cube, None, smart_project=True)  # what the flow does for Smart UV Project
    result = pass_render.render_passes(scene, [camera], [cube], 32, 32, texture_size=32)
    assert list(cube.data.uv_layers.keys()) == ["ZS UV"]
    assert result.mask.sum() > 50 and result.texel_mask.mean() > 0.3


def test_bad_inputs_are_named(scene):
    monkey = add_monkey()
    camera = add_camera(scene, "Cam", eye=(0.0, -5.0, 0.0))
    with pytest.raises(CaptureError, match="'Suzanne' is not a camera"):
        pass_render.render_passes(scene, [monkey], [monkey], 32, 32)
    with pytest.raises(CaptureError, match="width"):
        pass_render.render_passes(scene, [camera], [monkey], 4, 32)
    monkey.hide_render = True
    with pytest.raises(CaptureError, match="'Suzanne' is disabled in renders"):
        pass_render.render_passes(scene, [camera], [monkey], 32, 32)


@pytest.mark.skipif(compat.writes_motion_to_next_frame(), reason="this Blender writes the whole vector pass")
def test_an_animation_is_refused_before_rendering_where_the_vector_pass_is_cut(scene):
    shot, cube, camera = moving_cube_shot(frames=3, size=32)
    with pytest.raises(CaptureError, match="motion to the next frame .* Blender 5.0 or newer"):
        pass_render.render_frame_passes(shot, camera, [cube], [1, 2, 3], 32, 32)
    assert not [image.name for image in bpy.data.images]


@needs_motion_vectors
def test_frame_passes_motion_vectors_point_to_the_next_frame(scene):
    bpy.context.preferences.edit.keyframe_new_interpolation_type = "LINEAR"
    plane = add_plane(size=1.0, location=(-1.0, -0.5, 0.0))
    plane.keyframe_insert("location", frame=1)
    plane.location = (1.0, 0.0, 0.0)
    plane.keyframe_insert("location", frame=11)
    camera = add_camera(scene, "Cam", eye=(0.5, -3.0, 5.0), target=(0.0, 0.0, 0.0))
    places = {}
    for frame in (2, 3, 4):
        scene.frame_set(frame)
        places[frame] = np.array(plane.matrix_world.translation)
    scene.frame_set(20)
    result = pass_render.render_frame_passes(scene, camera, [plane], [2, 3, 4], 64, 48)
    assert scene.frame_current == 20
    assert result.vector.shape == (3, 48, 64, 2) and result.vector.dtype == np.float32
    for frame in range(2):
        rows, cols = np.nonzero(result.mask[frame])
        step = places[frame + 3] - places[frame + 2]
        moved = result.position[frame, rows, cols].astype(np.float64) + step
        expected, _ = project_numpy(moved, result.world_to_camera[frame + 1].astype(np.float64),
                                    result.projection[frame + 1].astype(np.float64), 64, 48)
        actual = np.stack([cols + 0.5, rows + 0.5], -1) + result.vector[frame, rows, cols]
        np.testing.assert_allclose(actual, expected, atol=0.05)
        assert np.abs(result.vector[frame, rows, cols]).max() > 1.0  # it really moves
    np.testing.assert_allclose(result.vector[~result.mask], 0.0, atol=1e-6)  # static background


@needs_motion_vectors
def test_frame_passes_tell_background_surfaces_apart_by_their_uv(scene):
    monkey = add_monkey()
    floor = add_plane(size=10.0, location=(0.5, 1.0, -1.0))
    floor.name = "Floor"
    wall = add_plane(size=10.0, location=(0.0, 4.0, 2.0), rotation=(np.pi / 2, 0.0, 0.0))
    wall.name = "Wall"
    bpy.ops.mesh.primitive_cube_add(size=1.0, location=(-1.8, 0.0, -0.5))
    box = bpy.context.active_object
    box.data.uv_layers.remove(box.data.uv_layers[0])  # no UV: not a surface
    box.pass_index = 2  # a user's index, in the range the capture hands out
    floor.pass_index = 1  # keyframed: a frame change must not put it back during the capture
    floor.keyframe_insert("pass_index", frame=1)
    floor.keyframe_insert("pass_index", frame=2)
    # An instanced collection (not in the scene itself) whose cube renders with index 3.
    props = bpy.data.collections.new("Props")
    bpy.ops.mesh.primitive_cube_add(size=0.6, location=(1.8, 0.0, -0.6))
    prop = bpy.context.active_object
    for collection in list(prop.users_collection):
        collection.objects.unlink(prop)
    props.objects.link(prop)
    prop.pass_index = 3
    instancer = bpy.data.objects.new("Props Instance", None)
    instancer.instance_type, instancer.instance_collection = "COLLECTION", props
    scene.collection.objects.link(instancer)
    camera = add_camera(scene, "Cam", eye=(0.0, -6.0, 1.5), target=(0.0, 0.0, -0.5))
    assert pass_render.render_frame_passes(scene, camera, [monkey], [1], 32, 32).background_id is None  # opt-in
    result = pass_render.render_frame_passes(scene, camera, [monkey], [1, 2], 64, 48, background_ids=True)

    ids = result.background_id
    assert ids.dtype == np.int32 and set(np.unique(ids)) == {0, 1, 2}  # Floor 1, Wall 2 (by name)
    assert not ids[result.mask].any()
    hit = result.depth < 1e9
    others = hit & ~result.mask & (ids == 0)  # the box without UV and the instanced prop
    assert others[:, :, 40:].sum() > 20 and others[:, :, :24].sum() > 20
    assert np.all(result.uv[others] == 0)
    # The mask is Suzanne alone: nothing else took the targets' index.
    alone = pass_render.render_frame_passes(scene, camera, [monkey], [1, 2], 64, 48)
    np.testing.assert_array_equal(result.mask, alone.mask)
    # The floor's UV is its own: the point it names projects onto the pixel's centre.
    view, rows, cols = np.nonzero(ids == 1)
    u, v = result.uv[view, rows, cols].T.astype(np.float64)
    points = np.stack([0.5 + (u - 0.5) * 10.0, 1.0 + (v - 0.5) * 10.0, np.full_like(u, -1.0)], -1)
    for frame in (0, 1):
        here = view == frame
        projected, _ = project_numpy(points[here], result.world_to_camera[frame].astype(np.float64),
                                     result.projection[frame].astype(np.float64), 64, 48)
        centres = np.stack([cols[here] + 0.5, rows[here] + 0.5], -1)
        np.testing.assert_allclose(projected, centres, atol=0.05)
    scene.frame_set(1)
    assert (box.pass_index, floor.pass_index, wall.pass_index, monkey.pass_index, prop.pass_index) == (2, 1, 0, 0, 3)
    assert not any(curve.mute for curve in compat.object_fcurves(floor))
    assert pass_render.render_passes(scene, [camera], [monkey], 32, 32).background_id is None  # textures: none


def test_view_arrays_decodes_raw_pass_pixels():
    """The numpy core alone: mask from the object index, background, UV wrapping, motion."""
    height, width = 2, 3
    raw = {name: np.zeros((height, width, 4), np.float32) for name in pass_render.RENDER_PASSES}
    raw["Object Index"][..., 0] = [[4, 4, 0], [4, 7, 4]]
    raw["Depth"][..., 0] = [[2.0, 3.0, 1e10], [np.inf, 5.0, 6.0]]
    raw["UV"][..., :2] = [[[0.5, 0.5], [-1e-6, 1.00001], [0.3, 0.3]], [[1.25, -0.25], [0.2, 0.2], [1.0, 0.0]]]
    raw["Position"][..., :3] = 1.0
    raw["Vector"][0, 0] = (9.0, 9.0, -1.5, 2.0)  # (previous - current, current - next), y up
    arrays = pass_render.view_arrays(raw, marker=4, with_vector=True)
    np.testing.assert_array_equal(arrays["mask"], [[True, True, False], [True, False, True]])
    np.testing.assert_array_equal(arrays["depth"], np.array([[2, 3, 1e10], [1e10, 5, 6]], np.float32))
    np.testing.assert_allclose(arrays["uv"][0, 1], (0.0, 1.0))  # rounding noise clamped, not wrapped
    np.testing.assert_allclose(arrays["uv"][1, 0], (0.25, 0.75))  # a repeating texture's wrap
    np.testing.assert_allclose(arrays["uv"][1, 2], (1.0, 0.0))
    assert np.all(arrays["uv"][~arrays["mask"]] == 0) and np.all(arrays["position"][~arrays["mask"]] == 0)
    np.testing.assert_allclose(arrays["vector"][0, 0], (1.5, 2.0))  # [col, row], rows down


def test_decode_view_fills_one_view_of_the_capture_arrays_in_place():
    rng = np.random.default_rng(1)
    raw = {name: rng.uniform(-0.5, 1.5, (4, 5, 4)).astype(np.float32)[::-1] for name in pass_render.RENDER_PASSES}
    raw["Object Index"][..., 0] = rng.integers(0, 3, (4, 5))
    arrays = pass_render.allocate_views(3, 4, 5, with_vector=True)
    pass_render.decode_view(raw, 2, arrays, 1)
    alone = pass_render.view_arrays(raw, 2, with_vector=True)
    assert arrays.keys() == alone.keys()
    for name, array in arrays.items():
        np.testing.assert_array_equal(array[1], alone[name])
        assert not array[0].any() and not array[2].any()  # the other views are untouched
    assert alone["mask"].any() and (alone["uv"][alone["mask"]] != raw["UV"][..., :2][alone["mask"]]).any()


def test_passes_share_files_in_pairs_and_unpack_to_their_channels():
    names = ["Depth", "Normal", "UV", "Position", "Object Index"]
    layout = pass_render.file_layout(names)
    assert layout == {"PositionDepth": ("Position", "Depth"), "NormalIndex": ("Normal", "Object Index"),
                      "UV": ("UV",)}
    assert sorted(p for held in layout.values() for p in held) == sorted(names)
    assert pass_render.file_layout(["Depth", "UV", "Normal"]) == {"Depth": ("Depth",), "UV": ("UV",),
                                                                   "Normal": ("Normal",)}  # no partner: alone
    pixels = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    unpacked = pass_render.unpack_file(pixels, ("Position", "Depth"))
    np.testing.assert_array_equal(unpacked["Position"], pixels[..., :3])
    np.testing.assert_array_equal(unpacked["Depth"][..., 0], pixels[..., 3])
    assert pass_render.unpack_file(pixels, ("Vector",))["Vector"] is pixels


def test_capture_from_edit_mode_returns_to_edit_mode(scene):
    monkey = add_monkey()
    camera = add_camera(scene, "Cam", eye=(0.0, -5.0, 0.5))
    bpy.ops.object.mode_set(mode="EDIT")
    result = pass_render.render_passes(scene, [camera], [monkey], 32, 32, texture_size=32)
    assert result.mask.any() and result.texel_mask.any()
    assert monkey.mode == "EDIT" and bpy.context.view_layer.objects.active == monkey
    bpy.ops.object.mode_set(mode="OBJECT")


def test_texel_maps_follow_the_render_subdivision_level(scene):
    """Viewport level 0, render level 2: the texels must lie on the surface the passes render."""
    monkey = add_monkey()
    modifier = monkey.modifiers.new("Subdivision", "SUBSURF")
    modifier.levels, modifier.render_levels = 0, 2
    cameras = rig.build_orbit_rig(scene, [monkey], count=3, width=96, height=96)
    result = pass_render.render_passes(scene, cameras, [monkey], 96, 96, texture_size=128)
    view, rows, cols = np.nonzero(result.mask)
    uv = result.uv[view, rows, cols]
    texel_rows = np.clip(((1.0 - uv[:, 1]) * 128).astype(int), 0, 127)
    texel_cols = np.clip((uv[:, 0] * 128).astype(int), 0, 127)
    on_map = result.texel_mask[texel_rows, texel_cols]
    gap = np.linalg.norm(result.texel_position[texel_rows, texel_cols][on_map]
                         - result.position[view, rows, cols][on_map], axis=1)
    # The nearest texel lies up to about a texel (~0.03 here) from the pixel's point; texels of
    # the viewport level (0) would sit twice as far: median 0.027, 99th percentile 0.084.
    assert on_map.mean() > 0.95 and np.median(gap) < 0.02 and np.quantile(gap, 0.99) < 0.05
    assert (modifier.levels, modifier.render_levels, modifier.show_viewport) == (0, 2, True)  # restored
