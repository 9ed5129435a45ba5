"""Every scheduler of the wire format against diffusers' own ControlNet pipeline with that
scheduler, its x0 / epsilon parameterisation against the scheduler's own x0, and the
fresh noise of the stochastic ones taken from the job's noise model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionControlNetPipeline

from zs_core import metrics, noise, protocol, sampler, scene, step_noise, x0_epsilon
from zs_core.protocol import Request

VIEWS, SIZE, STEPS = 2, 64, 4
STOCHASTIC = ("euler_a", "lcm", "tcd")
TCD_ETA = 0.3  # TCDScheduler.step's own default; diffusers' pipelines pass their eta argument instead


@pytest.fixture(scope="module")
def passes():
    return scene.sphere_scene(views=VIEWS, width=SIZE, height=SIZE)


def request(name: str) -> Request:
    return Request(prompt="a brass lamp", steps=STEPS, seed=5, scheduler=name, noise="iid", attention="self",
                   sync_strength=0.0, guidance_scale=5.0).validate()


@pytest.mark.parametrize("name", protocol.SCHEDULERS)
def test_equals_diffusers_pipeline_with_the_same_scheduler(tiny, passes, name):
    req = request(name)
    latents = noise.iid(VIEWS, (4, SIZE // 8, SIZE // 8), seed=11)
    ours = sampler.sample(tiny, req, passes, latents=latents)

    scheduler = sampler.make_scheduler(tiny, name)
    pipeline = StableDiffusionControlNetPipeline(
        vae=tiny.vae, text_encoder=tiny.text_encoder, tokenizer=tiny.tokenizer, unet=tiny.unet,
        controlnet=tiny.controlnet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipeline.set_progress_bar_config(disable=True)
    draws = []

    def supply():  # what the sampler gives the scheduler: the job's noise model at the step's seed
        draws.append(scheduler.step_index)
        seeded = dataclasses.replace(req, seed=step_noise.step_seed(req.seed, scheduler.step_index))
        return sampler.initial_noise(seeded, passes, 4, 8)

    with step_noise.drawn_from(scheduler, supply):
        stock = pipeline(prompt=[req.prompt] * VIEWS, negative_prompt=[req.negative_prompt] * VIEWS,
                         image=sampler.control_images(passes.depth), height=SIZE, width=SIZE,
                         num_inference_steps=STEPS, guidance_scale=5.0, latents=latents.clone(), output_type="np",
                         eta=TCD_ETA if name == "tcd" else 0.0).images
    assert bool(draws) == (name in STOCHASTIC), draws  # the stochastic ones draw, the others never do
    np.testing.assert_allclose(ours.images, stock, atol=5e-5, rtol=0)
    assert ours.images.std() > 1e-3


def _scheduler_x0(scheduler, name: str, eps, latents, timestep):
    """The scheduler's own x0 for an epsilon prediction, by its public outputs."""
    if name in ("ddim", "euler", "euler_a"):
        return scheduler.step(eps, timestep, latents).pred_original_sample
    if name == "lcm":  # its step returns c_out * x0 + c_skip * x_t
        c_skip, c_out = scheduler.get_scalings_for_boundary_condition_discrete(timestep)
        denoised = scheduler.step(eps, timestep, latents).denoised
        return (denoised - c_skip * latents) / c_out
    if name in ("dpmpp", "dpmpp_2m_karras", "unipc"):  # x0-predicting multistep solvers
        scheduler._init_step_index(timestep)
        return scheduler.convert_model_output(eps, sample=latents)
    return None


@pytest.mark.parametrize("name", protocol.SCHEDULERS)
@pytest.mark.parametrize("step", [0, 2])
def test_x0_and_epsilon_follow_the_schedulers_own_parameterisation(tiny, name, step):
    scheduler = sampler.make_scheduler(tiny, name)
    scheduler.set_timesteps(STEPS)
    timestep = scheduler.timesteps[step]
    scale = float(scheduler.init_noise_sigma)
    latents = noise.iid(2, (4, 8, 8), seed=1) * scale
    eps = noise.iid(2, (4, 8, 8), seed=2)
    ours = x0_epsilon.predicted_x0(scheduler, latents, eps, timestep)
    torch.testing.assert_close(x0_epsilon.epsilon_for(scheduler, latents, ours, timestep), eps, atol=1e-4,
                               rtol=1e-4)
    own = _scheduler_x0(scheduler, name, eps, latents, timestep)
    if own is None:  # TCD: no public x0; its step must still see ours as a fixed point (round trip above)
        assert name == "tcd"
        return
    torch.testing.assert_close(ours, own.to(ours.dtype), atol=1e-4, rtol=1e-4)


