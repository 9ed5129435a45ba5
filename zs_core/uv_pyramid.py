"""(T) Fusion of samples in a UV texture pyramid, each sample at the scale of its footprint.

UV sync (:class:`zs_core.sync.UVSync`) splats samples of every view into a UV texture and
reads them back. With one texture size for all, a close-up's latent pixels share texels
(its detail is merged) and a far or orthographic view's latent pixel covers several
texels it cannot resolve. Here every sample has a texture size of its own (a power of two
whose texel is about its latent pixel's footprint), and the sizes form a pyramid:

- **Pull.** At each level L, A_L is the weighted mean of all samples at that size or finer
  (a texel of level L sums its four children), B_L the same over the strictly finer ones.
- **Push.** The coarsest level is the consensus of every view, R = A. Each finer level
  adds what its own samples say beyond their parent: R_(L+1) = R_L[parent] + A_(L+1) -
  B_L[parent]. So a far view and a close-up agree on the mean of every coarse texel, and
  the close-up keeps the detail only it resolves, relative to that agreed mean.
- **Gather.** A sample reads R at its own level.

With every sample at one size this is exactly a single texture (the mean per texel).
Texel ids of all levels are computed once; per fusion the work is one weighted scatter-add
and one gather per level.

A job split over several workers (:mod:`zs_core.distributed`) builds the same pyramid from
every sample on each worker, so texel ids agree, but each worker ``holds`` only its own
views' samples: it sums those per texel, the sums of all workers are added up (``reduce``,
an all-reduce of one flat tensor), and the readings follow from the totals exactly as on
one worker.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch


class UVPyramid:
    """The pyramid's index structure for ``P`` samples.

    ``uv (P, 2)`` in [0, 1]; ``size (P,)`` int64, each sample's texture size (a power of
    two); ``layer (P,)`` int64 or None: samples of different layers (separate UV spaces)
    never meet. Levels run from the smallest size present to the largest, every power of
    two in between, so each texel has its parent. ``held`` (H,) int64: the samples this
    worker holds (default: all); :meth:`fuse` takes and returns those only.
    """

    def __init__(self, uv: np.ndarray, size: np.ndarray, layer: np.ndarray | None = None,
                 device: torch.device | str = "cpu", held: np.ndarray | None = None):
        size = np.asarray(size, np.int64)
        if size.size and np.any(size & (size - 1)):
            raise ValueError("size: texture sizes must be powers of two")
        layer = np.zeros(len(size), np.int64) if layer is None else np.asarray(layer, np.int64)
        self.device = torch.device(device)
        held = np.arange(len(size)) if held is None else np.asarray(held, np.int64)
        self.samples = len(held)
        exponents = np.log2(np.maximum(size, 1)).astype(np.int64)
        low, high = (int(exponents.min()), int(exponents.max())) if size.size else (0, -1)
        self.sizes = [1 << exponent for exponent in range(low, high + 1)]  # coarse -> fine
        self.texel, self.texels, self.member, self.finer, self.own, self.parent = [], [], [], [], [], []
        previous = None
        for level_size in self.sizes:
            # Every sample has a texel at every level: coarser samples vote there too (below).
            cells = np.clip((uv * level_size).astype(np.int64), 0, level_size - 1)
            key = (layer * level_size + cells[:, 1]) * level_size + cells[:, 0]
            texel = np.unique(key, return_inverse=True)[1].reshape(-1)
            count = int(texel.max()) + 1 if texel.size else 0
            if previous is not None:
                parent = np.zeros(count, np.int64)
                parent[texel] = previous  # the coarser texel its samples fell in
                self.parent.append(torch.from_numpy(parent).to(self.device))
            previous = texel
            self.texel.append(torch.from_numpy(texel[held]).to(self.device))
            self.texels.append(count)
            self.member.append(torch.from_numpy(size[held] >= level_size).to(self.device))
            self.finer.append(torch.from_numpy(size[held] > level_size).to(self.device))
            self.own.append(torch.from_numpy(np.flatnonzero(size[held] == level_size)).to(self.device))

    @property
    def total_texels(self) -> int:
        return int(sum(self.texels))

    def fuse(self, values: torch.Tensor, weight: torch.Tensor,
             reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """Held samples ``values (P, C)`` with ``weight (P,)`` > 0 -> each sample's reading of
        the fused pyramid at its own level ``(P, C)``. ``reduce``: the flat tensor of this
        worker's per-texel sums -> the sums over all workers (None: one worker).

        A level's detail (its samples' mean minus their mean one level up) is scaled by the
        share of the texel's weight that resolves it: a coarser sample inside a texel votes
        there for "no detail beyond what I see", so a far view's latent pixel, spread over
        the texels of its footprint, evens them out as much as it weighs."""
        channels = values.shape[1]
        sums = self._sums(values, weight)
        if reduce is not None:
            sums = reduce(sums)
        out = torch.empty_like(values)
        reading = below = None  # R and B at the previous (coarser) level
        tiny = torch.finfo(values.dtype).tiny
        offset = 0
        for level in range(len(self.sizes)):
            count = self.texels[level]
            block = sums[offset:offset + count * (2 * channels + 3)].view(count, 2 * channels + 3)
            offset += count * (2 * channels + 3)
            member_sum, finer_sum = block[:, :channels], block[:, channels:2 * channels]
            total, resolved, finer_total = block[:, -3], block[:, -2], block[:, -1]
            mean = member_sum / resolved.clamp(min=tiny)[:, None]
            if reading is None:
                reading = mean
            else:
                parent = self.parent[level - 1]
                share = (resolved / total.clamp(min=tiny))[:, None]
                reading = reading[parent] + share * (mean - below[parent])
            below = finer_sum / finer_total.clamp(min=tiny)[:, None]
            own, texel = self.own[level], self.texel[level]
            out[own] = reading[texel[own]]
        return out

    def _sums(self, values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Per level and texel, of the held samples: sum of value x weight over the members
        (C), over the finer ones (C), and the weights of all, members, finer ones (3): one
        flat tensor, level after level, ``(sum of texels x (2C + 3),)``."""
        blocks = []
        for level in range(len(self.sizes)):
            texel, count = self.texel[level], self.texels[level]
            member = weight * self.member[level]
            finer = weight * self.finer[level]
            columns = torch.cat([values * member[:, None], values * finer[:, None],
                                 torch.stack([weight, member, finer], dim=1)], dim=1)
            blocks.append(torch.zeros(count, columns.shape[1], dtype=values.dtype, device=values.device)
                          .index_add_(0, texel, columns).reshape(-1))
        return torch.cat(blocks) if blocks else values.new_zeros(0)
