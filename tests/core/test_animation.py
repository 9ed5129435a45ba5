"""Animation core: chunked cross-frame attention equals the unchunked processors, memory per
query stays flat as the sequence grows, and the frame loop and its outputs on the tiny model
(chunking and temporal sync on the tiny SDXL too)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from zs_core import animation, attention, metrics, run, sampler, scene
from zs_core.protocol import FRAME_PNG, METRICS_JSON, ProtocolError, Request

TIMESTEP = 500
ATOL = 2e-5


def frame_inputs(frames: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents ``(2F, 4, 16, 16)`` [uncond frames, cond frames] and text ``(2F, 77, 32)``."""
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(2 * frames, 4, 16, 16, generator=generator)
    text = torch.randn(2, 77, 32, generator=generator).repeat_interleave(frames, dim=0)
    return latents, text


def unchunked(unet, latents, text, frames: int, mode: str, **params) -> torch.Tensor:
    with torch.inference_mode(), attention.install(unet, mode, views=frames, **params):
        return unet(latents, TIMESTEP, encoder_hidden_states=text).sample


def chunked(unet, latents, text, processor: attention.ChunkedFrameAttention, step: int = 0) -> torch.Tensor:
    """Run the UNet chunk by chunk in plan order; both CFG halves of a chunk in one call."""
    frames = processor.plan.frames
    groups = latents.reshape(2, frames, *latents.shape[1:])
    texts = text.reshape(2, frames, *text.shape[1:])
    out = torch.empty_like(groups)
    with torch.inference_mode(), attention.install_processor(unet, processor):
        for index, (start, stop) in enumerate(processor.plan.chunks):
            processor.begin(step, index)
            batch = groups[:, start:stop].reshape(-1, *latents.shape[1:])
            out[:, start:stop] = unet(batch, TIMESTEP, encoder_hidden_states=texts[:, start:stop].reshape(
                -1, *text.shape[1:])).sample.reshape(2, stop - start, *latents.shape[1:])
    return out.reshape(latents.shape)


# --------------------------------------------------------------------------- chunk plans


def test_chunk_plan_covers_every_frame_once_in_order():
    plan = attention.chunk_plan(10, 4, "tma")
    assert plan.chunks == ((0, 4), (4, 8), (8, 10)) and plan.largest == 4
    assert plan.keep == (frozenset({3}), frozenset({7}), frozenset())


def test_middle_keyframe_chunk_runs_first():
    plan = attention.chunk_plan(10, 3, "keyframes", "middle")
    assert plan.chunks[0] == (3, 6)  # frame 5 = 10 // 2 lives there
    assert sorted(f for start, stop in plan.chunks for f in range(start, stop)) == list(range(10))
    assert 5 in plan.keep[0]


@pytest.mark.parametrize("frames, chunk", [(0, 2), (4, 0), (4, 1.5)])
def test_chunk_plan_rejects_bad_sizes(frames, chunk):
    with pytest.raises(ValueError, match="frames|chunk"):
        attention.chunk_plan(frames, chunk)


# --------------------------------------------------------------------- chunked == unchunked


