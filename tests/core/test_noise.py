"""Initial noise models: every value N(0, 1), item correlations as documented, and surface
noise that follows the surface between views while staying white inside each view."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from zs_core import noise

R = 256  # UV noise texture side used by the synthetic surface views
FACTOR = 8


# ----------------------------------------------------------------------------- helpers


def assert_standard_normal(values, p_min: float = 1e-3) -> None:
    """Mean 0, variance 1 (5 standard errors) and a D'Agostino-Pearson normality test."""
    x = np.asarray(values, dtype=np.float64).ravel()
    n = x.size
    assert abs(x.mean()) < 5 / math.sqrt(n), f"mean {x.mean():.4f} over {n} values"
    assert abs(x.var() - 1) < 5 * math.sqrt(2 / n), f"variance {x.var():.4f} over {n} values"
    assert stats.normaltest(x).pvalue > p_min


def correlation(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    return float(np.corrcoef(a, b)[0, 1])


def affine_uv(size: int, origin_texel=(20.0, 30.0), texels_per_pixel: float = 1.0) -> np.ndarray:
    """UV ``(size, size, 2) float32`` of a flat patch: u along columns, v along rows.

    Pixel (r, c) sees texel (origin + (c + 0.5) * texels_per_pixel) of an R x R texture,
    so with 1 texel per pixel and an integer origin every pixel sits inside its own texel.
    """
    centres = (np.arange(size) + 0.5) * texels_per_pixel
    u = (origin_texel[0] + centres[None, :]) / R
    v = (origin_texel[1] + centres[:, None]) / R
    return np.stack(np.broadcast_arrays(u, v), axis=-1).astype(np.float32)


def full_mask(size: int) -> np.ndarray:
    return np.ones((size, size), dtype=bool)


def disc_mask(size: int, radius_fraction: float = 0.35) -> np.ndarray:
    rows, cols = np.mgrid[:size, :size] + 0.5
    return (rows - size / 2) ** 2 + (cols - size / 2) ** 2 < (radius_fraction * size) ** 2


def surface_latents(views, seeds, **params) -> np.ndarray:
    """``views``: list of (uv, mask) -> latents ``(S, V, C, h, w)`` for every seed."""
    uv = np.stack([view[0] for view in views])
    mask = np.stack([view[1] for view in views])
    params.setdefault("resolution", R)
    return np.stack([noise.surface(uv, mask, seed, **params).numpy() for seed in seeds])


def neighbour_correlations(latents: np.ndarray) -> tuple[float, float]:
    """Correlation of horizontally and vertically adjacent latent pixels ``(..., h, w)``."""
    across = correlation(latents[..., :, :-1], latents[..., :, 1:])
    down = correlation(latents[..., :-1, :], latents[..., 1:, :])
    return across, down


# ----------------------------------------------------------------------------- item models

ITEM_MODELS = {
    "iid": lambda count, shape, seed: noise.iid(count, shape, seed),
    "fixed": lambda count, shape, seed: noise.fixed(count, shape, seed),
    "mixed": lambda count, shape, seed: noise.mixed(count, shape, 1.0, seed),
    "progressive": lambda count, shape, seed: noise.progressive(count, shape, 2.0, seed),
    "dependency": lambda count, shape, seed: noise.dependency(count, shape, 0.3, seed),
}


@pytest.mark.parametrize("name", ITEM_MODELS)
def test_item_models_give_standard_normal_items(name):
    latents = ITEM_MODELS[name](4, (4, 64, 64), 7)
    assert latents.shape == (4, 4, 64, 64) and latents.dtype == torch.float32
    for item in latents:
        assert_standard_normal(item)


@pytest.mark.parametrize("name", ITEM_MODELS)
def test_every_value_is_standard_normal_across_seeds(name):
    seeds = 300
    samples = np.stack([ITEM_MODELS[name](3, (4, 8, 8), seed).numpy() for seed in range(seeds)])
    mean, variance = samples.mean(axis=0), samples.var(axis=0)  # per item and pixel
    assert np.abs(mean).max() < 5 / math.sqrt(seeds)
    assert np.abs(variance - 1).max() < 5 * math.sqrt(2 / seeds)
    assert abs(variance.mean() - 1) < 0.03
    assert stats.normaltest(samples[:, -1].ravel()).pvalue > 1e-3


def test_iid_items_are_independent_and_fixed_items_identical():
    independent = noise.iid(3, (4, 32, 32), 5)
    assert abs(correlation(independent[0], independent[1])) < 0.05
    repeated = noise.fixed(3, (4, 32, 32), 5)
    assert torch.equal(repeated[0], repeated[2])
    assert torch.equal(noise.iid(3, (4, 32, 32), 5), independent)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 3.0])
