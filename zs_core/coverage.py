"""Which surface the cameras see well, and cameras chosen to see the rest. numpy + stdlib only.

The add-on loads this file by its path (``blender_addon/wire.py``), so it imports nothing
of the project; a mesh file without Blender (trimesh) can use it the same way. Everything
here works on a :class:`Surface` (area-weighted samples of the target meshes: points,
normals, the area each stands for) and :class:`Cameras` (``world_to_camera`` and
``projection`` per camera, the wire format's conventions, see ``zs_core/geometry.py``).
Visibility asks a ray oracle the caller provides::

    first_hit(origins (R, 3), directions (R, 3) unit) -> (R,) distance to the first
    surface along each ray (inf: none); with ``with_normals=True`` -> (distances, the hit
    triangles' normals (R, 3), their winding side; anything where there is no hit)

over every mesh that renders (targets and occluders): a BVH in Blender, a brute-force
caster in the tests. A hit whose normal points along the ray is the inside of a solid.

A camera sees a sample at a **usable** angle when the sample is in its frame (between the
clip planes), faces it with ``cos(theta) >= USABLE_COS`` and nothing is in between. The
surface **seeable from outside** is what any of the fixed cameras or of
:data:`CANDIDATES` cameras on a sphere around the objects (a Fibonacci sphere at the orbit
rig's distance, lens and image size) sees at a usable angle. **Coverage** is the usable-seen
area over the seeable area.

- :func:`choose_cameras`: greedy, from the fixed cameras (or none), the candidate that adds
  the most seeable area not yet covered, until :data:`TARGET_COVERAGE` or the budget.
- :func:`completion_cameras`: cameras aimed at what the main cameras leave unseen or only
  grazing, cavities included: the uncovered samples grouped (seed-and-grow by distance and
  normal), a camera along each group's mean normal as far out as the main cameras (the
  same scale in its view), or in front of whatever stands in the way there with a wider
  lens, so it sees into the cavity; the one adding the most area is kept, and so on, while
  one adds at least :data:`MIN_GAIN` of the surface. Surface facing into a solid (an
  eye's back inside the head) is left alone.
- :func:`plan`: both, and the coverage report (:meth:`Plan.report`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

FirstHit = Callable[..., np.ndarray]  # see the module docstring

# The bake weighs a view by cos(theta)^p (p = 4; UV sync's p runs from 1 to 6). At cos 0.35
# (70 degrees from the normal) a pixel is stretched 1 / 0.35 = 2.9 times along the slope,
# and next to a frontal view the grazing one gets 0.35^4 = 1.5% of the weight: below this
# a view adds smeared colour and no detail, so it does not count as seeing the surface.
USABLE_COS = 0.35
TARGET_COVERAGE = 0.98  # auto cameras stop once this share of the seeable surface is covered
CANDIDATES = 96  # outside viewpoints: about 21 degrees apart
SAMPLES = 8000  # surface samples: coverage to about +-0.16% (binomial at 98%)
COMPLETION_BUDGET = 4
MIN_GAIN = 0.002  # a completion camera must add this share of the surface area
SENSOR_MM = 36.0  # Blender's default sensor width (sensor fit AUTO)
MARGIN = 1.1  # the orbit rig's framing: the bounding sphere fills 1 / MARGIN of the narrow side
OCCLUSION_EPSILON = 1e-3  # times the objects' radius: a first hit this close to the sample is the sample
GROUP_RADIUS = 0.35  # times the objects' radius: the uncovered samples one completion camera aims at
GROUP_COS = 0.5  # ... whose normals are within 60 degrees of the seed's
MIN_FRAME = 0.1  # times the objects' radius: the smallest patch a completion camera frames
MIN_LENS = 18.0  # mm: the widest lens of a completion camera (90 degrees across a square view)
CLEARANCE = 0.02  # times the objects' radius: a sample with a surface this close in front is closed
ROUND_CANDIDATES = 8  # completion cameras tried per pick
GROUPING_LIMIT = 2000  # uncovered samples grouped at most (every k-th beyond)


# ------------------------------------------------------------------------------ surface


@dataclass
class Surface:
    """points / normals (S, 3) float64 (unit, the triangles' winding side), areas (S,)
    float64: the surface area each sample stands for."""

    points: np.ndarray
    normals: np.ndarray
    areas: np.ndarray

    def __len__(self) -> int:
        return len(self.areas)

    @property
    def area(self) -> float:
        return float(self.areas.sum())

    @property
    def radius(self) -> float:
        """Radius of the samples' bounding sphere (about their box centre)."""
        return bounding_sphere(self.points)[1]


def sample_surface(vertices, triangles, count: int = SAMPLES, seed: int = 0) -> Surface:
    """Area-weighted samples of a triangle mesh: vertices (N, 3), triangles (F, 3) int ->
    :class:`Surface` of ``count`` samples, each standing for area / count.

    Systematic sampling along the triangles' cumulative area (one random offset, then
    equal steps: every triangle gets its share of samples to within one) and a uniform
    point in each chosen triangle; the same ``seed`` gives the same samples. Normals are
    the triangles' own (the side their winding faces)."""
    vertices = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    triangles = np.asarray(triangles, dtype=np.int64).reshape(-1, 3)
    if count < 1 or not len(triangles):
        raise ValueError(f"sample_surface: need triangles and count >= 1, got {len(triangles)} and {count}")
    corners = vertices[triangles]
    cross = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    double_area = np.linalg.norm(cross, axis=1)
    cumulative = np.cumsum(0.5 * double_area)
    total = float(cumulative[-1])
    if not total > 0.0:
        raise ValueError("sample_surface: the triangles have no area")
    rng = np.random.default_rng(seed)
    positions = (np.arange(count) + rng.random()) * (total / count)
    faces = np.minimum(np.searchsorted(cumulative, positions, side="right"), len(triangles) - 1)
    root, second = np.sqrt(rng.random(count)), rng.random(count)
    weights = np.stack([1.0 - root, root * (1.0 - second), root * second], axis=1)
    points = np.einsum("sk,skd->sd", weights, corners[faces])
    normals = cross[faces] / double_area[faces, None]
    return Surface(points, normals, np.full(count, total / count))


# ------------------------------------------------------------------------------ cameras


@dataclass
class Cameras:
    """world_to_camera / projection (C, 4, 4) float64, as the wire format stores views."""

    world_to_camera: np.ndarray = field(default_factory=lambda: np.zeros((0, 4, 4)))
    projection: np.ndarray = field(default_factory=lambda: np.zeros((0, 4, 4)))

    def __post_init__(self) -> None:
        self.world_to_camera = np.asarray(self.world_to_camera, dtype=np.float64).reshape(-1, 4, 4)
        self.projection = np.asarray(self.projection, dtype=np.float64).reshape(-1, 4, 4)
        if len(self.world_to_camera) != len(self.projection):
            raise ValueError(f"Cameras: {len(self.world_to_camera)} world_to_camera, {len(self.projection)} projection")

    def __len__(self) -> int:
        return len(self.world_to_camera)

    def __getitem__(self, index) -> "Cameras":
        index = np.atleast_1d(np.asarray(index, dtype=np.int64))
        return Cameras(self.world_to_camera[index], self.projection[index])

    def __add__(self, other: "Cameras") -> "Cameras":
        return Cameras(np.concatenate([self.world_to_camera, other.world_to_camera]),
                       np.concatenate([self.projection, other.projection]))

    @property
    def camera_to_world(self) -> np.ndarray:
        """(C, 4, 4): each camera's (scale-free) world matrix."""
        return np.linalg.inv(self.world_to_camera)

    @property
    def eyes(self) -> np.ndarray:
        """(C, 3) camera positions."""
        return self.camera_to_world[:, :3, 3]

    @property
    def orthographic(self) -> np.ndarray:
        """(C,) bool: no perspective divide."""
        return np.isclose(self.projection[:, 3, 3], 1.0) & np.isclose(self.projection[:, 3, 2], 0.0)

    @property
    def near(self) -> np.ndarray:
        """(C,) near clip distance (planar depth), read back from the projection."""
        p22, p23 = self.projection[:, 2, 2], self.projection[:, 2, 3]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.orthographic, (p23 + 1.0) / p22, p23 / (p22 - 1.0))


