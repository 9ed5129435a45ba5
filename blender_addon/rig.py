"""Camera rigs around the target objects: an orbit ring plus optional top views, and the
cameras of a coverage plan (the auto rig, completion views; see :mod:`.auto_rig`).

The geometry (bounding sphere, camera placement, look-at rotation, quaternion) is plain
numpy, shared with ``zs_core/coverage.py``; the Blender part only creates camera objects
from it (:func:`build_cameras`: cameras as the wire format describes them, i.e.
``coverage.Cameras``). Ring conventions match ``zs_core.scene.ring_cameras``: view 0 in
front (on -Y, Blender's front view), the next ones counter-clockwise seen from above; a
top view looks straight down with +Y up in the image. Rig cameras live in one collection
("ZS Rig") and carry the custom property ``zs_rig`` (their view order); completion cameras
("ZS Fill NN") carry ``zs_fill`` too, so a capture from them knows what they are. Building
again replaces them (no duplicates, no orphan camera data). Imports: bpy, the standard
library and numpy only.
"""

from __future__ import annotations

import math
from typing import Sequence

import bpy
import numpy as np

from .errors import CaptureError
from .scene_evaluation import evaluated_depsgraph
from .wire import coverage

RIG_COLLECTION = "ZS Rig"
RIG_PROPERTY = "zs_rig"
FILL_PROPERTY = "zs_fill"  # a completion camera
SENSOR_MM = coverage.SENSOR_MM  # Blender's default sensor width (sensor fit AUTO)
LENS_MM = 50.0  # the rigs' lens: Blender's default

bounding_sphere = coverage.bounding_sphere
fit_distance = coverage.fit_distance
look_at_rotation = coverage.look_at_rotation


# ----------------------------------------------------------------------------- numpy core


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


def orbit_cameras(corners: np.ndarray, count: int, elevation_deg: float, top_views: int, lens_mm: float,
                  margin: float, width: int, height: int) -> tuple["coverage.Cameras", list[str]]:
    """The orbit rig around world points ``corners`` (N, 3) (its bounding sphere, framed to
    fit a ``width`` x ``height`` image with ``margin``) -> (the cameras, their names)."""
    centre, radius = bounding_sphere(corners)
    distance = fit_distance(radius, lens_mm, width, height, margin)
    eyes = orbit_eyes(centre, distance, count, elevation_deg, top_views)
    cameras = coverage.aimed_cameras(eyes, centre, lens_mm, width, height, *coverage.rig_clip(distance, radius))
    names = [f"ZS Cam {index:02d}" for index in range(count)] + [f"ZS Top {index:02d}" for index in range(top_views)]
    return cameras, names


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
                    elevation_deg: float = 20.0, top_views: int = 0, lens_mm: float = LENS_MM,
                    margin: float = coverage.MARGIN, width: int | None = None, height: int | None = None,
                    collection_name: str = RIG_COLLECTION) -> list[bpy.types.Object]:
    """``count`` cameras on a ring around the objects' world bounding box (+ ``top_views``
    cameras above), aimed at its centre and framed to fit -> the cameras, in view order.

    The distance is the one at which the bounding sphere fits the narrower field of view
    of a ``width`` x ``height`` image (default: the scene's render aspect), times
    ``margin``. Replaces any previous rig in ``collection_name`` (see :func:`build_cameras`).
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
    cameras, names = orbit_cameras(world_corners(scene, objects), count, elevation_deg, top_views, lens_mm, margin,
                                   width, height)
    return build_cameras(scene, cameras, names, width, height, collection_name)


def build_cameras(scene: bpy.types.Scene, cameras: "coverage.Cameras", names: Sequence[str], width: int, height: int,
                  collection_name: str = RIG_COLLECTION, fill: Sequence[bool] | None = None
                  ) -> list[bpy.types.Object]:
    """Camera objects for ``cameras`` (perspective, as :func:`coverage.aimed_cameras`
    makes them for ``width`` x ``height`` views: position, rotation, lens, clip range)
    named ``names``, in ``collection_name`` -> the objects, in order. ``fill`` marks
    completion cameras (:data:`FILL_PROPERTY`). Replaces the collection's previous rig
    cameras; when the scene had no camera (or a replaced rig camera), the first new camera
    becomes the scene camera."""
    fill = [False] * len(cameras) if fill is None else list(fill)
    had_rig_camera = scene.camera is None or scene.camera in rig_cameras(collection_name)
    clear_rig(scene, collection_name)
    collection = rig_collection(scene, collection_name)
    camera_to_world = cameras.camera_to_world
    lenses = coverage.lens_of(cameras.projection, width, height)
    p22, p23 = cameras.projection[:, 2, 2], cameras.projection[:, 2, 3]
    near, far = cameras.near, p23 / (p22 + 1.0)
    made = []
    for index, name in enumerate(names):
        data = bpy.data.cameras.new(name)
        data.lens = float(lenses[index])
        data.sensor_width = SENSOR_MM
        data.sensor_fit = "AUTO"
        data.clip_start = float(near[index])
        data.clip_end = float(far[index])
        camera = bpy.data.objects.new(name, data)
        camera.location = tuple(camera_to_world[index, :3, 3])
        camera.rotation_mode = "QUATERNION"
        camera.rotation_quaternion = tuple(rotation_to_quaternion(camera_to_world[index, :3, :3]))
        camera[RIG_PROPERTY] = index
        if fill[index]:
            camera[FILL_PROPERTY] = True
        collection.objects.link(camera)
        made.append(camera)
    if had_rig_camera and made:
        scene.camera = made[0]
    return made


def is_fill(camera: bpy.types.Object) -> bool:
    """A completion camera (built by :func:`build_cameras` with ``fill``)."""
    return bool(camera.get(FILL_PROPERTY, False))


def remove_collection(scene: bpy.types.Scene, name: str) -> None:
    """Delete the rig cameras of collection ``name``, and the collection when nothing else
    is in it (the scene camera is left to the caller: None if it was one of them)."""
    clear_rig(scene, name)
    collection = bpy.data.collections.get(name)
    if collection is not None and not collection.all_objects:
        bpy.data.collections.remove(collection)
