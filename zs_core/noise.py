"""(T) Initial noise for the views / frames of one job (docs/methods.md, "Initial noise").

Every model returns a float32 CPU tensor ``(count, C, h, w)`` whose every value is
N(0, 1); the models differ only in how the items (views or frames) are correlated:

- :func:`iid`: independent items.
- :func:`fixed`: one draw repeated for every item (what frame-by-frame add-ons do).
- :func:`mixed` (PYoCo): shared + individual noise, correlation ``alpha^2 / (1 + alpha^2)``.
- :func:`progressive` (PYoCo): autoregressive, correlation ``(alpha / sqrt(1 + alpha^2))^|i-j|``.
- :func:`dependency` (ZS2): frame i = sqrt(a) frame(i-1) + sqrt(1-a) eta, with eta and a
  searched so the divergence between consecutive frames approaches ``lam``.
- :func:`surface`: correspondence-guided integral noise from one white-noise texture in
  UV space; the same surface point gets the same noise in every view.

:func:`make` dispatches on a mode name (:data:`MODES`, protocol's ``NOISE_MODES``). Bad
input raises ValueError naming the argument.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from .protocol import BACKGROUND_NOISE_MODES, NOISE_MODES

MODES = NOISE_MODES  # each has a generator in GENERATORS (tests/core/test_mode_names.py holds them equal)
MIN_RESOLUTION, MAX_RESOLUTION = 16, 8192  # automatic UV noise texture size (texels per side)
LARGEST_RESOLUTION = 65536  # explicit sizes: texel ids must fit in 32 bits for the hash
SAMPLED_LINES = 8  # rows and columns per view sampled for the automatic resolution
TABLE_LIMIT = 1 << 26  # texels up to which pixels are grouped through a table (256 MB of int32, mostly untouched)
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


def _splitmix64(x: int) -> int:
    """A 64-bit integer mixer on Python ints (seed -> well-spread keys)."""
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def _hash32(x: np.ndarray) -> np.ndarray:
    """lowbias32 integer hash, in place on a uint32 array. numpy wraps uint32 products
    mod 2^32 by definition (torch would need int64 tensors and masking, at 4x the cost)."""
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
    return x


def _texel_keys(seed: int, streams: int) -> tuple[np.uint32, list[np.uint32]]:
    """32-bit keys from the seed: one that scrambles texel ids, one per uniform stream."""
    base = _splitmix64(seed & MASK64)
    keys = [_splitmix64(base ^ (stream + 1)) & MASK32 for stream in range(streams + 1)]
    return np.uint32(keys[0]), [np.uint32(key) for key in keys[1:]]


def _uniforms(bits: np.ndarray) -> np.ndarray:
    """uint32 hashes -> float32 uniforms (k + 0.5) / 2^23 from the top 23 bits k: exact in
    float32 and never 0 or 1, so log(u) stays finite."""
    uniforms = (bits >> np.uint32(9)).astype(np.float32)
    uniforms += np.float32(0.5)
    uniforms *= np.float32(1.0 / (1 << 23))
    return uniforms


def _texel_gaussians(texels: np.ndarray, channels: int, seed: int) -> np.ndarray:
    """``texels (N,)`` int ids -> ``(channels, N) float32`` N(0, 1) texture values (numpy).

    One Box-Muller pair per two channels, computed pair by pair so the work stays in cache.
    """
    pairs = (channels + 1) // 2
    scramble_key, stream_keys = _texel_keys(seed, 2 * pairs)
    scrambled = _hash32(texels.astype(np.uint32) ^ scramble_key)
    values = np.empty((2 * pairs, texels.size), dtype=np.float32)
    for pair in range(pairs):
        radius = np.log(_uniforms(_hash32(scrambled ^ stream_keys[2 * pair])))
        radius *= np.float32(-2.0)
        np.sqrt(radius, out=radius)
        angle = _uniforms(_hash32(scrambled ^ stream_keys[2 * pair + 1]))
        angle *= np.float32(2 * math.pi)
        np.multiply(radius, np.cos(angle), out=values[2 * pair])
        np.multiply(radius, np.sin(angle), out=values[2 * pair + 1])
    return values[:channels]


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
    return torch.from_numpy(_texel_gaussians(ids, channels, seed))


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

    Up to :data:`TABLE_LIMIT` texels, without sorting: a scratch table over all texels (never
    initialised: only entries just written are read) maps each texel to its last pixel.
    Beyond, by sorting the texel ids (the table would be too big).
    """

    def __init__(self, resolution: int):
        texels = resolution * resolution
        self.table = np.empty(texels, dtype=np.int32) if texels <= TABLE_LIMIT else None

    def labels(self, texels: np.ndarray) -> np.ndarray:
        """``texels (N,) int64`` -> ``(N,) int64`` labels in [0, N), equal iff same texel."""
        if self.table is None:
            _, first, inverse = np.unique(texels, return_index=True, return_inverse=True)
            return first[inverse]
        self.table[texels] = np.arange(texels.size, dtype=np.int32)
        return self.table[texels].astype(np.int64)


