"""zs_core.coverage: surface samples, what cameras see at a usable angle, the auto rig's
greedy choice and completion cameras, on meshes built here and a brute-force ray caster
(Moller-Trumbore over every triangle): numpy only, as the add-on loads the module."""

from __future__ import annotations

import math

import numpy as np
import pytest

from zs_core import coverage, geometry

LENS, SIZE = 50.0, 64


# ------------------------------------------------------------------------------ meshes


def outward(vertices: np.ndarray, triangles: np.ndarray, centre) -> np.ndarray:
    """Triangles wound so their normals point away from ``centre`` (a convex part's)."""
    corners = vertices[triangles]
    normal = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    flip = np.einsum("fd,fd->f", normal, corners.mean(axis=1) - np.asarray(centre)) < 0
    triangles = triangles.copy()
    triangles[flip] = triangles[flip][:, ::-1]
    return triangles


def box(low, high) -> tuple[np.ndarray, np.ndarray]:
    low, high = np.asarray(low, float), np.asarray(high, float)
    vertices = np.array([[(high if (i >> k) & 1 else low)[k] for k in range(3)] for i in range(8)])
    quads = [(0, 2, 6, 4), (1, 3, 7, 5), (0, 1, 5, 4), (2, 3, 7, 6), (0, 1, 3, 2), (4, 5, 7, 6)]
    triangles = np.array([t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))])
    return vertices, outward(vertices, triangles, 0.5 * (low + high))


def sphere(radius: float = 1.0, rings: int = 12, segments: int = 20) -> tuple[np.ndarray, np.ndarray]:
    theta = np.linspace(0.0, math.pi, rings + 1)
    phi = np.linspace(0.0, 2.0 * math.pi, segments, endpoint=False)
    vertices = radius * np.array([[math.sin(t) * math.cos(p), math.sin(t) * math.sin(p), math.cos(t)]
                                  for t in theta for p in phi])
    triangles = []
    for r in range(rings):
        for s in range(segments):
            a, b = r * segments + s, r * segments + (s + 1) % segments
            c, d = a + segments, b + segments
            triangles += [(a, b, d), (a, d, c)]
    triangles = np.array(triangles)
    corners = vertices[triangles]
    keep = np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1) > 1e-12
    return vertices, outward(vertices, triangles[keep], (0.0, 0.0, 0.0))


def merged(*meshes) -> tuple[np.ndarray, np.ndarray]:
    vertices, triangles, offset = [], [], 0
    for v, t in meshes:
        vertices.append(v)
        triangles.append(t + offset)
        offset += len(v)
    return np.concatenate(vertices), np.concatenate(triangles)


def quads(*faces) -> tuple[np.ndarray, np.ndarray]:
    """Planar quads, each (4 corners, the way its normal points) -> one mesh."""
    vertices, triangles = [], []
    for corners, normal in faces:
        corners = np.asarray(corners, float)
        first = len(vertices)
        vertices.extend(corners)
        face = np.array([[0, 1, 2], [0, 2, 3]]) + first
        if np.cross(corners[1] - corners[0], corners[2] - corners[0]) @ np.asarray(normal, float) < 0:
            face = face[:, ::-1]
        triangles.extend(face)
    return np.array(vertices), np.array(triangles)


def rectangle(axis: int, at: float, low, high, normal_sign: float):
    """The rectangle ``axis = at`` spanning ``low``..``high`` in the other two axes."""
    others = [k for k in range(3) if k != axis]
    corners = []
    for a, b in ((low[0], low[1]), (high[0], low[1]), (high[0], high[1]), (low[0], high[1])):
        point = [0.0, 0.0, 0.0]
        point[axis], point[others[0]], point[others[1]] = at, a, b
        corners.append(point)
    normal = [0.0, 0.0, 0.0]
    normal[axis] = normal_sign
    return corners, normal


