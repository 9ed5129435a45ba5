"""Background surfaces synced through their own UVs (``background_uv``) against the vector
chain, on a synthetic dolly over a textured floor where the truth is known.

The scene (also used by tests/core/test_background_sync.py, which imports it from here):
8 frames of 64x64, a camera moving towards a floor that fills the frame (the floor's UV
about the image centre shrinks by 12% a frame), a small fixed target square in a corner.
The truth is the latents a perfectly consistent model would predict: a smooth random
texture on the floor, averaged over each 8x8 latent pixel. The input x0 is the truth plus
per-frame Gaussian noise of half the truth's standard deviation (consistent content,
inconsistent noise, as from a model with consistent noise). Each method fuses x0 once:

- unsynced: x0 itself (the baseline);
- through UV: ``sync.UVSync`` over the floor's UV at strength 0.9 with footprint-sized
  textures (``animation.BACKGROUND_TEXELS_PER_LATENT`` texels per latent pixel), what
  ``background_uv`` does, blended 0.9 / 0.1 with x0;
- one texel size: the same with a single texture size for every sample;
- vector chain: ``sync.VectorSync``, each frame carried into the next along the vector
  pass (the default without ``background_uv``).

Error: mean |fused - truth| over the latent pixels wholly on the floor, relative to the
truth's mean magnitude there. Prints the four errors, then the JSON line: the error
through UV against the unsynced input (target: ratio < 0.9, what the test asserts).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

try:
    from _common import report_value  # run as a script: bench/ is on sys.path
except ModuleNotFoundError:  # imported as bench.background_uv (by the tests)
    from bench._common import report_value

from zs_core import animation, sync
from zs_core.protocol import Passes, Request

FRAMES, SIZE, FACTOR = 8, 64, 8
STRENGTH, NOISE = 0.9, 0.5  # sync strength; per-frame noise in units of the truth's std
TARGET = 0.9


def dolly_passes() -> Passes:
    """A camera moving towards a floor that fills the frame: the floor's UV about the image
    centre shrinks by 12% a frame (magnification); the target is a small fixed square in a
    corner. Vector = where each pixel's floor point is in the next frame."""
    centre = SIZE / 2.0
    rows, cols = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    scales = 0.5 * 0.88 ** np.arange(FRAMES)  # UV spanned by the image width
    uv = np.stack([np.stack([0.5 + (cols - centre) / SIZE * s, 0.5 - (rows - centre) / SIZE * s], -1)
                   for s in scales]).astype(np.float32)
    vector = np.zeros((FRAMES, SIZE, SIZE, 2), np.float32)
    for frame in range(FRAMES - 1):
        ratio = scales[frame] / scales[frame + 1]
        vector[frame, ..., 0] = (cols - centre) * (ratio - 1.0)
        vector[frame, ..., 1] = (rows - centre) * (ratio - 1.0)
    mask = np.zeros((FRAMES, SIZE, SIZE), bool)
    mask[:, :8, :8] = True
    background_id = np.where(mask, 0, 1).astype(np.int32)
    uv[mask] = 0.25
    return Passes(depth=np.full((FRAMES, SIZE, SIZE), 5.0, np.float32), mask=mask, uv=uv, vector=vector,
                  background_id=background_id).validate()


def floor_truth(passes: Passes, seed: int = 0) -> np.ndarray:
    """Latents ``(F, 4, h, w)`` a perfectly consistent model would predict: a smooth random
    texture on the floor, averaged over each latent's pixels."""
    texels = 512
    texture = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal((4, texels, texels)), (0, 2, 2))
    texture /= texture.std()
    cols = np.clip((passes.uv[..., 0] * texels).astype(int), 0, texels - 1)
    rows = np.clip((passes.uv[..., 1] * texels).astype(int), 0, texels - 1)
    pixels = texture[:, rows, cols]  # (4, F, H, W)
    blocks = pixels.reshape(4, FRAMES, SIZE // FACTOR, FACTOR, SIZE // FACTOR, FACTOR).mean(axis=(3, 5))
    return blocks.transpose(1, 0, 2, 3)


def error(latents: torch.Tensor, truth: np.ndarray, floor: np.ndarray) -> float:
    """Mean |latents - truth| on the latents wholly on the floor, relative to the truth's."""
    diff = np.abs(latents.numpy() - truth).transpose(1, 0, 2, 3)[:, floor]
    return float(diff.mean() / np.abs(truth.transpose(1, 0, 2, 3)[:, floor]).mean())


def measure() -> dict[str, float]:
    """The four errors: unsynced, through UV, one texel size, vector chain."""
    passes = dolly_passes()
    truth = floor_truth(passes)
    x0 = torch.from_numpy(truth + NOISE * truth.std() * np.random.default_rng(1).standard_normal(truth.shape)).float()
    floor = ~passes.mask.reshape(FRAMES, SIZE // FACTOR, FACTOR, SIZE // FACTOR, FACTOR).any(axis=(2, 4))
    request = Request(kind="animation")
    surfaces = passes.background_id > 0
    through_uv = sync.UVSync(passes, request, FACTOR, mask=surfaces, layers=passes.background_id, strength=STRENGTH,
                             texels_per_latent=animation.BACKGROUND_TEXELS_PER_LATENT)
    one_size = sync.UVSync(passes, request, FACTOR, mask=surfaces, layers=passes.background_id, strength=STRENGTH)
    return {
        "unsynced": error(x0, truth, floor),
        "through UV": error(STRENGTH * through_uv.fuse(x0, 1.0) + (1 - STRENGTH) * x0, truth, floor),
        "one texel size": error(STRENGTH * one_size.fuse(x0, 1.0) + (1 - STRENGTH) * x0, truth, floor),
        "vector chain": error(sync.VectorSync(passes, request, FACTOR).fuse(x0), truth, floor),
    }


def main() -> None:
    errors = measure()
    print(f"synthetic dolly, {FRAMES} frames of {SIZE}x{SIZE}; floor error relative to the truth's magnitude")
    for name, value in errors.items():
        print(f"{name:>15}: {value:.3f}")
    report_value("background_uv", errors["through UV"], errors["unsynced"], target=TARGET,
                 target_applies_to="ratio",
                 unit="floor error / truth magnitude, through UV vs unsynced",
                 errors={name: round(value, 4) for name, value in errors.items()})


if __name__ == "__main__":
    main()
