"""UV latent synchronisation: views agree after a synced step, strength 0 changes nothing,
the scheduler's own x0 becomes the synced one (DDIM and DPM-Solver++), and synced sampling
agrees across views with every scheduler (few-step and stochastic ones included), on the
tiny SDXL too."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from zs_core import metrics, noise, protocol, sampler, scene, sync
from zs_core.protocol import Request

SIZE, FACTOR = 128, 8
# SDXL runs a deterministic, a stochastic and a few-step scheduler (each costs two samples).
SDXL_SCHEDULERS = ("ddim", "euler_a", "lcm")


@pytest.fixture(scope="module")
def passes():
    return scene.sphere_scene(views=4, width=SIZE, height=SIZE)


def latent_disagreement(latents: torch.Tensor, passes) -> float:
    uv, mask = metrics.downsample_correspondence(passes.uv, passes.mask, FACTOR)
    return metrics.cross_view_disagreement(latents.permute(0, 2, 3, 1).numpy(), uv, mask, texels=24)


def test_fused_views_agree_where_they_see_the_same_surface(passes):
    hook = sync.UVSync(passes, Request(sync_strength=1.0))
    x0 = noise.iid(4, (4, SIZE // FACTOR, SIZE // FACTOR), seed=0)
    fused = hook.fuse(x0, exponent=2.0)
    before, after = latent_disagreement(x0, passes), latent_disagreement(fused, passes)
    assert before > 0.5
    assert after < 0.25 * before
    # Background latents are left alone.
    _, latent_mask = metrics.downsample_correspondence(passes.uv, passes.mask, FACTOR)
    background = ~hook.covered.reshape(4, SIZE // FACTOR, SIZE // FACTOR)
    assert background.any()
    torch.testing.assert_close(fused.permute(0, 2, 3, 1)[background], x0.permute(0, 2, 3, 1)[background])


def test_a_constant_texture_survives_fusion(passes):
    hook = sync.UVSync(passes, Request(sync_strength=1.0))
    x0 = torch.full((4, 4, SIZE // FACTOR, SIZE // FACTOR), 0.7)
    torch.testing.assert_close(hook.fuse(x0, exponent=3.0), x0)


def test_exponent_rises_and_window_ends(passes):
    hook = sync.UVSync(passes, Request(sync_strength=1.0, sync_end=0.5, sync_exponent_start=1, sync_exponent_end=5))
    assert hook.exponent(0, 5) == 1 and hook.exponent(4, 5) == 5 and hook.exponent(2, 5) == 3
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    assert hook.active(torch.tensor(900), scheduler) and not hook.active(torch.tensor(400), scheduler)


@pytest.mark.parametrize("scheduler_class", [DDIMScheduler, DPMSolverMultistepScheduler])
def test_scheduler_step_uses_the_synced_x0(passes, scheduler_class):
    # SD1.5's schedule; SD checkpoints ship clip_sample=False (DDIM's default clips x0).
    scheduler = scheduler_class.from_config(dict(num_train_timesteps=1000, beta_schedule="scaled_linear",
                                                 beta_start=0.00085, beta_end=0.012, clip_sample=False))
    scheduler.set_timesteps(10)
    timestep = scheduler.timesteps[0]
    latents = noise.iid(4, (4, 16, 16), seed=1) * scheduler.init_noise_sigma
    eps = noise.iid(4, (4, 16, 16), seed=2)
    hook = sync.UVSync(passes, Request(sync_strength=1.0))
    state = sampler.StepState(0, 10, timestep, latents, eps, scheduler)
    synced_eps = hook(state)
    expected_x0 = hook.fuse(sampler.predicted_x0(scheduler, latents, eps, timestep), hook.exponent(0, 10))
    # Feeding the recomputed epsilon back gives the synced x0 (what the scheduler steps towards).
    torch.testing.assert_close(sampler.predicted_x0(scheduler, latents, synced_eps, timestep), expected_x0,
                               atol=1e-4, rtol=1e-4)
    stepped = scheduler.step(synced_eps, timestep, latents).prev_sample
    assert torch.isfinite(stepped).all()
    if scheduler_class is DDIMScheduler:
        own = scheduler.step(synced_eps, timestep, latents).pred_original_sample
        torch.testing.assert_close(own, expected_x0, atol=1e-4, rtol=1e-4)


def test_strength_zero_is_a_no_op_and_half_is_between(passes):
    eps = noise.iid(4, (4, 16, 16), seed=2)
    latents = noise.iid(4, (4, 16, 16), seed=1)
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(10)
    state = sampler.StepState(0, 10, scheduler.timesteps[0], latents, eps, scheduler)
    assert sync.UVSync(passes, Request(sync_strength=0.0))(state) is None
    full = sync.UVSync(passes, Request(sync_strength=1.0))(state)
    half = sync.UVSync(passes, Request(sync_strength=0.5))(state)
    torch.testing.assert_close(half, 0.5 * (full + eps), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("model, scheduler_name", [("tiny", name) for name in protocol.SCHEDULERS]
                         + [("tiny_sdxl", name) for name in SDXL_SCHEDULERS])
def test_synced_sampling_makes_final_latents_agree(request, passes, model, scheduler_name):
    components = request.getfixturevalue(model)
    base = dict(prompt="stone", steps=4, seed=3, noise="iid", attention="self", scheduler=scheduler_name,
                sync_end=0.0)
    plain = sampler.sample(components, Request(sync_strength=0.0, **base), passes)
    synced = sampler.sample(components, Request(sync_strength=1.0, **base), passes)
    assert latent_disagreement(synced.latents, passes) < 0.3 * latent_disagreement(plain.latents, passes)


def test_missing_uv_is_named(passes):
    from zs_core.protocol import Passes

    with pytest.raises(ValueError, match="^uv:"):
        sync.UVSync(Passes(depth=passes.depth, mask=passes.mask), Request(sync_strength=1.0))