def pit(half: float, floor: float, top: float):
    """A closed 2 x 2 block from z = 0 to ``top`` with a square pit (``half`` of its width
    from the centre) down to ``floor``: one surface, no faces inside."""
    h = half
    return quads(
        rectangle(2, 0.0, (-1, -1), (1, 1), -1), rectangle(0, -1.0, (-1, 0), (1, top), -1),
        rectangle(0, 1.0, (-1, 0), (1, top), 1), rectangle(1, -1.0, (-1, 0), (1, top), -1),
        rectangle(1, 1.0, (-1, 0), (1, top), 1),
        rectangle(2, top, (-1, -1), (-h, 1), 1), rectangle(2, top, (h, -1), (1, 1), 1),
        rectangle(2, top, (-h, -1), (h, -h), 1), rectangle(2, top, (-h, h), (h, 1), 1),
        rectangle(0, -h, (-h, floor), (h, top), 1), rectangle(0, h, (-h, floor), (h, top), -1),
        rectangle(1, -h, (-h, floor), (h, top), 1), rectangle(1, h, (-h, floor), (h, top), -1),
        rectangle(2, floor, (-h, -h), (h, h), 1))


def in_solid(points, half: float, floor: float, top: float) -> np.ndarray:
    """Points strictly inside the pit block's material."""
    inside_block = (np.all(np.abs(points[:, :2]) < 1 - 1e-6, axis=1) & (points[:, 2] > 1e-6)
                    & (points[:, 2] < top - 1e-6))
    in_hole = (np.maximum(np.abs(points[:, 0]), np.abs(points[:, 1])) < half + 1e-6) & (points[:, 2] > floor - 1e-6)
    return inside_block & ~in_hole


def in_pit(points, half: float, floor: float) -> np.ndarray:
    """The pit's walls and floor."""
    return (np.maximum(np.abs(points[:, 0]), np.abs(points[:, 1])) <= half + 1e-9) & (points[:, 2] >= floor - 1e-9)


WELL = (0.15, 0.5, 2.0)  # a narrow deep well: 0.3 wide, 1.5 deep
BASIN = (0.6, 0.2, 1.0)  # a wide shallow basin: 1.2 wide, 0.8 deep


class BruteForce:
    """The ray oracle: every ray against every triangle (Moller-Trumbore)."""

    def __init__(self, vertices, triangles):
        corners = np.asarray(vertices, float)[np.asarray(triangles)]
        self.a, self.e1, self.e2 = corners[:, 0], corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]
        normal = np.cross(self.e1, self.e2)
        self.normal = normal / np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-300)
        self.rays = 0

    def __call__(self, origins, directions, with_normals=False):
        origins, directions = np.asarray(origins, float), np.asarray(directions, float)
        self.rays += len(origins)
        distances = np.full(len(origins), np.inf)
        index = np.full(len(origins), -1)
        step = max(1, 400_000 // len(self.a))
        for start in range(0, len(origins), step):
            o, d = origins[start:start + step, None], directions[start:start + step, None]
            p = np.cross(d, self.e2)
            det = np.einsum("rtd,td->rt", p, self.e1)
            with np.errstate(divide="ignore", invalid="ignore"):
                inverse = 1.0 / det
                s = o - self.a
                u = np.einsum("rtd,rtd->rt", s, p) * inverse
                q = np.cross(s, self.e1)
                v = np.einsum("rtd,rtd->rt", np.broadcast_to(d, q.shape), q) * inverse
                t = np.einsum("rtd,td->rt", q, self.e2) * inverse
                hit = (np.abs(det) > 1e-12) & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 1e-9)
            t = np.where(hit, t, np.inf)
            nearest = t.argmin(axis=1)
            distances[start:start + step] = t[np.arange(len(t)), nearest]
            index[start:start + step] = np.where(np.isfinite(distances[start:start + step]), nearest, -1)
        if not with_normals:
            return distances
        return distances, np.where(index[:, None] >= 0, self.normal[index], 0.0)


