"""Generative completion (zs_core/completion.py): completion views sampled with what the main
views textured held fixed, baked in only where the main views did not see the surface well."""

from __future__ import annotations

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
    known, mask = completion.known_inputs(tiny, texture, completion.main_confidence(main_weights), fill)
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
