"""Camera rigs around the target objects: an orbit ring plus optional top views.

The geometry (bounding sphere, camera placement, look-at rotation, quaternion) is plain
numpy; the Blender part only creates camera objects from it. Ring conventions match
``zs_core.scene.ring_cameras``: view 0 in front (on -Y, Blender's front view), the next
ones counter-clockwise seen from above; a top view looks straight down with +Y up in
the image. Rig cameras live in one collection ("ZS Rig") and carry the custom property
``zs_rig``; building again replaces them (no duplicates, no orphan camera data).
Imports: bpy, the standard library and numpy only.
"""

from __future__ import annotations

import math
from typing import Sequence

import bpy
import numpy as np

from .errors import CaptureError
from .scene_evaluation import evaluated_depsgraph

RIG_COLLECTION = "ZS Rig"
RIG_PROPERTY = "zs_rig"
SENSOR_MM = 36.0  # Blender's default sensor width (sensor fit AUTO)


# ----------------------------------------------------------------------------- numpy core


def bounding_sphere(corners: np.ndarray) -> tuple[np.ndarray, float]:
    """World points (N, 3) -> (centre (3,) of their box, radius enclosing all of them)."""
    corners = np.asarray(corners, dtype=np.float64).reshape(-1, 3)
    centre = 0.5 * (corners.min(axis=0) + corners.max(axis=0))
    radius = float(np.linalg.norm(corners - centre, axis=1).max())
    return centre, max(radius, 1e-6)


def fit_distance(radius: float, lens_mm: float, width: int, height: int, margin: float = 1.1,
                 sensor_mm: float = SENSOR_MM) -> float:
    """Camera distance at which a sphere of ``radius`` fits the narrower field of view,
    with ``margin`` (> 1 leaves room around it). Sensor fit AUTO: the sensor spans the
    larger image dimension."""
    tan_wide = 0.5 * sensor_mm / lens_mm
    tan_narrow = tan_wide * min(width, height) / max(width, height)
    return margin * radius / math.sin(math.atan(tan_narrow))


def orbit_eyes(centre, distance: float, count: int, elevation_deg: float, top_views: int = 0) -> np.ndarray:
    """Camera positions (count + top_views, 3) float64: a ring at ``elevation_deg`` above
    the centre's horizontal plane, then ``top_views`` straight above it."""
    centre = np.asarray(centre, dtype=np.float64)
    elevation = math.radians(elevation_deg)
    azimuth = 2.0 * math.pi * np.arange(count) / max(count, 1)
    ring = np.stack([math.cos(elevation) * np.sin(azimuth), -math.cos(elevation) * np.cos(azimuth),
                     np.full(count, math.sin(elevation))], axis=-1)
    tops = np.tile([0.0, 0.0, 1.0], (top_views, 1))
    return centre + distance * np.concatenate([ring, tops]).reshape(-1, 3)


