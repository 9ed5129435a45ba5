"""A camera's matrices in the renderer's conventions: ``world_to_camera`` (the inverse
of its scale-free evaluated world matrix) and ``projection`` (``calc_matrix_camera`` with
square pixels) for a given image size, as the wire format stores them per view. The numpy
part (:func:`normalised_camera_matrix`) stands apart from the bpy reading. Imports: bpy,
the standard library and numpy only.
"""

from __future__ import annotations

import bpy
import numpy as np

from .errors import CaptureError
from .scene_evaluation import evaluated_depsgraph


def normalised_camera_matrix(camera_to_world: np.ndarray) -> np.ndarray:
    """Drop the scale of a camera's world matrix (4, 4), as Blender's renderers do."""
    matrix = np.array(camera_to_world, dtype=np.float64)
    lengths = np.linalg.norm(matrix[:3, :3], axis=0)
    matrix[:3, :3] /= np.where(lengths > 0, lengths, 1.0)
    return matrix


def camera_matrices(scene: bpy.types.Scene, camera: bpy.types.Object, width: int, height: int,
                    depsgraph=None) -> tuple[np.ndarray, np.ndarray]:
    """-> (world_to_camera (4, 4) float32, projection (4, 4) float32) of ``camera`` for a
    ``width`` x ``height`` image, at the scene's current frame.

    ``world_to_camera`` inverts the (scale-free) evaluated world matrix; ``projection`` is
    ``calc_matrix_camera`` with square pixels (capture renders with pixel aspect 1).
    """
    if camera is None or camera.type != "CAMERA":
        raise CaptureError(f"{getattr(camera, 'name', camera)!r} is not a camera object")
    depsgraph = depsgraph or evaluated_depsgraph(scene)
    evaluated = camera.evaluated_get(depsgraph)
    camera_to_world = normalised_camera_matrix(np.array(evaluated.matrix_world, dtype=np.float64))
    projection = np.array(evaluated.calc_matrix_camera(depsgraph, x=int(width), y=int(height),
                                                       scale_x=1.0, scale_y=1.0), dtype=np.float64)
    return np.linalg.inv(camera_to_world).astype(np.float32), projection.astype(np.float32)


__all__ = ["normalised_camera_matrix", "camera_matrices"]
