"""(T) Animation: a temporally consistent frame sequence from one camera's per-frame passes.

An animation job is a :class:`~zs_core.protocol.Request` with ``kind="animation"`` and
:class:`~zs_core.protocol.Passes` whose leading axis is frames (F). What ties frames together:

- initial noise (:func:`initial_noise`): ``surface`` noise on the object through each
  frame's UV pass (the same material point keeps its noise), the background warped along
  the vector pass or driven by an item model (``background_noise``), see
  :func:`zs_core.noise.animated`; any other ``noise`` mode applies to whole frames
  (``fixed`` = what frame-by-frame add-ons do);
- cross-frame attention ``keyframes`` / ``tma``, evaluated in chunks of ``chunk`` frames
  with cached anchor frames (:class:`zs_core.attention.ChunkedFrameAttention`), so memory
  stays bounded for any length and the result equals the unchunked computation;
- optional temporal UV sync (``sync_strength`` < 1): every step, all frames' predicted x0 is
  fused in one UV latent texture (:class:`zs_core.sync.UVSync`) and blended back; and for
  the background (``background_sync``): with ``background_uv`` (the default) background
  surfaces with a UV map of their own (``background_id``) fused like the object, each in
  its own UV space at a texel size that follows its footprint, and only the rest (the
  world, meshes without UV, every background pixel of passes without ``background_id``)
  carried frame to frame along the vector pass (:class:`zs_core.sync.VectorSync`);
- after decoding, ``pixel_sync`` (:func:`pixel_synced`): the same UV-mapped surfaces pulled
  in pixels towards one texture of all frames (no frame-to-frame chain, so nothing is
  resampled again and again); pixels without UV are left as decoded.

:func:`sample_frames` runs the sampler's stages (:mod:`zs_core.sampler`) on the frames, the
model called chunk by chunk (:class:`FrameChunks`). :func:`zs_core.run.run_job`, the entry
point of the CLI (``zs animate``), the server and the Blender add-on, writes
``frames/NNNN.png`` and ``metrics.json``; :func:`write_outputs` adds an MP4 when
``imageio-ffmpeg`` is installed and a contact strip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from . import attention, geometry, images, metrics, noise, sampler, sync
from .models import Components
from .protocol import ANIMATION, ANIMATION_MP4, CONTACT_SHEET_PNG, Passes, ProtocolError, Request

# Background surface texels per latent pixel width (a texel = 2 image pixels). Finer keeps
# more of each frame's own detail, coarser matches more frames; on the demo shot's passes
# with consistent latents plus per-frame noise, 4 came out best of 1, 2, 4 and 8 overall.
BACKGROUND_TEXELS_PER_LATENT = 4.0
# The same for pixel sync, texels per pixel (the long side of its footprint, so about one
# per pixel across a floor seen at a grazing angle): on the demo shot's decoded frames 2
# gave the steadiest floor of 2, 4 and 8 at about the same sharpness.
PIXEL_BACKGROUND_TEXELS = 2.0
PREVIEW_FRAMES = 8  # frames shown in a step preview and in the contact strip (evenly spaced, at most)


@dataclass
class AnimationResult:
    """images (F, H, W, 3) float32 in [0, 1]; latents (F, 4, H/8, W/8) final latents;
    initial_noise (F, 4, H/8, W/8) unit-variance starting noise; attention_stats from the
    chunked attention (peak key tokens per query, cached anchor frames, frames per batch)."""

    images: np.ndarray
    latents: torch.Tensor
    initial_noise: torch.Tensor
    attention_stats: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------- checks


def background_mode(request: Request, passes: Passes) -> str:
    """The background noise model actually used: ``auto`` -> ``warped`` when the passes have
    a vector pass, else ``dependency``."""
    if request.background_noise != "auto":
        return request.background_noise
    return "warped" if passes.vector is not None else "dependency"


def check_inputs(components: Components, request: Request, passes: Passes) -> None:
    """Everything :func:`sample_frames` needs, checked before any work; ProtocolError names
    the offending request field or array."""
    if request.kind != ANIMATION:
        raise ProtocolError("kind", f"expected 'animation' for a frame sequence, got {request.kind!r}")
    sampler.check_request_and_passes(components, request, passes)
    if request.sync_strength > 0:
        try:
            geometry.footprint_texture_size(passes.uv, passes.mask)
        except ValueError:
            raise ProtocolError("mask", "the object never covers two neighbouring pixels in any frame: too small "
                                        "for temporal UV sync; set sync_strength 0 or frame it larger") from None
    if request.background_sync > 0 and passes.vector is None:
        raise ProtocolError("vector", "background_sync needs the vector pass (F, H, W, 2): pixel motion to the "
                                      "next frame")
    if request.noise == "surface" and background_mode(request, passes) == "warped" and passes.vector is None:
        raise ProtocolError("vector", "background_noise 'warped' needs the vector pass (F, H, W, 2): pixel "
                                      "motion to the next frame; render it or pick another background_noise")


# -------------------------------------------------------------------------------- noise


def background_surfaces(passes: Passes) -> np.ndarray | None:
    """``(F, H, W)`` bool: pixels of background surfaces with UV (``background_id`` > 0),
    or None when the passes tell none apart."""
    if passes.background_id is None or passes.uv is None:
        return None
    surfaces = passes.background_id > 0
    return surfaces if surfaces.any() else None


def initial_noise(request: Request, passes: Passes, channels: int = 4, factor: int = 8) -> torch.Tensor:
    """Unit-variance starting noise ``(F, C, H/f, W/f)`` for an animation request."""
    if request.noise == "surface":
        return noise.animated(passes.uv, passes.mask, request.seed, background=background_mode(request, passes),
                              vector=passes.vector, channels=channels, factor=factor,
                              alpha=request.noise_alpha, lam=request.noise_lambda)
    return sampler.initial_noise(request, passes, channels, factor)


# ------------------------------------------------------------------------------ the loop


class FrameChunks:
    """Animation jobs' :class:`~zs_core.sampler.NoisePredictor`: every step, the frames chunk
    by chunk (``request.chunk`` frames per guided call, both CFG halves together).

    ``keyframes`` / ``tma`` run through :class:`zs_core.attention.ChunkedFrameAttention`,
    which carries the anchor frames' keys from chunk to chunk, so the result equals one
    call on all frames; ``self`` through the stock processor.
    """

    def __init__(self, components: Components, request: Request, conditioning: sampler.Conditioning):
        self.components, self.conditioning, self.chunk = components, conditioning, request.chunk
        self.plan = attention.chunk_plan(len(conditioning.control), request.chunk, request.attention,
                                         request.keyframes)
        self.spans = self.plan.chunks
        if request.attention in attention.CHUNKED_MODES:
            self.processor = attention.ChunkedFrameAttention(request.attention, self.plan, policy=request.keyframes,
                                                             momentum=request.momentum)
        else:
            self.processor = attention.processor_for("self")

    def where(self, index: int, total: int, span: int) -> str:
        start, stop = self.spans[span]
        return f"in step {index + 1} of {total} (frames {start}..{stop - 1})"

    def __call__(self, scheduler, index: int, span: int, timestep, latents: torch.Tensor,
                 scale: float) -> torch.Tensor:
        if isinstance(self.processor, attention.ChunkedFrameAttention):
            self.processor.begin(index, span)
        start, stop = self.spans[span]
        components, conditioning = self.components, self.conditioning
        # The control images stay on the CPU and move a chunk at a time.
        control = conditioning.control[start:stop].to(components.device, components.dtype)
        return sampler.guided_noise_pred(components, scheduler, latents, timestep,
                                         conditioning.batch(stop - start),
                                         conditioning.per_group(control), scale,
                                         conditioning.guidance_scale)

    def attention_stats(self) -> dict:
        """The chunked attention's memory stats (see :class:`AnimationResult`) and the chunking."""
        return dict(getattr(self.processor, "stats", {}), chunk=self.chunk, chunks=len(self.spans))


