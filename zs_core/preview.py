"""(T) Cheap per-step previews: latents -> small RGB without running the VAE decoder.

A linear map from the 4 latent channels (+ bias) to RGB is fitted once per VAE by
encoding a few flat and gradient colour patches and solving least squares between each
latent pixel and the mean colour of the 8x8 image block it encodes. This works for any
SD-family VAE, including the random built-in ``tiny`` one, with nothing hard-coded.
"""

from __future__ import annotations

import numpy as np
import torch


def _calibration_images(size: int = 64) -> torch.Tensor:
    """(N, 3, size, size) float32 in [-1, 1]: flat colours, ramps and a checker."""
    ramp = torch.linspace(-1.0, 1.0, size)
    images = []
    for colour in ((1, 1, 1), (-1, -1, -1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1), (1, 1, -1), (0, 0, 0)):
        images.append(torch.tensor(colour, dtype=torch.float32).view(3, 1, 1).expand(3, size, size))
    horizontal = ramp.view(1, 1, size).expand(1, size, size)
    vertical = ramp.view(1, size, 1).expand(1, size, size)
    images.append(torch.cat([horizontal, vertical, -horizontal]))
    images.append(torch.cat([vertical, -horizontal, horizontal]))
    return torch.stack([image.contiguous() for image in images])


@torch.inference_mode()
def fit_latent_to_rgb(vae) -> torch.Tensor:
    """Least-squares map ``(5, 3)`` float32 from [latent channels, 1] to RGB in [-1, 1]."""
    parameter = next(vae.parameters())
    images = _calibration_images().to(device=parameter.device, dtype=parameter.dtype)
    latents = vae.encode(images).latent_dist.mean.float()  # (N, 4, h, w)
    factor = images.shape[-1] // latents.shape[-1]
    blocks = torch.nn.functional.avg_pool2d(images.float(), factor)  # (N, 3, h, w)
    design = torch.cat([latents, torch.ones_like(latents[:, :1])], dim=1)
    design = design.permute(0, 2, 3, 1).reshape(-1, design.shape[1]).cpu()
    target = blocks.permute(0, 2, 3, 1).reshape(-1, 3).cpu()
    return torch.linalg.lstsq(design, target, driver="gelsd").solution.float()


def latents_to_rgb(latents: torch.Tensor, matrix: torch.Tensor, columns: int = 8) -> np.ndarray:
    """Tile views' latents ``(V, 4, h, w)`` into one preview ``(rows*h, cols*w, 3)`` uint8."""
    latents = latents.detach().float().cpu()
    views, _, height, width = latents.shape
    design = torch.cat([latents, torch.ones_like(latents[:, :1])], dim=1).permute(0, 2, 3, 1)
    rgb = (design @ matrix).clamp(-1.0, 1.0).add(1.0).mul(127.5).round().to(torch.uint8).numpy()
    columns = max(1, min(columns, views))
    rows = -(-views // columns)
    sheet = np.zeros((rows * height, columns * width, 3), dtype=np.uint8)
    for index in range(views):
        row, column = divmod(index, columns)
        sheet[row * height:(row + 1) * height, column * width:(column + 1) * width] = rgb[index]
    return sheet
