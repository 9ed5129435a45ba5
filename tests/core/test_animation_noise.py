"""Noise for frame sequences: surface noise on the object through each frame's UV, the
background warped along the vector pass (or an item model), every value N(0, 1),
neighbours independent, consecutive frames correlated where the motion is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from zs_core import noise, scene

FRAMES, SIZE, FACTOR, SEEDS = 8, 64, 8, 160


def assert_standard_normal(values) -> None:
    x = np.asarray(values, dtype=np.float64).ravel()
    n = x.size
    assert abs(x.mean()) < 5 / math.sqrt(n), f"mean {x.mean():.4f} over {n} values"
    assert abs(x.var() - 1) < 5 * math.sqrt(2 / n), f"variance {x.var():.4f} over {n} values"
    assert stats.normaltest(x).pvalue > 1e-3


def assert_per_position_standard(samples: np.ndarray) -> None:
    """``samples (S, ...)``: at every position the mean is 0 and the variance 1 (z-scores of
    all positions below 5, and their spread that of standard normals)."""
    count = samples.shape[0]
    mean_z = samples.mean(0).ravel() * math.sqrt(count)
    var_z = (samples.var(0).ravel() - 1) / math.sqrt(2 / count)
    assert np.abs(mean_z).max() < 5 and 0.8 < mean_z.std() < 1.2, (np.abs(mean_z).max(), mean_z.std())
    # The variance of a sample variance has a kurtosis term; normal data gives 2 / n.
    assert np.abs(var_z).max() < 5.5 and 0.75 < var_z.std() < 1.25, (np.abs(var_z).max(), var_z.std())


def pooled_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of paired samples (S, N), each column standardised first (pooled over N)."""
    a = (a - a.mean(0)) / a.std(0)
    b = (b - b.mean(0)) / b.std(0)
    return float((a * b).mean())


def moving_field(size: int) -> np.ndarray:
    """A vector field (H, W, 2) that turns by 6 degrees about the centre, translates, and
    ripples along x, so the image contracts in some places and expands in others."""
    rows, cols = np.mgrid[0:size, 0:size] + 0.5
    x, y = cols - size / 2, rows - size / 2
    angle = math.radians(6.0)
    new_x = math.cos(angle) * x - math.sin(angle) * y + 2.3 + 1.5 * np.sin(2 * math.pi * x / 16)
    new_y = math.sin(angle) * x + math.cos(angle) * y - 1.7
    return np.stack([new_x - x, new_y - y], axis=-1).astype(np.float32)


@pytest.fixture(scope="module")
def shot():
    return scene.animated_scene(frames=FRAMES, width=SIZE, height=SIZE)


@pytest.fixture(scope="module")
def samples(shot) -> np.ndarray:
    """``(SEEDS, F, 4, 8, 8)`` surface + warped-background noise of the animated shot."""
    return np.stack([noise.animated(shot.uv, shot.mask, seed, vector=shot.vector).numpy() for seed in range(SEEDS)])