def sync_hooks(components: Components, request: Request, passes: Passes, *, held: tuple[int, int] | None = None,
               reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
               gather: Callable[[torch.Tensor], torch.Tensor] | None = None) -> list[sampler.StepHook]:
    """The request's step hooks, in order: temporal UV sync of the object, then the
    background (with ``background_uv``, background surfaces through their own UV when the
    passes tell any apart; the rest along the vector pass). A worker of a job split over
    several holds frames ``held`` of ``passes`` (:mod:`zs_core.distributed`): UV syncs
    ``reduce`` their texel sums, the vector chain ``gather``s every frame's x0."""
    factor, device = components.vae_scale_factor, components.device
    split = dict(held=held, reduce=reduce) if held is not None else {}
    hooks = []
    if request.sync_strength > 0:
        hooks.append(sync.UVSync(passes, request, factor, device=device, **split))
    surfaces = background_surfaces(passes) if request.background_uv else None
    if request.background_sync > 0 and surfaces is not None:
        # Background surfaces with UV: fused through their own UV spaces, like the object.
        hooks.append(sync.UVSync(passes, request, factor, device=device, mask=surfaces,
                                 layers=passes.background_id, strength=request.background_sync,
                                 texels_per_latent=BACKGROUND_TEXELS_PER_LATENT, **split))
    if request.background_sync > 0:
        hooks.append(sync.VectorSync(passes, request, factor, exclude=surfaces, held=held, gather=gather))
    return hooks


