"""Multi-scale UV sync: views at different scales (a close-up, a far view, an orthographic
view among five) agree after the pyramid fusion of zs_core/uv_pyramid.py, better than
with one texture size for all, with no loss on a scene whose views share one scale; and
the pyramid equals a plain per-texel mean when every sample has one size."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from zs_core import geometry, metrics, noise, run, sampler, scene, sync
from zs_core.protocol import Request
from zs_core.uv_pyramid import UVPyramid

SIZE, FACTOR = 128, 8


def camera(distance: float, azimuth_deg: float, ortho_scale: float | None = None):
    azimuth, elevation = math.radians(azimuth_deg), math.radians(15.0)
    eye = distance * np.array([math.cos(elevation) * math.sin(azimuth), -math.cos(elevation) * math.cos(azimuth),
                               math.sin(elevation)])
    world_to_camera = np.linalg.inv(geometry.look_at(eye, (0.0, 0.0, 0.0)))
    projection = (geometry.orthographic(ortho_scale, SIZE, SIZE) if ortho_scale
                  else geometry.perspective(50.0, scene.SENSOR_MM, SIZE, SIZE))
    return world_to_camera, projection


def render(cameras):
    return scene.render_sphere(np.stack([c[0] for c in cameras]), np.stack([c[1] for c in cameras]), SIZE, SIZE,
                               texture_size=16)


@pytest.fixture(scope="module")
def mixed():
    """Two views at 3.2, a close-up (1.9: the sphere overfills it), a far view (7.0) and an
    orthographic view: latent footprints 0.038, 0.014, 0.098 and 0.057 (median, UV)."""
    return render([camera(3.2, -30), camera(3.2, 30), camera(1.9, 0), camera(7.0, 60),
                   camera(4.0, -75, ortho_scale=2.6)])


@pytest.fixture(scope="module")
def same_scale():
    return render([camera(3.2, azimuth) for azimuth in (-60, -30, 0, 30, 60)])


def latent_disagreement(latents: torch.Tensor, passes) -> float:
    """run.consistency_metrics' latent measure: texels of about one latent pixel."""
    uv, mask = metrics.downsample_correspondence(passes.uv, passes.mask, FACTOR)
    texels = geometry.footprint_texture_size(passes.uv, passes.mask, float(FACTOR))
    return metrics.cross_view_disagreement(latents.permute(0, 2, 3, 1).numpy(), uv, mask, texels=texels)


def one_size(passes) -> sync.UVSync:
    """The sync before the pyramid: one texture of about a latent pixel per texel."""
    size = geometry.footprint_texture_size(passes.uv, passes.mask, FACTOR, 8, 2048)
    return sync.UVSync(passes, Request(sync_strength=1.0), FACTOR, texture_size=size)


