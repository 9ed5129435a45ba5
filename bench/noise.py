"""Surface (correspondence-guided) noise vs plain ``torch.randn`` of the same latent shape.

8 views of 512 x 512 of a unit sphere (analytic ray casting, equirectangular UV) seen by
cameras on a ring; the sphere covers ~40 % of each view. Times ``noise.surface`` (best of
a few runs after a warm-up) against ``torch.randn((8, 4, 64, 64))``; target: <= 100 ms.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from _common import interleaved, report

from zs_core import noise

VIEWS, SIZE, CHANNELS, FACTOR = 8, 512, 4, 8
COVERAGE = 0.4  # fraction of each view covered by the sphere
TARGET_SECONDS = 0.1  # issue 16: surface noise for 8 x 512^2 stays within 100 ms


def ring_camera(index: int, views: int, distance: float, elevation_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Eye position ``(3,)`` and camera axes ``(3, 3)`` (rows: right, up, forward) looking at the origin."""
    azimuth, elevation = 2 * math.pi * index / views, math.radians(elevation_deg)
    eye = distance * np.array([math.cos(elevation) * math.cos(azimuth),
                               math.cos(elevation) * math.sin(azimuth), math.sin(elevation)])
    forward = -eye / np.linalg.norm(eye)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    return eye, np.stack([right, np.cross(right, forward), forward])


def sphere_view(eye: np.ndarray, axes: np.ndarray, size: int, tan_half_fov: float):
    """Ray-cast a unit sphere: uv ``(S, S, 2) float32`` (equirectangular) and mask ``(S, S) bool``."""
    offsets = ((np.arange(size) + 0.5) / size * 2 - 1) * tan_half_fov
    x, y = np.meshgrid(offsets, -offsets)  # rows top to bottom
    rays = axes[2] + x[..., None] * axes[0] + y[..., None] * axes[1]
    rays /= np.linalg.norm(rays, axis=-1, keepdims=True)
    half_b = rays @ eye
    discriminant = half_b * half_b - (eye @ eye - 1.0)
    hit = discriminant > 0
    distance = -half_b - np.sqrt(np.where(hit, discriminant, 0.0))
    points = eye + distance[..., None] * rays
    u = 0.5 + np.arctan2(points[..., 1], points[..., 0]) / (2 * math.pi)
    v = 0.5 + np.arcsin(np.clip(points[..., 2], -1.0, 1.0)) / math.pi
    uv = np.clip(np.stack([u, v], axis=-1), 0.0, 1.0) * hit[..., None]
    return uv.astype(np.float32), hit


def sphere_views(views: int = VIEWS, size: int = SIZE, coverage: float = COVERAGE, distance: float = 3.0):
    """``uv (V, S, S, 2) float32`` and ``mask (V, S, S) bool`` of a unit sphere from ring cameras."""
    # The silhouette disc has radius tan(asin(1 / distance)) on the image plane; pick the
    # field of view so that it covers `coverage` of the (2 tan_half_fov)^2 image.
    disc_radius = math.tan(math.asin(1.0 / distance))
    tan_half_fov = disc_radius * math.sqrt(math.pi / (4 * coverage))
    rendered = [sphere_view(*ring_camera(i, views, distance, 15.0), size, tan_half_fov) for i in range(views)]
    return np.stack([uv for uv, _ in rendered]), np.stack([hit for _, hit in rendered])


def main() -> None:
    uv, mask = sphere_views()
    print(f"views {VIEWS} x {SIZE}^2, sphere covers {mask.mean():.1%}, "
          f"UV noise texture {noise.surface_resolution(uv, mask)}^2")
    shape = (VIEWS, CHANNELS, SIZE // FACTOR, SIZE // FACTOR)
    generator = torch.Generator().manual_seed(0)

    def surface():
        return noise.surface(uv, mask, seed=1, channels=CHANNELS, factor=FACTOR)

    def baseline():
        return torch.randn(shape, generator=generator)

    surface()  # warm-up: first calls allocate
    baseline()
    times = interleaved({"surface": surface, "randn": baseline}, repeats=7)
    print(f"surface: {times['surface'] * 1e3:.1f} ms   torch.randn{shape}: {times['randn'] * 1e3:.2f} ms   "
          f"ratio {times['surface'] / times['randn']:.1f}")
    report("noise", times["surface"], times["randn"], target=TARGET_SECONDS, target_applies_to="seconds",
           target_note=f"surface noise seconds for {VIEWS}x{SIZE}^2")


if __name__ == "__main__":
    main()
