"""The cameras of a texture capture, planned from the objects' own geometry: the coverage
plan of ``zs_core/coverage.py`` (loaded by path, :mod:`.wire`) on the scene's meshes.

- :func:`target_surface`: area-weighted samples of the target meshes (evaluated as renders
  see them: render levels, render visibility), world space.
- :class:`RayCaster`: the plan's ray oracle, a ``mathutils.bvhtree.BVHTree`` over the
  world-space evaluated triangles of every object that renders near the targets (targets
  and occluders; instances too), cast ray by ray (about a microsecond a ray).
- :func:`plan_cameras`: the main cameras (the user's, the orbit rig's or, with views 0,
  the auto rig's) and the completion cameras for what they miss, with the coverage report
  -> :class:`CameraPlan`; nothing in the scene changes.
- :func:`build_plan` / :func:`rig_for`: camera objects for a plan (:func:`rig.build_cameras`).

``coverage.describe(plan.report())`` says what the cameras see in one line.

Imports: bpy, mathutils, the standard library and numpy only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import bpy
import numpy as np
from mathutils.bvhtree import BVHTree

from . import rig
from .camera_projection import camera_matrices
from .errors import CaptureError
from .scene_evaluation import evaluated_depsgraph
from .scene_state import render_resolution_modifiers
from .wire import coverage

GEOMETRY = {"MESH", "CURVE", "SURFACE", "FONT", "META", "CURVES"}  # object types that render as triangles
SEED = 0  # the surface samples: the same scene, the same plan
REACH = 1.05  # occluders count within this many times the farthest camera's distance from the centre


# ---------------------------------------------------------------------------- geometry


def world_triangles(obj, matrix) -> tuple[np.ndarray, np.ndarray]:
    """An evaluated object's triangles -> (vertices (N, 3) float64 in world space through
    ``matrix``, triangles (F, 3) int32), wound so normals point the way renders shade them
    (a mirrored object's are turned back)."""
    try:
        mesh = obj.to_mesh()
    except RuntimeError:  # no geometry to give (an empty curve)
        return np.zeros((0, 3)), np.zeros((0, 3), np.int32)
    try:
        if mesh is None or not len(mesh.polygons):
            return np.zeros((0, 3)), np.zeros((0, 3), np.int32)
        mesh.calc_loop_triangles()
        triangles = np.empty(len(mesh.loop_triangles) * 3, np.int32)
        mesh.loop_triangles.foreach_get("vertices", triangles)
        vertices = np.empty(len(mesh.vertices) * 3, np.float32)
        mesh.vertices.foreach_get("co", vertices)
    finally:
        obj.to_mesh_clear()
    matrix = np.array(matrix, dtype=np.float64)
    triangles = triangles.reshape(-1, 3)
    if np.linalg.det(matrix[:3, :3]) < 0:
        triangles = triangles[:, ::-1]
    return vertices.reshape(-1, 3).astype(np.float64) @ matrix[:3, :3].T + matrix[:3, 3], triangles


def _merged(parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.cumsum([0] + [len(vertices) for vertices, _ in parts])
    vertices = np.concatenate([vertices for vertices, _ in parts] or [np.zeros((0, 3))])
    triangles = np.concatenate([triangles + offset for (_, triangles), offset in zip(parts, offsets)]
                               or [np.zeros((0, 3), np.int32)])
    return vertices, triangles


def target_surface(objects: Sequence[bpy.types.Object], depsgraph, count: int = coverage.SAMPLES,
                   sampling_seed: int = SEED) -> "coverage.Surface":
    """``count`` area-weighted samples of the evaluated target meshes, world space (the same
    ``sampling_seed``, the same samples)."""
    parts = []
    for obj in objects:
        evaluated = obj.evaluated_get(depsgraph)
        parts.append(world_triangles(evaluated, evaluated.matrix_world))
    vertices, triangles = _merged(parts)
    if not len(triangles):
        raise CaptureError("the objects have no faces to texture")
    return coverage.sample_surface(vertices, triangles, count, sampling_seed)


class RayCaster:
    """``first_hit`` of ``zs_core/coverage.py`` over everything that renders near the
    targets: every evaluated object instance of a geometry type that is not hidden from
    renders or from camera rays and whose bounding box reaches into the sphere
    (``centre``, ``reach``)."""

    def __init__(self, depsgraph, centre, reach: float):
        parts, meshes = [], 0
        centre = np.asarray(centre, dtype=np.float64)
        for instance in depsgraph.object_instances:
            obj = instance.object
            original = obj.original
            if obj.type not in GEOMETRY or original.hide_render or not getattr(original, "visible_camera", True):
                continue
            matrix = np.array(instance.matrix_world, dtype=np.float64)
            corners = np.array([tuple(corner) for corner in obj.bound_box]) @ matrix[:3, :3].T + matrix[:3, 3]
            low, high = corners.min(axis=0), corners.max(axis=0)
            if np.linalg.norm(np.clip(centre, low, high) - centre) > reach:
                continue
            vertices, triangles = world_triangles(obj, matrix)
            if len(triangles):
                parts.append((vertices, triangles))
                meshes += 1
        vertices, triangles = _merged(parts)
        self.objects, self.triangles = meshes, len(triangles)
        self.tree = BVHTree.FromPolygons(vertices.tolist(), triangles.tolist(), all_triangles=True)
        self.rays = 0

    def __call__(self, origins: np.ndarray, directions: np.ndarray, with_normals: bool = False):
        cast = self.tree.ray_cast
        hits = [cast(origin, direction) for origin, direction in zip(np.asarray(origins).tolist(),
                                                                     np.asarray(directions).tolist())]
        self.rays += len(hits)
        distances = np.array([np.inf if hit[0] is None else hit[3] for hit in hits], dtype=np.float64)
        if not with_normals:
            return distances
        normals = np.array([(0.0, 0.0, 0.0) if hit[0] is None else tuple(hit[1]) for hit in hits], dtype=np.float64)
        return distances, normals.reshape(-1, 3)


# -------------------------------------------------------------------------------- plan


@dataclass
class CameraPlan:
    """What a capture renders: ``plan.main`` then ``plan.completion`` (coverage.Plan);
    ``source`` "cameras" (the user's, ``given`` main cameras and ``given_fill`` completion
    cameras), "orbit" or "auto" (built from the plan, named ``names``); ``seconds`` the
    time the plan took."""

    plan: "coverage.Plan"
    source: str
    names: list[str]
    width: int
    height: int
    seconds: float
    given: list = field(default_factory=list)
    given_fill: list = field(default_factory=list)

    @property
    def views(self) -> int:
        """Main and completion views: what the capture renders."""
        return len(self.plan.main) + len(self.plan.completion)

    @property
    def completion(self) -> np.ndarray:
        """(V,) bool: the completion views among them (last)."""
        return np.arange(self.views) >= len(self.plan.main)

    def report(self) -> dict:
        """The coverage report (``coverage.Plan.report``) with where the main cameras came
        from and the seconds the plan took."""
        return dict(self.plan.report(), cameras=self.source, seconds=round(self.seconds, 3))


def plan_cameras(scene: bpy.types.Scene, objects: Sequence[bpy.types.Object], settings,
                 cameras: Sequence[bpy.types.Object] | None = None) -> CameraPlan:
    """The cameras a texture capture of ``objects`` renders, planned without changing the
    scene. ``settings``: ``api.TextureSettings`` (views: the orbit rig's cameras, 0 for
    the auto rig within ``view_budget``; elevation, top_view, view_size; complete).
    ``cameras``: the user's (then no rig); those marked as completion cameras
    (:func:`rig.is_fill`) are the completion views, else, with ``complete``, completion
    cameras are chosen."""
    started = time.perf_counter()
    size = settings.view_size
    lens = rig.LENS_MM
    given = [camera for camera in cameras or () if not rig.is_fill(camera)]
    given_fill = [camera for camera in cameras or () if rig.is_fill(camera)]
    if cameras is not None and not given:
        raise CaptureError("every camera given is a completion camera (ZS Fill); give at least one other")
    corners = rig.world_corners(scene, objects)  # as the orbit rig frames them
    centre, radius = rig.bounding_sphere(corners)
    with render_resolution_modifiers(objects):  # the surface the passes render
        depsgraph = evaluated_depsgraph(scene)
        surface = target_surface(objects, depsgraph)
        names: list[str] = []
        fixed = completion = None
        if cameras is not None:
            source = "cameras"
            fixed = _matrices(scene, given, size, depsgraph)
            completion = _matrices(scene, given_fill, size, depsgraph) if given_fill else None
        elif settings.views > 0:
            source = "orbit"
            fixed, names = rig.orbit_cameras(corners, settings.views, settings.elevation, int(settings.top_view), lens,
                                             coverage.MARGIN, size, size)
        else:
            source = "auto"
        distance = coverage.fit_distance(radius, lens, size, size)
        farthest = max([distance] + [float(np.linalg.norm(eye - centre)) for eye in
                                     (fixed.eyes if fixed is not None else ())])
        caster = RayCaster(depsgraph, centre, REACH * farthest)
    plan = coverage.plan(surface, caster, centre=centre, radius=radius, lens_mm=lens, width=size, height=size,
                         fixed=fixed, auto_budget=settings.view_budget if source == "auto" else 0,
                         complete=settings.complete or completion is not None, completion=completion)
    if source == "auto":
        names = [f"ZS Auto {index:02d}" for index in range(len(plan.main))]
    return CameraPlan(plan, source, names, size, size, time.perf_counter() - started, given, given_fill)


def _matrices(scene, cameras, size: int, depsgraph) -> "coverage.Cameras":
    pairs = [camera_matrices(scene, camera, size, size, depsgraph) for camera in cameras]
    return coverage.Cameras([pair[0] for pair in pairs], [pair[1] for pair in pairs])


def fill_names(count: int) -> list[str]:
    return [f"ZS Fill {index:02d}" for index in range(count)]


def build_plan(scene: bpy.types.Scene, camera_plan: CameraPlan, collection_name: str,
               fill_collection: str | None = None) -> tuple[list, list]:
    """Camera objects for ``camera_plan`` -> (main cameras, completion cameras), each list
    in view order. A plan from the user's cameras gives theirs back (and builds only
    the completion cameras it chose); an orbit or auto plan builds its main cameras in
    ``collection_name``. Completion cameras go to ``fill_collection`` (None: with the main
    ones)."""
    plan, width, height = camera_plan.plan, camera_plan.width, camera_plan.height
    fill_built = not camera_plan.given_fill and len(plan.completion)
    if camera_plan.source == "cameras":
        main = list(camera_plan.given)
        fill = list(camera_plan.given_fill)
        if fill_built:
            fill = rig.build_cameras(scene, plan.completion, fill_names(len(plan.completion)), width, height,
                                     fill_collection or collection_name, fill=[True] * len(plan.completion))
        return main, fill
    if fill_collection is None or not fill_built:
        cameras = plan.main + plan.completion if fill_built else plan.main
        names = camera_plan.names + (fill_names(len(plan.completion)) if fill_built else [])
        built = rig.build_cameras(scene, cameras, names, width, height, collection_name,
                                  fill=[False] * len(plan.main) + [True] * (len(cameras) - len(plan.main)))
        return built[:len(plan.main)], built[len(plan.main):]
    main = rig.build_cameras(scene, plan.main, camera_plan.names, width, height, collection_name)
    fill = rig.build_cameras(scene, plan.completion, fill_names(len(plan.completion)), width, height, fill_collection,
                             fill=[True] * len(plan.completion))
    return main, fill


def rig_for(scene: bpy.types.Scene, objects: Sequence[bpy.types.Object], settings,
            collection_name: str = rig.RIG_COLLECTION) -> tuple[list, CameraPlan]:
    """The rig ``settings`` (``api.TextureSettings``, checked first) ask for, built in
    ``collection_name`` with its completion cameras: the orbit rig (views > 0) or the
    auto rig (views 0) -> (the cameras, main then completion, and the plan)."""
    settings.check()
    camera_plan = plan_cameras(scene, objects, settings)
    main, fill = build_plan(scene, camera_plan, collection_name)
    return main + fill, camera_plan


__all__ = ["RayCaster", "CameraPlan", "target_surface", "world_triangles", "plan_cameras", "build_plan", "rig_for",
           "fill_names"]