def bounding_sphere(points) -> tuple[np.ndarray, float]:
    """Points (N, 3) -> (centre (3,) of their box, radius enclosing all of them)."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    centre = 0.5 * (points.min(axis=0) + points.max(axis=0))
    radius = float(np.linalg.norm(points - centre, axis=1).max())
    return centre, max(radius, 1e-6)


def fit_distance(radius: float, lens_mm: float, width: int, height: int, margin: float = MARGIN,
                 sensor_mm: float = SENSOR_MM) -> float:
    """Camera distance at which a sphere of ``radius`` fits the narrower field of view,
    with ``margin`` (> 1 leaves room around it). Sensor fit AUTO: the sensor spans the
    larger image dimension."""
    tan_wide = 0.5 * sensor_mm / lens_mm
    tan_narrow = tan_wide * min(width, height) / max(width, height)
    return margin * radius / math.sin(math.atan(tan_narrow))


def rig_clip(distance: float, radius: float) -> tuple[float, float]:
    """(near, far) clip distances of a camera ``distance`` from the centre of objects of
    ``radius``: the near plane well before the objects, the far one well past them."""
    return max(1e-3, min(0.1, 0.1 * (distance - radius))), max(100.0, 4.0 * (distance + radius))


def perspective(lens_mm: float, width: int, height: int, near: float, far: float,
                sensor_mm: float = SENSOR_MM) -> np.ndarray:
    """Blender's ``calc_matrix_camera`` of a perspective camera with sensor fit AUTO and no
    shift -> (4, 4) float64 (OpenGL clip space)."""
    # The sensor spans the larger image side: tan(half that side's angle) = sensor / 2 / lens.
    focal = 2.0 * lens_mm / sensor_mm * max(width, height)
    matrix = np.zeros((4, 4))
    matrix[0, 0] = focal / width
    matrix[1, 1] = focal / height
    matrix[2, 2] = -(far + near) / (far - near)
    matrix[2, 3] = -2.0 * near * far / (far - near)
    matrix[3, 2] = -1.0
    return matrix


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


def aimed_cameras(eyes, targets, lens_mm, width: int, height: int, near, far) -> Cameras:
    """Perspective cameras at ``eyes`` (C, 3) looking at ``targets`` ((C, 3) or (3,)) as
    :func:`look_at_rotation` aims them, each with its ``lens_mm``, ``near`` / ``far`` clip
    ((C,) or one for all)."""
    eyes = np.asarray(eyes, dtype=np.float64).reshape(-1, 3)
    targets = np.broadcast_to(np.asarray(targets, dtype=np.float64), eyes.shape)
    near = np.broadcast_to(np.asarray(near, dtype=np.float64), (len(eyes),))
    far = np.broadcast_to(np.asarray(far, dtype=np.float64), (len(eyes),))
    lens = np.broadcast_to(np.asarray(lens_mm, dtype=np.float64), (len(eyes),))
    forward = targets - eyes
    forward /= np.linalg.norm(forward, axis=1, keepdims=True)
    right = np.cross(forward, (0.0, 0.0, 1.0))
    straight = np.linalg.norm(right, axis=1) < 1e-9  # straight down or up: +Y up (look_at_rotation)
    right[straight] = np.cross(forward[straight], (0.0, 1.0, 0.0))
    right /= np.linalg.norm(right, axis=1, keepdims=True)
    rotation = np.stack([right, np.cross(right, forward), -forward], axis=2)  # columns: right, up, back
    world_to_camera = np.zeros((len(eyes), 4, 4))
    world_to_camera[:, :3, :3] = rotation.transpose(0, 2, 1)
    world_to_camera[:, :3, 3] = -np.einsum("cji,cj->ci", rotation, eyes)
    world_to_camera[:, 3, 3] = 1.0
    projection = np.stack([perspective(lens[index], width, height, near[index], far[index])
                           for index in range(len(eyes))]) if len(eyes) else np.zeros((0, 4, 4))
    return Cameras(world_to_camera, projection)


def fibonacci_directions(count: int) -> np.ndarray:
    """(count, 3) unit vectors spread evenly over the sphere (a Fibonacci lattice, from the
    top down; deterministic)."""
    index = np.arange(count) + 0.5
    z = 1.0 - 2.0 * index / count
    ring = np.sqrt(np.maximum(1.0 - z * z, 0.0))
    azimuth = math.pi * (3.0 - math.sqrt(5.0)) * index
    return np.stack([ring * np.cos(azimuth), ring * np.sin(azimuth), z], axis=1)


def candidate_cameras(centre, radius: float, lens_mm: float, width: int, height: int, count: int = CANDIDATES,
                      margin: float = MARGIN) -> Cameras:
    """``count`` cameras on a sphere around ``centre`` at the orbit rig's distance for
    objects of ``radius`` (the same lens, image size and clip range), looking at it."""
    distance = fit_distance(radius, lens_mm, width, height, margin)
    near, far = rig_clip(distance, radius)
    eyes = np.asarray(centre, dtype=np.float64) + distance * fibonacci_directions(count)
    return aimed_cameras(eyes, centre, lens_mm, width, height, near, far)


# ---------------------------------------------------------------------------- visibility


def view_cosines(cameras: Cameras, surface: Surface, first_hit: FirstHit, min_cos: float = 0.0,
                 epsilon: float | None = None) -> np.ndarray:
    """(C, S) float32: the cosine at which each camera sees each sample; 0 where the sample
    is outside the frame (or the clip range), faces away or below ``min_cos`` (those are
    not ray-tested: pass USABLE_COS when only usable views matter), or something is in
    between: the first hit along the ray from the near plane towards the sample comes
    before it by more than ``epsilon`` (default OCCLUSION_EPSILON x the surface's radius)."""
    points, normals = surface.points, surface.normals
    epsilon = OCCLUSION_EPSILON * surface.radius if epsilon is None else epsilon
    cosines = np.zeros((len(cameras), len(surface)), np.float32)
    rows, columns, origins, directions, reach, values = [], [], [], [], [], []
    camera_to_world, near, orthographic = cameras.camera_to_world, cameras.near, cameras.orthographic
    homogeneous = np.concatenate([points, np.ones((len(points), 1))], axis=1)
    for index in range(len(cameras)):
        clip = homogeneous @ (cameras.projection[index] @ cameras.world_to_camera[index]).T
        w = clip[:, 3]
        inside = (w > 0) & np.all(np.abs(clip[:, :3]) <= w[:, None], axis=1)
        back = camera_to_world[index, :3, 2] / np.linalg.norm(camera_to_world[index, :3, 2])
        if orthographic[index]:
            depth = (points - camera_to_world[index, :3, 3]) @ -back
            to_camera = np.broadcast_to(back, points.shape)
            distance = depth - near[index]
        else:
            offset = camera_to_world[index, :3, 3] - points
            length = np.linalg.norm(offset, axis=1)
            to_camera = offset / np.maximum(length, 1e-300)[:, None]
            # The ray starts on the near plane (what is closer is clipped, not an occluder).
            distance = length - near[index] / np.maximum(to_camera @ back, 1e-12)
        cosine = np.einsum("sd,sd->s", normals, to_camera)
        tested = np.flatnonzero(inside & (cosine > 0.0) & (cosine >= min_cos))
        rows.append(np.full(len(tested), index))
        columns.append(tested)
        origins.append(points[tested] + to_camera[tested] * distance[tested, None])
        directions.append(-to_camera[tested])
        reach.append(distance[tested])
        values.append(cosine[tested])
    if not rows or not sum(len(r) for r in rows):
        return cosines
    rows, columns, reach, values = (np.concatenate(a) for a in (rows, columns, reach, values))
    hits = np.asarray(first_hit(np.concatenate(origins), np.concatenate(directions)), dtype=np.float64)
    visible = hits >= reach - epsilon
    cosines[rows[visible], columns[visible]] = values[visible]
    return cosines


def usable(cosines: np.ndarray) -> np.ndarray:
    """Cosines -> bool of the same shape: seen at a usable angle."""
    return cosines >= USABLE_COS


def share(mask: np.ndarray, areas: np.ndarray, within: np.ndarray | None = None) -> float:
    """Area of ``mask`` (S,) bool over the area of ``within`` (all samples when None); 0
    when ``within`` has no area."""
    total = areas.sum() if within is None else areas[within].sum()
    part = areas[mask].sum() if within is None else areas[mask & within].sum()
    return float(part / total) if total > 0 else 0.0


# ------------------------------------------------------------------------- camera choice


def choose_cameras(candidate_usable: np.ndarray, areas: np.ndarray, covered: np.ndarray | None = None,
                   seeable: np.ndarray | None = None, *, budget: int,
                   target: float = TARGET_COVERAGE) -> tuple[list[int], list[float]]:
    """Greedy: candidate_usable (C, S) bool, areas (S,); ``covered`` (S,) what the fixed
    cameras see already (None: nothing); ``seeable`` (S,) the surface that counts (None:
    what any candidate or the fixed cameras see). Adds the candidate that covers the most
    seeable area not yet covered until the coverage (covered over seeable area) reaches
    ``target`` or ``budget`` cameras are chosen -> (candidate indices in the order chosen,
    the coverage after each). The first pick always happens when nothing is covered yet,
    so a capture never ends up without a camera."""
    covered = np.zeros(candidate_usable.shape[1], bool) if covered is None else covered.copy()
    if seeable is None:
        seeable = candidate_usable.any(axis=0) | covered
    chosen, steps = [], []
    weights = np.where(seeable, areas, 0.0)
    while len(chosen) < budget and share(covered, areas, seeable) < target:
        gains = candidate_usable @ np.where(covered, 0.0, weights)
        best = int(np.argmax(gains))
        if gains[best] <= 0.0 and (chosen or covered.any()):
            break
        chosen.append(best)
        covered |= candidate_usable[best]
        steps.append(share(covered, areas, seeable))
    return chosen, steps


# ------------------------------------------------------------------------------ completion


def group_samples(points: np.ndarray, normals: np.ndarray, areas: np.ndarray, radius: float,
                  count: int) -> list[np.ndarray]:
    """Seed-and-grow: up to ``count`` groups (index arrays into the samples, largest area
    first) of samples within ``radius`` of a seed whose normals are within 60 degrees of
    its; each seed is the ungrouped sample with the most such area around it."""
    if not len(points):
        return []
    points = points.astype(np.float32)
    squared = np.einsum("sd,sd->s", points, points)
    distance2 = squared[:, None] + squared[None] - 2.0 * (points @ points.T)
    near = (distance2 <= radius * radius) & (normals.astype(np.float32) @ normals.T.astype(np.float32) >= GROUP_COS)
    weights = near.astype(np.float32)
    left = np.ones(len(points), bool)
    groups = []
    while left.any() and len(groups) < count:
        density = np.where(left, weights @ np.where(left, areas, 0.0).astype(np.float32), -1.0)
        seed = int(np.argmax(density))
        members = np.flatnonzero(near[seed] & left)
        groups.append(members)
        left[members] = False
    return groups


def aim_at(points: np.ndarray, normals: np.ndarray, areas: np.ndarray, first_hit: FirstHit, scale: float,
           lens_mm: float, width: int, height: int, rig_centre, rig_distance: float) -> Cameras:
    """One camera for a group of samples, looking at their centre from along their mean
    normal (from the sample nearest their centre): as far from ``rig_centre`` as the main
    cameras are (``rig_distance``), so its view shows the surface at their scale, with
    their ``lens_mm`` lens. When a surface along that normal is nearer, the camera stands
    in front of it (so it sees into the cavity) with a lens wide enough to frame the group
    from there (its extent, at least MIN_FRAME x ``scale``; down to MIN_LENS)."""
    weights = areas / areas.sum()
    centre = weights @ points
    normal = weights @ normals
    length = np.linalg.norm(normal)
    anchor_index = int(np.argmin(np.linalg.norm(points - centre, axis=1)))
    normal = normal / length if length > 1e-6 else normals[anchor_index]
    anchor = points[anchor_index]
    # Out along the normal to the sphere the main cameras stand on: |anchor + d n - c| = D.
    offset = anchor - np.asarray(rig_centre, dtype=np.float64)
    along = float(offset @ normal)
    distance = -along + math.sqrt(max(along * along - float(offset @ offset) + rig_distance ** 2, 0.0))
    distance = max(distance, MIN_FRAME * scale)
    start = OCCLUSION_EPSILON * scale
    blocked = float(first_hit((anchor + start * normal)[None], normal[None])[0]) + start
    lens = lens_mm
    if blocked < distance:
        distance = 0.8 * blocked
        extent = max(float(np.linalg.norm(points - centre, axis=1).max()), MIN_FRAME * scale)
        lens = max(min(fitting_lens(extent, distance, width, height, margin=1.2), lens_mm), MIN_LENS)
    eye = anchor + distance * normal
    if np.linalg.norm(centre - eye) < 1e-9:
        centre = anchor
    near = max(1e-4, min(0.1, 0.1 * distance))
    return aimed_cameras(eye, centre, lens, width, height, near, max(100.0, 4.0 * (distance + 2.0 * scale)))


def fitting_lens(radius: float, distance: float, width: int, height: int, margin: float = MARGIN,
                 sensor_mm: float = SENSOR_MM) -> float:
    """The lens (mm) at which a sphere of ``radius`` fits the narrower field of view from
    ``distance`` (:func:`fit_distance` turned around); 0 when no lens can (too close)."""
    sine = margin * radius / distance
    if sine >= 1.0:
        return 0.0
    tan_narrow = sine / math.sqrt(1.0 - sine * sine)
    return 0.5 * sensor_mm / (tan_narrow * max(width, height) / min(width, height))


def lens_of(projection: np.ndarray, width: int, height: int, sensor_mm: float = SENSOR_MM) -> np.ndarray:
    """The lens (mm) of perspective projections (..., 4, 4) made by :func:`perspective`."""
    return np.asarray(projection)[..., 0, 0] * width * sensor_mm / (2.0 * max(width, height))


def completion_cameras(surface: Surface, covered: np.ndarray, first_hit: FirstHit, *, centre, radius: float,
                       lens_mm: float, width: int, height: int, budget: int = COMPLETION_BUDGET
                       ) -> tuple[Cameras, np.ndarray]:
    """Cameras aimed at the samples ``covered`` (S,) bool leaves out -> (cameras,
    their cosines (K, S) float32), K <= ``budget``. The main cameras stand around the
    sphere (``centre``, ``radius``) at the orbit rig's distance for ``lens_mm`` and
    ``width`` x ``height``; completion cameras do too unless something is in the way.

    Samples that face into a solid (the first surface along their normal is hit from
    inside: an eye's back inside the head, faces pressed together) or have a surface right
    in front of them (closer than CLEARANCE x radius) are left out: no camera fits there.
    Each pick groups what is still uncovered (:func:`group_samples`), aims a camera at each
    of the largest ROUND_CANDIDATES groups (:func:`aim_at`) and keeps the one that sees
    the most uncovered area at a usable angle, while that is at least MIN_GAIN of the
    surface."""
    scale = surface.radius
    rig_distance = fit_distance(radius, lens_mm, width, height)
    points, normals, areas = surface.points, surface.normals, surface.areas
    wanted = ~covered
    candidates = np.flatnonzero(wanted)
    if len(candidates):
        start = OCCLUSION_EPSILON * scale
        distances, hit_normals = first_hit(points[candidates] + start * normals[candidates], normals[candidates],
                                           with_normals=True)
        inside = np.isfinite(distances) & (np.einsum("sd,sd->s", hit_normals, normals[candidates]) > 0.0)
        wanted[candidates[inside | (np.asarray(distances) + start < CLEARANCE * scale)]] = False
    chosen, chosen_cosines = Cameras(), []
    stride = max(1, -(-int(wanted.sum()) // GROUPING_LIMIT))
    while len(chosen) < budget and areas[wanted].sum() >= MIN_GAIN * surface.area:
        left = np.flatnonzero(wanted)[::stride]
        groups = group_samples(points[left], normals[left], areas[left], GROUP_RADIUS * scale, ROUND_CANDIDATES)
        tried = Cameras()
        for group in groups:
            members = left[group]
            tried = tried + aim_at(points[members], normals[members], areas[members], first_hit, scale, lens_mm,
                                   width, height, centre, rig_distance)
        cosines = view_cosines(tried, surface, first_hit, USABLE_COS)
        gains = usable(cosines) @ np.where(wanted, areas, 0.0)
        best = int(np.argmax(gains))
        if gains[best] < MIN_GAIN * surface.area:
            break
        chosen = chosen + tried[best]
        chosen_cosines.append(cosines[best])
        wanted &= ~usable(cosines[best])
    cosines = np.stack(chosen_cosines) if chosen_cosines else np.zeros((0, len(surface)), np.float32)
    return chosen, cosines


# ------------------------------------------------------------------------------ the plan


@dataclass
class Plan:
    """The cameras of a capture: ``main`` (the fixed ones, then those :func:`plan` added:
    ``added`` of them), ``completion`` (aimed at what the main ones miss), and what each
    sees: ``seeable`` / ``main_covered`` / ``covered`` (S,) bool over ``surface``;
    ``coverage_steps`` the coverage after each added camera."""

    surface: Surface
    main: Cameras
    completion: Cameras
    added: int
    seeable: np.ndarray
    main_covered: np.ndarray
    covered: np.ndarray
    coverage_steps: list[float]
    candidates: int

    def report(self) -> dict:
        """The coverage report: surface area sampled; share of it seeable from outside;
        coverage (of the seeable area) by the main cameras and with the completion
        cameras; the same as shares of the whole surface; the camera counts."""
        areas = self.surface.areas
        return {
            "surface_area": round(self.surface.area, 6),
            "surface_samples": len(self.surface),
            "seeable": round(share(self.seeable, areas), 4),
            "coverage_main": round(share(self.main_covered, areas, self.seeable), 4),
            "coverage": round(share(self.covered, areas, self.seeable), 4),
            "surface_coverage_main": round(share(self.main_covered, areas), 4),
            "surface_coverage": round(share(self.covered, areas), 4),
            "views_main": len(self.main),
            "views_added": self.added,
            "views_completion": len(self.completion),
            "coverage_steps": [round(step, 4) for step in self.coverage_steps],
            "candidates": self.candidates,
            "usable_cos": USABLE_COS,
        }


def plan(surface: Surface, first_hit: FirstHit, *, centre, radius: float, lens_mm: float, width: int, height: int,
         fixed: Cameras | None = None, auto_budget: int = 0, complete: bool = True,
         completion: Cameras | None = None, completion_budget: int = COMPLETION_BUDGET,
         candidates: int = CANDIDATES, target: float = TARGET_COVERAGE) -> Plan:
    """The cameras for a capture of ``surface``: the ``fixed`` ones; with ``auto_budget``
    > 0 candidates added (:func:`choose_cameras`) until ``target`` or that many main
    cameras in all; with ``complete`` completion cameras: ``completion`` when given, else
    chosen (:func:`completion_cameras`). Candidates sit around the sphere (``centre``,
    ``radius``) at the orbit rig's distance for a ``lens_mm`` lens and ``width`` x
    ``height`` views."""
    fixed = Cameras() if fixed is None else fixed
    areas = surface.areas
    candidate = candidate_cameras(centre, radius, lens_mm, width, height, candidates)
    candidate_usable = usable(view_cosines(candidate, surface, first_hit, USABLE_COS))
    main_covered = usable(view_cosines(fixed, surface, first_hit, USABLE_COS)).any(axis=0) if len(fixed) \
        else np.zeros(len(surface), bool)
    seeable = candidate_usable.any(axis=0) | main_covered
    main, steps = fixed, []
    if auto_budget > 0:
        chosen, steps = choose_cameras(candidate_usable, areas, main_covered, seeable,
                                       budget=max(auto_budget - len(fixed), 0), target=target)
        main = fixed + candidate[chosen]
        if chosen:
            main_covered = main_covered | candidate_usable[chosen].any(axis=0)
    completion_cosines = np.zeros((0, len(surface)), np.float32)
    if not complete:
        completion = Cameras()
    elif completion is not None:
        completion_cosines = view_cosines(completion, surface, first_hit, USABLE_COS)
    else:
        completion, completion_cosines = completion_cameras(
            surface, main_covered, first_hit, centre=centre, radius=radius, lens_mm=lens_mm, width=width,
            height=height, budget=completion_budget)
    covered = main_covered | usable(completion_cosines).any(axis=0)
    return Plan(surface, main, completion, len(main) - len(fixed), seeable, main_covered, covered, steps, candidates)


def describe(report: dict, short: bool = False) -> str:
    """A coverage report (:meth:`Plan.report`, with ``cameras``: where the main cameras
    came from) in one line; ``short`` for a panel's status line."""
    fill = report["views_completion"]
    source = {"cameras": "given", "orbit": "orbit rig", "auto": "auto"}.get(report.get("cameras"), "")
    if short:
        views = f"{report['views_main']} + {fill} completion views" if fill else f"{report['views_main']} views"
        return f"{views} see {100 * report['coverage']:.1f}% of the visible surface well"
    text = (f"{report['views_main']} {source} cameras see {100 * report['coverage_main']:.1f}% of the surface "
            f"visible from outside at a usable angle")
    if fill:
        text += f", with {fill} completion view{'s' if fill != 1 else ''} {100 * report['coverage']:.1f}%"
    return text + f" ({100 * report['surface_coverage']:.1f}% of the whole surface)"


__all__ = ["USABLE_COS", "TARGET_COVERAGE", "Surface", "Cameras", "Plan", "sample_surface", "bounding_sphere",
           "fit_distance", "rig_clip", "perspective", "look_at_rotation", "aimed_cameras", "fibonacci_directions",
           "candidate_cameras", "view_cosines", "usable", "share", "choose_cameras", "group_samples", "aim_at",
           "fitting_lens", "lens_of", "completion_cameras", "plan", "describe"]