def test_mixed_items_share_alpha_squared_over_one_plus_alpha_squared(alpha):
    latents = noise.mixed(3, (4, 64, 64), alpha, seed=3)
    expected = alpha**2 / (1 + alpha**2)
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        assert correlation(latents[i], latents[j]) == pytest.approx(expected, abs=0.03)


def test_mixed_with_alpha_zero_is_iid():
    latents = noise.mixed(2, (4, 64, 64), 0.0, seed=3)
    assert abs(correlation(latents[0], latents[1])) < 0.03


@pytest.mark.parametrize("alpha", [0.7, 1.5])
def test_progressive_correlation_decays_as_a_power_of_the_lag(alpha):
    latents = noise.progressive(4, (4, 64, 64), alpha, seed=4)
    rho = alpha / math.sqrt(1 + alpha**2)
    for lag in (1, 2, 3):
        assert correlation(latents[0], latents[lag]) == pytest.approx(rho**lag, abs=0.03)


@pytest.mark.parametrize("lam", [0.05, 0.3, 0.8])
def test_dependency_consecutive_frames_correlate_one_minus_lambda(lam):
    frames, a_values = noise.dependency(5, (4, 64, 64), lam, seed=6, return_a=True)
    assert len(a_values) == 4
    assert all(0.0 <= a <= 1.0 for a in a_values)
    for i in range(1, 5):
        # The line search hits the divergence itself; the correlation follows from it.
        assert noise.divergence(frames[i - 1], frames[i]) == pytest.approx(lam, abs=1e-4)
        assert correlation(frames[i - 1], frames[i]) == pytest.approx(1 - lam, abs=0.03)


def test_dependency_lambda_zero_is_a_still_sequence_and_large_lambda_fresh_noise():
    frames, a_values = noise.dependency(4, (4, 16, 16), 0.0, seed=1, return_a=True)
    assert a_values == [1.0, 1.0, 1.0]
    assert all(torch.equal(frames[0], frame) for frame in frames)
    frames, a_values = noise.dependency(3, (4, 64, 64), 1.5, seed=1, return_a=True)
    assert a_values == [0.0, 0.0]
    assert abs(correlation(frames[0], frames[1])) < 0.05


def test_dependency_returns_only_the_tensor_by_default():
    frames = noise.dependency(3, (4, 8, 8), 0.2, seed=2)
    assert isinstance(frames, torch.Tensor) and frames.shape == (3, 4, 8, 8)
    assert torch.equal(frames, noise.dependency(3, (4, 8, 8), 0.2, seed=2))


# ----------------------------------------------------------------------------- surface noise


def test_texel_gaussians_are_white_standard_normal():
    texels = np.arange(200_000)
    values = noise.texel_gaussians(texels, 4, seed=3).numpy()
    assert values.shape == (4, 200_000) and values.dtype == np.float32
    assert_standard_normal(values)
    assert stats.kstest(values[1], "norm").pvalue > 1e-3
    for c in range(4):
        assert abs(correlation(values[c, :-1], values[c, 1:])) < 0.01  # neighbouring texels
        for d in range(c):
            assert abs(correlation(values[c], values[d])) < 0.01  # channels
    other_seed = noise.texel_gaussians(texels, 4, seed=4).numpy()
    assert abs(correlation(values, other_seed)) < 0.01
    np.testing.assert_array_equal(values, noise.texel_gaussians(torch.from_numpy(texels), 4, seed=3).numpy())


SIZE = 128
MIXED_VIEWS = [
    (affine_uv(SIZE), full_mask(SIZE)),  # 1 texel per pixel
    (affine_uv(SIZE, (23.4, 31.7)), full_mask(SIZE)),  # the same patch, shifted
    (affine_uv(SIZE, (20.0, 30.0), 1.3), full_mask(SIZE)),  # another scale
    (affine_uv(SIZE, (40.3, 50.6), 1 / 6), full_mask(SIZE)),  # zoomed in: a texel covers 6 x 6 pixels
    (affine_uv(SIZE, (10.0, 60.0), 0.8), disc_mask(SIZE)),  # object on a background
]