def preview_frames(frames: int, most: int = PREVIEW_FRAMES) -> list[int]:
    """Up to ``most`` evenly spaced frame indices, first and last included."""
    if frames <= most:
        return list(range(frames))
    return sorted({round(i * (frames - 1) / (most - 1)) for i in range(most)})


def sample_frames(
    components: Components,
    request: Request,
    passes: Passes,
    *,
    progress: Callable[[sampler.StepProgress], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    hooks: Iterable[sampler.StepHook] = (),
    latents: torch.Tensor | None = None,
) -> AnimationResult:
    """Sample all frames of an animation job consistently: the stages of
    :func:`zs_core.sampler.sample` with this module's checks, starting noise and step hooks,
    the model called chunk by chunk (:class:`FrameChunks`), and pixel sync after decoding.

    The step hooks (:func:`sync_hooks` first, then ``hooks``) and the scheduler step see all
    frames at once. With one chunk, ``self`` attention and no hooks this is
    :func:`zs_core.sampler.sample` on the same latents. ``latents`` overrides the starting
    noise ``(F, 4, H/8, W/8)``; ``cancel`` is polled before every chunk.
    """
    check_inputs(components, request, passes)
    own_hooks = sync_hooks(components, request, passes)
    predictor = FrameChunks(components, request, sampler.condition(components, request, passes))
    result = sampler.denoise(components, request, passes, predictor, initial_noise, hooks=own_hooks + list(hooks),
                             progress=progress, cancel=cancel, latents=latents, shown=preview_frames(passes.views))
    return AnimationResult(images=pixel_synced(result.images, passes, request), latents=result.latents,
                           initial_noise=result.initial_noise, attention_stats=predictor.attention_stats())


def pixel_synced(frames: np.ndarray, passes: Passes, request: Request) -> np.ndarray:
    """Decoded frames ``(F, H, W, 3)`` with every UV-mapped surface pulled towards one texture
    of all frames, share ``request.pixel_sync``: the decoder turns small latent differences
    into visible flicker, so the UV correspondence is applied once more in pixels.

    The object (``mask``) is fused as temporal UV sync fuses latents (a texture pyramid,
    each pixel at its footprint's level, weights cos(theta)^p with p =
    ``sync_exponent_end``); with ``background_uv``, background surfaces each in their own UV
    space at :data:`PIXEL_BACKGROUND_TEXELS` texels per pixel footprint. Every frame reads
    the one texture, none is carried from its predecessor, so no pixel is resampled frame
    after frame (the chain this replaces smeared a floor under a dolly). Pixels without UV
    (the world) stay as decoded; without the UV pass, or at 0, the frames are returned."""
    strength = request.pixel_sync
    if strength <= 0 or passes.uv is None:
        return frames
    parts = []
    if passes.mask.any():
        parts.append(sync.UVSync(passes, request, 1, strength=strength))
    surfaces = background_surfaces(passes) if request.background_uv else None
    if surfaces is not None:
        parts.append(sync.UVSync(passes, request, 1, mask=surfaces, layers=passes.background_id, strength=strength,
                                 texels_per_latent=PIXEL_BACKGROUND_TEXELS))
    values = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32)).permute(0, 3, 1, 2)
    for part in parts:  # disjoint pixels: the order does not matter
        values = values + strength * (part.fuse(values, request.sync_exponent_end) - values)  # others exact
    return np.clip(values.permute(0, 2, 3, 1).numpy(), 0.0, 1.0).astype(frames.dtype)


