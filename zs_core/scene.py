"""The built-in scene fixture: a sphere seen by a ring of cameras, ray cast in numpy.

:func:`sphere_scene` returns a :class:`~zs_core.protocol.Passes` holding every array of
the wire format exactly as the Blender add-on would deliver them (rows top to bottom,
planar depth, world-space normal and position, background depth 1e10), so the sampler,
bake and metrics can be exercised without Blender. Conventions are those of
:mod:`zs_core.geometry`.

The object is an analytic sphere of radius ``r`` centred at the origin (a perfectly
smooth "UV sphere") with an equirectangular UV map:

    u = atan2(y, x) / (2 pi) + 0.5        (the seam, u = 0 = 1, faces -X)
    v = acos(-z / r) / pi                 (v = 0 at the south pole, v = 1 at the north)

so in the texture image (row 0 = v = 1) the north pole is at the top and, seen from
outside, the texture is not mirrored.
"""

from __future__ import annotations

import math

import numpy as np

from . import geometry
from .protocol import Passes

BACKGROUND_DEPTH = 1e10  # what Cycles writes where no geometry is hit
SENSOR_MM = 36.0  # Blender's default sensor width
NEAR, FAR = 0.1, 100.0


def ring_cameras(views: int, distance: float, elevation_deg: float, lens_mm: float, width: int,
                 height: int, near: float = NEAR, far: float = FAR):
    """Cameras evenly spaced in azimuth on a ring around the origin, all looking at it.

    View 0 is in front (on -Y, Blender's front view), the next ones follow
    counter-clockwise seen from above (view 1 is towards +X for 4 views).
    -> (world_to_camera (V, 4, 4), projection (V, 4, 4)) float64.
    """
    if isinstance(views, bool) or not isinstance(views, (int, np.integer)) or views < 1:
        raise ValueError(f"views: expected a positive integer, got {views!r}")
    if not (math.isfinite(distance) and distance > 0):
        raise ValueError(f"distance: expected a positive finite number, got {distance!r}")
    if not (math.isfinite(elevation_deg) and -90.0 < elevation_deg < 90.0):
        raise ValueError(f"elevation_deg: expected a number in (-90, 90), got {elevation_deg!r}")
    projection = geometry.perspective(lens_mm, SENSOR_MM, width, height, near, far)
    elevation = math.radians(elevation_deg)
    world_to_camera = np.empty((views, 4, 4))
    for index in range(views):
        azimuth = 2.0 * math.pi * index / views
        eye = distance * np.array([math.cos(elevation) * math.sin(azimuth),
                                   -math.cos(elevation) * math.cos(azimuth),
                                   math.sin(elevation)])
        world_to_camera[index] = np.linalg.inv(geometry.look_at(eye, (0.0, 0.0, 0.0)))
    return world_to_camera, np.broadcast_to(projection, (views, 4, 4)).copy()


def sphere_uv(points: np.ndarray, radius: float) -> np.ndarray:
    """Equirectangular UV (..., 2) float64 of points (..., 3) on the sphere."""
    points = np.asarray(points, dtype=np.float64)
    u = np.arctan2(points[..., 1], points[..., 0]) / (2.0 * math.pi) + 0.5
    v = np.arccos(np.clip(-points[..., 2] / radius, -1.0, 1.0)) / math.pi
    return np.stack([u, v], axis=-1)


def sphere_point(uv: np.ndarray, radius: float) -> np.ndarray:
    """The inverse of :func:`sphere_uv`: surface points (..., 3) float64 at uv (..., 2)."""
    uv = np.asarray(uv, dtype=np.float64)
    longitude = (uv[..., 0] - 0.5) * 2.0 * math.pi
    polar_from_south = uv[..., 1] * math.pi
    ring = radius * np.sin(polar_from_south)
    return np.stack([ring * np.cos(longitude), ring * np.sin(longitude),
                     -radius * np.cos(polar_from_south)], axis=-1)


def _hit_sphere(origins: np.ndarray, directions: np.ndarray, radius: float):
    """Nearest intersection of unit rays (..., 3) with the sphere.

    -> (distance along the ray (...,), hit (...,) bool); distance is NaN on misses.
    """
    # |o + t d|^2 = r^2 with |d| = 1: t^2 + 2 b t + c = 0.
    b = np.einsum("...i,...i->...", origins, directions)
    c = np.einsum("...i,...i->...", origins, origins) - radius * radius
    discriminant = b * b - c
    hit = discriminant >= 0.0
    with np.errstate(invalid="ignore"):
        distance = -b - np.sqrt(np.where(hit, discriminant, np.nan))
    hit &= distance > 0.0
    return np.where(hit, distance, np.nan), hit