@pytest.mark.parametrize("policy", ["first", "first_previous", "middle"])
@pytest.mark.parametrize("chunk", [2, 3, 7])
def test_chunked_keyframes_equal_the_unchunked_processor(tiny, policy, chunk):
    frames = 7
    latents, text = frame_inputs(frames)
    expected = unchunked(tiny.unet, latents, text, frames, "keyframes", policy=policy)
    processor = attention.ChunkedFrameAttention("keyframes", attention.chunk_plan(frames, chunk, "keyframes", policy),
                                                policy=policy)
    torch.testing.assert_close(chunked(tiny.unet, latents, text, processor), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("mu", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_chunked_tma_equals_the_unchunked_processor(tiny, mu, chunk):
    frames = 7
    latents, text = frame_inputs(frames, seed=1)
    expected = unchunked(tiny.unet, latents, text, frames, "tma", momentum=mu)
    processor = attention.ChunkedFrameAttention("tma", attention.chunk_plan(frames, chunk, "tma"), momentum=mu)
    torch.testing.assert_close(chunked(tiny.unet, latents, text, processor), expected, atol=ATOL, rtol=0)


def test_chunked_attention_actually_crosses_frames(tiny):
    """The equivalence above must not hold for plain self-attention (else it proves nothing)."""
    frames = 6
    latents, text = frame_inputs(frames, seed=2)
    stock = unchunked(tiny.unet, latents, text, frames, "self")
    processor = attention.ChunkedFrameAttention("tma", attention.chunk_plan(frames, 2, "tma"), momentum=0.7)
    assert (chunked(tiny.unet, latents, text, processor) - stock).abs().max() > 1e-2


@pytest.mark.parametrize("mode, policy", [("keyframes", "first_previous"), ("tma", "first")])
def test_keys_per_query_and_cache_stay_flat_as_frames_grow(tiny, mode, policy):
    peaks = []
    for frames in (4, 12):
        latents, text = frame_inputs(frames, seed=3)
        processor = attention.ChunkedFrameAttention(mode, attention.chunk_plan(frames, 2, mode, policy),
                                                    policy=policy, momentum=0.5)
        chunked(tiny.unet, latents, text, processor)
        peaks.append(processor.stats)
    assert peaks[0] == peaks[1]
    assert peaks[1]["peak_batch_frames"] == 2 and peaks[1]["peak_cached_frames"] <= 2


def test_chunks_out_of_order_name_the_missing_frame(tiny):
    frames = 4
    latents, text = frame_inputs(frames)
    processor = attention.ChunkedFrameAttention("tma", attention.chunk_plan(frames, 2, "tma"))
    with torch.inference_mode(), attention.install_processor(tiny.unet, processor):
        processor.begin(0, 1)  # the second chunk first: frame 1's momentum state is unknown
        with pytest.raises(RuntimeError, match="frame 1"):
            tiny.unet(latents[:4], TIMESTEP, encoder_hidden_states=text[:4])


# ---------------------------------------------------------------------------- the loop


@pytest.fixture(scope="module")
def shot():
    return scene.animated_scene(frames=5, width=64, height=64)


def animation_request(**changes) -> Request:
    settings = dict(kind="animation", prompt="a red fox", steps=3, seed=11, chunk=2, noise="surface",
                    attention="tma", sync_strength=0.0, background_sync=0.0, pixel_sync=0.0)
    settings.update(changes)
    return Request(**settings)


def test_one_chunk_of_self_attention_is_the_plain_sampler(tiny, shot):
    request = animation_request(noise="iid", attention="self", chunk=16)
    start = sampler.initial_noise(request, shot, 4, 8)
    ours = animation.sample_frames(tiny, request, shot, latents=start)
    plain = sampler.sample(tiny, request, shot, latents=start)
    torch.testing.assert_close(ours.latents, plain.latents.float().cpu(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("model", ["tiny", "tiny_sdxl"])
def test_chunk_size_does_not_change_the_result(request, shot, model):
    """Also with SDXL's added conditioning (pooled text, size ids), repeated per chunk."""
    components = request.getfixturevalue(model)
    small = animation.sample_frames(components, animation_request(chunk=2), shot)
    whole = animation.sample_frames(components, animation_request(chunk=5), shot)
    torch.testing.assert_close(small.latents, whole.latents, atol=1e-3, rtol=0)
    assert small.attention_stats["chunks"] == 3 and whole.attention_stats["chunks"] == 1


def test_cancel_stops_between_chunks(tiny, shot):
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(sampler.Cancelled, match="frames"):
        animation.sample_frames(tiny, animation_request(), shot, cancel=cancel)


def test_progress_reports_every_step_with_a_preview(tiny, shot):
    seen = []
    animation.sample_frames(tiny, animation_request(), shot, progress=seen.append)
    assert [p.step for p in seen] == [1, 2, 3] and all(p.total == 3 for p in seen)
    assert seen[-1].preview.ndim == 3 and seen[-1].preview.shape[-1] == 3


def test_run_job_writes_frames_metrics_and_sheet(tiny, shot, tmp_path):
    out = run.run_job(tiny, animation_request(sync_strength=0.8), shot, tmp_path)
    for index in range(shot.views):
        assert (tmp_path / FRAME_PNG.format(index=index)).is_file()
    written = json.loads((tmp_path / METRICS_JSON).read_text())
    assert written == json.loads(json.dumps(out))
    assert 0 <= written["temporal_warp_error"] < 1 and written["latent_temporal_warp_error"] > 0
    assert 0 < written["background_sharpness"] < 2
    assert written["background_noise"] == "warped" and written["frames"] == 5
    assert (tmp_path / "contact_sheet.png").is_file()


def test_mp4_holds_every_frame_at_the_requested_rate(tmp_path):
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    frames = np.random.default_rng(0).random((5, 64, 48, 3)).astype(np.float32)
    path = animation.write_mp4(frames, tmp_path / "shot.mp4", fps=12.0)
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    assert meta["size"] == (48, 64) and meta["fps"] == 12.0
    decoded = [np.frombuffer(chunk, np.uint8).reshape(64, 48, 3) for chunk in reader]
    assert len(decoded) == 5
    assert np.abs(decoded[2] / 255.0 - frames[2]).mean() < 0.25  # lossy, but this frame, not another
    assert np.abs(decoded[2] / 255.0 - frames[3]).mean() > np.abs(decoded[2] / 255.0 - frames[2]).mean()


@pytest.mark.parametrize("model", ["tiny", "tiny_sdxl"])
def test_temporal_sync_lowers_the_latent_warp_error(request, shot, model):
    components = request.getfixturevalue(model)
    plain = animation.sample_frames(components, animation_request(), shot)
    synced = animation.sample_frames(components, animation_request(sync_strength=0.9, background_sync=0.9), shot)
    before = animation.temporal_metrics(plain, shot, 8)["latent_temporal_warp_error"]
    after = animation.temporal_metrics(synced, shot, 8)["latent_temporal_warp_error"]
    assert after < 0.6 * before


def test_pixel_sync_steadies_the_object_and_leaves_latents_and_background(tiny, shot):
    """Pixel sync pulls the object's pixels towards one texture of all frames: its warp
    error falls; latents and the pixels off the object (no UV here) stay as decoded."""
    request = animation_request(sync_strength=0.9, background_sync=0.9)
    start = animation.initial_noise(request, shot)
    plain = animation.sample_frames(tiny, request, shot, latents=start)
    synced = animation.sample_frames(tiny, animation_request(sync_strength=0.9, background_sync=0.9, pixel_sync=0.9),
                                     shot, latents=start)
    torch.testing.assert_close(synced.latents, plain.latents)
    off = ~shot.mask
    np.testing.assert_array_equal(synced.images[off], plain.images[off])  # nothing carried along the vectors
    assert not np.allclose(synced.images[shot.mask], plain.images[shot.mask])
    before = animation.temporal_metrics(plain, shot, 8)
    after = animation.temporal_metrics(synced, shot, 8)
    assert after["temporal_warp_error_object"] < 0.5 * before["temporal_warp_error_object"]
    # Unchanged but for the bilinear taps of landing pixels beside the object.
    assert after["temporal_warp_error_background"] == pytest.approx(before["temporal_warp_error_background"], rel=0.01)


def test_pixel_sync_is_one_texture_not_a_chain(shot):
    """Frames that agree through UV up to noise (a texture coarser than a pixel): at share 1
    every frame reads the same texture, so their object pixels come out alike and nearer
    the truth; a chain would leave frame 0 as it was and mix each frame into the next."""
    rng = np.random.default_rng(0)
    texture = rng.random((8, 8, 3)).astype(np.float32)
    cells = np.clip((shot.uv * 8).astype(int), 0, 7)
    clean = np.where(shot.mask[..., None], texture[cells[..., 1], cells[..., 0]], 0.5).astype(np.float32)
    noisy = np.clip(clean + 0.1 * rng.standard_normal(clean.shape).astype(np.float32), 0, 1)
    request = animation_request(pixel_sync=1.0)
    synced = animation.pixel_synced(noisy, shot, request)
    assert not np.array_equal(synced[0], noisy[0])  # frame 0 takes part like every other
    error = lambda frames: metrics.temporal_warp_errors(frames, shot.uv, shot.mask, texels=32)["object"]
    assert error(synced) < 0.25 * error(noisy)  # measured 0.11
    assert np.abs(synced - clean)[shot.mask].mean() < 0.5 * np.abs(noisy - clean)[shot.mask].mean()  # 0.37
    np.testing.assert_array_equal(animation.pixel_synced(noisy, shot, animation_request(pixel_sync=0.0)), noisy)


@pytest.mark.parametrize("changes, field", [
    (dict(attention="extended"), "attention"),
    (dict(kind="texture"), "kind"),
    (dict(layout="grid"), "layout"),
    (dict(background_noise="warped"), "vector"),
])
def test_bad_requests_name_the_field_before_sampling(tiny, shot, changes, field):
    passes = shot
    if field == "vector":
        passes = scene.animated_scene(frames=3, width=64, height=64)
        passes.vector = None
    with pytest.raises(ProtocolError) as raised:
        animation.sample_frames(tiny, animation_request(**changes), passes)
    assert raised.value.field == field


def test_an_object_too_small_to_measure_still_samples_and_reports(tiny, shot, tmp_path):
    """One object pixel per frame: UV sync is refused up front; without it the job runs to
    the end (pixel sync and metrics fall back to a default texel grain)."""
    passes = scene.animated_scene(frames=3, width=64, height=64)
    dot = np.zeros_like(passes.mask)
    for frame in range(3):
        rows, cols = np.nonzero(passes.mask[frame])
        dot[frame, rows[0], cols[0]] = True
    passes.mask = dot
    with pytest.raises(ProtocolError) as raised:
        animation.sample_frames(tiny, animation_request(sync_strength=0.9), passes)
    assert raised.value.field == "mask" and "too small" in str(raised.value)
    metrics = run.run_job(tiny, animation_request(pixel_sync=0.5, background_sync=0.5), passes, tmp_path)
    assert metrics["texels_rgb"] == animation.FALLBACK_TEXELS and (tmp_path / "contact_sheet.png").is_file()


def test_warp_error_metric_sees_a_frozen_sequence_as_consistent(shot):
    """Frames that are exact warps of each other: near-zero error; shuffled noise: large."""
    result = animation.AnimationResult(images=np.zeros((shot.views, 64, 64, 3), np.float32),
                                       latents=torch.zeros(shot.views, 4, 8, 8), initial_noise=torch.zeros(1))
    calm = animation.temporal_metrics(result, shot, 8)
    assert calm["temporal_warp_error"] == 0 and calm["latent_temporal_warp_error"] == 0
    rng = np.random.default_rng(0)
    result.images = rng.random((shot.views, 64, 64, 3), dtype=np.float32)
    result.latents = torch.from_numpy(rng.standard_normal((shot.views, 4, 8, 8)).astype(np.float32))
    noisy = animation.temporal_metrics(result, shot, 8)
    assert noisy["temporal_warp_error"] > 0.2 and noisy["latent_temporal_warp_error"] > 0.8