def block_kinds(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(F, h, w) bool: latent pixels wholly on the object, wholly background."""
    frames, height, width = mask.shape
    blocks = mask.reshape(frames, height // FACTOR, FACTOR, width // FACTOR, FACTOR)
    return blocks.all(axis=(2, 4)), (~blocks).all(axis=(2, 4))


def along_motion(shot, frame: int):
    """Pairs of latent pixels (p in frame, q in frame + 1) where q holds p's moved centre,
    both wholly object or both wholly background -> (p index, q index, is_object)."""
    on_object, on_background = block_kinds(shot.mask)
    rows, cols = FACTOR // 2, FACTOR // 2
    latent = SIZE // FACTOR
    pairs = []
    for r in range(latent):
        for c in range(latent):
            py, px = r * FACTOR + rows, c * FACTOR + cols
            dx, dy = shot.vector[frame, py, px]
            tr, tc = int((py + 0.5 + dy) // FACTOR), int((px + 0.5 + dx) // FACTOR)
            if not (0 <= tr < latent and 0 <= tc < latent):
                continue
            for kind, is_object in ((on_object, True), (on_background, False)):
                if kind[frame, r, c] and kind[frame + 1, tr, tc]:
                    pairs.append((r * latent + c, tr * latent + tc, is_object))
    return pairs


# ------------------------------------------------------------------------- warp_field


def test_warp_field_carries_each_pixel_to_where_it_moves():
    """Deterministic: a pixel reached by n sources holds their sum / sqrt(n), one reached by
    none is fresh, and pixels outside ``sources`` do not move."""
    size = 48
    vector = moving_field(size)
    field = torch.randn((2, size, size), generator=torch.Generator().manual_seed(0)).numpy()
    sources = np.ones((size, size), bool)
    sources[:, :10] = False
    out = noise.warp_field(field, vector, torch.Generator().manual_seed(1), sources)
    rows, cols = np.mgrid[0:size, 0:size]
    target_rows = np.floor(rows + 0.5 + vector[..., 1]).astype(int)
    target_cols = np.floor(cols + 0.5 + vector[..., 0]).astype(int)
    moving = sources & (target_rows >= 0) & (target_rows < size) & (target_cols >= 0) & (target_cols < size)
    expected_sum = np.zeros((2, size, size))
    count = np.zeros((size, size))
    np.add.at(expected_sum, (slice(None), target_rows[moving], target_cols[moving]), field[:, moving])
    np.add.at(count, (target_rows[moving], target_cols[moving]), 1)
    reached = count > 0
    assert 0.5 < reached.mean() < 0.95 and (count >= 2).any(), "the field both expands and contracts"
    np.testing.assert_allclose(out[:, reached], expected_sum[:, reached] / np.sqrt(count[reached]), atol=1e-5)
    # Unreached pixels are not a copy of anything nearby.
    assert abs(np.corrcoef(out[:, ~reached].ravel(), field[:, ~reached].ravel())[0, 1]) < 0.1


def test_warp_field_keeps_white_noise_white():
    size, seeds = 32, 400
    vector = moving_field(size)
    outs, ins = [], []
    for seed in range(seeds):
        field = torch.randn((1, size, size), generator=torch.Generator().manual_seed(seed)).numpy()
        outs.append(noise.warp_field(field, vector, torch.Generator().manual_seed(10_000 + seed))[0])
        ins.append(field[0])
    outs = np.stack(outs)
    assert_per_position_standard(outs)
    assert_standard_normal(outs)
    assert abs(pooled_correlation(outs[:, :, :-1].reshape(seeds, -1), outs[:, :, 1:].reshape(seeds, -1))) \
        < 4 / math.sqrt(outs[:, :, 1:].size)
    assert abs(pooled_correlation(outs[:, :-1].reshape(seeds, -1), outs[:, 1:].reshape(seeds, -1))) \
        < 4 / math.sqrt(outs[:, 1:].size)


# ---------------------------------------------------------------------------- warped


def test_warped_noise_moving_by_whole_latent_pixels_is_an_exact_shift():
    vector = np.zeros((3, SIZE, SIZE, 2), np.float32)
    vector[..., 0], vector[..., 1] = 8.0, -16.0  # one latent pixel right, two up per frame
    latents = noise.warped(vector, seed=3).numpy()
    assert latents.shape == (3, 4, 8, 8)
    np.testing.assert_allclose(latents[1][:, :-2, 1:], latents[0][:, 2:, :-1], atol=1e-5)
    np.testing.assert_allclose(latents[2][:, :-2, 1:], latents[1][:, 2:, :-1], atol=1e-5)
    # The strips that came into view are fresh.
    assert abs(np.corrcoef(latents[1][:, :, 0].ravel(), latents[0][:, :, 0].ravel())[0, 1]) < 0.5
    assert_standard_normal(noise.warped(np.broadcast_to(moving_field(SIZE), (6, SIZE, SIZE, 2)), seed=0).numpy())


# -------------------------------------------------------------------- animated (shot)


def test_animation_noise_is_standard_normal_everywhere(samples):
    """Every latent pixel of every frame is N(0, 1): object, background and mixed blocks."""
    assert_per_position_standard(samples)
    assert_standard_normal(samples)


def test_animation_noise_neighbours_are_independent(samples):
    flat = samples.reshape(SEEDS, -1, 8, 8)
    for a, b in ((flat[..., :, :-1], flat[..., :, 1:]), (flat[..., :-1, :], flat[..., 1:, :])):
        a, b = a.reshape(SEEDS, -1), b.reshape(SEEDS, -1)
        assert abs(pooled_correlation(a, b)) < 4 / math.sqrt(a.size)
    # Channels too.
    assert abs(pooled_correlation(samples[:, :, 0].reshape(SEEDS, -1), samples[:, :, 1].reshape(SEEDS, -1))) < 0.03


def test_consecutive_frames_correlate_along_the_motion(shot, samples):
    """Latent pixels keep much of their value where the vector pass says they move (object
    through the shared UV texture, background through the warp); pixel-level motion that is
    not a whole latent pixel mixes blocks, so correlations are partial. Where the motion
    leaves a latent pixel, the noise goes with it rather than staying on screen (the fixed
    noise of frame-by-frame add-ons would stay)."""
    per_kind = {True: [], False: []}
    moved, stayed = [], []
    for frame in range(FRAMES - 1):
        here = samples[:, frame].reshape(SEEDS, 4, -1)
        there = samples[:, frame + 1].reshape(SEEDS, 4, -1)
        for p, q, is_object in along_motion(shot, frame):
            follow = np.corrcoef(here[:, :, p].ravel(), there[:, :, q].ravel())[0, 1]
            per_kind[is_object].append(follow)
            if p != q:
                moved.append(follow)
                stayed.append(np.corrcoef(here[:, :, p].ravel(), there[:, :, p].ravel())[0, 1])
    assert len(per_kind[True]) > 40 and len(per_kind[False]) > 100 and len(moved) > 30
    assert np.mean(per_kind[True]) > 0.45, np.mean(per_kind[True])
    assert np.mean(per_kind[False]) > 0.6, np.mean(per_kind[False])
    assert np.mean(moved) > np.mean(stayed) + 0.15, (np.mean(moved), np.mean(stayed))


def test_object_blocks_carry_the_texture_noise(shot):
    """Latent pixels wholly on the object are exactly the texturing surface noise of those
    frames: the same material point gets the same noise as in any texturing view."""
    on_object, _ = block_kinds(shot.mask)
    animated = noise.animated(shot.uv, shot.mask, 5, vector=shot.vector).numpy()
    texture = noise.surface(shot.uv, shot.mask, 5).numpy()
    np.testing.assert_array_equal(animated.transpose(0, 2, 3, 1)[on_object], texture.transpose(0, 2, 3, 1)[on_object])
    _, on_background = block_kinds(shot.mask)
    assert not np.allclose(animated.transpose(0, 2, 3, 1)[on_background],
                           texture.transpose(0, 2, 3, 1)[on_background])


@pytest.mark.parametrize("background, expected", [("fixed", 1.0), ("iid", 0.0), ("mixed", 0.5),
                                                  ("dependency", 0.9)])
def test_item_model_backgrounds(shot, background, expected):
    """Wholly background latent pixels follow the item model: fixed repeats, iid is fresh,
    mixed (alpha 1) correlates 0.5, dependency (lambda 0.1) about 1 - lambda."""
    _, on_background = block_kinds(shot.mask)
    still = on_background[:-1] & on_background[1:]  # background in both frames, same place
    values = np.stack([noise.animated(shot.uv, shot.mask, seed, background=background, alpha=1.0, lam=0.1)
                       .numpy().transpose(0, 2, 3, 1) for seed in range(40)])
    a = values[:, :-1][:, still].ravel()
    b = values[:, 1:][:, still].ravel()
    assert abs(np.corrcoef(a, b)[0, 1] - expected) < 0.06
    assert_standard_normal(values[:, 0])  # one frame: frames of one seed are not independent


def test_surface_takes_a_latent_background(shot):
    """surface(background=G): wholly background latent pixels are G, the rest stays N(0, 1)."""
    _, on_background = block_kinds(shot.mask)
    given = noise.iid(FRAMES, (4, 8, 8), seed=99)
    out = noise.surface(shot.uv, shot.mask, 1, background=given)
    np.testing.assert_allclose(out.numpy().transpose(0, 2, 3, 1)[on_background],
                               given.numpy().transpose(0, 2, 3, 1)[on_background], atol=1e-6)
    with pytest.raises(ValueError, match="background: expected latent noise of shape"):
        noise.surface(shot.uv, shot.mask, 1, background=given[:, :2])


def test_bad_input_names_the_argument(shot):
    with pytest.raises(ValueError, match="vector: warped noise needs the vector pass"):
        noise.animated(shot.uv, shot.mask, 0, background="warped")
    with pytest.raises(ValueError, match=r"vector: expected shape \(8, 64, 64, 2\)"):
        noise.animated(shot.uv, shot.mask, 0, vector=shot.vector[:, :32])
    with pytest.raises(ValueError, match="background: expected one of"):
        noise.animated(shot.uv, shot.mask, 0, background="surface")
    with pytest.raises(ValueError, match="vector: H, W must be multiples"):
        noise.warped(np.zeros((2, 20, 20, 2), np.float32), seed=0)
    # The last frame's vector is optional (nothing follows it).
    assert noise.animated(shot.uv, shot.mask, 0, vector=shot.vector[:-1]).shape == (FRAMES, 4, 8, 8)