def setup(mesh, count=2000, seed=0):
    vertices, triangles = mesh
    surface = coverage.sample_surface(vertices, triangles, count, seed)
    centre, radius = coverage.bounding_sphere(vertices)
    return surface, BruteForce(vertices, triangles), centre, radius


def ring(centre, radius, count=6, elevation=20.0) -> coverage.Cameras:
    """The orbit rig's ring (blender_addon.rig): view 0 on -Y, counter-clockwise from above."""
    distance = coverage.fit_distance(radius, LENS, SIZE, SIZE)
    azimuth = 2.0 * math.pi * np.arange(count) / count
    e = math.radians(elevation)
    eyes = centre + distance * np.stack([math.cos(e) * np.sin(azimuth), -math.cos(e) * np.cos(azimuth),
                                         np.full(count, math.sin(e))], axis=1)
    return coverage.aimed_cameras(eyes, centre, LENS, SIZE, SIZE, *coverage.rig_clip(distance, radius))


def make_plan(surface, first_hit, centre, radius, **options):
    return coverage.plan(surface, first_hit, centre=centre, radius=radius, lens_mm=LENS, width=SIZE, height=SIZE,
                         **options)


# ------------------------------------------------------------------------------ tests


def test_samples_are_area_weighted_seeded_and_on_the_surface():
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 2, 0], [5, 0, 1], [8, 0, 1], [5, 2, 1]], float)
    triangles = np.array([[0, 1, 2], [3, 4, 5]])  # areas 1 and 3
    surface = coverage.sample_surface(vertices, triangles, 1000, seed=7)
    assert surface.area == pytest.approx(4.0)
    second = surface.points[:, 2] > 0.5
    # Systematic sampling: each triangle's share of samples is its share of area to one sample.
    assert abs(second.sum() - 750) <= 1
    np.testing.assert_allclose(surface.areas, 4.0 / 1000)
    np.testing.assert_allclose(surface.normals[~second], [[0, 0, 1]] * (~second).sum())
    np.testing.assert_allclose(surface.normals[second], [[0, 0, 1]] * second.sum())
    first = surface.points[~second]  # inside triangle 0: x, y >= 0 and x + y / 2 <= 1
    assert (first[:, 0] >= 0).all() and (first[:, 1] >= 0).all() and (first[:, 0] + first[:, 1] / 2 <= 1 + 1e-12).all()
    # Uniform within a triangle: the mean is the centroid (1 / 3, 2 / 3) to sampling error.
    np.testing.assert_allclose(first[:, :2].mean(axis=0), [1 / 3, 2 / 3], atol=0.05)
    again = coverage.sample_surface(vertices, triangles, 1000, seed=7)
    np.testing.assert_array_equal(again.points, surface.points)
    assert not np.allclose(coverage.sample_surface(vertices, triangles, 1000, seed=8).points, surface.points)


def test_cameras_follow_blenders_projection_and_look_at():
    for width, height in ((64, 64), (96, 48), (40, 80)):
        np.testing.assert_allclose(coverage.perspective(35.0, width, height, 0.05, 40.0),
                                   geometry.perspective(35.0, coverage.SENSOR_MM, width, height, 0.05, 40.0))
    eyes = np.array([[3.0, -4.0, 2.0], [0.5, 0.2, 6.0]])
    cameras = coverage.aimed_cameras(eyes, (0.1, 0.2, 0.3), LENS, SIZE, SIZE, 0.1, 100.0)
    for index, eye in enumerate(eyes):
        np.testing.assert_allclose(cameras.eyes[index], eye, atol=1e-12)
        forward = -cameras.camera_to_world[index, :3, 2]
        np.testing.assert_allclose(forward, (np.array([0.1, 0.2, 0.3]) - eye) / np.linalg.norm([0.1, 0.2, 0.3] - eye))
    np.testing.assert_allclose(cameras.near, 0.1)
    expected = np.linalg.inv(geometry.look_at(eyes[0], (0.1, 0.2, 0.3)))
    np.testing.assert_allclose(cameras.world_to_camera[0], expected, atol=1e-12)
    directions = coverage.fibonacci_directions(96)
    np.testing.assert_allclose(np.linalg.norm(directions, axis=1), 1.0)
    assert abs(directions.mean(axis=0)).max() < 0.02  # spread evenly


