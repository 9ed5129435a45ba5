"""One white-noise field on the UV square, readable at any scale: the noise behind surface
noise (:func:`zs_core.noise.surface`).

The field is white noise W on [0, 1]^2 with unit variance per finest cell. It is read as
integrals over cells of a quadtree: level 0 has ``2^FIELD_LEVELS`` cells per side, each
level up halves that, and level ``FIELD_LEVELS`` is the whole square. A cell's value is
the integral of W over it, so it has variance 4^level and equals the sum of its four
children exactly: a view that sees a surface from far away reads coarse cells, a close-up
reads fine ones, and the two agree wherever they overlap, as integral noise must.

Nothing is stored. Values are built top down from hashes (Haar wavelet noise): the root
is N(0, 4^L), and a parent P at level j hands its children (dx, dy) the values
P / 4 + 2^(j-1) (h1 g1 + h2 g2 + h3 g3) with g ~ N(0, 1) hashed from P's id and
h = ((1-2dx), (1-2dy), (1-2dx)(1-2dy)) / 2, the three Haar contrasts. Each child then has
variance 4^(j-1), siblings are uncorrelated, and the four sum to P. Computing a cell costs
its ancestors, shared by every cell read in the same call (:class:`Field`).

Hashing is numpy integer work (counter-based: lowbias32 over keys from the seed, then
Box-Muller), so any cell of any seed is reproducible anywhere, on any thread. numpy only.
"""

from __future__ import annotations

import math

import numpy as np

FIELD_LEVELS = 13  # level 0 has 8192 cells per side; cell ids of all levels fit in 32 bits
MASK32 = 0xFFFFFFFF
MASK64 = 0xFFFFFFFFFFFFFFFF
_DETAIL_STREAM = 0xDE7A_11ED  # the Haar coefficients' seed, apart from the root's and the splits'
_SPLIT_STREAM = 0x5B11_7000


def side(level: int) -> int:
    """Cells per side at ``level``."""
    return 1 << (FIELD_LEVELS - level)


# Cell ids: level offsets, then row-major within a level (id = offset + y * side + x).
LEVEL_OFFSETS = np.cumsum([0] + [side(level) ** 2 for level in range(FIELD_LEVELS)]).astype(np.int64)


# ----------------------------------------------------------------------------- hashing


def splitmix64(x: int) -> int:
    """A 64-bit integer mixer on Python ints (seed -> well-spread keys)."""
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def hash32(x: np.ndarray) -> np.ndarray:
    """lowbias32 integer hash, in place on a uint32 array. numpy wraps uint32 products
    mod 2^32 by definition (torch would need int64 tensors and masking, at 4x the cost)."""
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
    return x


def _keys(seed: int, streams: int) -> tuple[np.uint32, list[np.uint32]]:
    """32-bit keys from the seed: one that scrambles ids, one per uniform stream."""
    base = splitmix64(seed & MASK64)
    keys = [splitmix64(base ^ (stream + 1)) & MASK32 for stream in range(streams + 1)]
    return np.uint32(keys[0]), [np.uint32(key) for key in keys[1:]]


def _uniforms(bits: np.ndarray) -> np.ndarray:
    """uint32 hashes -> float32 uniforms (k + 0.5) / 2^23 from the top 23 bits k: exact in
    float32 and never 0 or 1, so log(u) stays finite."""
    uniforms = (bits >> np.uint32(9)).astype(np.float32)
    uniforms += np.float32(0.5)
    uniforms *= np.float32(1.0 / (1 << 23))
    return uniforms


def hashed_gaussians(ids: np.ndarray, channels: int, seed: int) -> np.ndarray:
    """``ids (N,)`` integers in [0, 2^32) -> ``(channels, N) float32`` N(0, 1), a pure
    function of (id, channel, seed).

    One Box-Muller pair per two channels, computed pair by pair so the work stays in
    cache. Two hash rounds (id, then id x stream, keys from the seed) keep the channels
    of one seed and the values of two seeds unrelated.
    """
    pairs = (channels + 1) // 2
    scramble_key, stream_keys = _keys(seed, 2 * pairs)
    scrambled = hash32(ids.astype(np.uint32) ^ scramble_key)
    values = np.empty((2 * pairs, ids.size), dtype=np.float32)
    for pair in range(pairs):
        radius = np.log(_uniforms(hash32(scrambled ^ stream_keys[2 * pair])))
        radius *= np.float32(-2.0)
        np.sqrt(radius, out=radius)
        angle = _uniforms(hash32(scrambled ^ stream_keys[2 * pair + 1]))
        angle *= np.float32(2 * math.pi)
        np.multiply(radius, np.cos(angle), out=values[2 * pair])
        np.multiply(radius, np.sin(angle), out=values[2 * pair + 1])
    return values[:channels]