def _render_view(world_to_camera: np.ndarray, projection: np.ndarray, width: int, height: int,
                 radius: float, near: float, far: float) -> dict[str, np.ndarray]:
    """Ray cast one view -> float64 / bool arrays, (H, W[, C]), background not yet filled."""
    origins, directions = geometry.pixel_rays(world_to_camera, projection, width, height)
    distance, hit = _hit_sphere(origins, directions, radius)
    position = origins + np.nan_to_num(distance)[..., None] * directions
    # Planar depth from the same matrix the projection uses, so project() agrees with it.
    depth = -(position @ world_to_camera[2, :3] + world_to_camera[2, 3])
    hit &= (depth >= near) & (depth <= far)  # Blender clips to the camera's range
    return {"hit": hit, "depth": depth, "position": position}


def _texel_maps(texture_size: int, radius: float):
    """(texel_position (T, T, 3), texel_normal (T, T, 3), texel_mask (T, T)) of the UV map."""
    position = sphere_point(geometry.texel_uv(texture_size), radius)
    # Texel centres never land on a pole (v is never 0 or 1), so every texel is on the map.
    return position, position / radius, np.ones((texture_size, texture_size), bool)


def sphere_scene(views: int = 6, width: int = 256, height: int = 256, texture_size: int = 256,
                 radius: float = 1.0, elevation_deg: float = 20.0, distance: float = 3.2,
                 lens_mm: float = 50.0) -> Passes:
    """A sphere at the origin seen by ``views`` ring cameras -> :class:`Passes` (valid by construction).

    Arrays (float32 unless noted, rows top to bottom): depth (V, H, W) planar, 1e10 on
    background; normal, position (V, H, W, 3) world space, 0 on background;
    uv (V, H, W, 2) in [0, 1], 0 on background; mask (V, H, W) bool;
    world_to_camera, projection (V, 4, 4); texel_position, texel_normal (T, T, 3);
    texel_mask (T, T) bool. Deterministic.
    """
    if not (math.isfinite(radius) and radius > 0):
        raise ValueError(f"radius: expected a positive finite number, got {radius!r}")
    if not (math.isfinite(distance) and distance > radius + NEAR):
        raise ValueError(f"distance: the cameras must be outside the sphere (> radius + {NEAR}), got {distance!r}")
    world_to_camera, projection = ring_cameras(views, distance, elevation_deg, lens_mm, width, height)
    return render_sphere(world_to_camera, projection, width, height, texture_size, radius)


def render_sphere(world_to_camera: np.ndarray, projection: np.ndarray, width: int, height: int,
                  texture_size: int = 256, radius: float = 1.0) -> Passes:
    """The sphere at the origin seen by any cameras ``world_to_camera, projection (V, 4, 4)``
    (perspective or orthographic; see :mod:`zs_core.geometry`) -> :class:`Passes` with
    the arrays of :func:`sphere_scene`."""
    # Ray cast with exactly the float32 matrices we ship, so the arrays agree with them.
    world_to_camera = np.asarray(world_to_camera).astype(np.float32)
    projection = np.asarray(projection).astype(np.float32)
    rendered = [_render_view(world_to_camera[i].astype(np.float64), projection[i].astype(np.float64),
                             width, height, radius, NEAR, FAR) for i in range(len(world_to_camera))]
    mask = np.stack([view["hit"] for view in rendered])
    surface = np.stack([view["position"] for view in rendered])[mask]  # (N, 3) hit points
    texel_position, texel_normal, texel_mask = _texel_maps(texture_size, radius)
    return Passes(
        depth=_scatter(mask, np.stack([view["depth"] for view in rendered])[mask], BACKGROUND_DEPTH),
        mask=mask,
        uv=_scatter(mask, sphere_uv(surface, radius)),
        normal=_scatter(mask, surface / radius),
        position=_scatter(mask, surface),
        world_to_camera=world_to_camera,
        projection=projection,
        texel_position=texel_position.astype(np.float32),
        texel_normal=texel_normal.astype(np.float32),
        texel_mask=texel_mask,
    )


def _scatter(mask: np.ndarray, values: np.ndarray, background: float = 0.0) -> np.ndarray:
    """Values (N, ...) of the masked pixels -> float32 (V, H, W, ...) with ``background``
    elsewhere."""
    out = np.full((mask.size,) + values.shape[1:], background, dtype=np.float32)
    out[np.flatnonzero(mask)] = values  # integer indices: much faster than a boolean setitem
    return out.reshape(mask.shape + values.shape[1:])