def test_view_cosines_are_the_facing_cosine_where_nothing_is_in_between():
    surface, first_hit, centre, radius = setup(sphere(), 1500)
    camera = coverage.aimed_cameras([0.0, -6.0, 0.0], centre, LENS, SIZE, SIZE, 0.1, 100.0)
    cosines = coverage.view_cosines(camera, surface, first_hit)[0]
    offset = camera.eyes[0] - surface.points
    expected = np.einsum("sd,sd->s", surface.normals, offset / np.linalg.norm(offset, axis=1, keepdims=True))
    front = expected > 0.02  # the sphere is convex: everything facing the camera is seen
    np.testing.assert_allclose(cosines[front], expected[front], atol=1e-6)
    assert (cosines[expected <= 0] == 0).all()
    # A plate between the camera and the sphere hides what lies behind it.
    plate = box((-0.4, -3.0, -0.4), (0.4, -2.9, 0.4))
    hidden = BruteForce(*merged(sphere(), plate))
    behind = coverage.view_cosines(camera, surface, hidden)[0]
    # Where each sample's ray crosses the plate's plane (y = -2.95), in x and z.
    crossing = camera.eyes[0] + (surface.points - camera.eyes[0]) * ((-2.95 + 6.0) / (surface.points[:, 1:2] + 6.0))
    reach = np.abs(crossing[:, [0, 2]]).max(axis=1)
    shadow, lit = front & (reach < 0.39), front & (reach > 0.41)
    assert shadow.sum() > 20 and (behind[shadow] == 0).all()
    np.testing.assert_allclose(behind[lit], expected[lit], atol=1e-6)
    # Outside the frame: a narrow lens sees the middle only; min_cos drops the grazing ones.
    narrow = coverage.aimed_cameras([0.0, -6.0, 0.0], centre, 300.0, SIZE, SIZE, 0.1, 100.0)
    seen = coverage.view_cosines(narrow, surface, first_hit)[0] > 0
    assert seen.any() and not seen[np.abs(surface.points[:, 0]) > 0.6].any()
    usable = coverage.view_cosines(camera, surface, first_hit, min_cos=coverage.USABLE_COS)[0]
    assert (usable[(expected < coverage.USABLE_COS)] == 0).all()
    np.testing.assert_allclose(usable[expected >= 0.4], expected[expected >= 0.4], atol=1e-6)


def test_greedy_choice_takes_the_largest_gain_and_stops_at_the_target_or_the_budget():
    areas = np.ones(10)
    usable = np.zeros((4, 10), bool)
    usable[0, :4] = usable[1, 3:9] = usable[2, 8:] = usable[3, :2] = True
    chosen, steps = coverage.choose_cameras(usable, areas, budget=5, target=1.0)
    assert chosen == [1, 0, 2] and steps == [0.6, 0.9, 1.0]
    assert coverage.choose_cameras(usable, areas, budget=1, target=1.0) == ([1], [0.6])
    assert coverage.choose_cameras(usable, areas, budget=5, target=0.85) == ([1, 0], [0.6, 0.9])
    fixed = np.zeros(10, bool)
    fixed[3:9] = True  # what camera 1 sees is covered already: 0 comes first, then 2
    assert coverage.choose_cameras(usable, areas, fixed, budget=5, target=1.0)[0] == [0, 2]


def test_auto_covers_the_seeable_sphere_the_ring_leaves_its_bottom():
    surface, first_hit, centre, radius = setup(sphere())
    ringed = make_plan(surface, first_hit, centre, radius, fixed=ring(centre, radius), complete=False)
    report = ringed.report()
    assert report["seeable"] > 0.995  # a sphere is all outside
    assert report["coverage_main"] < 0.85  # nothing below the ring's horizon faces it
    auto = make_plan(surface, first_hit, centre, radius, auto_budget=12, complete=False).report()
    assert auto["coverage_main"] >= coverage.TARGET_COVERAGE and auto["views_main"] <= 12
    assert auto["views_added"] == auto["views_main"] == len(auto["coverage_steps"])
    assert auto["coverage_steps"] == sorted(auto["coverage_steps"])


