"""Background sharpness of an animation (``metrics.sharpness_kept``, metrics.json's
``background_sharpness``): a sequence that blurs or smears as it goes scores lower than
one that stays as sharp as its first frame."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from zs_core import animation, metrics, scene


def textured_frames(frames: int = 8, size: int = 48, seed: int = 0) -> np.ndarray:
    """``(F, H, W, 3)`` frames of one random texture, moved a pixel to the right a frame."""
    texture = np.random.default_rng(seed).random((size, size + frames, 3)).astype(np.float32)
    return np.stack([texture[:, frames - index:frames - index + size] for index in range(frames)])


def test_a_steady_sequence_keeps_its_sharpness_and_a_blurring_one_loses_it():
    frames = textured_frames()
    assert metrics.sharpness_kept(frames) == pytest.approx(1.0, abs=0.05)
    # Each frame blurred more than the one before, as a chain of resamplings does.
    blurred = np.stack([ndimage.gaussian_filter(frame, (0.1 * index, 0.1 * index, 0))
                        for index, frame in enumerate(frames)])  # the last two: sigma 0.6, 0.7 pixels
    assert metrics.sharpness_kept(blurred) < 0.5  # 0.26
    # A vertical smear (streaks along the motion) of the later frames only.
    smeared = frames.copy()
    smeared[4:] = ndimage.uniform_filter1d(frames[4:], size=9, axis=1)
    assert metrics.sharpness_kept(smeared) < 0.7 * metrics.sharpness_kept(frames)


def test_only_the_selected_pixels_count():
    frames = textured_frames()
    pixels = np.zeros(frames.shape[:3], bool)
    pixels[:, :, :24] = True  # the left half
    blurred = frames.copy()
    blurred[1:, :, 24:] = ndimage.gaussian_filter(frames[1:, :, 24:], (0, 2, 2, 0))  # the right half only
    assert metrics.sharpness_kept(blurred, pixels) == pytest.approx(metrics.sharpness_kept(frames, pixels), abs=0.02)
    assert metrics.sharpness_kept(blurred, ~pixels) < 0.5
    assert np.isnan(metrics.sharpness(frames[0], np.zeros((48, 48), bool)))


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="^frames:"):
        metrics.sharpness_kept(np.zeros((1, 8, 8, 3)))
    with pytest.raises(ValueError, match="^pixels:"):
        metrics.sharpness_kept(np.zeros((3, 8, 8, 3)), np.ones((3, 8, 4), bool))


def test_temporal_metrics_report_the_background_sharpness():
    """Off the object only: blurring the object's pixels leaves it; blurring the rest lowers it."""
    shot = scene.animated_scene(frames=5, width=64, height=64)
    frames = np.random.default_rng(1).random((5, 64, 64, 3)).astype(np.float32)
    result = animation.AnimationResult(images=frames, latents=torch.zeros(5, 4, 8, 8), initial_noise=torch.zeros(1))
    sharp = animation.temporal_metrics(result, shot, 8)["background_sharpness"]
    assert sharp == pytest.approx(1.0, abs=0.05)
    blurred = np.stack([ndimage.gaussian_filter(frame, (0.5 * index, 0.5 * index, 0))
                        for index, frame in enumerate(frames)])
    on_object = np.where(shot.mask[..., None], blurred, frames)
    result.images = on_object
    assert animation.temporal_metrics(result, shot, 8)["background_sharpness"] == pytest.approx(sharp, abs=0.02)
    result.images = np.where(shot.mask[..., None], frames, blurred)
    assert animation.temporal_metrics(result, shot, 8)["background_sharpness"] < 0.5 * sharp