# ----------------------------------------------------------------------------- animation
#
# An animated shot for the animation pipeline: a sphere that translates, spins and squashes
# (a deformation: volume-preserving scale diag(s, s, 1/s^2)) in front of a floor and a back
# wall, seen by a camera that pans around it and dollies in. Motion is analytic, so the
# vector pass is exact: each pixel's material point is moved to the next frame's pose and
# projected with the next frame's camera.

FLOOR_Z = -1.6  # below the lowest point of the squashed sphere (1 / 0.85^2 = 1.38)
WALL_Y = 3.0


def object_pose(phase: float) -> tuple[np.ndarray, np.ndarray]:
    """The sphere's pose at ``phase`` (0 = first frame, 1 = last frame; beyond extrapolates).

    -> (centre (3,), A (3, 3)) float64: a rest point P on the unit sphere sits at
    ``centre + A @ P``. A = R_z(spin) diag(s, s, 1/s^2): the spin turns 70 degrees over the
    shot and the squash s = 1 + 0.15 sin(2 pi phase) changes the shape, not the UVs.
    """
    centre = np.array([-0.5 + 1.0 * phase, 0.0, 0.1 * math.sin(2.0 * math.pi * phase)])
    spin = math.radians(70.0) * phase
    squash = 1.0 + 0.15 * math.sin(2.0 * math.pi * phase)
    rotation = np.array([[math.cos(spin), -math.sin(spin), 0.0],
                         [math.sin(spin), math.cos(spin), 0.0],
                         [0.0, 0.0, 1.0]])
    return centre, rotation @ np.diag([squash, squash, 1.0 / (squash * squash)])