def stream_seed(seed: int, stream: int) -> int:
    """The seed of one of the field's independent streams (root, details, splits)."""
    return splitmix64((seed & MASK64) ^ stream)


# ----------------------------------------------------------------------------- the quadtree


def fine_coordinates(uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``uv (N, 2)`` in [0, 1] -> the level-0 cell (x, y) ``(N,) int64`` each point lies in
    (u = 1 / v = 1 fall in the last cell); the cell at level l is (x >> l, y >> l)."""
    finest = side(0)
    fine = np.minimum((uv * np.float32(finest)).astype(np.int64), finest - 1)
    return fine[:, 0], fine[:, 1]


def cell_ids(level: int | np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Cell ids ``(N,) int64`` of cells (x, y) at ``level`` (one level or ``(N,)`` levels)."""
    return LEVEL_OFFSETS[level] + y * (side(0) >> np.asarray(level)) + x


def _dedupe(keys: np.ndarray, table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``keys (n,)`` -> (unique keys (u,), inverse (n,)) without sorting: a scratch table
    indexed by key (never initialised; only entries just written are read)."""
    order = np.arange(keys.size, dtype=np.int32)
    table[keys] = order
    representative = table[keys]
    is_representative = representative == order
    compact = np.empty(keys.size, dtype=np.int64)
    compact[is_representative] = np.arange(int(is_representative.sum()))
    return keys[is_representative], compact[representative]


# The Haar contrasts h (children (dx, dy) in the order x + 2 y, 3 coefficients): orthonormal
# columns orthogonal to (1, 1, 1, 1), rows of squared length 3/4.
HAAR_CHILDREN = np.array([[1, 1, 1], [-1, 1, -1], [1, -1, -1], [-1, -1, 1]], dtype=np.float32) * np.float32(0.5)


DENSE_LEVEL = 5  # levels from here up (256 x 256 cells and coarser) are computed whole, once per field


class Field:
    """The field of one seed, ``channels`` values per cell: the coarse levels (from
    :data:`DENSE_LEVEL` up) computed whole at construction, finer cells on request with
    their ancestors (:meth:`values`). Read-only after construction (threads may share it)."""

    def __init__(self, seed: int, channels: int):
        self.seed, self.channels = seed, channels
        self._detail_seed = stream_seed(seed, _DETAIL_STREAM)
        root = hashed_gaussians(np.array([LEVEL_OFFSETS[FIELD_LEVELS]]), channels, stream_seed(seed, 0))
        self.dense = {FIELD_LEVELS: root * np.float32(2.0 ** FIELD_LEVELS)}  # level -> (C, side^2)
        for level in range(FIELD_LEVELS - 1, DENSE_LEVEL - 1, -1):
            parents = side(level + 1)
            children = self._children(level, np.arange(parents * parents), self.dense[level + 1])  # (C, P, 4)
            # Children (x, y) of parent (px, py): x = 2 px + (k & 1), y = 2 py + (k >> 1).
            grid = children.reshape(channels, parents, parents, 2, 2).transpose(0, 1, 3, 2, 4)
            self.dense[level] = np.ascontiguousarray(grid).reshape(channels, -1)

    def _children(self, level: int, parent_keys: np.ndarray, parent_values: np.ndarray) -> np.ndarray:
        """The four children at ``level`` of parents (keys at level + 1, values (C, P)) ->
        ``(C, P, 4)``, child k = (dx + 2 dy): P / 4 + 2^level (H g), g three Haar
        coefficients per channel hashed from the parent's id."""
        parent_ids = LEVEL_OFFSETS[level + 1] + parent_keys
        details = hashed_gaussians(parent_ids, 3 * self.channels, self._detail_seed).reshape(3, self.channels, -1)
        children = np.einsum("kd,dcp->cpk", HAAR_CHILDREN * np.float32(2.0 ** level), details)
        children += parent_values[:, :, None] * np.float32(0.25)
        return children

    def values(self, keys_by_level: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        """Values of cells -> level -> ``(channels, n) float32`` (variance 4^level), in the
        order of the keys asked for. ``keys_by_level``: level -> ``(n,) int64`` distinct
        keys y * side(level) + x. Below :data:`DENSE_LEVEL`, every ancestor is computed
        once for all the cells asked for."""
        found = {level: self.dense[level][:, keys] for level, keys in keys_by_level.items() if level >= DENSE_LEVEL}
        sparse = {level: np.asarray(keys, dtype=np.int64) for level, keys in keys_by_level.items()
                  if level < DENSE_LEVEL}
        if not sparse:
            return found
        lowest = min(sparse)
        needed = dict(sparse)
        asked = {level: np.arange(keys.size) for level, keys in needed.items()}  # asked keys' rows in needed
        parent_of: dict[int, np.ndarray] = {}  # level -> row of each needed cell's parent
        for level in range(lowest, DENSE_LEVEL):
            keys = needed.get(level)
            if keys is None:
                continue
            width = side(level)
            parents = (keys // width >> 1) * (width >> 1) + (keys % width >> 1)
            if level + 1 == DENSE_LEVEL:
                parent_of[level] = parents  # rows of the dense level are its keys
                continue
            known = needed.get(level + 1, np.zeros(0, dtype=np.int64))
            unique, inverse = _dedupe(np.concatenate([known, parents]), np.empty(side(level + 1) ** 2, np.int32))
            needed[level + 1] = unique
            parent_of[level] = inverse[known.size:]
            if level + 1 in asked:
                asked[level + 1] = inverse[:known.size][asked[level + 1]]
        values = {DENSE_LEVEL: self.dense[DENSE_LEVEL]}
        keys_at = {DENSE_LEVEL: np.arange(side(DENSE_LEVEL) ** 2)}
        for level in range(DENSE_LEVEL - 1, lowest - 1, -1):
            keys = needed.get(level)
            if keys is None:
                continue
            rows, width = parent_of[level], side(level)
            parent_level = level + 1
            if parent_level == DENSE_LEVEL:
                used, rows = _dedupe(rows, np.empty(side(DENSE_LEVEL) ** 2, np.int32))  # hash only those used
                parent_keys, parent_values = used, self.dense[DENSE_LEVEL][:, used]
            else:
                parent_keys, parent_values = keys_at[parent_level], values[parent_level]
            children = self._children(level, parent_keys, parent_values)
            child = (keys & 1) + 2 * (keys // width & 1)  # side(level) is even: x parity is key parity
            values[level], keys_at[level] = children[:, rows, child], keys
        found.update({level: values[level][:, asked[level]] for level in sparse})
        return found


def split_gaussians(cells: np.ndarray, uv: np.ndarray, cells_per_side: np.ndarray, channels: int,
                    seed: int) -> np.ndarray:
    """N(0, 1) ``(channels, N) float32`` for points ``uv (N, 2)`` inside their cells
    ``cells (N,)`` (ids) of a grid of ``cells_per_side (N,)``: a pure function of the cell,
    the point's position in it on a 256 x 256 grid, and the seed. Surface noise splits a
    cell among the pixels that share it with these, so the same pixels get the same split
    in every view that sees them alike."""
    scaled = uv.astype(np.float64) * (cells_per_side.astype(np.float64) * 256.0)[:, None]
    sub = scaled.astype(np.int64) & 255
    sub_x, sub_y = sub[:, 0], sub[:, 1]
    keyed = hash32(cells.astype(np.uint32) ^ np.uint32(stream_seed(seed, _SPLIT_STREAM) & MASK32))
    keyed ^= (sub_y * 256 + sub_x).astype(np.uint32)
    return hashed_gaussians(keyed, channels, stream_seed(seed, _SPLIT_STREAM + 1))
