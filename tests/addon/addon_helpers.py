"""Scene builders shared by the add-on tests (real bpy)."""

from __future__ import annotations

import bpy
import numpy as np

from blender_scenes import add_camera, moving_cube_shot  # noqa: F401  (shared with the e2e tests)


def add_monkey(location=(0.0, 0.0, 0.0)):
    """Suzanne (she has a UV map), the active object."""
    bpy.ops.mesh.primitive_monkey_add(location=location)
    return bpy.context.active_object


def add_plane(size: float = 2.0, location=(0.0, 0.0, 0.0), rotation=(0.0, 0.0, 0.0)):
    """A plane in its local XY (normal +Z) with UV (x, y) -> ((x + s/2)/s, (y + s/2)/s)."""
    bpy.ops.mesh.primitive_plane_add(size=size, location=location, rotation=rotation)
    return bpy.context.active_object


def world_matrix(obj) -> np.ndarray:
    return np.array(obj.matrix_world, dtype=np.float64)


def data_counts() -> dict[str, int]:
    """How many datablocks of each kind capture could leave behind."""
    kinds = ("images", "materials", "node_groups", "meshes", "objects", "cameras", "collections", "textures")
    return {kind: len(getattr(bpy.data, kind)) for kind in kinds}