def look_at_rotation(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Rotation (3, 3) whose columns are the camera's +X (right), +Y (up), +Z (back): the
    camera at ``eye`` looks down -Z at ``target``. Straight down/up falls back to +Y up."""
    forward = np.asarray(target, dtype=np.float64) - np.asarray(eye, dtype=np.float64)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-9:
        right = np.cross(forward, (0.0, 1.0, 0.0))
    right /= np.linalg.norm(right)
    camera_up = np.cross(right, forward)
    return np.stack([right, camera_up, -forward], axis=1)


def rotation_to_quaternion(rotation: np.ndarray) -> np.ndarray:
    """Proper rotation matrix (3, 3) -> unit quaternion (4,) as (w, x, y, z)."""
    m = np.asarray(rotation, dtype=np.float64)
    trace = np.trace(m)
    if trace > 0.0:
        s = 2.0 * math.sqrt(trace + 1.0)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    q = np.array(q)
    return q / np.linalg.norm(q)


# ------------------------------------------------------------------------------ Blender


def world_corners(scene: bpy.types.Scene, objects: Sequence[bpy.types.Object]) -> np.ndarray:
    """World-space corners (8 * N, 3) of the evaluated objects' bounding boxes."""
    depsgraph = evaluated_depsgraph(scene)
    corners = []
    for obj in objects:
        evaluated = obj.evaluated_get(depsgraph)
        local = np.array([tuple(corner) for corner in evaluated.bound_box], dtype=np.float64)
        matrix = np.array(evaluated.matrix_world, dtype=np.float64)
        corners.append(local @ matrix[:3, :3].T + matrix[:3, 3])
    return np.concatenate(corners)


def rig_collection(scene: bpy.types.Scene, name: str = RIG_COLLECTION) -> bpy.types.Collection:
    """The rig collection, created and linked under the scene's collection when missing."""
    collection = bpy.data.collections.get(name)
    if collection is None:
        collection = bpy.data.collections.new(name)
    if collection.name not in scene.collection.children:
        scene.collection.children.link(collection)
    return collection


def rig_cameras(name: str = RIG_COLLECTION) -> list[bpy.types.Object]:
    """The rig's cameras in view order (ring first, then top views)."""
    collection = bpy.data.collections.get(name)
    if collection is None:
        return []
    cameras = [obj for obj in collection.objects if obj.type == "CAMERA" and RIG_PROPERTY in obj]
    return sorted(cameras, key=lambda obj: int(obj[RIG_PROPERTY]))


def clear_rig(scene: bpy.types.Scene, name: str = RIG_COLLECTION) -> None:
    """Delete the rig's cameras and their camera data (other objects in it are kept)."""
    for obj in rig_cameras(name):
        data = obj.data
        if scene.camera == obj:
            scene.camera = None
        bpy.data.objects.remove(obj, do_unlink=True)
        if data is not None and data.users == 0:
            bpy.data.cameras.remove(data)


def build_orbit_rig(scene: bpy.types.Scene, objects: Sequence[bpy.types.Object], count: int = 6,
                    elevation_deg: float = 20.0, top_views: int = 0, lens_mm: float = 50.0,
                    margin: float = 1.1, width: int | None = None, height: int | None = None,
                    collection_name: str = RIG_COLLECTION) -> list[bpy.types.Object]:
    """``count`` cameras on a ring around the objects' world bounding box (+ ``top_views``
    cameras above), aimed at its centre and framed to fit -> the cameras, in view order.

    The distance is the one at which the bounding sphere fits the narrower field of view
    of a ``width`` x ``height`` image (default: the scene's render aspect), times
    ``margin``. Replaces any previous rig in ``collection_name``; when the scene had no
    camera (or a replaced rig camera), the first new camera becomes the scene camera.
    """
    objects = list(objects)
    if not objects:
        raise CaptureError("no object to frame: select at least one object")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0 or top_views not in (0, 1) \
            or count + top_views < 1:
        raise CaptureError(f"rig: expected count >= 0 and top_views 0 or 1 with at least one camera, "
                           f"got count={count!r}, top_views={top_views!r}")
    if not (-89.0 <= elevation_deg <= 89.0 and lens_mm > 0 and margin > 0):
        raise CaptureError("rig: elevation must be in [-89, 89] degrees, lens and margin positive")
    width = width or scene.render.resolution_x
    height = height or scene.render.resolution_y
    centre, radius = bounding_sphere(world_corners(scene, objects))
    distance = fit_distance(radius, lens_mm, width, height, margin)
    eyes = orbit_eyes(centre, distance, count, elevation_deg, top_views)

    had_rig_camera = scene.camera is None or scene.camera in rig_cameras(collection_name)
    clear_rig(scene, collection_name)
    collection = rig_collection(scene, collection_name)
    cameras = []
    for index, eye in enumerate(eyes):
        label = f"ZS Cam {index:02d}" if index < count else f"ZS Top {index - count:02d}"
        data = bpy.data.cameras.new(label)
        data.lens = lens_mm
        data.sensor_width = SENSOR_MM
        data.sensor_fit = "AUTO"
        data.clip_start = max(1e-3, min(0.1, 0.1 * (distance - radius)))
        data.clip_end = max(100.0, 4.0 * (distance + radius))
        camera = bpy.data.objects.new(label, data)
        camera.location = tuple(eye)
        camera.rotation_mode = "QUATERNION"
        camera.rotation_quaternion = tuple(rotation_to_quaternion(look_at_rotation(eye, centre)))
        camera[RIG_PROPERTY] = index
        collection.objects.link(camera)
        cameras.append(camera)
    if had_rig_camera and cameras:
        scene.camera = cameras[0]
    return cameras


def rig_for(scene: bpy.types.Scene, objects: Sequence[bpy.types.Object], settings,
            collection_name: str = RIG_COLLECTION) -> list[bpy.types.Object]:
    """:func:`build_orbit_rig` as texture ``settings`` (``api.TextureSettings``: views,
    elevation, top_view, view_size; checked first) ask for it -> the cameras."""
    settings.check()
    return build_orbit_rig(scene, objects, count=settings.views, elevation_deg=settings.elevation,
                           top_views=int(settings.top_view), width=settings.view_size, height=settings.view_size,
                           collection_name=collection_name)