def test_surface_latents_are_standard_normal_in_every_kind_of_view():
    latents = surface_latents(MIXED_VIEWS, seeds=range(4))
    assert latents.shape == (4, 5, 4, SIZE // FACTOR, SIZE // FACTOR)
    for view in range(len(MIXED_VIEWS)):
        assert_standard_normal(latents[:, view])


def test_every_surface_latent_pixel_is_standard_normal_across_seeds():
    size, seeds = 32, 300
    views = [(affine_uv(size), full_mask(size)),
             (affine_uv(size, (40.3, 50.6), 1 / 5), full_mask(size)),
             (affine_uv(size, (10.0, 60.0), 0.7), disc_mask(size))]
    samples = surface_latents(views, seeds=range(seeds))  # (S, V, C, 4, 4)
    mean, variance = samples.mean(axis=0), samples.var(axis=0)
    assert np.abs(mean).max() < 5 / math.sqrt(seeds)
    assert np.abs(variance - 1).max() < 5 * math.sqrt(2 / seeds)
    assert abs(variance.mean() - 1) < 0.03
    for view in range(len(views)):
        assert stats.normaltest(samples[:, view].ravel()).pvalue > 1e-3


@pytest.mark.parametrize("texels_per_pixel", [1.0, 1 / 3, 1 / 6, 1 / 20])
def test_surface_latent_neighbours_are_independent_even_zoomed_in(texels_per_pixel):
    # Zoomed in, one texel spreads over several latent pixels; the split keeps them apart.
    view = (affine_uv(192, (17.3, 21.8), texels_per_pixel), full_mask(192))
    latents = surface_latents([view], seeds=range(8))
    assert_standard_normal(latents)
    across, down = neighbour_correlations(latents)
    assert abs(across) < 0.05 and abs(down) < 0.05


def test_identical_views_get_identical_latents_where_pixels_own_their_texels():
    view = (affine_uv(SIZE), full_mask(SIZE))
    latents = surface_latents([view, view], seeds=[9])[0]
    assert correlation(latents[0], latents[1]) > 0.999


def test_identical_zoomed_views_stay_strongly_correlated():
    view = (affine_uv(SIZE, (40.3, 50.6), 1 / 6), full_mask(SIZE))
    latents = surface_latents([view, view], seeds=range(3))
    assert correlation(latents[:, 0], latents[:, 1]) > 0.5


def test_shifted_view_correlates_with_the_latent_pixels_it_overlaps():
    shift = 3  # pixels: each latent pixel of view 1 overlaps 5/8 of a latent pixel of view 0
    views = [(affine_uv(SIZE), full_mask(SIZE)), (affine_uv(SIZE, (20.0 + shift, 30.0 + shift)), full_mask(SIZE))]
    latents = surface_latents(views, seeds=range(3))
    first, second = latents[:, 0], latents[:, 1]
    # Latent pixel (i, j) of view 1 sees 5/8 x 5/8 of pixel (i, j) of view 0, 3/8 x 3/8 of (i+1, j+1).
    assert correlation(first, second) == pytest.approx((5 / 8) ** 2, abs=0.06)
    assert correlation(first[..., 1:, 1:], second[..., :-1, :-1]) == pytest.approx((3 / 8) ** 2, abs=0.06)
    assert abs(correlation(first[..., :-1, :-1], second[..., 1:, 1:])) < 0.06  # no overlap
    whole_block = [(affine_uv(SIZE), full_mask(SIZE)), (affine_uv(SIZE, (28.0, 30.0)), full_mask(SIZE))]
    latents = surface_latents(whole_block, seeds=[1])[0]
    assert correlation(latents[0][..., 1:], latents[1][..., :-1]) > 0.999


def test_view_at_another_scale_correlates_where_it_sees_the_same_surface():
    scale = 1.1
    views = [(affine_uv(SIZE), full_mask(SIZE)), (affine_uv(SIZE, (20.0, 30.0), scale), full_mask(SIZE))]
    latents = surface_latents(views, seeds=range(3))
    # Latent pixel (i, j) of view 1 is centred on texel offset 8 * scale * (i + 0.5, j + 0.5),
    # which view 0 sees in its latent pixel floor(that / 8).
    h = SIZE // FACTOR
    index = np.floor(scale * (np.arange(h) + 0.5)).astype(int)
    inside = index < h
    first = latents[:, 0][..., index[inside], :][..., index[inside]]
    second = latents[:, 1][..., inside, :][..., inside]
    assert correlation(first, second) > 0.5


def test_background_is_independent_of_the_surface_and_between_views():
    half = full_mask(SIZE).copy()
    half[:, SIZE // 2:] = False
    views = [(affine_uv(SIZE), full_mask(SIZE)), (affine_uv(SIZE), half), (affine_uv(SIZE), half)]
    latents = surface_latents(views, seeds=range(6))
    cut = SIZE // FACTOR // 2
    assert correlation(latents[:, 0, ..., :cut], latents[:, 1, ..., :cut]) > 0.999
    assert abs(correlation(latents[:, 0, ..., cut:], latents[:, 1, ..., cut:])) < 0.06
    assert abs(correlation(latents[:, 1, ..., cut:], latents[:, 2, ..., cut:])) < 0.06
    assert_standard_normal(latents[:, 1, ..., cut:])


def test_all_background_views_are_iid_noise():
    uv = np.zeros((2, 64, 64, 2), dtype=np.float32)
    latents = noise.surface(uv, np.zeros((2, 64, 64), dtype=bool), seed=3, channels=4)
    assert latents.shape == (2, 4, 8, 8)
    assert abs(correlation(latents[0], latents[1])) < 0.15
    assert_standard_normal(latents)


def test_surface_is_deterministic_and_follows_the_seed():
    uv = np.stack([view[0] for view in MIXED_VIEWS])
    mask = np.stack([view[1] for view in MIXED_VIEWS])
    first = noise.surface(uv, mask, seed=11)
    assert torch.equal(first, noise.surface(torch.from_numpy(uv), torch.from_numpy(mask), seed=11))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(first, noise.surface(uv, mask, seed=11))
    finally:
        torch.set_num_threads(threads)
    assert abs(correlation(first, noise.surface(uv, mask, seed=12))) < 0.05


def test_surface_groups_pixels_the_same_with_or_without_the_texel_table(monkeypatch):
    uv = np.stack([view[0] for view in MIXED_VIEWS])
    mask = np.stack([view[1] for view in MIXED_VIEWS])
    with_table = noise.surface(uv, mask, seed=4, resolution=R)
    monkeypatch.setattr(noise, "TABLE_LIMIT", 0)  # large textures group by sorting instead
    assert torch.equal(with_table, noise.surface(uv, mask, seed=4, resolution=R))


def test_surface_with_odd_channels_and_another_factor():
    uv, mask = affine_uv(64)[None], full_mask(64)[None]
    latents = noise.surface(uv, mask, seed=2, channels=3, factor=4, resolution=R)
    assert latents.shape == (1, 3, 16, 16) and latents.dtype == torch.float32
    assert_standard_normal(latents)


def test_automatic_resolution_gives_about_the_requested_texels_per_pixel():
    uv, mask = affine_uv(SIZE)[None], full_mask(SIZE)[None]  # steps of 1/R per pixel
    assert abs(noise.surface_resolution(uv, mask) - R) <= 2
    assert abs(noise.surface_resolution(uv, mask, texels_per_pixel=2.0) - 2 * R) <= 4
    # A UV seam (a jump across the texture) inside the view does not move the median.
    seam = uv.copy()
    seam[..., SIZE // 2:, 0] += 0.3
    assert abs(noise.surface_resolution(seam, mask) - R) <= 2
    tiny = np.full((1, 64, 64, 2), 0.5, dtype=np.float32)  # every pixel on one point
    assert noise.surface_resolution(tiny, np.ones((1, 64, 64), dtype=bool)) == noise.MAX_RESOLUTION


def test_surface_with_automatic_resolution_links_views_of_the_same_patch():
    views = [(affine_uv(SIZE), full_mask(SIZE)), (affine_uv(SIZE), full_mask(SIZE))]
    latents = surface_latents(views, seeds=[5], resolution=None)[0]
    assert correlation(latents[0], latents[1]) > 0.9
    assert_standard_normal(latents)


GOOD_UV = affine_uv(64)[None]
GOOD_MASK = full_mask(64)[None]


def _with(array, index, value):
    changed = array.copy()
    changed[index] = value
    return changed


@pytest.mark.parametrize("arguments, field", [
    (dict(uv=GOOD_UV[..., 0]), "uv"),
    (dict(uv=GOOD_UV[:, :32]), "uv"),
    (dict(uv=_with(GOOD_UV, (0, 5, 5, 0), np.nan)), "uv"),
    (dict(uv=_with(GOOD_UV, (0, 5, 5, 1), 1.5)), "uv"),
    (dict(uv=_with(GOOD_UV, (0, 5, 5, 1), -0.1)), "uv"),
    (dict(mask=GOOD_MASK.astype(np.float32)), "mask"),
    (dict(mask=GOOD_MASK[0]), "mask"),
    (dict(factor=7), "mask"),
    (dict(factor=0), "factor"),
    (dict(channels=0), "channels"),
    (dict(seed=1.5), "seed"),
    (dict(texels_per_pixel=0.0, resolution=None), "texels_per_pixel"),
    (dict(resolution=0), "resolution"),
])
def test_surface_bad_input_names_the_field(arguments, field):
    call = dict(uv=GOOD_UV, mask=GOOD_MASK, seed=1, resolution=R)
    call.update(arguments)
    with pytest.raises(ValueError, match=f"^{field}:"):
        noise.surface(**call)


def test_surface_ignores_uv_outside_the_mask():
    uv = _with(GOOD_UV, (0, 5, 5, 0), np.nan)
    mask = _with(GOOD_MASK, (0, 5, 5), False)
    assert noise.surface(uv, mask, seed=1, resolution=R).isfinite().all()


@pytest.mark.parametrize("call, field", [
    (lambda: noise.iid(0, (4, 8, 8), 1), "count"),
    (lambda: noise.iid(2, (4, 8), 1), "shape"),
    (lambda: noise.fixed(2, (4, 8, 0), 1), "shape"),
    (lambda: noise.iid(2, (4, 8, 8.5), 1), "shape"),
    (lambda: noise.mixed(2, (4, 8, 8), -1.0, 1), "alpha"),
    (lambda: noise.progressive(2, (4, 8, 8), math.inf, 1), "alpha"),
    (lambda: noise.dependency(2, (4, 8, 8), -0.1, 1), "lam"),
    (lambda: noise.dependency(2, (4, 8, 8), math.nan, 1), "lam"),
    (lambda: noise.dependency(2, (4, 8, 8), 0.1, 1, candidates=0), "candidates"),
    (lambda: noise.iid(2, (4, 8, 8), "1"), "seed"),
])
def test_item_model_bad_input_names_the_field(call, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        call()


# ----------------------------------------------------------------------------- dispatch


def test_make_dispatches_to_every_model():
    shape = (4, 8, 8)
    assert torch.equal(noise.make("iid", 3, shape, 1), noise.iid(3, shape, 1))
    assert torch.equal(noise.make("fixed", 3, shape, 1), noise.fixed(3, shape, 1))
    assert torch.equal(noise.make("mixed", 3, shape, 1, alpha=0.5), noise.mixed(3, shape, 0.5, 1))
    assert torch.equal(noise.make("progressive", 3, shape, 1, alpha=2.0), noise.progressive(3, shape, 2.0, 1))
    assert torch.equal(noise.make("dependency", 3, shape, 1, lam=0.2), noise.dependency(3, shape, 0.2, 1))
    uv, mask = np.stack([GOOD_UV[0]] * 2), np.stack([GOOD_MASK[0]] * 2)
    assert torch.equal(noise.make("surface", 2, shape, 1, uv=uv, mask=mask),
                       noise.surface(uv, mask, 1, channels=4, factor=8))


def test_make_rejects_unknown_modes_and_mismatched_surface_shapes():
    with pytest.raises(ValueError, match="^mode:.*iid, fixed, mixed, progressive, dependency, surface"):
        noise.make("perlin", 2, (4, 8, 8), 1)
    with pytest.raises(ValueError, match="^uv:"):
        noise.make("surface", 1, (4, 8, 8), 1, mask=GOOD_MASK)
    with pytest.raises(ValueError, match="^count:"):
        noise.make("surface", 2, (4, 8, 8), 1, uv=GOOD_UV, mask=GOOD_MASK)
    with pytest.raises(ValueError, match="^shape:"):
        noise.make("surface", 1, (4, 16, 8), 1, uv=GOOD_UV, mask=GOOD_MASK, factor=8)
