"""Every mode name the wire format offers (zs_core/protocol.py) has an implementation in the
sampling core, and the core implements no name the wire does not offer."""

from __future__ import annotations

import pytest

from zs_core import attention, noise, protocol, sampler, scene


def test_every_noise_mode_has_a_generator():
    assert set(noise.GENERATORS) == set(protocol.NOISE_MODES)
    assert noise.MODES == protocol.NOISE_MODES


def test_every_attention_mode_has_an_implementation():
    # "self" is diffusers' stock processor; every other mode is a cross-view one.
    assert {"self", *attention.CROSS_VIEW_ATTENTION} == set(protocol.ATTENTION_MODES)
    assert set(attention.CHUNKED_MODES) <= set(protocol.ATTENTION_MODES)
    assert attention.MODES == protocol.ATTENTION_MODES


def test_every_keyframe_policy_has_sources():
    assert set(attention.KEYFRAME_SOURCES) == set(protocol.KEYFRAME_POLICIES)
    assert attention.POLICIES == protocol.KEYFRAME_POLICIES


def test_every_scheduler_has_a_factory():
    assert set(sampler.SCHEDULERS) == set(protocol.SCHEDULERS)


@pytest.mark.parametrize("background", [mode for mode in protocol.BACKGROUND_NOISE_MODES if mode != "auto"])
def test_every_background_noise_mode_draws_noise(background):
    """"auto" picks one of the others (zs_core.animation.background_mode); each of those is a
    background model of noise.animated."""
    shot = scene.animated_scene(frames=2, width=64, height=64)
    latents = noise.animated(shot.uv, shot.mask, 0, background=background, vector=shot.vector)
    assert tuple(latents.shape) == (2, 4, 8, 8)
