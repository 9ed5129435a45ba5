"""Bake speed: 8 views of 512x512 into a 2048x2048 texture, weights precomputed.

Timed: ``bake(images, passes, weights=precomputed)`` -- the per-image cost the diffusion
sync pays every step (bilinear sampling of every (texel, view) sample with a positive
weight, the weighted mean, nearest fill of unseen texels and 4-texel seam padding).
Not timed: building the scene and ``gather_weights`` (printed separately; paid once per
set of views).

Floor (baseline): a plain numpy gather of the same size -- for each of the 8 views,
``images[v][rows, cols]`` with precomputed integer pixel indices for all 2048^2 texels,
times the view's weight, summed. Target: the bake under 0.5 s (absolute).
"""

from __future__ import annotations

import time

import numpy as np
from _common import interleaved, report

from zs_core import bake, geometry, scene

VIEWS, SIZE, TEXTURE = 8, 512, 2048
TARGET_SECONDS = 0.5


def painted_texture(size: int) -> np.ndarray:
    """A smooth RGB test texture (T, T, 3) float32."""
    uv = geometry.texel_uv(size)
    u, v = uv[..., 0], uv[..., 1]
    return np.stack([0.2 + 0.6 * v, 0.5 + 0.3 * np.sin(2 * np.pi * u),
                     0.4 + 0.2 * np.cos(4 * np.pi * u) * np.sin(2 * np.pi * v)], axis=-1).astype(np.float32)


def numpy_gather_floor(images: np.ndarray, rows: np.ndarray, cols: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Nearest-pixel gather + weighted sum, 8 views x T^2 texels: the plain-numpy floor."""
    total = np.zeros(rows.shape[1:] + (images.shape[3],), np.float32)
    for view in range(images.shape[0]):
        total += images[view][rows[view], cols[view]] * weights[view][..., None]
    return total


def main() -> None:
    started = time.perf_counter()
    passes = scene.sphere_scene(views=VIEWS, width=SIZE, height=SIZE, texture_size=TEXTURE)
    scene_seconds = time.perf_counter() - started
    images = bake.render(painted_texture(1024), passes.uv, passes.mask)

    started = time.perf_counter()
    weights = bake.gather_weights(passes)
    weights_seconds = time.perf_counter() - started
    started = time.perf_counter()
    first = bake.bake(images, passes, weights=weights)  # builds the cached sampling plan
    first_seconds = time.perf_counter() - started

    # The floor's inputs: integer nearest-pixel indices (clipped into the image) and
    # weights normalised per texel, all precomputed like the bake's.
    pixel = np.nan_to_num(weights.pixels, nan=0.0)
    cols = np.clip(pixel[..., 0].astype(np.int64), 0, SIZE - 1)
    rows = np.clip(pixel[..., 1].astype(np.int64), 0, SIZE - 1)
    normalised = weights.weights / np.maximum(weights.weights.sum(axis=0), 1e-12)

    times = interleaved({
        "bake": lambda: bake.bake(images, passes, weights=weights),
        "floor": lambda: numpy_gather_floor(images, rows, cols, normalised),
    }, repeats=5)
    print(f"scene build {scene_seconds:.2f} s (not timed)")
    print(f"gather_weights (once per set of views, not timed): {weights_seconds:.2f} s")
    print(f"first bake incl. sampling plan + fill/padding indices (not timed): {first_seconds:.2f} s")
    print(f"timed: bake(images, passes, weights=precomputed), {VIEWS} views {SIZE}^2 -> {TEXTURE}^2, "
          f"fill + padding 4, coverage {first.coverage:.3f}: {times['bake']:.3f} s")
    print(f"floor: numpy fancy-index gather of {VIEWS} x {TEXTURE}^2 nearest pixels + weighted sum: "
          f"{times['floor']:.3f} s")
    report("bake", times["bake"], times["floor"], target=TARGET_SECONDS,
           target_kind="absolute seconds for the timed bake", weights_seconds=round(weights_seconds, 3),
           timed="bake(images, passes, weights=precomputed)", views=VIEWS, image=SIZE, texture=TEXTURE)


if __name__ == "__main__":
    main()
