"""(T) Initial noise for the views / frames of one job (docs/methods.md, "Initial noise").

Every model returns a float32 CPU tensor ``(count, C, h, w)`` whose every value is
N(0, 1); the models differ only in how the items (views or frames) are correlated:

- :func:`iid`: independent items.
- :func:`fixed`: one draw repeated for every item (what frame-by-frame add-ons do).
- :func:`mixed` (PYoCo): shared + individual noise, correlation ``alpha^2 / (1 + alpha^2)``.
- :func:`progressive` (PYoCo): autoregressive, correlation ``(alpha / sqrt(1 + alpha^2))^|i-j|``.
- :func:`dependency` (ZS2): frame i = sqrt(a) frame(i-1) + sqrt(1-a) eta, with eta and a
  searched so the divergence between consecutive frames approaches ``lam``.
- :func:`surface`: correspondence-guided integral noise: every view integrates one
  white-noise field on the UV square (:mod:`zs_core.noise_field`) over its latent pixels'
  footprints, so views of the same surface at any scale share noise as they overlap.

:func:`make` dispatches on a mode name (:data:`MODES`, protocol's ``NOISE_MODES``). Bad
input raises ValueError naming the argument.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from scipy import ndimage

from . import noise_field
from .noise_field import FIELD_LEVELS, hashed_gaussians
from .noise_field import splitmix64 as _splitmix64
from .protocol import BACKGROUND_NOISE_MODES, NOISE_MODES

MODES = NOISE_MODES  # each has a generator in GENERATORS (tests/core/test_mode_names.py holds them equal)
MIN_RESOLUTION, MAX_RESOLUTION = 16, 8192  # automatic UV noise texture size (texels per side)
LARGEST_RESOLUTION = 65536  # explicit sizes: texel ids must fit in 32 bits for the hash
SAMPLED_LINES = 8  # rows and columns per view sampled for the automatic resolution
TABLE_LIMIT = 1 << 27  # ids up to which pixels are grouped through a table (512 MB of int32, mostly untouched)
DEFAULT_CELLS = 0.5  # field cells per pixel footprint side: a cell spans about 2 x 2 pixels
MASK32 = 0xFFFFFFFF
MASK64 = 0xFFFFFFFFFFFFFFFF


# ----------------------------------------------------------------------------- checks


def _integer(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def _seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed: expected an integer, got {seed!r}")
    return int(seed)


def _shape(shape) -> tuple[int, int, int]:
    """``(C, h, w)`` as three positive ints, or ValueError naming ``shape``."""
    try:
        items = tuple(shape)
    except TypeError:
        items = None
    ok = items is not None and len(items) == 3 and all(
        not isinstance(n, bool) and isinstance(n, (int, np.integer)) and n >= 1 for n in items)
    if not ok:
        raise ValueError(f"shape: expected 3 positive integers (C, h, w), got {shape!r}")
    return tuple(int(n) for n in items)


def _non_negative(name: str, value) -> float:
    if isinstance(value, bool) or not (isinstance(value, (int, float, np.number)) and math.isfinite(value)
                                       and value >= 0):
        raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
    return float(value)


def _positive(name: str, value) -> float:
    if isinstance(value, bool) or not (isinstance(value, (int, float, np.number)) and math.isfinite(value)
                                       and value > 0):
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
    return float(value)


def _generator(seed: int) -> torch.Generator:
    # manual_seed takes [-2^63, 2^64); fold anything else into 64 bits first.
    return torch.Generator().manual_seed(seed & MASK64)


# ----------------------------------------------------------------------------- item models


def iid(count: int, shape, seed: int) -> torch.Tensor:
    """Independent N(0, 1) items -> ``(count, C, h, w) float32``."""
    count, shape, seed = _integer("count", count, 1), _shape(shape), _seed(seed)
    return torch.randn((count, *shape), generator=_generator(seed))


def fixed(count: int, shape, seed: int) -> torch.Tensor:
    """The same N(0, 1) draw for every item -> ``(count, C, h, w) float32``."""
    count, shape, seed = _integer("count", count, 1), _shape(shape), _seed(seed)
    one = torch.randn(shape, generator=_generator(seed))
    return one.expand(count, *shape).contiguous()


def mixed(count: int, shape, alpha: float, seed: int) -> torch.Tensor:
    """PYoCo mixed noise -> ``(count, C, h, w) float32``.

    eps_i = sqrt(alpha^2 / (1 + alpha^2)) shared + sqrt(1 / (1 + alpha^2)) ind_i: unit
    variance, correlation alpha^2 / (1 + alpha^2) between any two items.
    """
    count, shape, seed = _integer("count", count, 1), _shape(shape), _seed(seed)
    alpha = _non_negative("alpha", alpha)
    generator = _generator(seed)
    shared = torch.randn(shape, generator=generator)
    individual = torch.randn((count, *shape), generator=generator)
    shared_weight = math.sqrt(alpha * alpha / (1 + alpha * alpha))
    return shared_weight * shared + math.sqrt(1 / (1 + alpha * alpha)) * individual


def progressive(count: int, shape, alpha: float, seed: int) -> torch.Tensor:
    """PYoCo progressive (autoregressive) noise -> ``(count, C, h, w) float32``.

    eps_0 ~ N(0, 1); eps_i = alpha / sqrt(1 + alpha^2) eps_(i-1) + 1 / sqrt(1 + alpha^2) ind_i:
    unit variance, correlation (alpha / sqrt(1 + alpha^2))^|i - j|.
    """
    count, shape, seed = _integer("count", count, 1), _shape(shape), _seed(seed)
    alpha = _non_negative("alpha", alpha)
    keep, fresh = alpha / math.sqrt(1 + alpha * alpha), 1 / math.sqrt(1 + alpha * alpha)
    noise = torch.randn((count, *shape), generator=_generator(seed))
    for i in range(1, count):
        noise[i] = keep * noise[i - 1] + fresh * noise[i]
    return noise


def divergence(x: torch.Tensor, y: torch.Tensor) -> float:
    """D(x, y) = mean((x - y)^2) / 2; for unit-variance x, y with correlation rho, E[D] = 1 - rho."""
    return float(((x.double() - y.double()) ** 2).mean() / 2)


def _step_divergence(a: float, prev_sq: float, eta_sq, cross):
    """D(prev, sqrt(a) prev + sqrt(1-a) eta) from the means of prev^2, eta^2 and prev*eta.

    x - prev = (sqrt(a) - 1) prev + sqrt(1 - a) eta, so no tensor is touched per evaluation.
    """
    keep, fresh = math.sqrt(a), math.sqrt(1 - a)
    return ((1 - keep) ** 2 * prev_sq + fresh * fresh * eta_sq - 2 * (1 - keep) * fresh * cross) / 2


def _line_search(lam: float, prev_sq: float, eta_sq: float, cross: float, steps: int = 60) -> float:
    """The ``a`` in [0, 1] whose step divergence is ``lam`` (bisection; D falls from D(0) to D(1) = 0)."""
    if lam <= 0:
        return 1.0  # a still sequence, exactly
    if _step_divergence(0.0, prev_sq, eta_sq, cross) <= lam:
        return 0.0  # even fresh noise does not diverge that much: take fresh noise
    low, high = 0.0, 1.0  # D(low) > lam >= D(high)
    for _ in range(steps):
        middle = (low + high) / 2
        if _step_divergence(middle, prev_sq, eta_sq, cross) > lam:
            low = middle
        else:
            high = middle
    return high


def dependency(count: int, shape, lam: float, seed: int, candidates: int = 16, return_a: bool = False):
    """ZS2 dependency noise -> ``(count, C, h, w) float32`` (and the ``a`` values if ``return_a``).

    Frame 0 ~ N(0, 1); frame i = sqrt(a_i) frame(i-1) + sqrt(1 - a_i) eta_i. The divergence
    between consecutive frames is D(x, y) = mean((x - y)^2) / 2 (:func:`divergence`); for
    unit-variance x, y with correlation rho, E[D] = 1 - rho, so ``lam`` is about
    1 - correlation. Per frame:

    1. random search: of ``candidates`` iid etas keep the one whose D(prev, sqrt(a0) prev
       + sqrt(1 - a0) eta) is closest to ``lam``, a0 = (1 - lam)^2 clipped to [0, 1]
       (E[D] = 1 - sqrt(a0) = lam);
    2. line search: bisection on ``a`` in [0, 1] with the closed form of D (means of prev^2,
       eta^2, prev*eta), so D approaches ``lam``.

    ``lam`` = 0 gives identical frames (a = 1 exactly); ``lam`` >= ~1 gives a = 0 (fresh noise).
    With ``return_a`` returns ``(noise, a_values)``, ``a_values[i - 1]`` being frame i's ``a``
    (``count - 1`` floats).
    """
    count, shape, seed = _integer("count", count, 1), _shape(shape), _seed(seed)
    lam = _non_negative("lam", lam)
    candidates = _integer("candidates", candidates, 1)
    generator = _generator(seed)
    first_guess = min(max((1 - lam) ** 2, 0.0), 1.0)
    frames = [torch.randn(shape, generator=generator)]
    a_values = []
    for _ in range(1, count):
        prev = frames[-1]
        etas = torch.randn((candidates, *shape), generator=generator)
        prev_sq = float(prev.double().square().mean())
        eta_sq = etas.double().square().flatten(1).mean(1)
        cross = (etas.double() * prev.double()).flatten(1).mean(1)
        guesses = _step_divergence(first_guess, prev_sq, eta_sq, cross)
        best = int((guesses - lam).abs().argmin())
        a = _line_search(lam, prev_sq, float(eta_sq[best]), float(cross[best]))
        frames.append(math.sqrt(a) * prev + math.sqrt(1 - a) * etas[best])
        a_values.append(a)
    sequence = torch.stack(frames)
    return (sequence, a_values) if return_a else sequence


# ----------------------------------------------------------------------------- surface noise
#
# A white-noise texture in UV space that is never stored: texel t's value for channel c is
# a counter-based hash of (t, c, seed) turned Gaussian, computed only where a view looks.
# The per-pixel bookkeeping runs in numpy: it is many small integer passes, which numpy
# runs with less overhead than torch on CPU; torch supplies the seeded generators.


def texel_gaussians(texels, channels: int, seed: int) -> torch.Tensor:
    """N(0, 1) values of the seed's UV noise texture at texel ids -> ``(channels, N) float32``.

    ``texels (N,)`` integer ids in [0, 2^32) (numpy or torch). A pair of hashed uniforms
    per pair of channels goes through Box-Muller. Two hash rounds (texel, then texel x
    stream, keys from the seed) keep the channels of one seed and the textures of two
    seeds unrelated.
    """
    channels, seed = _integer("channels", channels, 1), _seed(seed)
    ids = texels.numpy() if isinstance(texels, torch.Tensor) else np.asarray(texels)
    if ids.ndim != 1 or ids.dtype.kind not in "iu" or (ids.size and (ids.min() < 0 or ids.max() > MASK32)):
        raise ValueError("texels: expected a (N,) array of integer ids in [0, 2^32)")
    return torch.from_numpy(hashed_gaussians(ids, channels, seed))


def _surface_inputs(uv, mask, channels, factor) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Validated ``uv (V, H, W, 2) float32`` and ``mask (V, H, W) bool`` as numpy arrays."""
    channels = _integer("channels", channels, 1)
    factor = _integer("factor", factor, 1)
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_:
        raise ValueError(f"mask: expected a (V, H, W) bool array, got {getattr(mask, 'dtype', type(mask))}")
    if mask.ndim != 3:
        raise ValueError(f"mask: expected shape (V, H, W), got {mask.shape}")
    if isinstance(uv, torch.Tensor):
        uv = uv.detach().cpu().numpy()
    try:
        uv = np.asarray(uv, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise ValueError(f"uv: expected a (V, H, W, 2) float array ({error})") from None
    if uv.shape != (*mask.shape, 2):
        raise ValueError(f"uv: expected shape (V, H, W, 2) = {(*mask.shape, 2)} to match mask, got {uv.shape}")
    views, height, width = mask.shape
    if views < 1 or height < 1 or width < 1 or height % factor or width % factor:
        raise ValueError(f"mask: expected V >= 1 and H, W positive multiples of factor={factor}, "
                         f"got shape {mask.shape}")
    return np.ascontiguousarray(uv), np.ascontiguousarray(mask), channels, factor


def _check_uv_range(surface_uv: np.ndarray) -> None:
    """``surface_uv (N, 2)``: the UVs of masked pixels must be finite and in [0, 1]."""
    if surface_uv.size == 0:
        return
    low, high = surface_uv.min(), surface_uv.max()
    if not (low >= 0.0 and high <= 1.0):  # also False for NaN
        if np.isnan(surface_uv).any():
            raise ValueError("uv: NaN on masked pixels")
        raise ValueError(f"uv: values on masked pixels must be in [0, 1], got [{low}, {high}]")


def _neighbour_steps(uv: np.ndarray, mask: np.ndarray, stride: int) -> np.ndarray:
    """UV step lengths between horizontally / vertically adjacent masked pixels on every
    ``stride``-th row / column -> ``(M,) float32``."""
    rows_uv, rows_mask = uv[:, ::stride], mask[:, ::stride]
    across = (rows_uv[:, :, 1:] - rows_uv[:, :, :-1])[rows_mask[:, :, 1:] & rows_mask[:, :, :-1]]
    cols_uv, cols_mask = uv[:, :, ::stride], mask[:, :, ::stride]
    down = (cols_uv[:, 1:] - cols_uv[:, :-1])[cols_mask[:, 1:] & cols_mask[:, :-1]]
    steps = np.concatenate([across, down])
    return np.sqrt((steps * steps).sum(axis=1))


def _resolution(uv: np.ndarray, mask: np.ndarray, texels_per_pixel: float) -> int:
    stride = max(1, min(mask.shape[1], mask.shape[2]) // SAMPLED_LINES)
    steps = _neighbour_steps(uv, mask, stride)
    if steps.size < 64 and stride > 1:  # too few samples (a small object): use every line
        steps = _neighbour_steps(uv, mask, 1)
    if steps.size == 0:
        return MIN_RESOLUTION  # no two masked pixels touch: any size works
    footprint = float(np.median(steps))
    if not math.isfinite(footprint):
        raise ValueError("uv: NaN on masked pixels")
    if footprint <= 0:
        return MAX_RESOLUTION
    return int(min(max(math.ceil(texels_per_pixel / footprint), MIN_RESOLUTION), MAX_RESOLUTION))


def surface_resolution(uv, mask, texels_per_pixel: float = 1.0) -> int:
    """Side R of the UV noise texture so a pixel spans about ``texels_per_pixel`` texels.

    ``uv (V, H, W, 2)``, ``mask (V, H, W) bool``. The footprint of a pixel is the median UV
    step between adjacent masked pixels over all views (the median ignores the big jumps
    at UV seams); R = ceil(texels_per_pixel / footprint) clamped to [16, 8192]. Only
    every k-th row and column is sampled (about 8 of each per view, all of them for
    small objects), which the median barely notices.
    """
    texels_per_pixel = _positive("texels_per_pixel", texels_per_pixel)
    uv, mask, _, _ = _surface_inputs(uv, mask, 1, 1)
    return _resolution(uv, mask, texels_per_pixel)


def _view_seed(seed: int, view: int) -> int:
    """An independent 63-bit generator seed per view (pixel splits, background)."""
    return _splitmix64(_splitmix64(seed & MASK64) ^ (0x5EED0000 + view)) >> 1


def _gather_uv(flat_uv: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """``flat_uv (H * W, 2) float32`` at ``pixels (N,)`` -> ``(N, 2)``; each (u, v) pair is
    moved as one 8-byte item, which is much faster than a row gather."""
    return flat_uv.view(np.int64).reshape(-1)[pixels].view(np.float32).reshape(-1, 2)


def _texel_ids(surface_uv: np.ndarray, resolution: int) -> np.ndarray:
    """``surface_uv (N, 2)`` in [0, 1] -> texel ids ``(N,) int64`` = ty * R + tx (u = 1 in the last texel)."""
    cells = (surface_uv * np.float32(resolution)).astype(np.int32)
    np.minimum(cells, resolution - 1, out=cells)
    return cells[:, 1].astype(np.int64) * resolution + cells[:, 0]


def _segment_sums(values: np.ndarray, segments: np.ndarray, size: int) -> np.ndarray:
    """Sum ``values (C, N)`` over ``segments (N,)`` in [0, size) -> ``(C, size) float64``.

    One bincount over channel-offset ids (bincount is the fastest segment sum on CPU).
    """
    channels = values.shape[0]
    ids = (segments[None, :] + np.arange(channels)[:, None] * size).ravel()
    sums = np.bincount(ids, weights=values.ravel(), minlength=channels * size)
    return sums.astype(np.float64, copy=False).reshape(channels, size)  # empty input gives int64


class _TexelGroups:
    """Groups the masked pixels of one view by texel; a group's label is the index of one of
    its pixels (its representative).

    For ids below :data:`TABLE_LIMIT`, without sorting: a scratch table over the ids (never
    initialised: only entries just written are read; grown as needed) maps each id to its
    last pixel. Beyond, by sorting the ids (the table would be too big).
    """

    def __init__(self):
        self.table = np.empty(0, dtype=np.int32)

    def labels(self, texels: np.ndarray) -> np.ndarray:
        """``texels (N,) int64`` ids -> ``(N,) int64`` labels in [0, N), equal iff same id."""
        top = int(texels.max()) + 1 if texels.size else 0
        if top > TABLE_LIMIT:
            _, first, inverse = np.unique(texels, return_index=True, return_inverse=True)
            return first[inverse]
        if self.table.size < top:
            self.table = np.empty(top, dtype=np.int32)
        self.table[texels] = np.arange(texels.size, dtype=np.int32)
        return self.table[texels].astype(np.int64)


def _split_terms(cells: "_ViewCells", shared: "_ViewTexels", block_count: int, channels: int,
                 seed: int) -> np.ndarray:
    """Block sums ``(C, block_count) float64`` of the zero-sum terms that split cells among
    the pixels sharing them, for the cells straddling latent blocks.

    A cell of variance s seen by n pixels of a view is split into parts s_p = Z / n +
    sqrt(s / n) (W_p - mean W over the cell), W iid N(0, 1): each part has variance s / n,
    Cov(s_p, s_q) = s / n^2 - s / n^2 = 0, and the parts sum to Z, so pixels sharing a
    cell stay independent. The W terms sum to exactly 0 over a cell, so only cells
    straddling latent blocks change a block sum: W is drawn for their pixels alone, hashed
    from the cell and the pixel's place in it (:func:`noise_field.split_gaussians`), so a
    view seen twice is split the same way twice.
    """
    pixels = shared.straddling
    if pixels.size == 0:
        return np.zeros((channels, block_count))
    draws = noise_field.split_gaussians(cells.ids[pixels], cells.uv[pixels], cells.cells_per_side(pixels),
                                        channels, seed).astype(np.float64)
    texel_of, counts = shared.straddling_texel, shared.straddling_count
    means = np.take(_segment_sums(draws, texel_of, texel_of.max() + 1), texel_of, axis=1) / counts
    scale = np.sqrt(cells.variance(pixels) / counts)
    return _segment_sums((draws - means) * scale, cells.blocks[pixels], block_count)


def _in_straddling_texel(labels: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """Pixels whose texel also covers pixels of another latent block -> ``(N,) bool``.

    A texel straddles iff one of its pixels lies outside its representative's block.
    """
    straddles = np.zeros(labels.size, dtype=bool)
    straddles[labels[blocks != blocks[labels]]] = True
    return straddles[labels]


def _compact(labels: np.ndarray, representatives: np.ndarray, pixels: int) -> np.ndarray:
    """Labels (indices of representative pixels, < ``pixels``) -> 0, 1, ... in the order of
    ``representatives``."""
    compact = np.empty(pixels, dtype=np.int64)
    compact[representatives] = np.arange(representatives.size)
    return compact[labels]


class _ViewTexels:
    """How the masked pixels of one view share texels and latent pixels.

    ``labels (N,)`` texel group per pixel (the index of its representative pixel),
    ``blocks (N,)`` latent pixel per pixel. Summing the parts Z_t / n_t of a texel lying
    inside one latent block gives Z_t: its representative carries it with weight 1 and
    the others are skipped (fewer hashes). Each pixel of a texel straddling blocks carries
    Z_t / n_t. The weight is also the variance its part(s) add to the block.

    Attributes: ``carriers (P,)`` pixel indices, ``weights (P,) float64``, for the
    straddling pixels ``straddling (K,)``, ``straddling_texel (K,)`` compact texel index
    and ``straddling_count (K,)`` n_t; ``representatives (T,)`` one pixel per texel and
    ``carrier_texel (P,)`` each carrier's texel among them.
    """

    def __init__(self, labels: np.ndarray, blocks: np.ndarray):
        group_size = np.bincount(labels, minlength=labels.size)  # n_t, indexed by label
        is_representative = labels == np.arange(labels.size)
        in_straddling = _in_straddling_texel(labels, blocks)
        self.carriers = np.flatnonzero(is_representative | in_straddling)
        self.weights = np.ones(self.carriers.size)
        carried_split = in_straddling[self.carriers]
        self.weights[carried_split] = 1.0 / group_size[labels[self.carriers[carried_split]]]
        self.straddling = np.flatnonzero(in_straddling)
        straddling_labels = labels[self.straddling]
        self.straddling_count = group_size[straddling_labels]
        self.straddling_texel = _compact(straddling_labels, np.flatnonzero(is_representative & in_straddling),
                                         labels.size)
        # Every texel's representative carries it: the texels carried, and each carrier's.
        self.representatives = np.flatnonzero(is_representative)
        self.carrier_texel = _compact(labels[self.carriers], self.representatives, labels.size)


def _block_ids(height: int, width: int, factor: int) -> np.ndarray:
    """Latent pixel (block) index of every image pixel -> ``(H * W,) int64``."""
    rows = np.arange(height) // factor * (width // factor)
    cols = np.arange(width) // factor
    return (rows[:, None] + cols[None, :]).ravel()


class _SurfaceSpec:
    """What every view of one :func:`surface` call shares. ``resolution`` None: the
    integral field (:mod:`zs_core.noise_field`) read at each block's own scale; else one
    flat texture of R x R texels."""

    def __init__(self, seed: int, channels: int, factor: int, height: int, width: int,
                 resolution: int | None, texels_per_pixel: float):
        self.seed, self.channels, self.factor, self.resolution = seed, channels, factor, resolution
        self.texels_per_pixel = texels_per_pixel
        self.field = noise_field.Field(seed, channels) if resolution is None else None
        self.height, self.width = height, width
        self.latent_size = (height // factor, width // factor)
        self.block_count = self.latent_size[0] * self.latent_size[1]
        self.block_of_pixel = _block_ids(height, width, factor)


# ---------------------------------------------------------------- which cell each pixel reads

FOOTPRINT_STRIDE = 4  # footprints are measured on every 4th row and column (a few per latent pixel)


def _sampled_footprints(uv: np.ndarray, mask: np.ndarray, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """log2 of the UV footprint side (sqrt of the UV area one pixel covers) on every
    ``stride``-th row and column of one view -> (values (M,) float64, flat pixel indices (M,)).

    ``uv (H, W, 2)``, ``mask (H, W) bool``. The area is the cross product of the steps to
    the next row and column, or to the previous ones, whichever pair is smaller (a UV seam
    on one side must not count); pixels without a masked pair are left out.
    """
    height, width = mask.shape
    sampled = (slice(1, height - 1, stride), slice(1, width - 1, stride))
    centre, centre_mask = uv[sampled], mask[sampled]
    area = None
    for step in (1, -1):
        right = (sampled[0], slice(1 + step, width - 1 + step, stride))
        below = (slice(1 + step, height - 1 + step, stride), sampled[1])
        across, down = uv[right] - centre, uv[below] - centre
        this = np.abs(across[..., 0] * down[..., 1] - across[..., 1] * down[..., 0])
        this[~(mask[right] & mask[below])] = np.inf
        area = this if area is None else np.minimum(area, this)
    keep = centre_mask & np.isfinite(area) & (area > 0)
    rows, cols = np.nonzero(keep)
    flat = (1 + rows * stride) * width + 1 + cols * stride
    return 0.5 * np.log2(area[keep].astype(np.float64)), flat


def _block_levels(flat_uv: np.ndarray, flat_mask: np.ndarray, spec: _SurfaceSpec) -> np.ndarray:
    """The field level each latent block reads -> ``(B,) int64``: the level whose cells are
    ``texels_per_pixel`` cells per pixel footprint side, the footprint averaged (in log)
    over the block's sampled pixels; blocks without samples take the view's median."""
    uv, mask = flat_uv.reshape(spec.height, spec.width, 2), flat_mask.reshape(spec.height, spec.width)
    log_side, pixels = _sampled_footprints(uv, mask, FOOTPRINT_STRIDE)
    if log_side.size == 0:  # no measurable footprint (specks): any level is right; use the finest
        return np.zeros(spec.block_count, dtype=np.int64)
    blocks = spec.block_of_pixel[pixels]
    counts = np.bincount(blocks, minlength=spec.block_count)
    mean = np.bincount(blocks, weights=log_side, minlength=spec.block_count) / np.maximum(counts, 1)
    mean[counts == 0] = np.median(log_side)
    level = np.rint(FIELD_LEVELS + mean - math.log2(spec.texels_per_pixel))
    return np.clip(level, 0, FIELD_LEVELS).astype(np.int64)


def _adopt_coarser_cells(levels: np.ndarray, x: np.ndarray, y: np.ndarray, near_coarser: np.ndarray) -> np.ndarray:
    """Pixel levels ``(N,)`` -> levels such that no cell read is inside another one read:
    a pixel whose cell lies inside a coarser cell some pixel reads reads that one too (the
    pixels then split it). Without this, two latent pixels of one view at different levels
    would share noise. ``x, y (N,)``: the pixels' level-0 cells; ``near_coarser (N,) bool``:
    the pixels whose latent pixel or a neighbouring one reads a coarser level than theirs
    (a cell spans about two pixels, so only those can fall in a coarser cell)."""
    levels = levels.copy()
    candidates = np.flatnonzero(near_coarser)
    if candidates.size == 0:
        return levels
    present = np.flatnonzero(np.bincount(levels))
    for level in present[::-1][:-1]:  # coarsest first; the finest adopts, never imposes
        level = int(level)
        width = noise_field.side(level)
        read = np.zeros(width * width, dtype=bool)
        at_level = levels == level
        read[(y[at_level] >> level) * width + (x[at_level] >> level)] = True
        finer = candidates[levels[candidates] < level]
        adopt = finer[read[(y[finer] >> level) * width + (x[finer] >> level)]]
        levels[adopt] = level
    return levels


def _near_coarser(block_levels: np.ndarray, latent_size: tuple[int, int]) -> np.ndarray:
    """Latent pixels next to (or at) one reading a coarser level -> ``(B,) bool``."""
    grid = block_levels.reshape(latent_size)
    return (ndimage.maximum_filter(grid, size=3, mode="nearest") > grid).ravel()


class _ViewCells:
    """Which cell each masked pixel of one view reads: ``ids (N,)`` cell ids (distinct over
    levels), ``levels (N,)`` (None for a flat texture of ``resolution`` texels), ``blocks
    (N,)`` latent pixel, ``uv (N, 2)`` (the key of a pixel's share when a cell is split)."""

    def __init__(self, flat_uv: np.ndarray, flat_mask: np.ndarray, spec: _SurfaceSpec):
        pixels = np.flatnonzero(flat_mask)
        self.uv = _gather_uv(flat_uv, pixels)
        _check_uv_range(self.uv)
        self.blocks = spec.block_of_pixel[pixels]
        self.resolution = spec.resolution
        if spec.resolution is not None:
            self.ids, self.levels = _texel_ids(self.uv, spec.resolution), None
            return
        block_levels = _block_levels(flat_uv, flat_mask, spec)
        levels = block_levels[self.blocks]
        x, y = noise_field.fine_coordinates(self.uv)
        if pixels.size and levels.min() != levels.max():
            near = _near_coarser(block_levels, spec.latent_size)[self.blocks]
            levels = _adopt_coarser_cells(levels, x, y, near)
        self.levels = levels
        self.ids = noise_field.cell_ids(levels, x >> levels, y >> levels)

    def variance(self, rows: np.ndarray) -> np.ndarray:
        """The variance ``(n,) float64`` of the cells the pixels ``rows`` read (4^level)."""
        return np.ones(rows.size) if self.levels is None else np.ldexp(1.0, 2 * self.levels[rows])

    def cells_per_side(self, rows: np.ndarray) -> np.ndarray:
        """Cells per side ``(n,) int64`` of the grid of the cells the pixels ``rows`` read."""
        if self.levels is None:
            return np.full(rows.size, self.resolution, dtype=np.int64)
        return noise_field.side(0) >> self.levels[rows]


def _carried_values(cells: _ViewCells, shared: "_ViewTexels", spec: _SurfaceSpec) -> np.ndarray:
    """The values ``(C, P) float64`` of the cells the view's carriers read, each cell's
    value (with its ancestors) computed once."""
    ids = cells.ids[shared.representatives]
    if cells.levels is None:  # a flat texture: every texel its own hash
        return hashed_gaussians(ids, spec.channels, spec.seed).astype(np.float64)[:, shared.carrier_texel]
    levels = cells.levels[shared.representatives]
    keys = ids - noise_field.LEVEL_OFFSETS[levels]
    present = np.flatnonzero(np.bincount(levels))
    found = spec.field.values({int(level): keys[levels == level] for level in present})
    per_texel = np.empty((spec.channels, ids.size))
    for level, values in found.items():
        per_texel[:, levels == level] = values
    return per_texel[:, shared.carrier_texel]


def _view_surface_noise(cells: _ViewCells, shared: "_ViewTexels", spec: _SurfaceSpec, generator: torch.Generator,
                        background_sums: np.ndarray | None = None) -> np.ndarray:
    """One view's latents ``(C, B) float64``, each N(0, 1).

    Per latent block: S, the sum of the cells (and parts of cells) its surface pixels read,
    over its standard deviation, weighted sqrt(k_s) / f, plus the block's k_b background
    pixels' noise (variance k_b) over f: variance (k_s + k_b) / f^2 = 1, every pixel
    weighing the same. ``background_sums (C, B)`` is the background pixels' summed
    unit-variance noise (sqrt(k_b) G for iid pixels); None draws it fresh."""
    carriers = shared.carriers
    carried_blocks = cells.blocks[carriers]
    weights = shared.weights  # a whole cell 1, a part of a cell split among n_t pixels 1 / n_t
    carried = _carried_values(cells, shared, spec) * weights
    sums = _segment_sums(carried, carried_blocks, spec.block_count)
    sums += _split_terms(cells, shared, spec.block_count, spec.channels, spec.seed)
    variances = np.bincount(carried_blocks, weights=weights * cells.variance(carriers), minlength=spec.block_count)
    surface_pixels = np.bincount(cells.blocks, minlength=spec.block_count)
    background = spec.factor ** 2 - surface_pixels
    if background_sums is None:
        fresh = torch.randn((spec.channels, spec.block_count), generator=generator).numpy()
        background_sums = np.sqrt(background) * fresh
    with np.errstate(invalid="ignore", divide="ignore"):
        surface_part = np.where(variances > 0, sums / np.sqrt(variances), 0.0) * np.sqrt(surface_pixels)
    return (surface_part + background_sums) / spec.factor


def surface(uv, mask, seed: int, channels: int = 4, factor: int = 8, texels_per_pixel: float = DEFAULT_CELLS,
            resolution: int | None = None, background=None) -> torch.Tensor:
    """Correspondence-guided integral noise -> ``(V, channels, H/factor, W/factor) float32``.

    ``uv (V, H, W, 2)`` float32 in [0, 1] on masked pixels (numpy or torch), ``mask
    (V, H, W) bool`` (object pixels). All views read one white-noise field on the UV
    square (:mod:`zs_core.noise_field`), integrated over cells of a quadtree: each latent
    pixel reads the level whose cells are ``texels_per_pixel`` cells per side of its
    pixels' footprint (measured from the UV pass), so a close-up reads fine cells and a
    far view coarse ones, and where they overlap they share the same integral of the same
    field. Two views of the same surface then correlate as integral noise does,
    |A ∩ B| / sqrt(|A| |B|) for latent pixels of footprints A and B, whatever the
    distance, angle or projection. ``resolution`` instead reads one flat texture of
    R x R texels at every pixel (no scale adaptation; for tests and comparison).

    Per view, each masked pixel reads one cell; a cell read by n pixels of the view is
    split into n independent parts summing to it (:class:`_ViewTexels`,
    :func:`_split_terms`); where blocks read different levels, no cell read lies inside
    another (:func:`_adopt_coarser_cells`). A latent pixel sums its surface parts over
    their standard deviation and adds its background pixels' independent noise, weighted
    by pixel counts: exactly N(0, 1), neighbours independent, and the same camera twice
    gives the same latents wherever the view is all surface. Views run on a few threads
    (numpy releases the GIL), with the same result for any thread count.

    ``background`` (optional) latent noise ``(V, C, h, w)`` replaces the background: one
    N(0, 1) value G per latent pixel stands for the sum sqrt(k) G of its k background
    pixels, so any item model of this module (dependency, mixed, ...) can drive the
    background of a frame sequence. It must not depend on the texture (another seed).
    :func:`animated` also takes background noise warped along motion vectors.
    """
    seed = _seed(seed)
    uv, mask, channels, factor = _surface_inputs(uv, mask, channels, factor)
    background_sums = None
    if background is not None:
        background_sums = _latent_background_sums(background, mask, channels, factor)
    return _surface(uv, mask, seed, channels, factor, texels_per_pixel, resolution, background_sums)


def _surface(uv: np.ndarray, mask: np.ndarray, seed: int, channels: int, factor: int, texels_per_pixel,
             resolution, background_sums: np.ndarray | None) -> torch.Tensor:
    """:func:`surface` on validated inputs; ``background_sums (V, C, B)`` or None (fresh)."""
    views, height, width = mask.shape
    texels_per_pixel = _positive("texels_per_pixel", texels_per_pixel)
    if resolution is not None:
        resolution = _integer("resolution", resolution, 1)
        if resolution > LARGEST_RESOLUTION:
            raise ValueError(f"resolution: expected at most {LARGEST_RESOLUTION}, got {resolution}")
    spec = _SurfaceSpec(seed, channels, factor, height, width, resolution, texels_per_pixel)
    flat_mask, flat_uv = mask.reshape(views, -1), uv.reshape(views, -1, 2)
    latents = np.empty((views, channels, spec.block_count))

    def run(worker: int, workers: int) -> None:
        groups = _TexelGroups()  # one scratch table per thread
        for view in range(worker, views, workers):
            cells = _ViewCells(flat_uv[view], flat_mask[view], spec)
            shared = _ViewTexels(groups.labels(cells.ids), cells.blocks)
            generator = _generator(_view_seed(seed, view))
            sums = None if background_sums is None else background_sums[view]
            latents[view] = _view_surface_noise(cells, shared, spec, generator, sums)

    _run_threads(run, min(views, torch.get_num_threads()))
    return torch.from_numpy(latents.astype(np.float32)).reshape(views, channels, *spec.latent_size)


def _run_threads(run, workers: int) -> None:
    """``run(worker, workers)`` for every worker index, on ``workers`` threads (errors re-raised)."""
    if workers <= 1:
        run(0, 1)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(run, worker, workers) for worker in range(workers)]:
            future.result()


# ----------------------------------------------------------------------------- frame sequences
#
# Animation noise: object pixels take surface noise through each frame's UV pass (the same
# material point keeps its noise in every frame, also under deformation; surface that comes
# into view meets texels no frame saw before, i.e. fresh noise). Background pixels follow one
# of the item models over frames, or are warped along the vector pass.

# The animation's background models: "warped" (warp_field) or an item model of make();
# protocol's "auto" is resolved by the caller (zs_core.animation.background_mode).
BACKGROUND_MODES = tuple(mode for mode in BACKGROUND_NOISE_MODES if mode != "auto")


def _block_sums(values: np.ndarray, factor: int) -> np.ndarray:
    """``values (C, H, W)`` -> sums over factor x factor blocks ``(C, (H/f) * (W/f)) float64``."""
    channels, height, width = values.shape
    blocks = values.reshape(channels, height // factor, factor, width // factor, factor)
    return blocks.sum(axis=(2, 4), dtype=np.float64).reshape(channels, -1)


def _latent_background_sums(background, mask: np.ndarray, channels: int, factor: int) -> np.ndarray:
    """Latent background ``(V, C, h, w)`` -> each block's background sum sqrt(k) G ``(V, C, B)``."""
    views, height, width = mask.shape
    expected = (views, channels, height // factor, width // factor)
    if isinstance(background, torch.Tensor):
        background = background.detach().cpu().numpy()
    background = np.asarray(background, dtype=np.float64)
    if background.shape != expected:
        raise ValueError(f"background: expected latent noise of shape {expected}, got {background.shape}")
    if not np.isfinite(background).all():
        raise ValueError("background: contains NaN or inf")
    counts = np.stack([_block_sums((~view)[None].astype(np.float32), factor)[0] for view in mask])  # (V, B)
    return np.sqrt(counts)[:, None, :] * background.reshape(views, channels, -1)


def _checked_vector(vector, frames: int, height: int, width: int) -> np.ndarray:
    """The vector pass as float32 ``(F or F - 1, H, W, 2)``, or ValueError naming ``vector``."""
    if vector is None:
        raise ValueError("vector: warped noise needs the vector pass (F, H, W, 2): pixel motion to the next frame")
    if isinstance(vector, torch.Tensor):
        vector = vector.detach().cpu().numpy()
    vector = np.asarray(vector, dtype=np.float32)
    if vector.ndim != 4 or vector.shape[1:] != (height, width, 2) or vector.shape[0] not in (frames - 1, frames):
        raise ValueError(f"vector: expected shape ({frames}, {height}, {width}, 2) (or {frames - 1} frames), "
                         f"got {vector.shape}")
    return vector


def warp_field(field: np.ndarray, vector: np.ndarray, generator: torch.Generator,
               sources: np.ndarray | None = None) -> np.ndarray:
    """Carry a white-noise field one frame along the vector pass, keeping it white.

    ``field (C, H, W) float32`` iid N(0, 1) per pixel; ``vector (H, W, 2)`` motion of each
    pixel to the next frame, [col, row] in pixels, rows down; ``sources (H, W) bool`` the
    pixels allowed to move (default: all). -> the next frame's field ``(C, H, W) float32``.

    Each source pixel lands in the pixel containing its moved centre. A pixel reached by n
    sources takes their sum / sqrt(n): N(0, 1), and pixels reached by disjoint sets stay
    independent (a discrete form of integral noise transport; the latent pixel being a
    sum over 8 x 8 image pixels, motion finer than a latent pixel is followed). Pixels no
    source reaches (disocclusions, the image border) get fresh N(0, 1) from ``generator``.
    Where the image contracts several sources merge; where it expands some pixels are fresh,
    so correlation with the previous frame falls with the expansion, never the variance.
    """
    channels, height, width = field.shape
    rows, cols = np.mgrid[0:height, 0:width]
    with np.errstate(invalid="ignore"):
        target_cols = np.floor(cols + 0.5 + vector[..., 0])
        target_rows = np.floor(rows + 0.5 + vector[..., 1])
    moving = (target_cols >= 0) & (target_cols < width) & (target_rows >= 0) & (target_rows < height)
    if sources is not None:
        moving &= sources
    source_index = np.flatnonzero(moving)
    target = (target_rows.ravel()[source_index] * width + target_cols.ravel()[source_index]).astype(np.int64)
    counts = np.bincount(target, minlength=height * width)
    sums = _segment_sums(field.reshape(channels, -1)[:, source_index], target, height * width)
    fresh = torch.randn((channels, height * width), generator=generator).numpy()
    reached = counts > 0
    out = np.where(reached, sums / np.sqrt(np.maximum(counts, 1)), fresh)
    return out.astype(np.float32).reshape(channels, height, width)


def _warped_fields(vector: np.ndarray, frames: int, channels: int, seed: int, sources: np.ndarray | None):
    """Yield the warped white-noise field ``(C, H, W) float32`` of every frame in turn (one
    field in memory at a time). Frame 0 is iid; ``sources (F, H, W) bool`` or None."""
    height, width = vector.shape[1:3]
    generator = _generator(seed)
    field = torch.randn((channels, height, width), generator=generator).numpy()
    yield field
    for frame in range(1, frames):
        field = warp_field(field, vector[frame - 1], generator, None if sources is None else sources[frame - 1])
        yield field


def warped(vector, seed: int, channels: int = 4, factor: int = 8, frames: int | None = None) -> torch.Tensor:
    """Noise warped along the vector pass -> ``(F, C, H/factor, W/factor) float32``.

    ``vector (F, H, W, 2)`` (or ``(F - 1, ...)`` with ``frames`` = F): pixel motion to the
    next frame, [col, row], rows down. An image-resolution white-noise field is carried from
    frame to frame by :func:`warp_field`; each latent pixel is its block's sum / factor, so
    every value is N(0, 1), neighbouring latent pixels are independent, and a latent pixel
    whose block moves by whole latent pixels keeps its value exactly.
    """
    seed, channels, factor = _seed(seed), _integer("channels", channels, 1), _integer("factor", factor, 1)
    vector_array = np.asarray(vector.detach().cpu().numpy() if isinstance(vector, torch.Tensor) else vector)
    if vector_array.ndim != 4:
        raise ValueError(f"vector: expected shape (F, H, W, 2), got {vector_array.shape}")
    frames = vector_array.shape[0] if frames is None else _integer("frames", frames, 1)
    height, width = vector_array.shape[1:3]
    vector_array = _checked_vector(vector_array, frames, height, width)
    if height % factor or width % factor:
        raise ValueError(f"vector: H, W must be multiples of factor={factor}, got {height}x{width}")
    latents = [_block_sums(field, factor) / factor
               for field in _warped_fields(vector_array, frames, channels, seed, None)]
    return torch.from_numpy(np.stack(latents).astype(np.float32)).reshape(
        frames, channels, height // factor, width // factor)


def _background_seed(seed: int) -> int:
    """The background's own 63-bit seed: independent of the texture and of the pixel splits."""
    return _splitmix64(_splitmix64(seed & MASK64) ^ 0xBAC6_0000) >> 1


def animated(uv, mask, seed: int, background: str = "warped", vector=None, channels: int = 4, factor: int = 8,
             alpha: float = 1.0, lam: float = 0.1, texels_per_pixel: float = DEFAULT_CELLS,
             resolution: int | None = None) -> torch.Tensor:
    """Noise for a frame sequence -> ``(F, channels, H/factor, W/factor) float32``.

    ``uv (F, H, W, 2)``, ``mask (F, H, W) bool`` (the target object in each frame). Object
    pixels get :func:`surface` noise through each frame's UV: the same material point keeps
    its noise in every frame, newly visible surface has texels no earlier frame saw. The
    background (``background``, :data:`BACKGROUND_MODES`) is

    - ``warped``: a white-noise field carried along ``vector (F, H, W, 2)`` by
      :func:`warp_field` (only background pixels move; disocclusions get fresh noise);
    - ``iid``, ``fixed``, ``mixed`` (``alpha``), ``progressive`` (``alpha``), ``dependency``
      (``lam``): that item model over the frames, one value per latent pixel.

    Latent pixels with both take the sum of their surface parts and background pixels over
    the total standard deviation, so every value is N(0, 1) and neighbours are independent.
    """
    seed = _seed(seed)
    uv, mask, channels, factor = _surface_inputs(uv, mask, channels, factor)
    frames, height, width = mask.shape
    if background not in BACKGROUND_MODES:
        raise ValueError(f"background: expected one of {', '.join(BACKGROUND_MODES)}, got {background!r}")
    background_seed = _background_seed(seed)
    if background == "warped":
        vector = _checked_vector(vector, frames, height, width)
        sums = np.stack([_block_sums(np.where(~frame_mask, field, 0.0), factor)
                         for frame_mask, field in zip(mask, _warped_fields(vector, frames, channels, background_seed,
                                                                           ~mask))])
    else:
        params = {"alpha": alpha} if background in ("mixed", "progressive") else {}
        if background == "dependency":
            params["lam"] = lam
        latent = make(background, frames, (channels, height // factor, width // factor), background_seed, **params)
        sums = _latent_background_sums(latent, mask, channels, factor)
    return _surface(uv, mask, seed, channels, factor, texels_per_pixel, resolution, sums)


# ----------------------------------------------------------------------------- dispatch


def make(mode: str, count: int, shape, seed: int, **params) -> torch.Tensor:
    """Noise of model ``mode`` (:data:`MODES`) -> ``(count, C, h, w) float32``.

    ``params`` are the model's own: ``alpha`` (mixed, progressive), ``lam``, ``candidates``
    (dependency), ``uv``, ``mask`` and optionally ``factor``, ``texels_per_pixel``,
    ``resolution`` (surface; ``shape`` gives the channels and latent size, ``factor``
    defaults to H / h).
    """
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {', '.join(MODES)}, got {mode!r}")
    return GENERATORS[mode](count, shape, seed=seed, **params)


def _make_surface(count, shape, seed, uv=None, mask=None, factor=None, **params) -> torch.Tensor:
    count, (channels, rows, cols) = _integer("count", count, 1), _shape(shape)
    for name, value in (("uv", uv), ("mask", mask)):
        if value is None:
            raise ValueError(f"{name}: required for mode 'surface'")
    views, height = np.shape(mask)[:2] if np.ndim(mask) == 3 else (None, None)
    if views is not None and count != views:
        raise ValueError(f"count: expected the number of views in mask ({views}), got {count}")
    if factor is None and height is not None:
        factor = max(1, height // rows)
    latents = surface(uv, mask, seed, channels=channels, factor=factor, **params)
    if tuple(latents.shape[1:]) != (channels, rows, cols):
        raise ValueError(f"shape: expected {(channels, *latents.shape[2:])} for mask {tuple(np.shape(mask))} "
                         f"and factor {factor}, got {tuple(shape)}")
    return latents


# Noise mode -> its generator, called as (count, shape, seed=..., **the model's params).
GENERATORS = {
    "iid": iid,
    "fixed": fixed,
    "mixed": mixed,
    "progressive": progressive,
    "dependency": dependency,
    "surface": _make_surface,
}
