"""Background surfaces synced through their own UVs (``background_uv``), against the vector
chain, on a synthetic dolly over a textured floor where the truth is known."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

# The synthetic dolly lives in bench/background_uv.py, which prints the numbers docs/methods.md quotes.
from bench.background_uv import FACTOR, FRAMES, SIZE, dolly_passes, error, floor_truth
from zs_core import animation, sync
from zs_core.protocol import Request


def test_floor_through_uv_keeps_the_truth_where_the_vector_chain_smears_it():
    passes = dolly_passes()
    truth = floor_truth(passes)
    x0 = torch.from_numpy(truth + 0.5 * truth.std() * np.random.default_rng(1).standard_normal(truth.shape)).float()
    floor = ~passes.mask.reshape(FRAMES, SIZE // FACTOR, FACTOR, SIZE // FACTOR, FACTOR).any(axis=(2, 4))
    request = Request(kind="animation")
    surfaces = passes.background_id > 0

    through_uv = sync.UVSync(passes, request, FACTOR, mask=surfaces, layers=passes.background_id, strength=0.9,
                             texels_per_latent=animation.BACKGROUND_TEXELS_PER_LATENT)
    uv_error = error(0.9 * through_uv.fuse(x0, 1.0) + 0.1 * x0, truth, floor)
    chain_error = error(sync.VectorSync(passes, request, FACTOR).fuse(x0), truth, floor)
    input_error = error(x0, truth, floor)
    # Fusing frames that see the same floor point removes part of each frame's own noise;
    # the chain resamples the magnified floor frame after frame and blurs it instead.
    assert uv_error < 0.9 * input_error
    assert chain_error > input_error
    one_size = sync.UVSync(passes, request, FACTOR, mask=surfaces, layers=passes.background_id, strength=0.9)
    assert uv_error < error(0.9 * one_size.fuse(x0, 1.0) + 0.1 * x0, truth, floor)  # the footprint sizes help


def test_surfaces_keep_their_own_uv_spaces():
    passes = dolly_passes()
    passes.background_id[:, :, SIZE // 2:] = 2  # the right half is another object, with the same UVs mirrored
    passes.uv[:, :, SIZE // 2:] = passes.uv[:, :, SIZE // 2 - 1::-1][:, :, :SIZE // 2]
    passes.background_id[passes.mask] = 0
    request = Request(kind="animation")
    x0 = torch.ones(FRAMES, 4, SIZE // FACTOR, SIZE // FACTOR)
    x0[..., SIZE // FACTOR // 2:] = -1.0
    fused = sync.UVSync(passes, request, FACTOR, mask=passes.background_id > 0, layers=passes.background_id,
                        strength=1.0, texels_per_latent=4.0).fuse(x0, 1.0)
    left, right = fused[..., 1:3, :3], fused[..., 1:3, 5:]
    assert torch.allclose(left, torch.ones_like(left)) and torch.allclose(right, -torch.ones_like(right))


def test_texture_sizes_follow_the_footprint():
    passes = dolly_passes()
    sizes = sync._sizes_of_detail(passes.uv, passes.background_id, FACTOR, 4.0)
    assert sizes.dtype == np.int64 and set(np.unique(sizes)) <= {8, 16, 32, 64, 128, 256, 512, 1024, 2048}
    # Closer frames see the floor larger: finer texels for the same latent grain.
    assert np.median(sizes[-1]) > np.median(sizes[0])


def test_background_uv_is_the_default_and_a_no_op_without_background_ids(tiny):
    passes = dolly_passes()
    request = Request(kind="animation", steps=2, chunk=4)
    assert request.background_uv and request.background_sync > 0 and request.pixel_sync > 0
    result = animation.sample_frames(tiny, request, passes)
    assert result.images.shape == (FRAMES, SIZE, SIZE, 3) and np.isfinite(result.images).all()
    passes.background_id = None  # e.g. an EXR upload: the background goes along the vector pass alone
    start = animation.initial_noise(request, passes)
    without_ids = animation.sample_frames(tiny, request, passes, latents=start)
    switched_off = animation.sample_frames(tiny, dataclasses.replace(request, background_uv=False), passes,
                                           latents=start)
    torch.testing.assert_close(without_ids.latents, switched_off.latents)
    np.testing.assert_array_equal(without_ids.images, switched_off.images)


def with_target_normals(passes):
    """The passes as a Blender capture has them: normal and position on the target's
    pixels only (zero on the floor), a camera at the origin looking down -z."""
    frames = passes.views
    passes.normal = np.zeros((frames, SIZE, SIZE, 3), np.float32)
    passes.normal[passes.mask] = (0.0, 0.0, 1.0)
    passes.position = np.zeros((frames, SIZE, SIZE, 3), np.float32)
    passes.position[passes.mask] = (0.0, 0.0, -5.0)
    passes.world_to_camera = np.repeat(np.eye(4, dtype=np.float32)[None], frames, axis=0)
    return passes


def test_surfaces_without_normals_count_as_facing_the_camera():
    passes = with_target_normals(dolly_passes())
    cosine = sync.facing_cosines(passes)
    assert np.allclose(cosine[passes.mask], 1.0) and np.all(cosine[~passes.mask] == 1.0)
    passes.normal[passes.mask] = (0.0, 1.0, 0.0)  # a target seen edge-on: cos 0, as before
    assert np.allclose(sync.facing_cosines(passes)[passes.mask], 0.0)


def test_a_floor_without_normals_keeps_its_x0_at_a_high_exponent():
    """Latents that agree on the floor fuse back to themselves at every weight exponent; a
    zero normal read as cos 0 made the weights underflow from p = 3 on and pulled the
    floor's x0 to 0 (the grey floor of the demo shot)."""
    passes = with_target_normals(dolly_passes())
    x0 = torch.tensor([1.5, -0.5, 0.25, 2.0]).reshape(1, 4, 1, 1).expand(FRAMES, 4, SIZE // FACTOR,
                                                                        SIZE // FACTOR).contiguous()
    floor = torch.from_numpy(~passes.mask.reshape(FRAMES, SIZE // FACTOR, FACTOR, SIZE // FACTOR,
                                                  FACTOR).any(axis=(2, 4)))
    hook = sync.UVSync(passes, Request(kind="animation"), FACTOR, mask=passes.background_id > 0,
                       layers=passes.background_id, strength=1.0,
                       texels_per_latent=animation.BACKGROUND_TEXELS_PER_LATENT)
    for exponent in (1.0, 6.0):
        fused = hook.fuse(x0, exponent).permute(0, 2, 3, 1)[floor]
        torch.testing.assert_close(fused, x0.permute(0, 2, 3, 1)[floor])


def test_scattered_surface_pixels_still_sync():
    """Pixels with no neighbour on their surface have no footprint: they take the median size."""
    passes = dolly_passes()
    scattered = np.zeros_like(passes.background_id)
    scattered[:, 20::9, 20::9] = 1  # isolated pixels
    passes.background_id = scattered
    hook = sync.UVSync(passes, Request(kind="animation"), FACTOR, mask=scattered > 0,
                       layers=scattered, strength=0.9, texels_per_latent=4.0)
    assert hook.texels > 0 and bool(hook.covered.any())
