"""(T) Per-step latent synchronisation in UV space (a sampler step hook).

While ``t / T > sync_end``, every view's predicted x0 is splatted into a UV latent
texture pyramid, each sample at the level of its own footprint (:mod:`zs_core.uv_pyramid`:
close-ups, far and orthographic views fuse at their own scales), read back into every view, and the guided epsilon is recomputed
from the synchronised x0 so that any variance-preserving diffusers scheduler (DDIM,
DPM-Solver++, UniPC) takes its usual step on consistent predictions.

Correspondence comes from the image-resolution passes: image pixel p of view v sees
texel t(p) through its UV pass and lies in latent pixel l(p). Splatting from pixels (not
gathering from texels) gets visibility for free, since a pixel only sees the front-most
surface. Each contribution is weighted by cos(theta)^p, theta the angle between the
surface normal and the direction to the camera, with p rising over the steps so early
steps blend broadly and late steps trust the most frontal view. Texels no pixel sees are
never read back, so no fill is needed. Background latents are left to the model.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from . import geometry, temporal
from .protocol import Passes, Request
from .uv_pyramid import UVPyramid
from .x0_epsilon import epsilon_for, predicted_x0

# Pyramid sync: a sample's texel spans about 1.4 latent footprints (texel sizes are powers
# of two, so this moves the rounding). Measured on the multi-scale test scene: 1.0 leaves
# straddled texels (fused/raw 0.12 on iid x0), 0.7 gives 0.077, 0.5 merges 2x2 latents
# for 0.065.
PYRAMID_TEXELS_PER_LATENT = 0.7


def camera_positions(world_to_camera: np.ndarray) -> np.ndarray:
    """Camera centres in world space ``(V, 3)`` from ``world_to_camera (V, 4, 4)``."""
    return np.linalg.inv(world_to_camera.astype(np.float64))[:, :3, 3]


def facing_cosines(passes: Passes) -> np.ndarray:
    """cos(theta) per pixel ``(V, H, W)`` float32 in [0, 1]; 1 where normals are unknown:
    without the normal pass, and on pixels whose normal is zero (the passes carry normals
    on target pixels only, so background surfaces have none)."""
    if passes.normal is None or passes.position is None or passes.world_to_camera is None:
        return np.ones(passes.depth.shape, np.float32)
    eye = camera_positions(passes.world_to_camera)[:, None, None, :]
    to_camera = eye - passes.position.astype(np.float64)
    to_camera /= np.maximum(np.linalg.norm(to_camera, axis=-1, keepdims=True), 1e-12)
    normal = passes.normal.astype(np.float64)
    length = np.linalg.norm(normal, axis=-1)
    normal /= np.maximum(length, 1e-12)[..., None]
    cosine = np.clip((to_camera * normal).sum(-1), 0.0, 1.0)
    # A zero normal read as cos 0 would weigh cos^p ~ 1e-4^p: past p = 3 the texel sums
    # fall under fuse's 1e-12 floor and the fused x0 collapses towards 0 (a grey floor).
    return np.where(length > 0, cosine, 1.0).astype(np.float32)


class UVSync:
    """Step hook: fuse all views' x0 in a UV latent texture while ``t / T > sync_end``.

    Built once per job from the passes; per step the work is a few scatter-adds and
    gathers over the sampled pixels (x0 ``(V, C, h, w)``, samples ``(P,)``). By default the
    pixels are the target's (``mask``) at ``sync_strength``, fused in a
    :class:`~zs_core.uv_pyramid.UVPyramid` (each sample at the size of its footprint,
    weighted by cos(theta)^p times its footprint's area). Given one ``texture_size``, all
    samples share that one texture instead (the sync before the pyramid). An animation's
    background surfaces use the same hook with their own ``mask``, ``layers`` (the surface
    id: each surface has a UV space of its own), ``strength`` and ``texels_per_latent`` (a
    texture size per sample that follows the surface's footprint, :func:`_sizes_of_detail`,
    each size its own texture; otherwise one size for all). Only texels some pixel lands
    on are stored.
    """

    def __init__(self, passes: Passes, request: Request, factor: int = 8, samples_per_side: int = 4,
                 texture_size: int | None = None, device: torch.device | str = "cpu", *,
                 mask: np.ndarray | None = None, layers: np.ndarray | None = None, strength: float | None = None,
                 texels_per_latent: float | None = None, held: tuple[int, int] | None = None,
                 reduce: Callable[[torch.Tensor], torch.Tensor] | None = None):
        if passes.uv is None:
            raise ValueError("uv: UV synchronisation needs the UV pass (V, H, W, 2)")
        views, height, width = passes.depth.shape
        self.request = request
        self.strength = request.sync_strength if strength is None else float(strength)
        self.shape = (views, height // factor, width // factor)
        # A job split over workers: this one holds views [start, stop) (its x0 is theirs);
        # the texel ids come from every view, so all workers share them.
        start, stop = (0, views) if held is None else held
        self.reduce = reduce
        full_mask = passes.mask if mask is None else mask
        # Sample a regular sub-grid of each factor x factor block: enough to follow the
        # footprint, a fraction of the cost of every pixel.
        stride = max(1, factor // samples_per_side)
        offset = stride // 2
        uv = passes.uv[:, offset::stride, offset::stride]
        mask = full_mask[:, offset::stride, offset::stride]
        cosine = facing_cosines(passes)[:, offset::stride, offset::stride]
        view_index, rows, cols = np.nonzero(mask)
        latent_rows = (rows * stride + offset) // factor
        latent_cols = (cols * stride + offset) // factor
        mine = np.flatnonzero((view_index >= start) & (view_index < stop))  # samples of the held views
        latent_index = ((view_index[mine] - start) * self.shape[1] + latent_rows[mine]) * self.shape[2] \
            + latent_cols[mine]
        self.shape = (stop - start, *self.shape[1:])
        layer = (np.zeros(len(view_index), np.int64) if layers is None
                 else layers[:, offset::stride, offset::stride][mask].astype(np.int64))
        self.pyramid = None
        if texture_size is None and texels_per_latent is None and layers is None:
            # The target: every sample at the size of its own footprint, fused in a pyramid.
            size = _sizes_of_detail(passes.uv, full_mask, factor, PYRAMID_TEXELS_PER_LATENT)
            size = size[:, offset::stride, offset::stride][mask]
            self.pyramid = UVPyramid(uv[mask], size, device=device, held=mine)
            # Each view votes per unit of surface, not per pixel: a sample stands for its
            # footprint's area, so a close-up's many pixels do not outvote a far view.
            footprint = geometry.uv_footprint(passes.uv, full_mask.astype(np.int64))[:, offset::stride,
                                                                                   offset::stride][mask]
            known = np.isfinite(footprint) & (footprint > 0)
            footprint = np.where(known, footprint, np.median(footprint[known]) if known.any() else 1.0)
            area = (footprint / np.median(footprint)) ** 2 if footprint.size else footprint
            self.size = int(size.max(initial=8))  # the finest level
        elif texels_per_latent is None:
            self.size = texture_size or geometry.footprint_texture_size(passes.uv, full_mask, factor, 8, 2048)
            size = np.full(len(view_index), self.size, np.int64)
        else:
            size = _sizes_of_detail(passes.uv, full_mask if layers is None else np.where(full_mask, layers, 0),
                                    factor, texels_per_latent)[:, offset::stride, offset::stride][mask]
            self.size = int(size.max(initial=8))  # the finest texture
            layer = layer * 16 + np.log2(size).astype(np.int64)  # one texture per size
        texel = np.clip((uv[mask] * size[:, None].astype(uv.dtype)).astype(np.int64), 0, size[:, None] - 1)
        span = self.size
        texel_index = (layer * span + texel[:, 1]) * span + texel[:, 0]
        texel_index = np.unique(texel_index, return_inverse=True)[1].reshape(-1)  # touched texels only
        self.texels = int(texel_index.max()) + 1 if texel_index.size else 0
        texel_index = texel_index[mine]
        samples_per_block = (factor // stride) ** 2

        self.device = torch.device(device)
        self.latent_index = torch.from_numpy(latent_index.astype(np.int64)).to(self.device)
        self.texel_index = torch.from_numpy(texel_index).to(self.device)
        self.cosine = torch.from_numpy(np.maximum(cosine[mask][mine], 1e-4)).to(self.device)
        self.area = None if self.pyramid is None else torch.from_numpy(area[mine].astype(np.float32)).to(self.device)
        count = torch.bincount(self.latent_index, minlength=int(np.prod(self.shape))).float()
        self.covered = count > 0
        self.coverage = (count / samples_per_block).clamp(max=1.0)
        self.count = count.clamp(min=1.0)

    def exponent(self, index: int, total: int) -> float:
        progress = index / max(total - 1, 1)
        start, end = self.request.sync_exponent_start, self.request.sync_exponent_end
        return start + (end - start) * progress

    def active(self, timestep, scheduler) -> bool:
        return self.strength > 0 and self.texels > 0 and _active(self.request, timestep, scheduler)

    def fuse(self, x0: torch.Tensor, exponent: float) -> torch.Tensor:
        """Synchronised x0 ``(V, C, h, w)``: texture splat of all views, read back per view."""
        views, channels, height, width = x0.shape
        flat = x0.permute(0, 2, 3, 1).reshape(-1, channels).float()
        samples = flat[self.latent_index]  # (P, C)
        weight = self.cosine.pow(exponent)  # (P,)
        if self.pyramid is not None:
            readings = self.pyramid.fuse(samples, weight * self.area, self.reduce)
        else:
            columns = torch.cat([samples * weight[:, None], weight[:, None]], dim=1)
            sums = torch.zeros(self.texels, channels + 1, device=flat.device).index_add_(0, self.texel_index, columns)
            if self.reduce is not None:  # the other workers' views' sums
                sums = self.reduce(sums.reshape(-1)).view(self.texels, channels + 1)
            readings = (sums[:, :channels] / sums[:, channels:].clamp(min=1e-12))[self.texel_index]
        rendered = torch.zeros_like(flat).index_add_(0, self.latent_index, readings)
        rendered = rendered / self.count[:, None]
        # Latents half on the object keep the model's own x0 for their background share.
        coverage = self.coverage[:, None]
        synced = torch.where(self.covered[:, None], coverage * rendered + (1 - coverage) * flat, flat)
        return synced.reshape(views, height, width, channels).permute(0, 3, 1, 2).to(x0.dtype)

    def __call__(self, state) -> torch.Tensor | None:
        if not self.active(state.timestep, state.scheduler):
            return None
        x0 = predicted_x0(state.scheduler, state.latents, state.noise_pred, state.timestep)
        synced = self.fuse(x0, self.exponent(state.index, state.total))
        return epsilon_for(state.scheduler, state.latents, self.strength * synced + (1 - self.strength) * x0,
                           state.timestep)


def _sizes_of_detail(uv: np.ndarray, surface: np.ndarray, factor: int, texels_per_latent: float) -> np.ndarray:
    """Texture size per pixel ``(V, H, W)`` int64, a power of two in [8, 2048], so that a
    texel is about 1 / ``texels_per_latent`` of the latent pixel there wide.

    A surface seen from near and far (a floor under a dolly) keeps its detail everywhere,
    where one size for all would either merge the near latents or never match the far
    ones; neighbouring frames see a point at about the same size and share its texel.
    Pixels whose footprint is unknown take the median size."""
    footprint = geometry.uv_footprint(uv, surface.astype(np.int64)) * factor / texels_per_latent
    known = np.isfinite(footprint) & (footprint > 0)
    exponent = np.full(footprint.shape, np.nan)
    exponent[known] = np.rint(-np.log2(footprint[known]))
    fallback = np.nanmedian(exponent) if known.any() else 8.0
    exponent = np.where(known, exponent, fallback)
    return (2 ** np.clip(exponent, 3, 11)).astype(np.int64)


def _active(request: Request, timestep, scheduler) -> bool:
    return float(timestep) / scheduler.config.num_train_timesteps > request.sync_end


class VectorSync:
    """Step hook for frame sequences: background x0 carried along the vector pass.

    The UV pass ties object pixels across frames (:class:`UVSync`); the background (other
    objects, the set) has no UV in the passes, but the vector pass says where each pixel
    moves in the next frame. Each step, frame by frame, the fused x0 of frame i - 1 is
    gathered bilinearly to where its background latents moved in frame i
    (:func:`zs_core.temporal.vector_links`), and frame i's x0 becomes
    ``(1 - s c) x0_i + s c warped``, s = ``background_sync``, c = 1 where the latent was
    linked and 0 where it is new (disocclusions, the image border). Only latents wholly off
    the object in both frames take part, so the object is left to UV sync and occlusion borders are
    not smeared. Frame 0 is the anchor; the chain makes each frame mostly a carried copy
    of the last few, decaying as s^k.
    """

    def __init__(self, passes: Passes, request: Request, factor: int = 8, exclude: np.ndarray | None = None, *,
                 held: tuple[int, int] | None = None, gather: Callable[[torch.Tensor], torch.Tensor] | None = None):
        if passes.vector is None:
            raise ValueError("vector: background sync needs the vector pass (F, H, W, 2)")
        frames, height, width = passes.depth.shape
        self.request = request
        self.shape = (frames, height // factor, width // factor)
        _, rows, cols = self.shape
        # Pixels synced another way (the object; background surfaces with UV) stay out.
        taken = passes.mask if exclude is None else passes.mask | exclude
        blocks = taken[:, :rows * factor, :cols * factor].reshape(frames, rows, factor, cols, factor)
        background = ~blocks.any(axis=(2, 4))  # (F, h, w) latents with no object pixel
        centre = factor // 2
        motion = passes.vector[:, centre::factor, centre::factor][:, :rows, :cols] / factor  # latent pixels
        self.links = [temporal.vector_links(motion[frame], background[frame], background[frame + 1])
                      for frame in range(frames - 1)]
        # A job split over workers holds frames [start, stop): the chain runs frame after
        # frame, so each worker ``gather``s every frame's x0 (latent-sized) and runs it whole.
        self.held, self.gather = held, gather

    def fuse(self, x0: torch.Tensor) -> torch.Tensor:
        """x0 ``(F, C, h, w)`` -> background-synchronised x0, same shape
        (:func:`zs_core.temporal.carry` over the latent pixels; on the CPU, as the
        arrays are latent-sized). A worker of a split job passes its frames and gets them back."""
        whole = x0 if self.gather is None else self.gather(x0)
        frames, channels, rows, cols = whole.shape
        values = whole.detach().float().cpu().numpy().reshape(frames, channels, rows * cols).transpose(0, 2, 1)
        fused = temporal.carry(values, self.links, self.request.background_sync)
        fused = fused.transpose(0, 2, 1).reshape(frames, channels, rows, cols)
        if self.held is not None:
            fused = fused[self.held[0]:self.held[1]]
        return torch.from_numpy(np.ascontiguousarray(fused)).to(device=x0.device, dtype=x0.dtype)

    def __call__(self, state) -> torch.Tensor | None:
        if self.request.background_sync <= 0 or not _active(self.request, state.timestep, state.scheduler):
            return None
        x0 = predicted_x0(state.scheduler, state.latents, state.noise_pred, state.timestep)
        return epsilon_for(state.scheduler, state.latents, self.fuse(x0), state.timestep)