def shot_camera(phase: float, lens_mm: float, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """The moving camera at ``phase``: pans from -15 to +15 degrees azimuth at 12 degrees
    elevation while dollying from 5.0 to 4.5 units. -> (world_to_camera, projection) (4, 4)."""
    azimuth = math.radians(-15.0 + 30.0 * phase)
    elevation = math.radians(12.0)
    distance = 5.0 - 0.5 * phase
    eye = distance * np.array([math.cos(elevation) * math.sin(azimuth),
                               -math.cos(elevation) * math.cos(azimuth),
                               math.sin(elevation)])
    world_to_camera = np.linalg.inv(geometry.look_at(eye, (0.0, 0.0, -0.2)))
    return world_to_camera, geometry.perspective(lens_mm, SENSOR_MM, width, height, NEAR, FAR)


def _hit_ellipsoid(origins: np.ndarray, directions: np.ndarray, centre: np.ndarray, inverse: np.ndarray):
    """Unit rays (..., 3) against the posed sphere {centre + A P : |P| = 1}, ``inverse`` = A^-1.

    -> (distance along the ray (...,) NaN on misses, rest points P (..., 3)).
    """
    local_origin = (origins - centre) @ inverse.T
    local_direction = directions @ inverse.T
    a = np.einsum("...i,...i->...", local_direction, local_direction)
    b = np.einsum("...i,...i->...", local_origin, local_direction)
    c = np.einsum("...i,...i->...", local_origin, local_origin) - 1.0
    discriminant = b * b - a * c
    with np.errstate(invalid="ignore"):
        distance = (-b - np.sqrt(np.where(discriminant >= 0.0, discriminant, np.nan))) / a
    distance = np.where(distance > 0.0, distance, np.nan)
    rest = local_origin + np.nan_to_num(distance)[..., None] * local_direction
    return distance, rest


def _hit_planes(origins: np.ndarray, directions: np.ndarray):
    """Unit rays against the floor (z = FLOOR_Z) and back wall (y = WALL_Y) -> (distance
    (...,) NaN on misses, world normal (..., 3))."""
    with np.errstate(divide="ignore", invalid="ignore"):
        floor = np.where(directions[..., 2] < 0, (FLOOR_Z - origins[..., 2]) / directions[..., 2], np.nan)
        wall = np.where(directions[..., 1] > 0, (WALL_Y - origins[..., 1]) / directions[..., 1], np.nan)
    floor = np.where(floor > 0, floor, np.nan)
    wall = np.where(wall > 0, wall, np.nan)
    use_floor = np.isfinite(floor) & ~(wall < floor)
    distance = np.where(use_floor, floor, wall)
    normal = np.where(use_floor[..., None], np.array([0.0, 0.0, 1.0]), np.array([0.0, -1.0, 0.0]))
    return distance, normal


def _render_frame(phase: float, next_phase: float, width: int, height: int, lens_mm: float) -> dict:
    """Ray cast one frame -> float64 / bool arrays (H, W[, C]) including the exact vector."""
    world_to_camera, projection = shot_camera(phase, lens_mm, width, height)
    # Ray cast with the float32 matrices that are shipped, so the arrays agree with them.
    world_to_camera = world_to_camera.astype(np.float32).astype(np.float64)
    projection = projection.astype(np.float32).astype(np.float64)
    origins, directions = geometry.pixel_rays(world_to_camera, projection, width, height)
    centre, pose = object_pose(phase)
    inverse = np.linalg.inv(pose)
    object_distance, rest = _hit_ellipsoid(origins, directions, centre, inverse)
    plane_distance, plane_normal = _hit_planes(origins, directions)
    on_object = np.isfinite(object_distance) & ~(plane_distance < object_distance)
    distance = np.where(on_object, object_distance, plane_distance)
    position = origins + np.nan_to_num(distance)[..., None] * directions
    # World normal of the posed sphere: the inverse transpose of A applied to the rest normal P.
    object_normal = rest @ inverse
    object_normal /= np.maximum(np.linalg.norm(object_normal, axis=-1, keepdims=True), 1e-12)
    normal = np.where(on_object[..., None], object_normal, plane_normal)
    depth = -(position @ world_to_camera[2, :3] + world_to_camera[2, 3])
    hit = np.isfinite(distance) & (depth >= NEAR) & (depth <= FAR)
    on_object &= hit
    # Where every visible point is at the next frame: material points of the sphere follow
    # its pose, the floor and wall stay put; then the next frame's camera sees them.
    next_centre, next_pose = object_pose(next_phase)
    moved = np.where(on_object[..., None], next_centre + rest @ next_pose.T, position)
    next_world_to_camera, next_projection = shot_camera(next_phase, lens_mm, width, height)
    next_pixels, _, _ = geometry.project(moved, next_world_to_camera.astype(np.float32),
                                         next_projection.astype(np.float32), width, height)
    rows, cols = np.mgrid[0:height, 0:width]
    vector = next_pixels - np.stack([cols + 0.5, rows + 0.5], axis=-1)
    return {"hit": hit, "object": on_object, "depth": depth, "position": position, "normal": normal,
            "uv": sphere_uv(rest, 1.0), "vector": vector, "world_to_camera": world_to_camera,
            "projection": projection}


def animated_scene(frames: int = 8, width: int = 128, height: int = 128, lens_mm: float = 50.0) -> Passes:
    """An animated shot -> :class:`Passes` with one entry per frame (valid by construction).

    A unit sphere (the target, equirectangular UVs as :func:`sphere_scene`) translates by
    one unit, spins 70 degrees about Z and squashes (s = 1 +- 0.15) over the shot, in front
    of a floor and a back wall (geometry, not target), while the camera pans 30 degrees and
    dollies in (:func:`object_pose`, :func:`shot_camera`). The motion is spread over the
    shot: more ``frames`` sample the same shot more finely.

    Arrays (float32 unless noted, rows top to bottom): depth (F, H, W) planar (every pixel
    hits the floor, wall or sphere); normal, position (F, H, W, 3) world space; uv
    (F, H, W, 2), 0 off the target; mask (F, H, W) bool target pixels; vector (F, H, W, 2)
    exact motion of each pixel's point to the next frame, [col, row] in pixels, rows down
    (the last frame's is to the pose one frame after the shot); world_to_camera,
    projection (F, 4, 4). No texel maps (animation jobs do not bake). Deterministic.
    """
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or frames < 1:
        raise ValueError(f"frames: expected a positive integer, got {frames!r}")
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 8:
            raise ValueError(f"{name}: expected an integer >= 8, got {value!r}")
    span = max(frames - 1, 1)
    rendered = [_render_frame(index / span, (index + 1) / span, width, height, lens_mm) for index in range(frames)]

    def stacked(name: str) -> np.ndarray:
        return np.stack([frame[name] for frame in rendered])

    mask, hit = stacked("object"), stacked("hit")
    return Passes(
        depth=np.where(hit, stacked("depth"), BACKGROUND_DEPTH).astype(np.float32),
        mask=mask,
        uv=np.where(mask[..., None], stacked("uv"), 0.0).astype(np.float32),
        normal=np.where(hit[..., None], stacked("normal"), 0.0).astype(np.float32),
        position=np.where(hit[..., None], stacked("position"), 0.0).astype(np.float32),
        vector=np.where(hit[..., None], stacked("vector"), 0.0).astype(np.float32),
        world_to_camera=stacked("world_to_camera").astype(np.float32),
        projection=stacked("projection").astype(np.float32),
    )