def fused_ratio(hook: sync.UVSync, passes, seeds=range(3)) -> float:
    ratios = []
    for seed in seeds:
        x0 = noise.iid(passes.views, (4, SIZE // FACTOR, SIZE // FACTOR), seed=seed)
        ratios.append(latent_disagreement(hook.fuse(x0, 1.0), passes) / latent_disagreement(x0, passes))
    return float(np.mean(ratios))


def test_the_pyramid_with_one_size_is_the_per_texel_mean():
    generator = np.random.default_rng(0)
    uv = generator.random((500, 2))
    values = torch.from_numpy(generator.normal(size=(500, 3))).float()
    weight = torch.from_numpy(generator.random(500) + 0.1).float()
    fused = UVPyramid(uv, np.full(500, 8)).fuse(values, weight)
    texel = np.clip((uv * 8).astype(int), 0, 7) @ np.array([1, 8])
    for cell in np.unique(texel):
        inside = torch.from_numpy(texel == cell)
        expected = (values[inside] * weight[inside, None]).sum(0) / weight[inside].sum()
        torch.testing.assert_close(fused[inside], expected.expand(int(inside.sum()), 3))


def test_the_pyramid_keeps_constants_and_fine_detail_relative_to_the_agreed_mean():
    # One coarse sample (size 2) and four fine ones (size 4) inside its texel; the coarse
    # one covers a single fine texel, so it damps only that texel's detail.
    uv = np.array([[0.1, 0.1], [0.1, 0.1], [0.3, 0.1], [0.1, 0.3], [0.3, 0.3]])
    pyramid = UVPyramid(uv, np.array([2, 4, 4, 4, 4]))
    weight = torch.ones(5)
    torch.testing.assert_close(pyramid.fuse(torch.full((5, 2), 0.4), weight), torch.full((5, 2), 0.4))
    values = torch.tensor([[0.0], [1.0], [2.0], [3.0], [6.0]])
    fused = pyramid.fuse(values, weight)
    agreed = values.mean()  # the coarse texel: everyone's mean, 2.4
    fine_mean = values[1:].mean()  # 3.0
    assert fused[0].item() == pytest.approx(agreed.item())
    assert fused[1].item() == pytest.approx(agreed.item() + 0.5 * (1.0 - fine_mean.item()))  # half resolved
    for index in (2, 3, 4):
        assert fused[index].item() == pytest.approx(agreed.item() + values[index].item() - fine_mean.item())


def test_fusion_across_scales_beats_one_texture_size(mixed, same_scale):
    pyramid_mixed, single_mixed = fused_ratio(sync.UVSync(mixed, Request(sync_strength=1.0)), mixed), \
        fused_ratio(one_size(mixed), mixed)
    pyramid_same, single_same = fused_ratio(sync.UVSync(same_scale, Request(sync_strength=1.0)), same_scale), \
        fused_ratio(one_size(same_scale), same_scale)
    assert pyramid_mixed < 0.7 * single_mixed
    assert pyramid_same <= single_same


def sampled(tiny, passes, steps: int, hook: str):
    """Final latents and RGB views of the tiny model with surface noise: ``hook`` "none"
    (the unsynced baseline), "one size" (the sync before the pyramid) or "pyramid"."""
    request = Request(prompt="stone", steps=steps, seed=3, sync_strength=1.0 if hook == "pyramid" else 0.0)
    hooks = [one_size(passes)] if hook == "one size" else []
    predictor = sampler.WholeBatch(tiny, request, sampler.condition(tiny, request, passes))
    own = [sync.UVSync(passes, request, FACTOR)] if hook == "pyramid" else []
    return sampler.denoise(tiny, request, passes, predictor, sampler.initial_noise, hooks=own + hooks)


def test_close_far_and_orthographic_views_agree_after_sampling(tiny, mixed):
    # Measured: 0.058x (one size: 0.126x) at 8 steps; RGB 0.68x of the baseline.
    base, single, pyramid = (run.consistency_metrics(sampled(tiny, mixed, 8, hook), mixed, FACTOR)
                             for hook in ("none", "one size", "pyramid"))
    ratio = pyramid["latent_cross_view_disagreement"] / base["latent_cross_view_disagreement"]
    before = single["latent_cross_view_disagreement"] / base["latent_cross_view_disagreement"]
    assert ratio <= 0.07 and ratio < 0.7 * before
    assert pyramid["cross_view_disagreement"] < base["cross_view_disagreement"]
    assert pyramid["cross_view_disagreement"] <= single["cross_view_disagreement"]


def test_no_loss_on_views_of_one_scale_after_sampling(tiny, same_scale):
    single, pyramid = (run.consistency_metrics(sampled(tiny, same_scale, 4, hook), same_scale, FACTOR)
                       for hook in ("one size", "pyramid"))
    assert pyramid["latent_cross_view_disagreement"] <= single["latent_cross_view_disagreement"]
    assert pyramid["cross_view_disagreement"] <= 1.02 * single["cross_view_disagreement"]
