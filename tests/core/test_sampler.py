"""The multi-view sampler on the tiny model: equal to diffusers' pipeline on the stock path,
deterministic, cancellable, with progress previews, layouts and step hooks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionControlNetPipeline

from zs_core import noise, sampler
from zs_core.protocol import Passes, ProtocolError, Request

VIEWS, SIZE = 3, 64


def ring_passes(views=VIEWS, size=SIZE) -> Passes:
    """Depth of a disc that grows and shifts from view to view, with a UV ramp on it."""
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    depth, mask, uv = [], [], []
    for view in range(views):
        centre = size / 2 + 4 * view
        radius2 = (rows - size / 2) ** 2 + (cols - centre) ** 2
        inside = radius2 < (size * 0.35) ** 2
        mask.append(inside)
        depth.append(np.where(inside, 2.0 + radius2 / size**2, 1e10).astype(np.float32))
        uv.append(np.stack([(cols - 4 * view) / size, rows / size], -1).clip(0, 1).astype(np.float32))
    return Passes(depth=np.stack(depth), mask=np.stack(mask), uv=np.stack(uv))


def request(**fields) -> Request:
    base = dict(prompt="a red stone", negative_prompt="blurry", steps=3, seed=5, noise="iid", attention="self",
                sync_strength=0.0)
    base.update(fields)
    return Request(**base).validate()


@pytest.fixture(scope="module")
def passes():
    return ring_passes()


def test_equals_diffusers_controlnet_pipeline(tiny, passes):
    req = request(steps=4, guidance_scale=6.0, controlnet_scale=0.8, control_start=0.0, control_end=0.75)
    latents = noise.iid(VIEWS, (4, SIZE // 8, SIZE // 8), seed=11)
    ours = sampler.sample(tiny, req, passes, latents=latents)

    pipeline = StableDiffusionControlNetPipeline(
        vae=tiny.vae, text_encoder=tiny.text_encoder, tokenizer=tiny.tokenizer, unet=tiny.unet,
        controlnet=tiny.controlnet, scheduler=DDIMScheduler.from_config(tiny.scheduler.config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    stock = pipeline(
        prompt=[req.prompt] * VIEWS, negative_prompt=[req.negative_prompt] * VIEWS,
        image=sampler.control_images(passes.depth), height=SIZE, width=SIZE, num_inference_steps=4,
        guidance_scale=6.0, controlnet_conditioning_scale=0.8, control_guidance_start=0.0,
        control_guidance_end=0.75, latents=latents.clone(), output_type="np",
    ).images
    assert ours.images.shape == stock.shape == (VIEWS, SIZE, SIZE, 3)
    np.testing.assert_allclose(ours.images, stock, atol=2e-5, rtol=0)
    assert ours.images.std() > 1e-3  # not a constant image


def test_seeded_determinism_and_seed_sensitivity(tiny, passes):
    first = sampler.sample(tiny, request(noise="surface"), passes)
    again = sampler.sample(tiny, request(noise="surface"), passes)
    other = sampler.sample(tiny, request(noise="surface", seed=6), passes)
    np.testing.assert_array_equal(first.images, again.images)
    assert np.abs(first.images - other.images).mean() > 1e-3


def test_dpm_solver_runs_and_differs_from_ddim(tiny, passes):
    ddim = sampler.sample(tiny, request(scheduler="ddim", steps=4), passes)
    dpm = sampler.sample(tiny, request(scheduler="dpmpp", steps=4), passes)
    assert np.isfinite(dpm.images).all()
    assert np.abs(ddim.latents - dpm.latents).mean() > 1e-4


def test_progress_reports_every_step_with_a_preview(tiny, passes):
    seen = []
    sampler.sample(tiny, request(steps=3), passes, progress=seen.append)
    assert [p.step for p in seen] == [1, 2, 3] and all(p.total == 3 for p in seen)
    preview = seen[-1].preview
    assert preview.dtype == np.uint8 and preview.shape == (SIZE // 8, VIEWS * SIZE // 8, 3)
    assert preview.std() > 0


def test_cancel_stops_within_one_step(tiny, passes):
    seen = []
    with pytest.raises(sampler.Cancelled):
        sampler.sample(tiny, request(steps=5), passes, progress=seen.append, cancel=lambda: len(seen) >= 2)
    assert len(seen) == 2


def test_cancel_reaches_inside_a_step(tiny, passes):
    """A cancel during the first model call stops it at the next UNet / ControlNet block,
    before any step completes (one step of a large view on the CPU takes minutes)."""
    seen, calls = [], []

    def cancel():
        calls.append(1)
        return len(calls) > 3  # the first poll is before the step; the next ones are blocks

    with pytest.raises(sampler.Cancelled, match="before step 1 of 5, inside the model"):
        sampler.sample(tiny, request(steps=5), passes, progress=seen.append, cancel=cancel)
    assert seen == [] and len(calls) == 4


def test_guidance_window_outside_means_no_control(tiny, passes):
    latents = noise.iid(VIEWS, (4, 8, 8), seed=1)
    off_window = sampler.sample(tiny, request(control_start=1.0, control_end=1.0), passes, latents=latents)
    zero_scale = sampler.sample(tiny, request(controlnet_scale=0.0), passes, latents=latents)
    full = sampler.sample(tiny, request(), passes, latents=latents)
    np.testing.assert_allclose(off_window.images, zero_scale.images, atol=1e-6)
    assert np.abs(full.latents - zero_scale.latents).mean() > 1e-4


def test_step_hooks_see_view_space_and_can_replace_the_prediction(tiny, passes):
    latents = noise.iid(VIEWS, (4, 8, 8), seed=2)
    shapes = []

    def observe(state):
        shapes.append((state.index, tuple(state.latents.shape), tuple(state.noise_pred.shape)))
        return None

    plain = sampler.sample(tiny, request(), passes, latents=latents)
    observed = sampler.sample(tiny, request(), passes, latents=latents, hooks=[observe])
    zeroed = sampler.sample(tiny, request(), passes, latents=latents,
                            hooks=[lambda state: torch.zeros_like(state.noise_pred)])
    np.testing.assert_array_equal(plain.images, observed.images)
    assert shapes == [(i, (VIEWS, 4, 8, 8), (VIEWS, 4, 8, 8)) for i in range(3)]
    assert np.abs(plain.latents - zeroed.latents).mean() > 1e-3


def test_grid_layout_round_trips_and_samples(tiny, passes):
    layout = sampler.GridLayout(VIEWS)
    x = torch.randn(2 * VIEWS, 4, 8, 8)
    tiled = layout.to_model(x)
    assert tiled.shape == (2, 4, 16, 16)  # 3 views -> 2x2 cells, one empty
    torch.testing.assert_close(layout.to_views(tiled), x)
    result = sampler.sample(tiny, request(layout="grid"), passes)
    assert result.images.shape == (VIEWS, SIZE, SIZE, 3) and np.isfinite(result.images).all()


@pytest.mark.parametrize("attention", ["extended", "neighbors", "keyframes", "tma"])
def test_cross_view_attention_modes_sample_and_change_the_result(tiny, passes, attention):
    latents = noise.iid(VIEWS, (4, 8, 8), seed=3)
    stock = sampler.sample(tiny, request(), passes, latents=latents)
    crossed = sampler.sample(tiny, request(attention=attention), passes, latents=latents)
    assert np.isfinite(crossed.images).all()
    assert np.abs(stock.latents - crossed.latents).mean() > 1e-5


def test_control_images_share_one_near_far():
    depth = np.full((2, 8, 8), 1e10, np.float32)
    depth[0, 2:4, 2:4] = 1.0  # near surface seen by view 0
    depth[1, 2:4, 2:4] = 3.0  # far surface seen by view 1
    control = sampler.control_images(depth).numpy()
    assert control.shape == (2, 3, 8, 8)
    assert control[0, 0, 2, 2] == pytest.approx(1.0) and control[1, 0, 2, 2] == pytest.approx(0.1)
    assert control[0, 0, 0, 0] == 0.0


@pytest.mark.parametrize("mutate, field_name", [
    (lambda r, p: (r, Passes(depth=p.depth[:, :60], mask=p.mask[:, :60], uv=p.uv[:, :60])), "depth"),
    (lambda r, p: (request(noise="surface"), Passes(depth=p.depth, mask=p.mask)), "uv"),
    (lambda r, p: (request(layout="grid", attention="extended"), p), "attention"),
    (lambda r, p: (request(attention="neighbors", reference_view=7), p), "reference_view"),
])
def test_bad_input_names_the_field(tiny, passes, mutate, field_name):
    bad_request, bad_passes = mutate(request(), passes)
    with pytest.raises(ProtocolError) as error:
        sampler.sample(tiny, bad_request, bad_passes)
    assert error.value.field == field_name