def _split_terms(texel_of: np.ndarray, counts: np.ndarray, blocks: np.ndarray, block_count: int,
                 channels: int, generator: torch.Generator) -> np.ndarray:
    """Block sums ``(C, block_count) float64`` of the zero-sum terms that split texels among
    their pixels. Arguments ``(K,)``, for every pixel of the texels straddling latent blocks:
    compact texel index, n_t, latent pixel.

    A texel seen by n_t pixels of a view is split into parts s_p = Z_t / n_t +
    (W_p - mean W over the texel) / sqrt(n_t), W iid N(0, 1): each part is N(0, 1/n_t),
    Cov(s_p, s_q) = 1/n^2 - 1/n^2 = 0, and the parts sum to Z_t, so pixels sharing a
    texel stay independent. The W terms sum to exactly 0 over a texel, so only texels
    straddling latent blocks change a block sum: W is drawn for their pixels alone.
    """
    if texel_of.size == 0:
        return np.zeros((channels, block_count))
    draws = torch.randn((channels, texel_of.size), generator=generator).numpy().astype(np.float64)
    means = np.take(_segment_sums(draws, texel_of, texel_of.max() + 1), texel_of, axis=1) / counts
    return _segment_sums((draws - means) / np.sqrt(counts), blocks, block_count)


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

    Attributes: ``carriers (P,)`` pixel indices, ``weights (P,) float64``, and for the
    straddling pixels ``straddling (K,)``, ``straddling_texel (K,)`` compact texel index
    and ``straddling_count (K,)`` n_t.
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


def _block_ids(height: int, width: int, factor: int) -> np.ndarray:
    """Latent pixel (block) index of every image pixel -> ``(H * W,) int64``."""
    rows = np.arange(height) // factor * (width // factor)
    cols = np.arange(width) // factor
    return (rows[:, None] + cols[None, :]).ravel()


def _normalised_blocks(sums: np.ndarray, variances: np.ndarray, background: np.ndarray,
                       background_sums: np.ndarray) -> np.ndarray:
    """Block sums of surface parts plus the sum of the block's background pixels, over the
    total sd -> N(0, 1).

    ``background_sums (C, B)`` is the sum of the k background pixels' N(0, 1) values of each
    block (variance k, independent of the surface parts); for iid pixels that sum is
    exactly sqrt(k) G with G ~ N(0, 1), so one G per block stands for k pixels.
    """
    return (sums + background_sums) / np.sqrt(variances + background)