def test_drawn_from_hands_the_scheduler_exactly_the_given_noise(tiny):
    scheduler = sampler.make_scheduler(tiny, "euler_a")
    scheduler.set_timesteps(STEPS)
    timestep = scheduler.timesteps[0]
    latents = noise.iid(2, (4, 8, 8), seed=1) * scheduler.init_noise_sigma
    eps = noise.iid(2, (4, 8, 8), seed=2)
    outputs = []
    for fresh in (torch.zeros_like(latents), torch.ones_like(latents)):
        scheduler.set_timesteps(STEPS)
        with step_noise.drawn_from(scheduler, lambda fresh=fresh: fresh):
            outputs.append(scheduler.step(eps, timestep, latents).prev_sample)
    difference = outputs[1] - outputs[0]  # sigma_up times the noise: one constant everywhere
    assert difference.abs().min() > 0 and torch.allclose(difference, difference.flatten()[0].expand_as(difference))
    scheduler.set_timesteps(STEPS)
    with pytest.raises(RuntimeError, match="step noise of shape"):
        with step_noise.drawn_from(scheduler, lambda: torch.zeros(1)):
            scheduler.step(eps, timestep, latents)
    import diffusers.schedulers.scheduling_euler_ancestral_discrete as module
    from diffusers.utils.torch_utils import randn_tensor

    # Outside the context (also after an error) the module draws as diffusers does.
    drawn = module.randn_tensor((2, 3), generator=torch.Generator().manual_seed(7))
    assert torch.equal(drawn, randn_tensor((2, 3), generator=torch.Generator().manual_seed(7)))


def test_step_noise_supplies_are_per_thread(tiny):
    """Workers of a split job step their schedulers in threads at once: each draws its own."""
    import threading

    barrier, seen = threading.Barrier(2), {}

    def step(value: float) -> None:
        scheduler = sampler.make_scheduler(tiny, "euler_a")
        scheduler.set_timesteps(STEPS)
        latents = torch.zeros(1, 4, 8, 8)
        with step_noise.drawn_from(scheduler, lambda: torch.full((1, 4, 8, 8), value)):
            barrier.wait()  # both supplies installed before either draws
            seen[value] = scheduler.step(torch.zeros_like(latents), scheduler.timesteps[0], latents).prev_sample

    threads = [threading.Thread(target=step, args=(value,)) for value in (1.0, -1.0)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen[1.0].min() > 0 and seen[-1.0].max() < 0 and torch.allclose(seen[1.0], -seen[-1.0])


def test_stochastic_steps_draw_surface_noise_that_views_share():
    """With surface noise, each step's fresh noise is the surface noise of another seed:
    views agree on it where they see the same surface, as they do on the starting noise."""
    passes = scene.sphere_scene(views=4, width=128, height=128)
    uv, mask = metrics.downsample_correspondence(passes.uv, passes.mask, 8)

    def disagreement(latents: torch.Tensor) -> float:
        return metrics.cross_view_disagreement(latents.permute(0, 2, 3, 1).numpy(), uv, mask, texels=24)

    surface = dataclasses.replace(request("euler_a"), noise="surface")
    draws = {mode: sampler.initial_noise(dataclasses.replace(surface, noise=mode, seed=step_noise.step_seed(5, 0)),
                                         passes, 4, 8) for mode in ("surface", "iid")}
    start = sampler.initial_noise(surface, passes, 4, 8)
    assert not torch.equal(draws["surface"], start)  # another seed per step
    assert abs(float(draws["surface"].std()) - 1.0) < 0.15  # unit variance, as the scheduler expects
    shared, alone, first = disagreement(draws["surface"]), disagreement(draws["iid"]), disagreement(start)
    # As consistent as the starting noise (same model, another seed), and more than iid
    # noise (by how much is the surface noise model's own property).
    assert abs(shared - first) < 0.1 * first and shared < alone - 0.05
