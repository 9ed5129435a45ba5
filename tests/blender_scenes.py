"""Blender scenes shared by the add-on and e2e tests (real bpy; import only where bpy is)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import bpy

from blender_addon import compat, rig

ORIGINAL_COLOUR = (0.2, 0.4, 0.8, 1.0)


def add_camera(scene, name: str, eye, target=(0.0, 0.0, 0.0), lens: float = 50.0):
    """A perspective camera at ``eye`` looking at ``target`` (world +Z up)."""
    data = bpy.data.cameras.new(name)
    data.lens = lens
    camera = bpy.data.objects.new(name, data)
    camera.location = tuple(eye)
    camera.rotation_mode = "QUATERNION"
    camera.rotation_quaternion = tuple(rig.rotation_to_quaternion(rig.look_at_rotation(eye, target)))
    scene.collection.objects.link(camera)
    return camera


def moving_cube_shot(frames: int = 4, size: int = 64, start: int = 1, reset: bool = True):
    """A new empty file (``reset``; else the current scene): a unit cube (its own UV map and a material "Original") moving
    linearly along X from -1 to +1 over frames ``start`` .. ``start + frames - 1``, seen by
    the active camera "Camera"; the scene's range is those frames, its output size
    ``size`` x ``size``. -> (scene, cube, camera)."""
    if reset:
        bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.frame_start, scene.frame_end = start, start + frames - 1
    scene.frame_set(start)
    scene.render.resolution_x = scene.render.resolution_y = size
    scene.render.resolution_percentage = 100
    bpy.ops.mesh.primitive_cube_add(size=1.0)
    cube = bpy.context.active_object
    cube.name = "Cube"
    for frame, x in ((start, -1.0), (start + frames - 1, 1.0)):
        cube.location.x = x
        cube.keyframe_insert("location", index=0, frame=frame)
    for curve in compat.object_fcurves(cube):
        for key in curve.keyframe_points:
            key.interpolation = "LINEAR"
    material = compat.new_material("Original")
    material.node_tree.nodes["Principled BSDF"].inputs["Base Color"].default_value = ORIGINAL_COLOUR
    cube.data.materials.append(material)
    camera = add_camera(scene, "Camera", (0.0, -6.0, 1.5))
    scene.camera = camera
    scene.frame_set(start)
    return scene, cube, camera


def save_source(tmp_path, name: str) -> Path:
    """The open file saved as ``tmp_path/source/name`` (a test's source .blend) -> its path."""
    path = tmp_path / "source" / name
    path.parent.mkdir()
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    return path


def digest(path) -> str:
    """SHA-256 of a file: a source .blend must come out of a run unchanged."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
