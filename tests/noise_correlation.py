"""Surface noise against ideal integral noise: how strongly two views' latents correlate
where they see the same surface, and how strongly they should.

For integral noise (the integral of one white-noise field over each latent pixel's
footprint, normalised), latent pixels a and b of two views correlate exactly
|A ∩ B| / sqrt(|A| |B|), A and B their footprints (measured in UV, where the field is
white). The footprints are measured here by rendering both views ``SUPERSAMPLE`` times
finer and projecting every sub-pixel of one view, with its UV area, into the other
(:func:`ideal_pairs`). Each latent pixel of
the view with fewer whole-surface latent pixels is paired with the latent pixel of the
other view it overlaps most; :func:`correlation_table_row` compares the measured
correlation of those pairs over many seeds with the ideal.

Used by tests/core/test_integral_noise.py and bench/noise_correlation.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from zs_core import geometry, noise, scene

SIZE = 256  # view side in pixels
FACTOR = 8  # pixels per latent pixel (side)
SUPERSAMPLE = 2  # sub-pixels per pixel (side) for measuring footprints (converged: 2, 4 and 8 agree)
LENS_MM = 50.0


def camera(distance: float, azimuth_deg: float = 0.0, elevation_deg: float = 15.0,
           ortho_scale: float | None = None, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """A camera looking at the origin from ``distance`` -> (world_to_camera, projection) (4, 4)."""
    azimuth, elevation = math.radians(azimuth_deg), math.radians(elevation_deg)
    eye = distance * np.array([math.cos(elevation) * math.sin(azimuth), -math.cos(elevation) * math.cos(azimuth),
                               math.sin(elevation)])
    world_to_camera = np.linalg.inv(geometry.look_at(eye, (0.0, 0.0, 0.0)))
    if ortho_scale is not None:
        projection = geometry.orthographic(ortho_scale, size, size)
    else:
        projection = geometry.perspective(LENS_MM, scene.SENSOR_MM, size, size)
    return world_to_camera, projection


def render(cameras, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """The unit sphere from ``cameras`` (list of (world_to_camera, projection)) ->
    ``uv (V, S, S, 2) float32``, ``mask (V, S, S) bool``."""
    world_to_camera = np.stack([c[0] for c in cameras])
    projection = np.stack([c[1] for c in cameras])
    passes = scene.render_sphere(world_to_camera, projection, size, size, texture_size=16)
    return passes.uv, passes.mask


def _sample_areas(uv: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """UV area each (sub-)pixel covers ``(H, W) float64`` (0 where unknown): the cross
    product of the steps to the next (or, across a UV seam, the previous) row and column."""
    best = np.full(mask.shape, np.inf)
    for step in (1, -1):
        across = np.roll(uv, -step, axis=1) - uv
        down = np.roll(uv, -step, axis=0) - uv
        area = np.abs(across[..., 0] * down[..., 1] - across[..., 1] * down[..., 0]).astype(np.float64)
        valid = mask & np.roll(mask, -step, axis=1) & np.roll(mask, -step, axis=0)
        best = np.minimum(best, np.where(valid, area, np.inf))
    return np.where(np.isfinite(best) & mask, best, 0.0)


def _whole(mask: np.ndarray, block: int) -> np.ndarray:
    """Latent pixels whose every (sub-)pixel sees the surface -> ``(h * w,) bool``."""
    side = mask.shape[0] // block
    return mask.reshape(side, block, side, block).all(axis=(1, 3)).ravel()


@dataclass
class Pairs:
    """Latent pixel ``first[i]`` of view 0 and ``second[i]`` of view 1 (flat indices into the
    ``(h * w)`` latent grid) see overlapping surface; ``ideal[i]`` is the integral-noise
    correlation |A ∩ B| / sqrt(|A| |B|)."""

    first: np.ndarray
    second: np.ndarray
    ideal: np.ndarray


def ideal_pairs(cameras, size: int = SIZE) -> Pairs:
    """Pairs of latent pixels of two views and their ideal correlation (module docstring).

    Footprints are measured without blur: every sub-pixel of view 0 carries its UV area,
    and its surface point is projected into view 1 (where the sphere faces that camera)
    to find the latent pixel it falls in; |A ∩ B| sums the areas that land in B."""
    fine = size * SUPERSAMPLE
    world_to_camera = np.stack([c[0] for c in cameras])
    projection = np.stack([c[1] for c in cameras])
    passes = scene.render_sphere(world_to_camera, projection, fine, fine, texture_size=16)
    block, latent_side = FACTOR * SUPERSAMPLE, size // FACTOR
    areas = [_sample_areas(passes.uv[v], passes.mask[v]) for v in range(2)]
    latent_of_sample = (np.arange(fine)[:, None] // block) * latent_side + np.arange(fine)[None, :] // block
    footprint = [np.bincount(latent_of_sample.ravel(), weights=area.ravel(), minlength=latent_side ** 2)
                 for area in areas]
    # View 0's samples seen from view 1.
    rows, cols = np.nonzero(passes.mask[0])
    points = passes.position[0][rows, cols].astype(np.float64)
    pixels, _, in_front = geometry.project(points, world_to_camera[1], projection[1], size, size)
    # The unit sphere's normal is the point itself; it faces the camera (the sphere is convex).
    if geometry.is_orthographic(projection[1]):  # towards the camera: its +z axis
        facing = points @ np.linalg.inv(world_to_camera[1])[:3, 2] > 0
    else:
        facing = ((geometry.camera_position(world_to_camera[1]) - points) * points).sum(-1) > 0
    col, row = np.floor(pixels[:, 0]), np.floor(pixels[:, 1])
    inside = in_front & facing & (col >= 0) & (col < size) & (row >= 0) & (row < size)
    latent_b = (row[inside].astype(np.int64) // FACTOR) * latent_side + col[inside].astype(np.int64) // FACTOR
    latent_a = latent_of_sample[rows[inside], cols[inside]]
    overlap = sparse.csr_matrix((areas[0][rows[inside], cols[inside]], (latent_a, latent_b)),
                                shape=(latent_side ** 2, latent_side ** 2)).toarray()
    with np.errstate(invalid="ignore", divide="ignore"):
        ideal = np.nan_to_num(overlap / np.sqrt(np.outer(footprint[0], footprint[1])))
    whole = [_whole(passes.mask[v], block) for v in range(2)]
    ideal[~whole[0]] = 0.0
    ideal[:, ~whole[1]] = 0.0
    # Pair from the view with fewer whole latent pixels (the farther one).
    if whole[0].sum() <= whole[1].sum():
        first = np.flatnonzero(whole[0])
        second = ideal[first].argmax(axis=1)
    else:
        second = np.flatnonzero(whole[1])
        first = ideal[:, second].argmax(axis=0)
    values = ideal[first, second]
    keep = values > 0
    return Pairs(first[keep], second[keep], values[keep])


def measured(cameras, pairs: Pairs, seeds: int, size: int = SIZE, frames: bool = False,
             **surface_options) -> np.ndarray:
    """Mean product of the paired latents over seeds and channels -> ``(pairs,)`` (the latents
    are N(0, 1), so this estimates their correlation). ``frames``: the two views as two
    frames of an animation (:func:`noise.animated`, iid background)."""
    uv, mask = render(cameras, size)
    products = np.zeros(pairs.first.size)
    for seed in range(seeds):
        if frames:
            latents = noise.animated(uv, mask, seed, background="iid", factor=FACTOR, **surface_options).numpy()
        else:
            latents = noise.surface(uv, mask, seed, factor=FACTOR, **surface_options).numpy()
        flat = latents.reshape(2, latents.shape[1], -1)
        products += (flat[0][:, pairs.first] * flat[1][:, pairs.second]).mean(axis=0)
    return products / seeds


def correlation_table_row(cameras, seeds: int = 64, **options) -> dict:
    """Measured and ideal mean correlation of the paired latent pixels of two views
    (``options``: of :func:`measured`)."""
    pairs = ideal_pairs(cameras)
    got = measured(cameras, pairs, seeds, **options)
    return {"pairs": int(pairs.ideal.size), "measured": float(got.mean()), "ideal": float(pairs.ideal.mean()),
            "ratio": float(got.mean() / pairs.ideal.mean())}


# The distance pairs of the noise statistics (same camera, rotated, and scale ratios).
CASES = {
    "same camera twice": (camera(4.0), camera(4.0)),
    "distance 4, rotated 15 deg": (camera(4.0), camera(4.0, azimuth_deg=15.0)),
    "2.5 vs 4": (camera(2.5), camera(4.0)),
    "4 vs 8": (camera(4.0), camera(8.0)),
    "8 vs 14": (camera(8.0), camera(14.0)),
    "perspective 4 vs orthographic": (camera(4.0), camera(6.0, azimuth_deg=20.0, ortho_scale=3.0)),
}