# ------------------------------------------------------------------------------ metrics


FALLBACK_TEXELS = 64  # texture grain when the object never shows two neighbouring pixels


def _texels(passes: Passes, pixels_per_texel: float) -> int:
    """Texels per side for about ``pixels_per_texel`` pixels a texel (see
    :func:`zs_core.geometry.footprint_texture_size`); :data:`FALLBACK_TEXELS` for an object
    too small in every frame to measure."""
    try:
        return geometry.footprint_texture_size(passes.uv, passes.mask, pixels_per_texel)
    except ValueError:
        return FALLBACK_TEXELS


def _trusted_vector(vector: np.ndarray, background: np.ndarray) -> np.ndarray:
    """The vector pass ``(F, H, W, 2)`` with NaN where a background comparison would be
    unfair: pixels not in ``background (F, H, W)`` and pixels whose landing pixel in the
    next frame is not background there (hidden by the object: the vector pass does not know
    occlusion). NaN vectors are skipped by :func:`zs_core.metrics.temporal_warp_error`."""
    frames, height, width = background.shape
    out = np.array(vector[:frames], dtype=np.float32, copy=True)
    rows, cols = np.mgrid[0:height, 0:width]
    for frame in range(frames - 1):
        with np.errstate(invalid="ignore"):
            target_rows = np.floor(rows + 0.5 + out[frame, ..., 1])
            target_cols = np.floor(cols + 0.5 + out[frame, ..., 0])
        inside = (target_rows >= 0) & (target_rows < height) & (target_cols >= 0) & (target_cols < width)
        lands_on_background = np.zeros((height, width), bool)
        lands_on_background[inside] = background[frame + 1][target_rows[inside].astype(int),
                                                            target_cols[inside].astype(int)]
        out[frame][~(background[frame] & (lands_on_background | ~inside))] = np.nan
    return out


def _latent_correspondence(passes: Passes, factor: int):
    """Latent-resolution (uv, mask, vector-or-None) for comparing latents between frames:
    uv and vector at block centres (vector / factor), the object mask = blocks wholly on the
    object; blocks half on it are compared through neither."""
    uv, on_object = metrics.downsample_correspondence(passes.uv, passes.mask, factor)
    if passes.vector is None:
        return uv, on_object, None
    _, on_background = metrics.downsample_correspondence(passes.uv, ~passes.mask, factor)
    centre = factor // 2
    vector = passes.vector[:, centre::factor, centre::factor][:, :on_object.shape[1], :on_object.shape[2]] / factor
    return uv, on_object, _trusted_vector(vector, on_background)


