"""(T) x0 <-> epsilon at one step of a variance-preserving schedule.

With ``a`` = ``alphas_cumprod[t]`` the latents are ``x_t = sqrt(a) x0 + sqrt(1 - a) eps``,
so either prediction gives the other. The sampler's step previews read x0 from the noise
prediction; the sync hooks (:mod:`zs_core.sync`) fuse x0 and hand the scheduler back the
epsilon of the fused x0, so every VP scheduler (DDIM, DPM-Solver++, UniPC) steps on it.
All tensors are ``(V, C, h, w)``; ``timestep`` is a discrete training timestep.
"""

from __future__ import annotations

import torch


def _alpha_bar(scheduler, timestep, like: torch.Tensor) -> torch.Tensor:
    """``alphas_cumprod[timestep]`` on the device and in the dtype of ``like``."""
    return scheduler.alphas_cumprod.to(like.device)[int(timestep)].to(like.dtype)


def predicted_x0(scheduler, latents: torch.Tensor, noise_pred: torch.Tensor, timestep) -> torch.Tensor:
    """x0 ``(V, C, h, w)`` from an epsilon prediction at discrete ``timestep``."""
    alpha_bar = _alpha_bar(scheduler, timestep, latents)
    return (latents - (1 - alpha_bar).sqrt() * noise_pred) / alpha_bar.sqrt()


def epsilon_for(scheduler, latents: torch.Tensor, x0: torch.Tensor, timestep) -> torch.Tensor:
    """The epsilon ``(V, C, h, w)`` that makes the scheduler's own x0 prediction equal ``x0``
    at discrete ``timestep``."""
    alpha_bar = _alpha_bar(scheduler, timestep, latents)
    return (latents - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()
