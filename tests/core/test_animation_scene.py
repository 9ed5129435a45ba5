"""The animated fixture: valid passes, a deforming moving object, and a vector pass that
agrees with what the next frame's own passes show (reprojection)."""

from __future__ import annotations

import numpy as np
import pytest

from zs_core import geometry, scene
from zs_core.protocol import Passes

FRAMES, SIZE = 6, 96


@pytest.fixture(scope="module")
def shot() -> Passes:
    return scene.animated_scene(frames=FRAMES, width=SIZE, height=SIZE)


def landing(vector: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest pixel (rows, cols) each pixel moves to, and whether it stays in the image."""
    height, width = vector.shape[:2]
    rows, cols = np.mgrid[0:height, 0:width]
    target_cols = np.floor(cols + 0.5 + vector[..., 0]).astype(int)
    target_rows = np.floor(rows + 0.5 + vector[..., 1]).astype(int)
    inside = (target_cols >= 0) & (target_cols < width) & (target_rows >= 0) & (target_rows < height)
    return np.clip(target_rows, 0, height - 1), np.clip(target_cols, 0, width - 1), inside


def footprint(position: np.ndarray, depth: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """World size of one pixel at each pixel's depth (perspective)."""
    return 2.0 / (projection[0, 0] * SIZE) * depth


def test_passes_validate_and_everything_moves(shot):
    shot.validate(require=("uv", "normal", "position", "vector", "world_to_camera", "projection"))
    assert shot.depth.shape == (FRAMES, SIZE, SIZE) and shot.vector.shape == (FRAMES, SIZE, SIZE, 2)
    assert (shot.depth < 1e9).all(), "floor and wall fill the background"
    assert shot.mask.any(axis=(1, 2)).all()
    # The camera moves, and the object deforms: its silhouette's aspect ratio changes.
    assert not np.allclose(shot.world_to_camera[0], shot.world_to_camera[-1])
    extents = []
    for frame in shot.mask:
        rows, cols = np.nonzero(frame)
        extents.append((rows.max() - rows.min()) / (cols.max() - cols.min()))
    assert max(extents) / min(extents) > 1.4
    # Background pixels move with the camera: a few pixels per frame.
    assert np.median(np.abs(shot.vector[~shot.mask])) > 0.5


def test_background_vector_lands_on_the_same_world_point(shot):
    """Floor and wall are static: where a pixel's vector lands, the next frame's position pass
    shows the same world point (within a pixel footprint: the landing is the nearest pixel)."""
    for frame in range(FRAMES - 1):
        rows, cols, inside = landing(shot.vector[frame])
        usable = ~shot.mask[frame] & inside & ~shot.mask[frame + 1][rows, cols]
        here = shot.position[frame][usable]
        there = shot.position[frame + 1][rows[usable], cols[usable]]
        size = footprint(here, shot.depth[frame][usable], shot.projection[frame])
        distance = np.linalg.norm(here - there, axis=-1)
        # Grazing floor pixels stretch far in depth: compare in footprints, on nearly all pixels.
        assert np.mean(distance < 1.5 * size / 0.2) > 0.98
        assert np.median(distance / size) < 1.0


def test_background_vector_is_the_reprojection(shot):
    """Independently of the fixture's own arithmetic: project each background pixel's world
    position with the next camera; the vector is that minus the pixel centre, [col, row]."""
    frame = 2
    pixels, _, _ = geometry.project(shot.position[frame].astype(np.float64), shot.world_to_camera[frame + 1],
                                    shot.projection[frame + 1], SIZE, SIZE)
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    expected = pixels - np.stack([cols + 0.5, rows + 0.5], axis=-1)
    background = ~shot.mask[frame]
    np.testing.assert_allclose(shot.vector[frame][background], expected[background], atol=2e-3)


def test_object_vector_follows_the_surface_through_deformation(shot):
    """Object pixels land where the next frame sees the same material point (the rest point
    its UV names), although the sphere moves, spins and squashes. Distances are measured on
    the rest sphere in pixel footprints; landing on the nearest pixel costs about half a
    footprint, points turning away at the silhouette a few, so the tail is bounded loosely."""
    for frame in range(FRAMES - 1):
        rows, cols, inside = landing(shot.vector[frame])
        usable = shot.mask[frame] & inside & shot.mask[frame + 1][rows, cols]
        assert usable.sum() > 0.9 * shot.mask[frame].sum()
        here = scene.sphere_point(shot.uv[frame][usable], 1.0)
        size = footprint(here, shot.depth[frame][usable], shot.projection[frame])
        moved = np.linalg.norm(here - scene.sphere_point(shot.uv[frame + 1][rows[usable], cols[usable]], 1.0),
                               axis=-1) / size
        assert np.median(moved) < 0.75 and np.percentile(moved, 95) < 2.5, np.percentile(moved, [50, 95])
        # The vector is needed: the point under the same pixel in the next frame is far off.
        both = shot.mask[frame + 1][usable]
        stayed = np.linalg.norm(here[both] - scene.sphere_point(shot.uv[frame + 1][usable & shot.mask[frame + 1]],
                                                                1.0), axis=-1) / size[both]
        assert np.median(stayed) > 3.0


def test_the_same_material_point_keeps_its_uv_when_deformed():
    """The UV of a rest point does not depend on the pose: the fixture's UVs come from rest
    points, so the surface noise and UV sync follow the deformation."""
    rest = scene.sphere_point(np.array([[0.3, 0.6], [0.8, 0.2]]), 1.0)
    for phase in (0.0, 0.37, 1.0):
        centre, pose = scene.object_pose(phase)
        posed = centre + rest @ pose.T
        recovered = (posed - centre) @ np.linalg.inv(pose).T
        np.testing.assert_allclose(scene.sphere_uv(recovered, 1.0), [[0.3, 0.6], [0.8, 0.2]], atol=1e-9)
    # ...while the shape changes: at a quarter of the shot the sphere is squashed to
    # (1.15, 1.15, 1 / 1.15^2) with its volume kept.
    _, squashed = scene.object_pose(0.25)
    np.testing.assert_allclose(sorted(np.linalg.svd(squashed, compute_uv=False)), [1 / 1.15 ** 2, 1.15, 1.15])


def test_more_frames_sample_the_same_shot():
    coarse = scene.animated_scene(frames=3, width=32, height=32)
    fine = scene.animated_scene(frames=5, width=32, height=32)
    np.testing.assert_array_equal(coarse.depth[[0, 1, 2]], fine.depth[[0, 2, 4]])


@pytest.mark.parametrize("kwargs, name", [({"frames": 0}, "frames"), ({"frames": 2.5}, "frames"),
                                          ({"width": 4}, "width"), ({"height": True}, "height")])
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        scene.animated_scene(**kwargs)