class _SurfaceSpec:
    """What every view of one :func:`surface` call shares."""

    def __init__(self, seed: int, channels: int, factor: int, resolution: int, height: int, width: int):
        self.seed, self.channels, self.factor, self.resolution = seed, channels, factor, resolution
        self.latent_size = (height // factor, width // factor)
        self.block_count = self.latent_size[0] * self.latent_size[1]
        self.block_of_pixel = _block_ids(height, width, factor)


def _view_surface_noise(flat_uv: np.ndarray, flat_mask: np.ndarray, spec: _SurfaceSpec, groups: _TexelGroups,
                        generator: torch.Generator, background_sums: np.ndarray | None = None) -> np.ndarray:
    """One view: ``flat_uv (H * W, 2)``, ``flat_mask (H * W,) bool`` -> latents ``(C, B) float64``,
    each N(0, 1). ``background_sums (C, B)``: each block's sum over its background pixels
    of unit-variance noise (see :func:`_normalised_blocks`); None draws it fresh."""
    pixels = np.flatnonzero(flat_mask)
    view_uv = _gather_uv(flat_uv, pixels)
    _check_uv_range(view_uv)
    texels, blocks = _texel_ids(view_uv, spec.resolution), spec.block_of_pixel[pixels]
    shared = _ViewTexels(groups.labels(texels), blocks)
    carried_blocks = blocks[shared.carriers]
    values = _texel_gaussians(texels[shared.carriers], spec.channels, spec.seed) * shared.weights
    sums = _segment_sums(values, carried_blocks, spec.block_count)
    sums += _split_terms(shared.straddling_texel, shared.straddling_count, blocks[shared.straddling],
                         spec.block_count, spec.channels, generator)
    variances = np.bincount(carried_blocks, weights=shared.weights, minlength=spec.block_count)
    background = spec.factor ** 2 - np.bincount(blocks, minlength=spec.block_count)
    if background_sums is None:
        fresh = torch.randn((spec.channels, spec.block_count), generator=generator).numpy()
        background_sums = np.sqrt(background) * fresh
    return _normalised_blocks(sums, variances, background, background_sums)


def surface(uv, mask, seed: int, channels: int = 4, factor: int = 8, texels_per_pixel: float = 1.0,
            resolution: int | None = None, background=None) -> torch.Tensor:
    """Correspondence-guided integral noise -> ``(V, channels, H/factor, W/factor) float32``.

    ``uv (V, H, W, 2)`` float32 in [0, 1] on masked pixels (numpy or torch), ``mask
    (V, H, W) bool`` (object pixels). One white-noise texture of R x R texels in UV space
    (R = ``resolution`` or :func:`surface_resolution`, one R for all views so they share
    texels); texel t = ty * R + tx has per channel a hash of (t, channel, seed) turned
    Gaussian (:func:`texel_gaussians`), computed only for texels some view sees.

    Per view, each masked pixel sees one texel; a texel seen by n_t pixels of the view is
    split into n_t independent N(0, 1/n_t) parts summing to it (:class:`_ViewTexels`,
    :func:`_split_terms`); background pixels are independent N(0, 1). A latent pixel is
    the sum of its factor x factor pixels divided by sqrt(sum of their variances): exactly
    N(0, 1), neighbours independent, and the same surface point carries the same texel
    value in every view, so views of the same surface get correlated latents. Pixel
    splits and background come from a torch generator per (seed, view); views run on a
    few threads (numpy releases the GIL), with the same result for any thread count.

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
    if resolution is None:
        resolution = _resolution(uv, mask, _positive("texels_per_pixel", texels_per_pixel))
    else:
        resolution = _integer("resolution", resolution, 1)
        if resolution > LARGEST_RESOLUTION:
            raise ValueError(f"resolution: expected at most {LARGEST_RESOLUTION}, got {resolution}")
    spec = _SurfaceSpec(seed, channels, factor, resolution, height, width)
    flat_mask, flat_uv = mask.reshape(views, -1), uv.reshape(views, -1, 2)
    latents = np.empty((views, channels, spec.block_count))

    def run(worker: int, workers: int) -> None:
        groups = _TexelGroups(resolution)  # one scratch table per thread
        for view in range(worker, views, workers):
            generator = _generator(_view_seed(seed, view))
            sums = None if background_sums is None else background_sums[view]
            latents[view] = _view_surface_noise(flat_uv[view], flat_mask[view], spec, groups, generator, sums)

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
             alpha: float = 1.0, lam: float = 0.1, texels_per_pixel: float = 1.0,
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