def temporal_metrics(result: AnimationResult, passes: Passes, factor: int) -> dict:
    """``temporal_warp_error`` (RGB frames; also ``_object`` and ``_background`` apart) and
    ``latent_temporal_warp_error`` (final latents): mean absolute difference between consecutive frames at the same point,
    through UV on the object and along the vector pass elsewhere (see
    :func:`zs_core.metrics.temporal_warp_error`). Pixels are matched at about one texel per
    pixel (per latent pixel for latents). ``background_sharpness``: how much of frame 0's
    sharpness the last quarter of the frames keep off the object
    (:func:`zs_core.metrics.sharpness_kept`; None without background pixels). Empty for
    fewer than 2 frames; only ``background_sharpness`` without UV."""
    if passes.views < 2:
        return {}
    kept = metrics.sharpness_kept(result.images, ~passes.mask)
    sharpness = {"background_sharpness": None if np.isnan(kept) else round(kept, 4)}
    if passes.uv is None:
        return sharpness
    rgb_vector = None
    if passes.vector is not None:
        rgb_vector = _trusted_vector(passes.vector, ~passes.mask)
    rgb_texels = _texels(passes, 1.0)
    latent_texels = _texels(passes, float(factor))
    latent_uv, latent_mask, latent_vector = _latent_correspondence(passes, factor)
    latent_frames = result.latents.permute(0, 2, 3, 1).numpy()
    rgb = metrics.temporal_warp_errors(result.images, passes.uv, passes.mask, rgb_vector, texels=rgb_texels)
    return {
        "temporal_warp_error": round(rgb["all"], 5),
        # The object (matched exactly through its UV) and the rest (along the vector pass).
        "temporal_warp_error_object": None if rgb["object"] is None else round(rgb["object"], 5),
        "temporal_warp_error_background": None if rgb["background"] is None else round(rgb["background"], 5),
        "latent_temporal_warp_error": round(metrics.temporal_warp_error(latent_frames, latent_uv, latent_mask,
                                                                        latent_vector, texels=latent_texels), 5),
        **sharpness,
        "texels_rgb": rgb_texels,
        "texels_latent": latent_texels,
    }


# ------------------------------------------------------------------------------ outputs


def write_mp4(frames: np.ndarray, path: str | Path, fps: float = 24.0) -> Path | None:
    """Frames ``(F, H, W, 3)`` float in [0, 1] -> H.264 MP4 through ``imageio-ffmpeg`` when it
    is installed (an optional extra, not a dependency); None when it is not."""
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    path = Path(path)
    height, width = frames.shape[1:3]
    # yuv420p (what every player accepts) needs even sizes; macro_block_size=1 keeps ours.
    writer = imageio_ffmpeg.write_frames(str(path), (width, height), fps=fps, codec="libx264",
                                         pix_fmt_out="yuv420p", macro_block_size=1, quality=8)
    writer.send(None)  # start the encoder
    try:
        for frame in frames:
            writer.send(np.ascontiguousarray(images.to_uint8(frame)))
    finally:
        writer.close()
    return path


def contact_strip(result: AnimationResult, passes: Passes) -> np.ndarray:
    """A labelled strip of up to :data:`PREVIEW_FRAMES` frames: the depth the ControlNet
    sees, the generated frames, and |frame - previous frame| (flicker shows up bright)."""
    shown = preview_frames(passes.views)
    control = sampler.control_images(passes.depth)[shown].numpy()  # as the ControlNet saw it: whole-shot range
    rows = [("depth (ControlNet input)", [images.depth_to_gray(c) for c in control]),
            ("generated frames " + ", ".join(str(i) for i in shown), [result.images[i] for i in shown])]
    if passes.views > 1:
        changes = [np.zeros_like(result.images[0]) if i == 0 else
                   np.clip(4.0 * np.abs(result.images[i] - result.images[i - 1]), 0, 1) for i in shown]
        rows.append(("change from the previous frame (x4)", changes))
    return images.contact_sheet(rows, cell=160)


def write_outputs(components: Components, request: Request, passes: Passes, result: AnimationResult,
                  out_dir: Path, sampling_seconds: float) -> dict:
    """An animation job's own outputs beside its ``frames/NNNN.png`` (written by
    :func:`zs_core.run.run_job`): ``animation.mp4`` at ``request.fps`` when imageio-ffmpeg is
    installed and ``contact_sheet.png`` -> its own metrics (``temporal_warp_error``,
    ``latent_temporal_warp_error``, seconds per frame, attention memory stats)."""
    mp4 = write_mp4(result.images, out_dir / ANIMATION_MP4, fps=request.fps)
    out = {
        "seconds_per_frame": round(sampling_seconds / passes.views, 4),
        "background_noise": background_mode(request, passes) if request.noise == "surface" else None,
        "attention_stats": result.attention_stats,
        "mp4": ANIMATION_MP4 if mp4 is not None else None,
    }
    out.update(temporal_metrics(result, passes, components.vae_scale_factor))
    images.save_png(contact_strip(result, passes), out_dir / CONTACT_SHEET_PNG)
    return out