def test_auto_sees_into_the_basin_the_ring_misses():
    surface, first_hit, centre, radius = setup(pit(*BASIN), 2500)
    basin = in_pit(surface.points, BASIN[0], BASIN[1])
    ringed = make_plan(surface, first_hit, centre, radius, fixed=ring(centre, radius), complete=False)
    auto = make_plan(surface, first_hit, centre, radius, auto_budget=12, complete=False)
    assert ringed.report()["coverage_main"] < 0.9
    assert coverage.share(ringed.main_covered, surface.areas, basin) < 0.5
    assert coverage.share(auto.seeable, surface.areas, basin) > 0.99  # all of it, from above
    assert auto.report()["coverage_main"] >= coverage.TARGET_COVERAGE and len(auto.main) <= 12
    # The 2% left are mostly down there (the corners), yet most of it is covered now.
    assert coverage.share(auto.main_covered, surface.areas, basin) > 0.85


def test_completion_cameras_see_into_the_well():
    surface, first_hit, centre, radius = setup(pit(*WELL), 3000)
    deep = in_pit(surface.points, WELL[0], WELL[1]) & (surface.points[:, 2] < 1.2)
    assert surface.areas[deep].sum() > 0.01 * surface.area
    main = make_plan(surface, first_hit, centre, radius, auto_budget=12, complete=False)
    assert coverage.share(main.main_covered, surface.areas, deep) < 0.3  # no outside camera sees down there
    done = make_plan(surface, first_hit, centre, radius, auto_budget=12, complete=True)
    report = done.report()
    assert 1 <= report["views_completion"] <= coverage.COMPLETION_BUDGET
    assert coverage.share(done.covered, surface.areas, deep) > 0.5  # from 0: cameras down the well
    assert report["surface_coverage"] > report["surface_coverage_main"]
    np.testing.assert_array_equal(done.main_covered, main.main_covered)  # the same main cameras
    # Each completion camera stands in free space (not inside the block) ...
    assert not in_solid(done.completion.eyes, *WELL).any()
    # ... and its near clip is closer than the well is wide.
    assert (done.completion.near < 2 * WELL[0]).all()


def test_completion_leaves_enclosed_surface_alone():
    """A ball sealed inside a box: no outside camera sees it, and no camera could."""
    surface, first_hit, centre, radius = setup(merged(box((-2, -2, -2), (2, 2, 2)), sphere(0.8)), 2500)
    ball = np.linalg.norm(surface.points, axis=1) < 0.81
    done = make_plan(surface, first_hit, centre, radius, fixed=ring(centre, radius), complete=True)
    assert not done.seeable[ball].any() and not done.covered[ball].any()
    assert not np.all(np.abs(done.completion.eyes) < 2, axis=1).any()


def test_orthographic_cameras_see_along_their_axis():
    surface, first_hit, centre, radius = setup(sphere(), 1500)
    world_to_camera = np.linalg.inv(geometry.look_at((0.0, -6.0, 0.0), (0.0, 0.0, 0.0)))
    projection = geometry.orthographic(3.0, SIZE, SIZE, near=0.5, far=20.0)
    camera = coverage.Cameras(world_to_camera[None], projection[None])
    assert camera.orthographic.all() and camera.near[0] == pytest.approx(0.5)
    cosines = coverage.view_cosines(camera, surface, first_hit)[0]
    expected = -surface.normals[:, 1]  # the camera looks along +Y
    front = expected > 0.02
    np.testing.assert_allclose(cosines[front], expected[front], atol=1e-6)
    assert (cosines[expected <= 0] == 0).all()
