"""(T) x0 <-> epsilon at one step, in the scheduler's own parameterisation.

At every step the latents are ``x = c_x0 * x0 + c_eps * eps`` (:func:`noise_scales`):
- schedules of discrete timesteps (DDIM, LCM, TCD): ``c_x0 = sqrt(a)``, ``c_eps =
  sqrt(1 - a)`` with ``a = alphas_cumprod[t]``;
- schedules of sigmas on variance-preserving latents (DPM-Solver++, UniPC, Karras sigmas
  included): ``c_x0 = 1 / sqrt(s^2 + 1)``, ``c_eps = s * c_x0`` with the scheduler's own
  sigma ``s`` of the step, which Karras spacing moves off the training timesteps;
- sigma-space schedulers (Euler, Euler ancestral: ``init_noise_sigma`` > 1, latents not
  rescaled): ``c_x0 = 1``, ``c_eps = s``.
So either prediction gives the other. The sampler's step previews read x0 from the noise
prediction; the sync hooks (:mod:`zs_core.sync`) fuse x0 and hand the scheduler back the
epsilon of the fused x0, so every scheduler steps on it. Epsilon-prediction models only.
All tensors are ``(V, C, h, w)``; ``timestep`` is the step's entry of ``scheduler.timesteps``.
"""

from __future__ import annotations

import torch


def noise_scales(scheduler, timestep, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_x0, c_eps) of ``scheduler`` at ``timestep``, 0-d tensors on ``like``'s device and dtype."""
    sigma = _step_sigma(scheduler, timestep)
    if sigma is None:
        alpha_bar = scheduler.alphas_cumprod.to(like.device)[int(timestep)].to(like.dtype)
        return alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    if float(scheduler.init_noise_sigma) > 1.0:  # sigma space: x = x0 + sigma * eps
        scales = (torch.ones((), dtype=torch.float64), sigma)
    else:
        alpha = 1.0 / (sigma ** 2 + 1).sqrt()
        scales = (alpha, sigma * alpha)
    return tuple(scale.to(like.device, like.dtype) for scale in scales)


def _step_sigma(scheduler, timestep) -> torch.Tensor | None:
    """The scheduler's sigma for this step (float64), or None for a timestep-only schedule."""
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is None or len(sigmas) != len(scheduler.timesteps) + 1:
        return None
    index = getattr(scheduler, "step_index", None)
    if index is None:  # before the scheduler's first step
        index = scheduler.index_for_timestep(timestep)
    return torch.as_tensor(sigmas[index]).double().cpu()


def predicted_x0(scheduler, latents: torch.Tensor, noise_pred: torch.Tensor, timestep) -> torch.Tensor:
    """x0 ``(V, C, h, w)`` from an epsilon prediction at ``timestep``."""
    c_x0, c_eps = noise_scales(scheduler, timestep, latents)
    return (latents - c_eps * noise_pred) / c_x0


def epsilon_for(scheduler, latents: torch.Tensor, x0: torch.Tensor, timestep) -> torch.Tensor:
    """The epsilon ``(V, C, h, w)`` that makes the scheduler's own x0 prediction equal ``x0``
    at ``timestep``."""
    c_x0, c_eps = noise_scales(scheduler, timestep, latents)
    return (latents - c_x0 * x0) / c_eps
