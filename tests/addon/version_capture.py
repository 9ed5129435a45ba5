"""Capture one fixed scene's texture passes and save them: run by each Blender's Python
(``python tests/addon/version_capture.py OUT.npz``) to compare the versions' captures."""

from __future__ import annotations

import sys
from pathlib import Path

import bpy

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[1])]

from blender_addon import pass_render  # noqa: E402
from blender_scenes import add_camera  # noqa: E402


def capture(path) -> None:
    """Suzanne, subdivided and turned, seen by 3 fixed cameras at 48^2, with 32^2 texel maps
    -> ``path`` (.npz). (Fixed cameras: the orbit rig frames the evaluated bounding box,
    which Blender 4.2 reports for the subdivided surface and 5.0 for the cage.)"""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.mesh.primitive_monkey_add()
    monkey = bpy.context.active_object
    monkey.rotation_euler = (0.3, 0.0, 0.6)
    modifier = monkey.modifiers.new("Subdivision", "SUBSURF")
    modifier.levels = modifier.render_levels = 1
    scene = bpy.context.scene
    cameras = [add_camera(scene, f"Cam {index}", eye) for index, eye in
               enumerate([(0.0, -5.0, 1.0), (4.0, -3.0, 2.0), (-3.0, -4.0, -1.0)])]
    scene.render.resolution_x = scene.render.resolution_y = 48
    pass_render.render_passes(scene, cameras, [monkey], 48, 48, texture_size=32).save(path)


if __name__ == "__main__":
    capture(sys.argv[-1])
