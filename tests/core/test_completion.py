"""Generative completion (zs_core/completion.py): completion views sampled with what the main
views textured held fixed, baked in only where the main views did not see the surface well."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from zs_core import bake, completion, geometry, run, scene
from zs_core.protocol import Passes, ProtocolError, Request

SIZE, TEXELS = 64, 128


def polar_scene(size: int = SIZE, texels: int = TEXELS) -> Passes:
    """A unit sphere seen by three ring cameras at the equator (main views: the poles only at
    grazing angles) and two completion views from 45 degrees above and below."""
    ring, projection = scene.ring_cameras(3, 3.2, 0.0, 50.0, size, size)
    eyes = [(0.0, -2.2, 2.2), (0.0, 2.2, -2.2)]
    extra = np.stack([np.linalg.inv(geometry.look_at(eye, (0.0, 0.0, 0.0))) for eye in eyes])
    passes = scene.render_sphere(np.concatenate([ring, extra]), np.concatenate([projection, projection[:2]]),
                                 size, size, texture_size=texels)
    passes.completion = np.array([False, False, False, True, True])
    return passes


def without_completion_views(passes: Passes) -> Passes:
    main = passes.select(passes.main_views)
    main.completion = None
    return main


def test_texel_areas_sum_to_the_sphere_area():
    passes = scene.sphere_scene(views=1, width=16, height=16, texture_size=256)
    area = completion.texel_areas(passes.texel_position, passes.texel_mask)
    assert area.sum() == pytest.approx(4 * np.pi, rel=0.01)
    # Equirectangular texels shrink towards the poles: the area says so.
    assert area[128].mean() > 20 * area[0].mean()


def test_blend_keeps_well_seen_texels_and_fills_the_rest_from_completion_views():
    passes = polar_scene()
    weights = bake.gather_weights(passes)
    flags = passes.completion
    images = np.zeros((passes.views, SIZE, SIZE, 3), np.float32)
    images[~flags, ..., 0] = 1.0  # main views red, completion views blue
    images[flags, ..., 2] = 1.0
    texture = bake.bake(images, passes, weights=completion.completed_weights(weights, flags), fill=False).texture
    confidence = completion.main_confidence(completion._views(weights, ~flags))
    fill_seen = (weights.weights[flags] > 0).any(axis=0)
    main_seen = (weights.weights[~flags] > 0).any(axis=0)
    well_seen = confidence >= 1.0
    assert well_seen.mean() > 0.2
    red, blue = np.eye(3, dtype=np.float32)[[0, 2]]
    np.testing.assert_allclose(texture[well_seen], np.broadcast_to(red, texture[well_seen].shape), atol=1e-5)
    only_fill = fill_seen & ~main_seen
    assert only_fill.sum() > 100
    np.testing.assert_allclose(texture[only_fill], np.broadcast_to(blue, texture[only_fill].shape), atol=1e-5)
    seen = fill_seen | main_seen
    np.testing.assert_allclose(texture[seen].sum(axis=-1), 1.0, atol=1e-4)  # a convex blend everywhere
    # Towards the poles the main views see worse and the completion views take over: the red
    # share falls monotonically (in the mean) with latitude.
    rows = texture[..., 0].mean(axis=1)
    north = rows[: TEXELS // 2]  # texel row 0 is v = 1, the north pole
    peak = int(np.argmax(north))
    assert north[4] < 0.01 and north[peak] > 0.85 and peak > TEXELS // 4
    assert np.all(np.diff(north[4:peak]) > -0.05)


def test_texel_sources_and_surface_coverage():
    passes = polar_scene()
    weights = bake.gather_weights(passes)
    shares = completion.texel_sources(weights, passes.completion)
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-4)
    assert shares["texels_from_completion"] > 0.3
    main_only = without_completion_views(passes)
    alone = completion.texel_sources(bake.gather_weights(main_only), np.zeros(3, bool))
    assert alone["texels_from_completion"] == 0.0
    assert shares["texels_from_nearest_fill"] < alone["texels_from_nearest_fill"]
    # Three equator views, usable within 70 degrees of facing: about the band |z| < 0.8 or so
    # of the sphere's area, far from all of it and from none.
    coverage = completion.surface_coverage(weights, passes.texel_position, passes.completion)
    assert 0.4 < coverage < 0.9


@pytest.mark.parametrize("scheduler", ["euler_a", "ddim"])
def test_completion_views_hold_the_known_latents(tiny, scheduler):
    passes = polar_scene()
    request = Request(prompt="stone", steps=4, seed=3, noise="surface", attention="extended", scheduler=scheduler)
    reports = []
    result = completion.sample(tiny, request, passes, progress=lambda step: reports.append((step.step, step.total)))
    assert reports == [(step, 8) for step in range(1, 9)]  # one bar over both stages

    flags = passes.completion
    main, fill = (passes.select(np.flatnonzero(chosen)) for chosen in (~flags, flags))
    main_weights = completion._views(result.weights, ~flags)
    texture = bake.bake(result.images[~flags], main, weights=main_weights).texture
    known, mask, _ = completion.known_inputs(tiny, texture, completion.main_confidence(main_weights), fill)
    latents = result.latents[torch.from_numpy(np.flatnonzero(flags))]
    held = mask.expand_as(latents) > 0.999
    assert 0.05 < held.float().mean() < 0.6
    kept = (latents - known)[held].abs().mean()
    generated = (latents - known)[~held].abs().mean()
    # DDIM's last step keeps a little noise (final alpha < 1); Euler ancestral ends on x0.
    assert kept < 0.02 * generated
    # The main views are those a job without completion views gives.
    alone = completion.sample(tiny, request, without_completion_views(passes))
    np.testing.assert_allclose(result.images[~flags], alone.images, atol=1e-5)


def test_run_job_reports_where_texels_come_from(tiny, tmp_path):
    passes = polar_scene()
    request = Request(prompt="stone", steps=2, seed=1, noise="surface", texture_size=TEXELS)
    metrics = run.run_job(tiny, request, passes, tmp_path / "with")
    plain = run.run_job(tiny, request, without_completion_views(passes), tmp_path / "without")
    assert metrics["completion_views"] == 2 and plain["completion_views"] == 0
    assert metrics["texels_from_completion"] > 0.3 and plain["texels_from_completion"] == 0.0
    assert metrics["texels_from_nearest_fill"] < plain["texels_from_nearest_fill"]
    assert metrics["surface_coverage"] == plain["surface_coverage"]  # the same main cameras
    assert json.loads((tmp_path / "with" / "metrics.json").read_text())["completion_views"] == 2
    assert len(list((tmp_path / "with" / "views").glob("*.png"))) == 5
    from PIL import Image

    with_sheet = Image.open(tmp_path / "with" / "contact_sheet.png")
    without_sheet = Image.open(tmp_path / "without" / "contact_sheet.png")
    assert with_sheet.height > without_sheet.height  # the completion views' row


def test_bad_completion_requests_are_named(tiny):
    passes = polar_scene()
    with pytest.raises(ProtocolError, match="layout"):
        completion.check_inputs(tiny, Request(prompt="x", steps=1, layout="grid"), passes)
    with pytest.raises(ProtocolError, match="reference_view"):
        completion.check_inputs(tiny, Request(prompt="x", steps=1, attention="neighbors", reference_view=3), passes)
    completion.check_inputs(tiny, Request(prompt="x", steps=1, attention="neighbors", reference_view=2), passes)


@pytest.fixture(scope="module")
def tiny_inpaint(tiny):
    """The tiny model with its built-in tiny inpainting ControlNet."""
    from zs_core import models

    with_inpaint = copy.copy(tiny)
    with_inpaint.inpaint_controlnet = models.inpaint_controlnet_for("tiny", None, tiny.unet, "tiny")
    return with_inpaint


def test_extra_controlnet_equals_diffusers_multi_controlnet(tiny_inpaint):
    """A second ControlNet's residuals add to the depth ControlNet's exactly as in diffusers'
    MultiControlNetModel (the stock pipeline given both)."""
    from diffusers import DDIMScheduler, StableDiffusionControlNetPipeline
    from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

    from zs_core import noise, sampler

    passes = scene.sphere_scene(views=2, width=SIZE, height=SIZE, texture_size=32)
    request = Request(prompt="a red stone", negative_prompt="blurry", steps=3, seed=5, noise="iid", attention="self",
                      sync_strength=0.0, guidance_scale=5.0, controlnet_scale=0.8)
    latents = noise.iid(2, (4, SIZE // 8, SIZE // 8), seed=11)
    inpaint = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    inpaint[:, :, : SIZE // 2] = -1.0  # the top half to paint
    conditioning = sampler.condition(tiny_inpaint, request, passes)
    conditioning.extra_control.append((tiny_inpaint.inpaint_controlnet, inpaint, 0.5))
    predictor = sampler.WholeBatch(tiny_inpaint, request, conditioning)
    ours = sampler.denoise(tiny_inpaint, request, passes, predictor, sampler.initial_noise, latents=latents)

    pipeline = StableDiffusionControlNetPipeline(
        vae=tiny_inpaint.vae, text_encoder=tiny_inpaint.text_encoder, tokenizer=tiny_inpaint.tokenizer,
        unet=tiny_inpaint.unet, controlnet=MultiControlNetModel([tiny_inpaint.controlnet,
                                                                 tiny_inpaint.inpaint_controlnet]),
        scheduler=DDIMScheduler.from_config(tiny_inpaint.scheduler.config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipeline.set_progress_bar_config(disable=True)
    stock = pipeline(prompt=[request.prompt] * 2, negative_prompt=[request.negative_prompt] * 2,
                     image=[sampler.control_images(passes.depth), inpaint], height=SIZE, width=SIZE,
                     num_inference_steps=3, guidance_scale=5.0, controlnet_conditioning_scale=[0.8, 0.4],
                     latents=latents.clone(), output_type="np").images
    np.testing.assert_allclose(ours.images, stock, atol=2e-5, rtol=0)
    alone = sampler.sample(tiny_inpaint, request, passes, latents=latents)
    assert np.abs(alone.images - ours.images).max() > 1e-3  # the second ControlNet changed the result


def test_completion_views_use_the_inpainting_controlnet(tiny, tiny_inpaint):
    passes = polar_scene()
    request = Request(prompt="stone", steps=2, seed=3, noise="surface", attention="extended")
    plain = completion.sample(tiny, request, passes)
    painted = completion.sample(tiny_inpaint, request, passes)
    flags = passes.completion
    np.testing.assert_allclose(painted.images[~flags], plain.images[~flags], atol=1e-6)  # main views: no inpainting
    assert np.abs(painted.images[flags] - plain.images[flags]).max() > 1e-3
    # Its control image: the known colours where the main views saw well, -1 where it paints.
    main = passes.select(np.flatnonzero(~flags))
    main_weights = completion._views(painted.weights, ~flags)
    texture = bake.bake(painted.images[~flags], main, weights=main_weights).texture
    _, mask, inpaint = completion.known_inputs(tiny, texture, completion.main_confidence(main_weights),
                                               passes.select(np.flatnonzero(flags)))
    painting = (inpaint == -1.0).all(dim=1)
    assert 0.2 < painting.float().mean() < 0.95
    assert (inpaint[~painting.unsqueeze(1).expand_as(inpaint)] >= 0).all()


def test_inpaint_controlnet_resolution(tiny, tiny_dir):
    from zs_core import families, models

    assert models.inpaint_controlnet_for("tiny", families.SD15, tiny.unet, None) is None
    assert models.inpaint_controlnet_for("tiny", families.SD15, tiny.unet, "auto") is None  # built-ins have none
    built = models.inpaint_controlnet_for("tiny", families.SD15, tiny.unet, "tiny")
    again = models.inpaint_controlnet_for("tiny", families.SD15, tiny.unet, "tiny")
    assert all(torch.equal(a, b) for a, b in zip(built.parameters(), again.parameters()))  # seeded
    # A model on disk whose family's inpainting ControlNet is not there: none, no download.
    assert models.inpaint_controlnet_for(str(tiny_dir), families.SD15, tiny.unet, "auto") is None
    with pytest.raises(models.ModelLoadError, match="control_v11p_sd15_inpaint"):
        models.inpaint_controlnet_for(str(tiny_dir), families.SD15, tiny.unet, "lllyasviel/control_v11p_sd15_inpaint")
    assert models.inpaint_controlnet_for(str(tiny_dir), families.SDXL, tiny.unet, "auto") is None  # SDXL has none


def test_inpaint_controlnet_loads_from_a_diffusers_folder(tiny, tiny_dir, tmp_path):
    from zs_core import families, models

    saved = models.inpaint_controlnet_for("tiny", families.SD15, tiny.unet, "tiny")
    saved.save_pretrained(tmp_path / "inpaint")
    loaded = models.inpaint_controlnet_for(str(tiny_dir), families.SD15, tiny.unet, str(tmp_path / "inpaint"))
    assert all(torch.equal(a, b) for a, b in zip(saved.parameters(), loaded.parameters()))
    components = models.load(str(tiny_dir), "tiny", device="cpu", inpaint_controlnet=str(tmp_path / "inpaint"))
    assert components.inpaint_controlnet is not None and "inpaint_controlnet" in components.modules()
