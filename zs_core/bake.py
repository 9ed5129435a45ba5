"""Views -> UV texture (bake) and texture -> views (render). numpy, OpenCV.

Bake (docs/methods.md "Bake"): every texel's 3D position (the texel maps) is projected into
every view; the texel is visible in a view when the view's position pass at the nearest
pixel is the texel's own position (within a tolerance) and that pixel is on the target
mask. Its colour is the weighted mean of the bilinearly sampled views, the weight being

    cos(theta)^exponent * feather,

theta between the texel normal and the direction to the camera (0 when facing away) and
the feather falling to 0 at silhouettes, depth discontinuities and the image border.
Texels no view sees are filled from the nearest seen texel (then optionally inpainted),
and the texture is padded beyond the UV islands so mipmaps and bilinear lookups do not
pull in background.

The weights depend only on the views' geometry, so :func:`gather_weights` computes them
once and :func:`bake` can reuse them for any number of images of the same views (the
diffusion sync bakes every step): a baked image then costs one bilinear gather of all
(texel, view) samples, a weighted sum and a copy for the filled texels. Both work on
square tiles of texels, each in only the views that see some of it, shared among threads.

Conventions are those of :mod:`zs_core.geometry`: continuous pixel coordinates
[col, row] have pixel centres at +0.5; texel row 0 is v = 1. Bilinear sampling goes
through ``cv2.remap``, whose sub-pixel positions are quantised to 1/32 pixel (a
position error below 1/64 pixel, far under anything a generated image resolves).
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from . import geometry
from .protocol import Passes

# Adjacent pixels whose depths differ by more than this many pixel footprints are a
# depth discontinuity (a surface that steep, > 84 degrees from facing, is an edge).
DEPTH_JUMP_FOOTPRINTS = 10.0
# Default visibility tolerance = TEXEL_TOLERANCE texel spacings + PIXEL_TOLERANCE pixel
# footprints: the texel-spacing term absorbs texel-map resolution, the pixel term the
# distance between the texel and the centre of the pixel it lands in.
TEXEL_TOLERANCE = 3.0
PIXEL_TOLERANCE = 3.0
REMAP_LIMIT = 32767 - 1  # cv2.remap needs every image and map side below SHRT_MAX

_REQUIRED = ("position", "world_to_camera", "projection", "texel_position", "texel_normal", "texel_mask")


# ------------------------------------------------------------------------------ results


@dataclass
class BakeResult:
    """texture (T, T, C) float32; seen (T, T) bool texels some view sees with weight > 0;
    coverage = seen texels / texels on the UV map (texel_mask)."""

    texture: np.ndarray
    seen: np.ndarray
    coverage: float


@dataclass
class _TilePlan:
    """One tile of texels laid out for one cv2.remap: its texels in each view that sees
    one of them, dense (most (texel, view) pairs of such a view are seen; whole rows beat
    gathers of the seen ones).

    tile (rows, cols) slices of the texture, N texels; views (V',) the views;
    map1 (V', N, 2) int16 / map2 (V', N) uint16 fixed-point remap maps into the tiled
    views (:func:`_tile`; where the view does not see the texel, the canvas' first
    pixel); weight (V', N) float32, 0 where the view does not see the texel.
    """

    tile: tuple[slice, slice]
    views: np.ndarray
    map1: np.ndarray | None
    map2: np.ndarray | None
    weight: np.ndarray

    @classmethod
    def empty(cls, tile: tuple[slice, slice]) -> _TilePlan:
        """A tile no view sees."""
        return cls(tile, np.zeros(0, np.int64), None, None, np.zeros((0, 0), np.float32))


class BakeWeights:
    """How every texel is seen by every view; reusable to bake any images of these views.

    ``BakeWeights(pixels, weights, texel_mask, image_size)`` from dense arrays (any
    weights, e.g. reweighted ones):
    pixels (V, T, T, 2) float32: continuous [col, row] pixel coordinates of each texel
    centre in each view (NaN off the UV map or where it does not project).
    weights (V, T, T) float32: cos(theta)^exponent * feather, 0 = not visible.
    texel_mask (T, T) bool; image_size (H, W) of the views.

    :func:`gather_weights` holds them tile by tile instead, each tile in only the views
    that see some of its texels (a third of all (texel, view) pairs on a closed object),
    laid out for the bake (:class:`_TilePlan`); ``pixels`` and ``weights`` are then
    computed on first access (the bake never needs them), the pixels projected again
    from the texel positions ``gather_weights`` was given. Dense weights get their tile
    plans on their first bake.
    """

    def __init__(self, pixels: np.ndarray, weights: np.ndarray, texel_mask: np.ndarray,
                 image_size: tuple[int, int]) -> None:
        self.views = int(weights.shape[0])  # V
        self.texel_mask = texel_mask
        self.image_size = tuple(image_size)
        self._cache: dict = {"pixels": pixels, "weights": weights}  # and what is derived from them
        self._pixels_from = None  # () -> the dense pixels, for sparse weights

    @classmethod
    def _sparse(cls, views: int, texel_mask: np.ndarray, image_size: tuple[int, int], totals: np.ndarray,
                tiles: list[_TilePlan], canvas: tuple[int, int], pixels_from) -> BakeWeights:
        """Weights as :func:`gather_weights` found them: totals (T, T) float32 each texel's
        sum of weights; the tiles' plans for the ``canvas`` layout; ``pixels_from()`` the
        dense pixels."""
        self = cls.__new__(cls)
        self.views, self.texel_mask, self.image_size = views, texel_mask, image_size
        self._cache = {"totals": totals, "plans": (canvas, tiles)}
        self._pixels_from = pixels_from
        return self

    @property
    def texture_size(self) -> int:  # T
        return int(self.texel_mask.shape[0])

    @property
    def pixels(self) -> np.ndarray:
        """(V, T, T, 2) float32 pixel coordinates of every texel in every view."""
        return self._cached("pixels", lambda: self._pixels_from())

    @property
    def weights(self) -> np.ndarray:
        """(V, T, T) float32, 0 where the view does not see the texel."""
        return self._cached("weights", self._dense_weights)

    @property
    def seen(self) -> np.ndarray:
        """(T, T) bool: texels with a positive weight in at least one view."""
        if "totals" in self._cache:  # a sum of positive weights is positive
            return self._cached("seen", lambda: self._cache["totals"] > 0)
        return self._cached("seen", lambda: (self.weights > 0).any(axis=0))

    @property
    def totals(self) -> np.ndarray:
        """(T, T) float32: each texel's sum of weights over the views, in view order."""
        return self._cached("totals", lambda: self.weights.sum(axis=0, dtype=np.float32))

    @property
    def plans(self) -> tuple[tuple[int, int], list[_TilePlan]]:
        """(canvas layout, the tiles' :class:`_TilePlan`) the bake gathers with."""
        return self._cached("plans", lambda: _plans_of_dense(self))

    def _dense_weights(self) -> np.ndarray:
        dense = np.zeros((self.views, *self.texel_mask.shape), np.float32)
        for plan in self.plans[1]:
            rows, cols = plan.tile
            if plan.views.size:
                dense[plan.views, rows, cols] = plan.weight.reshape(len(plan.views), rows.stop - rows.start, -1)
        return dense

    def _cached(self, key, compute):
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]


# ------------------------------------------------------------------------ input checks


def _fail(name: str, message: str):
    raise ValueError(f"{name}: {message}")


def _checked_passes(passes: Passes, texture_size) -> Passes:
    """Validate the arrays the bake needs; ValueError (ProtocolError) naming the array."""
    if not isinstance(passes, Passes):
        _fail("passes", f"expected a zs_core.protocol.Passes, got {type(passes).__name__}")
    passes.validate(require=_REQUIRED)
    texel_mask = passes.texel_mask
    size = texel_mask.shape[0]
    if not texel_mask.any():
        _fail("texel_mask", "no texel is on the UV map (all False)")
    # NaN / inf on texel_mask texels: checked block by block in _WeightKernel.run.
    if texture_size is not None and texture_size != size:
        _fail("texture_size", f"expected the texel maps' size T={size} (the bake does not resample), "
                              f"got {texture_size!r}")
    return passes


def _checked_images(images, views: int, height: int, width: int) -> np.ndarray:
    """images -> contiguous (V, H, W, C) float32, or ValueError naming ``images``."""
    array = np.asarray(images)
    expected = f"({views}, {height}, {width}, C)"
    if array.ndim != 4 or array.shape[:3] != (views, height, width):
        _fail("images", f"expected shape {expected} matching the passes, got {array.shape}")
    if array.dtype.kind not in "fiu":
        _fail("images", f"expected a numeric array, got dtype {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        _fail("images", "contains NaN or inf")
    return array


# ----------------------------------------------------------------------------- weights


def gather_weights(passes: Passes, texture_size: int | None = None, exponent: float = 4.0,
                   feather_px: float = 3, tolerance: float | None = None) -> BakeWeights:
    """Visibility and blend weight of every texel in every view -> :class:`BakeWeights`.

    ``passes`` needs position, mask, depth, world_to_camera, projection and the texel
    maps (T, T, ...); ``texture_size`` if given must equal T (no resampling).
    ``exponent``: p in cos(theta)^p. ``feather_px``: the feather rises from 0 to 1 over
    this many pixels inside the view's good region (mask minus pixels next to a depth
    jump; the image border counts as an edge), see :func:`feather_map`. ``tolerance``:
    world-space distance between a texel and the position pass at its nearest pixel for
    it to count as visible; by default ``3 * texel spacing + 3 * pixel footprint at the
    texel's depth`` (texel spacing: :func:`texel_spacing`), loose enough for the distance
    between a texel and the centre of the pixel it lands in, tight enough that a surface
    in front of the texel hides it.

    The texels are processed in square tiles of about :data:`_BLOCK_SAMPLES` / V
    texels, all views at once (:class:`_WeightKernel`), the tiles shared among up to
    :data:`_THREADS` threads (numpy releases the GIL inside its loops). The texel
    positions are kept by reference for :attr:`BakeWeights.pixels`.
    """
    passes = _checked_passes(passes, texture_size)
    exponent = _non_negative("exponent", exponent)
    feather_px = _non_negative("feather_px", feather_px)
    if tolerance is not None:
        tolerance = _non_negative("tolerance", tolerance)
    texel_mask = passes.texel_mask
    size = texel_mask.shape[0]
    spacing = texel_spacing(passes.texel_position, texel_mask)
    kernel = _WeightKernel(passes, feather_px, exponent,
                           tolerance if tolerance is not None else spacing * TEXEL_TOLERANCE, tolerance is None)
    totals = np.empty((size, size), np.float32)

    def run(tile: tuple[slice, slice], scratch: _Scratch) -> _TilePlan:
        return kernel.run(tile, passes.texel_position, passes.texel_normal, texel_mask, totals, scratch)

    tiles = _in_threads(run, _tiles(size, _tile_texels_for(passes.views)))
    projector, texel_position, texel_mask = kernel.projector, passes.texel_position, texel_mask.copy()
    return BakeWeights._sparse(passes.views, texel_mask, (passes.height, passes.width), totals, tiles,
                               kernel.canvas, lambda: projector.dense_pixels(texel_position, texel_mask))


# (texel, view) samples per tile of gather_weights (and per block of the dense pixels):
# large enough that numpy's per-call overhead is small, small enough that the float64
# temporaries stay in the CPU caches and the matrix products under OpenBLAS's threading
# threshold.
_BLOCK_SAMPLES = 1 << 16
# Threads sharing the tiles of gather_weights and the bake, and the blocks of the dense pixels.
_THREADS = max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


class _Scratch:
    """Contiguous scratch arrays of one thread, reused tile after tile (fresh large
    temporaries every tile cost page faults; the views are cached, as the few shapes
    recur thousands of times)."""

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}
        self._views: dict[tuple, np.ndarray] = {}

    def __call__(self, name: str, shape: tuple, dtype=np.float64) -> np.ndarray:
        key = (name, shape, dtype)
        view = self._views.get(key)
        if view is None:
            size = math.prod(shape)
            store = self._buffers.get(name)
            if store is None or store.size < size or store.dtype != dtype:
                store = self._buffers[name] = np.empty(size, dtype)
                self._views = {other: array for other, array in self._views.items() if other[0] != name}
            view = self._views[key] = store[:size].reshape(shape)
        return view


def _in_threads(work, items: list) -> list:
    """[work(item, scratch) for item in items], the items dealt round-robin to up to
    :data:`_THREADS` threads, each with its own :class:`_Scratch`; in the items' order.
    numpy's floating-point warnings are off in the workers: the kernels compute on
    masked-out values (off-map texels, samples that miss a view) on purpose."""
    threads = min(_THREADS, len(items))
    results: list = [None] * len(items)

    def share(first: int) -> None:
        scratch = _Scratch()
        with np.errstate(all="ignore"):
            for index in range(first, len(items), threads):
                results[index] = work(items[index], scratch)

    if threads <= 1:
        share(0)
        return results
    with ThreadPoolExecutor(threads) as pool:
        for done in [pool.submit(share, first) for first in range(threads)]:
            done.result()  # re-raises a worker's error (bad texel maps)
    return results


def _tile_texels_for(views: int) -> int:
    """Texels per tile: about _BLOCK_SAMPLES samples, and a tile's texels in one view
    are one row of cv2.remap maps (at most REMAP_LIMIT)."""
    return max(1, min(_BLOCK_SAMPLES // views, REMAP_LIMIT))


def _tiles(size: int, texels: int) -> list[tuple[slice, slice]]:
    """(rows, cols) slices of square tiles of about ``texels`` texels covering a
    ``size`` x ``size`` texture, row by row (the last ones short)."""
    side = max(1, math.isqrt(texels))
    return [(slice(row, min(row + side, size)), slice(col, min(col + side, size)))
            for row in range(0, size, side) for col in range(0, size, side)]


def _non_negative(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) \
            or not math.isfinite(value) or value < 0:
        _fail(name, f"expected a finite number >= 0, got {value!r}")
    return float(value)


def _unit(vectors: np.ndarray) -> np.ndarray:
    """Normalise (N, 3) vectors; zero-length ones stay 0 (they then face nothing)."""
    length = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
    return vectors / np.where(length > 0, length, 1.0)[:, None]


def texel_spacing(texel_position: np.ndarray, texel_mask: np.ndarray) -> float:
    """Median world distance between horizontally / vertically adjacent texels on the map.

    The median ignores the few large jumps between neighbouring texels of different UV
    islands; it is estimated on every k-th row / column (about 256 of them) of large maps.
    0 when no two adjacent texels are on the map.
    """
    stride = max(1, texel_mask.shape[0] // 256)
    distances = []
    for along_rows in (True, False):
        positions = texel_position[::stride] if along_rows else texel_position[:, ::stride].swapaxes(0, 1)
        mask = texel_mask[::stride] if along_rows else texel_mask[:, ::stride].T
        both = mask[:, :-1] & mask[:, 1:]
        step = positions[:, :-1] - positions[:, 1:]
        step *= step
        squared = step[..., 0] + step[..., 1]  # component rows: numpy is slow on short last axes
        squared += step[..., 2]
        distances.append(np.sqrt(squared[both]))
    distances = np.concatenate(distances)
    return float(np.median(distances)) if distances.size else 0.0


def _pixel_footprint(depth: np.ndarray, projection: np.ndarray, width: int, height: int) -> np.ndarray:
    """World size of one pixel (the larger of its two sides) at planar ``depth``."""
    per_unit_depth = _footprint_per_unit_depth(projection, width, height)
    if geometry.is_orthographic(projection):
        return np.full_like(depth, per_unit_depth)
    return per_unit_depth * np.abs(depth)


def _footprint_per_unit_depth(projection: np.ndarray, width: int, height: int) -> float:
    return max(2.0 / (abs(projection[0, 0]) * width), 2.0 / (abs(projection[1, 1]) * height))


# Rows of the per-texel feature matrix (9, N) the view matrices multiply.
_FEATURES = 9  # x, y, z, 1, nx, ny, nz, n.p, |p|^2
# Rows of _Projector.matrix, each giving (V, N): pixel column * w, pixel row * w, clip w,
# planar depth, |camera - p|^2 (orthographic: 1). _Projector.facing gives n.(camera - p)
# (orthographic: n.towards camera).
_COL_W, _ROW_W, _CLIP_W, _DEPTH, _DISTANCE2 = range(5)


class _Projector:
    """Everything linear in a texel's position and normal, for blocks of texels in all views.

    The projection (as pixel coordinates times clip w), the planar depth, |camera - p|^2
    and n.(camera - p) are products of small per-view matrices with the (9, N) feature
    rows of a block, in float64 (a texel's nearest pixel and visibility are exactly the
    plain per-view computation's). Per-texel work runs on rows (structure of arrays):
    numpy is many times slower on (N, 3) arrays than on three (N,) rows.
    """

    def __init__(self, passes: Passes) -> None:
        self.views, self.height, self.width = passes.views, passes.height, passes.width
        matrix = np.zeros((5, self.views, _FEATURES))
        facing = np.zeros((self.views, _FEATURES))
        for view in range(self.views):
            world_to_camera = passes.world_to_camera[view].astype(np.float64)
            projection = passes.projection[view].astype(np.float64)
            clip = projection @ world_to_camera
            # Pixel [col, row] = ((x/w + 1) W/2, (1 - y/w) H/2) = (W/2 (x + w), H/2 (w - y)) / w.
            matrix[_COL_W, view, :4] = 0.5 * self.width * (clip[0] + clip[3])
            matrix[_ROW_W, view, :4] = 0.5 * self.height * (clip[3] - clip[1])
            matrix[_CLIP_W, view, :4] = clip[3]
            matrix[_DEPTH, view, :4] = -world_to_camera[2]
            camera_to_world = np.linalg.inv(world_to_camera)
            if geometry.is_orthographic(projection):
                facing[view, 4:7] = _unit(camera_to_world[None, :3, 2])[0]
                matrix[_DISTANCE2, view, 3] = 1.0
            else:
                camera = camera_to_world[:3, 3]
                facing[view, 4:8] = (*camera, -1.0)  # n.c - n.p
                matrix[_DISTANCE2, view, :4] = (*(-2.0 * camera), camera @ camera)  # |p|^2 - 2 c.p + |c|^2
                matrix[_DISTANCE2, view, 8] = 1.0
        self.matrix = matrix  # (5, V, 9)
        self.facing = facing  # (V, 9)

    def features(self, positions: np.ndarray, normals: np.ndarray | None, on_map: np.ndarray,
                 scratch: _Scratch) -> np.ndarray:
        """positions, normals (..., 3) float32 texel maps (normals None: zeros), on_map
        (N,) bool, N texels -> the feature rows (9, N) float64. ValueError naming the
        texel map when an on-map texel is not finite."""
        count = on_map.size
        features = scratch("features", (_FEATURES, count))
        point, unit = features[0:3], features[4:7]
        squares = scratch("squares", (3, count))
        np.copyto(point.reshape(3, *positions.shape[:-1]), _components_first(positions))
        features[3] = 1.0
        # |p|^2 and |n|^2 of float32 vectors cannot overflow float64: finite iff p, n are.
        _row_dot(point, point, squares, features[8])
        _check_finite("texel_position", features[8], on_map)
        if normals is None:
            unit[...] = 0.0
        else:
            np.copyto(unit.reshape(3, *normals.shape[:-1]), _components_first(normals))
            length = np.sqrt(_row_dot(unit, unit, squares, features[7]))
            _check_finite("texel_normal", length, on_map)
            unit /= length if (length > 0).all() else np.where(length > 0, length, 1.0)  # as _unit
        _row_dot(unit, point, squares, features[7])
        return features

    def project(self, features: np.ndarray, views: np.ndarray | None, on_map: np.ndarray, scratch: _Scratch):
        """Feature rows (9, N), the views to project into (None: all) -> (linear (5, V', N)
        float64 (the rows above), cols, rows (V', N) float64 pixel coordinates, NaN off the
        map or with no projection)."""
        matrix = self.matrix if views is None else self.matrix[:, views]
        linear = _products(matrix, features, scratch("linear", (5, matrix.shape[1], features.shape[1])))
        clip_w = linear[_CLIP_W]
        clip_w[clip_w <= 0] = np.nan  # behind a perspective camera: no projection
        cols = np.divide(linear[_COL_W], clip_w, out=scratch("cols", clip_w.shape))
        rows = np.divide(linear[_ROW_W], clip_w, out=scratch("rows", clip_w.shape))
        if not on_map.all():
            cols[:, ~on_map] = np.nan
            rows[:, ~on_map] = np.nan
        return linear, cols, rows

    def dense_pixels(self, texel_position: np.ndarray, texel_mask: np.ndarray) -> np.ndarray:
        """Pixel coordinates (V, T, T, 2) float32 of every texel in every view."""
        size = texel_mask.shape[0]
        texels = size * size
        pixels = np.empty((self.views, texels, 2), np.float32)
        positions = texel_position.reshape(texels, 3)
        on_map = texel_mask.reshape(texels)
        block = max(1, _BLOCK_SAMPLES // self.views)

        def run(span: slice, scratch: _Scratch) -> None:
            features = self.features(positions[span], None, on_map[span], scratch)
            _, cols, rows = self.project(features, None, on_map[span], scratch)
            pixels[:, span, 0] = cols
            pixels[:, span, 1] = rows

        _in_threads(run, [slice(start, min(start + block, texels)) for start in range(0, texels, block)])
        return pixels.reshape(self.views, size, size, 2)


def _products(matrix: np.ndarray, features: np.ndarray, out: np.ndarray) -> np.ndarray:
    """matrix (..., R, 9) @ features (9, N) -> out (..., R, N), column block by column block
    so that every matrix product stays under OpenBLAS's threading threshold (m n k <=
    :data:`_GEMM_SINGLE_THREAD`): the bake's own threads share the cores, and handing
    small products to more threads costs more than it gains."""
    rows, depth = matrix.shape[-2:]
    step = max(1, _GEMM_SINGLE_THREAD // (rows * depth))
    for start in range(0, features.shape[1], step):
        block = slice(start, start + step)
        np.matmul(matrix, features[:, block], out=out[..., block])
    return out


# OpenBLAS (numpy's) multiplies in one thread while m n k <= 65536 * GEMM_MULTITHREAD_THRESHOLD (4).
_GEMM_SINGLE_THREAD = 65536 * 4


def _row_dot(first: np.ndarray, second: np.ndarray, scratch: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Dot products (N,) of the columns of two (3, N) arrays, x + y + z in that order."""
    np.multiply(first, second, out=scratch)
    return np.add(np.add(scratch[0], scratch[1], out=out), scratch[2], out=out)


def _components_first(vectors: np.ndarray) -> np.ndarray:
    """(..., 3) -> the (3, ...) view (np.moveaxis costs more than the copy it feeds)."""
    return vectors.transpose(vectors.ndim - 1, *range(vectors.ndim - 1))


def _check_finite(name: str, values: np.ndarray, on_map: np.ndarray) -> None:
    finite = np.isfinite(values)
    if not (finite.all() or finite[on_map].all()):
        _fail(name, "contains NaN or inf on texel_mask texels")


class _WeightKernel:
    """Weights of a tile of texels in all views at once -> its :class:`_TilePlan`.

    A tile skips the views none of its texels faces (on a closed object about half of
    them); the linear part comes from :class:`_Projector`, everything else runs on whole
    (V', N) arrays of the remaining views. Pixel coordinates, depths and the visibility
    test stay float64; weights are float32.
    """

    def __init__(self, passes: Passes, feather_px: float, exponent: float, limit: float,
                 add_pixel_footprint: bool) -> None:
        self.projector = _Projector(passes)
        self.views, self.height, self.width = passes.views, passes.height, passes.width
        self.exponent, self.limit, self.add_pixel_footprint = exponent, limit, add_pixel_footprint
        self.footprint = np.empty(self.views)  # pixel footprint per unit depth (orthographic: the footprint)
        self.orthographic = np.zeros(self.views, bool)
        feather = np.empty((self.views, self.height, self.width), np.float32)
        for view in range(self.views):
            projection = passes.projection[view].astype(np.float64)
            self.footprint[view] = _footprint_per_unit_depth(projection, self.width, self.height)
            self.orthographic[view] = geometry.is_orthographic(projection)
            feather[view] = feather_map(passes.depth[view], passes.mask[view], projection, feather_px)
        self.feather = feather.reshape(-1)  # (V*H*W,), 0 off the mask
        self.position = passes.position.reshape(-1, 3)  # (V*H*W, 3) float32
        self.canvas = _canvas_layout(self.views, self.height, self.width)
        self.offsets = _canvas_offsets(self.views, self.height, self.width, self.canvas)

    def run(self, tile: tuple[slice, slice], texel_position: np.ndarray, texel_normal: np.ndarray,
            texel_mask: np.ndarray, totals_out: np.ndarray, scratch: _Scratch) -> _TilePlan:
        """One tile (rows, cols) of the (T, T) texel maps -> its :class:`_TilePlan`; the
        sum of each texel's weights into totals_out (T, T) float32 there."""
        on_map = texel_mask[tile].reshape(-1)
        count = on_map.size
        features = self.projector.features(texel_position[tile], texel_normal[tile], on_map, scratch)
        facing = _products(self.projector.facing, features, scratch("facing", (self.views, count)))
        faces = np.greater(facing, 0, out=scratch("faces", (self.views, count), bool))  # NaN: False
        if not on_map.all():
            faces &= on_map
        views = faces.any(axis=1).nonzero()[0]  # the views some texel of the tile faces
        if views.size == 0:
            totals_out[tile] = 0.0
            return _TilePlan.empty(tile)
        weights = scratch("weights", (len(views), count), np.float32)
        cols, rows = self._weights(views, faces[views], facing[views], features, on_map, weights, scratch)
        totals = weights.sum(axis=0)
        totals_out[tile] = totals.reshape(totals_out[tile].shape)
        return _tile_plan(tile, views, weights, cols, rows, self.offsets)

    def _weights(self, views, faces, facing, features, on_map, weights_out, scratch: _Scratch):
        """The tile's weights in its ``views`` (V',) -> (V', N) float32 ``weights_out``;
        faces (V', N) bool, facing (V', N) n.(camera - p). Returns the pixel coordinates
        (cols, rows), each (V', N) float64. Dense over the tile: most (texel, view) pairs
        of a facing view are candidates, and whole rows are cheaper for numpy than
        gathers of the candidates; the others compute anything and are masked out."""
        linear, cols, rows = self.projector.project(features, views, on_map, scratch)
        depth = linear[_DEPTH]
        shape = depth.shape
        candidate = np.greater(depth, 0, out=scratch("candidate", shape, bool))
        candidate &= faces
        # The nearest pixel: truncation is floor for coordinates >= 0. In the image iff
        # 0 <= index < size, one unsigned comparison; NaN truncates to INT64_MIN (out),
        # coordinates in (-1, 0) to 0 (in), harmless: the feather is 0 on the border pixels.
        test = scratch("test", shape, bool)
        pixel, col = scratch("pixel", shape, np.int64), scratch("col", shape, np.int64)
        for values, index, bound in ((rows, pixel, self.height), (cols, col, self.width)):
            np.copyto(index, values, casting="unsafe")
            candidate &= np.less(index.view(np.uint64), bound, out=test)
        pixel += (views * self.height)[:, None]
        pixel *= self.width
        pixel += col
        pixel = pixel.reshape(-1)  # flat pixel in the views; garbage for non-candidates, clipped
        # Occlusion: the view must see this very point, not a surface in front of it.
        seen_there = self.position.take(pixel, axis=0, mode="clip").reshape(*shape, 3)  # float32; differences float64
        gap = np.subtract(seen_there[..., 0], features[0], out=scratch("gap", shape))
        gap *= gap
        step = scratch("step", shape)
        for axis in (1, 2):
            np.subtract(seen_there[..., axis], features[axis], out=step)
            step *= step
            gap += step
        np.sqrt(gap, out=gap)
        limit = self.limit
        if self.add_pixel_footprint:  # candidates have depth > 0
            limit = np.multiply(depth, self.footprint[views][:, None], out=step)  # pixel footprints ...
            if self.orthographic.any():
                limit[self.orthographic[views]] = self.footprint[views][self.orthographic[views], None]
            limit *= PIXEL_TOLERANCE
            limit += self.limit  # ... plus the texel term
        candidate &= np.less(gap, limit, out=test)
        # The feather is 0 off the target mask and next to depth jumps: no weight there
        # whatever the visibility.
        feather = self.feather.take(pixel, mode="clip").reshape(shape)
        candidate &= np.greater(feather, 0, out=test)
        distance = np.maximum(linear[_DISTANCE2], 0.0, out=gap)
        np.sqrt(distance, out=distance)
        cosine = np.divide(facing, np.maximum(distance, 1e-300, out=distance), out=distance)
        weight = _power(cosine, self.exponent)
        weight *= feather
        weights_out[...] = 0.0
        np.copyto(weights_out, weight, where=candidate, casting="same_kind")
        return cols, rows

def _tile_plan(tile: tuple[slice, slice], views: np.ndarray, weights: np.ndarray, cols: np.ndarray,
               rows: np.ndarray, offsets: np.ndarray) -> _TilePlan:
    """A tile's weights (V', N) float32 in ``views`` (V',) and pixel coordinates cols,
    rows (V', N) float64 -> its :class:`_TilePlan`, in the views that see some texel;
    offsets (2, V) from pixel coordinates to canvas remap coordinates."""
    active = weights > 0
    seeing = active.any(axis=1)
    if not seeing.any():
        return _TilePlan.empty(tile)
    if not seeing.all():
        views, weights, active, cols, rows = views[seeing], weights[seeing], active[seeing], cols[seeing], rows[seeing]
    unseen = ~active
    coordinates = np.empty((2, *weights.shape), np.float32)
    for values, offset, out in zip((cols, rows), offsets, coordinates):
        np.add(values, offset.take(views)[:, None], out=out, casting="same_kind")  # in float64, then rounded
        np.copyto(out, 0.0, where=unseen)  # a finite sample, weighted 0
    map1, map2 = cv2.convertMaps(coordinates[0], coordinates[1], cv2.CV_16SC2)
    return _TilePlan(tile, views, map1, map2, np.where(active, weights, np.float32(0.0)))


def _plans_of_dense(weights: BakeWeights) -> tuple[tuple[int, int], list[_TilePlan]]:
    """(canvas layout, tile plans) of dense weights, tile by tile as gather_weights lays them out."""
    height, width = weights.image_size
    canvas = _canvas_layout(weights.views, height, width)
    offsets = _canvas_offsets(weights.views, height, width, canvas)
    dense, pixels = weights.weights, weights.pixels
    all_views = np.arange(weights.views)

    def plan(tile: tuple[slice, slice], _) -> _TilePlan:
        tile_weights = np.ascontiguousarray(dense[(slice(None), *tile)], dtype=np.float32).reshape(weights.views, -1)
        coordinates = pixels[(slice(None), *tile)].reshape(weights.views, -1, 2).astype(np.float64)
        return _tile_plan(tile, all_views, tile_weights, coordinates[..., 0], coordinates[..., 1], offsets)

    return canvas, _in_threads(plan, _tiles(weights.texture_size, _tile_texels_for(weights.views)))


def _power(values: np.ndarray, exponent: float) -> np.ndarray:
    """values ** exponent, overwriting ``values`` (returned when it holds the result);
    small whole exponents by repeated squaring in place (several times faster than the
    general pow, equal to within a few float64 ulps)."""
    if exponent != int(exponent) or exponent > 64:
        return np.power(values, exponent, out=values)
    remaining = int(exponent)
    if remaining == 0:
        values[...] = 1.0
        return values
    result = None
    while True:
        if remaining & 1:
            if result is None:  # values is squared further on unless this is the last factor
                result = values if remaining == 1 else values.copy()
            else:
                np.multiply(result, values, out=result)
        remaining >>= 1
        if not remaining:
            return result
        np.multiply(values, values, out=values)


def feather_map(depth: np.ndarray, mask: np.ndarray, projection: np.ndarray, feather_px: float) -> np.ndarray:
    """Per-pixel feather (H, W) float32 in [0, 1] of one view.

    ``clip((d - sqrt(2)) / feather_px, 0, 1)``, d = Euclidean distance (pixels) to the
    nearest pixel outside the good region (mask minus pixels next to a depth jump, with
    the image border counted as outside). A bilinear footprint lies within one pixel
    (diagonals included, <= sqrt(2)) of the nearest pixel, so the ``- sqrt(2)`` makes
    every texel with a positive weight read only good pixels: no background or occluder
    colour leaks into the bake.
    """
    good = mask & ~depth_edges(depth, mask, projection)
    # Exact Euclidean distance transform (OpenCV's precise mask), several times faster
    # than scipy's; the padding ring of 0s makes the image border an edge.
    distance = cv2.distanceTransform(np.pad(good, 1).view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    ramp = (distance - math.sqrt(2.0)) / max(feather_px, 1e-6)
    return np.clip(ramp, 0.0, 1.0).astype(np.float32)


def depth_edges(depth: np.ndarray, mask: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """(H, W) bool: target pixels with a 4-neighbour on the target whose depth differs by
    more than ``DEPTH_JUMP_FOOTPRINTS`` pixel footprints (both sides of the jump)."""
    height, width = depth.shape
    edges = np.zeros(depth.shape, bool)
    for axis in (0, 1):
        near_side = [slice(None), slice(None)]
        far_side = [slice(None), slice(None)]
        near_side[axis], far_side[axis] = slice(None, -1), slice(1, None)
        first, second = depth[tuple(near_side)], depth[tuple(far_side)]
        both = mask[tuple(near_side)] & mask[tuple(far_side)]
        closer = np.minimum(first, second).astype(np.float64)
        jump = both & (np.abs(first - second) > DEPTH_JUMP_FOOTPRINTS
                       * _pixel_footprint(closer, projection, width, height))
        edges[tuple(near_side)] |= jump
        edges[tuple(far_side)] |= jump
    return edges


# -------------------------------------------------------------------------------- bake


def bake(images, passes: Passes, weights: BakeWeights | None = None, fill: bool = True,
         inpaint: bool = False, padding: int = 4, exponent: float = 4.0, feather_px: float = 3,
         tolerance: float | None = None) -> BakeResult:
    """Bake views into the UV texture -> :class:`BakeResult`.

    ``images (V, H, W, C)`` float: one image per view of ``passes``. ``weights`` from
    :func:`gather_weights` (computed with ``exponent``, ``feather_px``, ``tolerance``
    when not given). Seen texels get the weighted mean of the bilinearly sampled views.
    ``fill``: texels on the UV map that no view sees take the nearest seen texel's
    colour, then ``inpaint`` replaces them with OpenCV's Telea inpainting. ``padding``:
    texels up to this distance outside the UV islands copy the nearest island texel.
    Everything else is 0. ValueError when no texel is seen by any view.
    """
    if weights is None:
        weights = gather_weights(passes, exponent=exponent, feather_px=feather_px, tolerance=tolerance)
    _check_weights(weights, passes)
    images = _checked_images(images, weights.views, *weights.image_size)
    if isinstance(padding, bool) or not isinstance(padding, (int, np.integer)) or padding < 0:
        _fail("padding", f"expected an integer >= 0, got {padding!r}")
    seen = weights.seen
    if not seen.any():
        _fail("texture", "no texel is seen by any view")
    texture = _blend(images, weights)
    if fill:
        _fill_unseen(texture, weights)
        if inpaint:
            texture = _inpaint_unseen(texture, weights)
    _pad_islands(texture, weights, int(padding))
    coverage = float(seen.sum() / weights.texel_mask.sum())
    return BakeResult(texture, seen, coverage)


def _check_weights(weights: BakeWeights, passes: Passes) -> None:
    if not isinstance(passes, Passes):
        _fail("passes", f"expected a zs_core.protocol.Passes, got {type(passes).__name__}")
    if not isinstance(weights, BakeWeights):
        _fail("weights", f"expected BakeWeights from gather_weights, got {type(weights).__name__}")
    if weights.views != passes.views or weights.image_size != (passes.height, passes.width):
        _fail("weights", f"computed for {weights.views} views of {weights.image_size}, but the passes "
                         f"have {passes.views} views of {(passes.height, passes.width)}")


def _blend(images: np.ndarray, weights: BakeWeights) -> np.ndarray:
    """Weighted mean of the sampled views -> texture (T, T, C) float32, 0 where unseen.

    Tile by tile (in threads: the tiles are disjoint), each :class:`_TilePlan` one
    cv2.remap of the tile's texels in its views into a cache-sized buffer, weighted by
    the weights over their texel's sum and summed view after view (a texel's sum runs
    over its views in order, whatever the tiling), then copied into the texture."""
    size, channels = weights.texture_size, images.shape[3]
    layout, plans = weights.plans
    totals = weights.totals
    canvas = _tile(images, layout)
    texture = np.zeros((size, size, channels), np.float32)

    def blend_tile(plan: _TilePlan, scratch: _Scratch) -> None:
        if plan.map1 is None:
            return
        samples = cv2.remap(canvas, plan.map1, plan.map2, cv2.INTER_LINEAR,
                            dst=scratch("samples", (*plan.map2.shape, channels), np.float32),
                            borderMode=cv2.BORDER_REPLICATE)
        tile_totals = totals[plan.tile].reshape(-1)
        # The weights over their texel's sum (texels no view sees: 0 / 1).
        blend = np.divide(plan.weight, np.where(tile_totals > 0, tile_totals, np.float32(1.0)),
                          out=scratch("blend", plan.weight.shape, np.float32))
        for channel in range(channels):  # cache-hot strided rows: faster than broadcasting (V', N, 1)
            samples[..., channel] *= blend
        total = samples[0]  # the first view accumulates the others in place
        for view in samples[1:]:
            total += view
        rows, cols = plan.tile
        texture[plan.tile] = total.reshape(rows.stop - rows.start, cols.stop - cols.start, channels)

    _in_threads(blend_tile, plans)
    return texture


def _canvas_layout(views: int, height: int, width: int) -> tuple[int, int]:
    """(views per column, columns) of the grid the views are tiled into for cv2.remap."""
    per_column = max(1, min(views, REMAP_LIMIT // height))
    columns = -(-views // per_column)
    if columns * width > REMAP_LIMIT:
        _fail("images", f"{views} views of {height}x{width} do not fit one {REMAP_LIMIT}-pixel remap canvas")
    return per_column, columns


def _canvas_offsets(views: int, height: int, width: int, layout: tuple[int, int]) -> np.ndarray:
    """(2, V) float64: from a view's continuous [col, row] pixel coordinates to remap
    coordinates (pixel centres at integers) in the canvas of :func:`_tile`."""
    tile = np.arange(views)
    return np.stack([(tile // layout[0]) * width - 0.5, (tile % layout[0]) * height - 0.5])


def _tile(images: np.ndarray, layout: tuple[int, int]) -> np.ndarray:
    """(V, H, W, C) -> one (per_column*H, columns*W, C) canvas (a free reshape for one column)."""
    views, height, width, channels = images.shape
    per_column, columns = layout
    if columns == 1:
        return images.reshape(views * height, width, channels)
    canvas = np.zeros((per_column * height, columns * width, channels), np.float32)
    for view in range(views):
        row, column = view % per_column, view // per_column
        canvas[row * height:(row + 1) * height, column * width:(column + 1) * width] = images[view]
    return canvas


# ------------------------------------------------------------------ fill and padding


def _fill_unseen(texture: np.ndarray, weights: BakeWeights) -> None:
    """Unseen texels on the UV map copy the nearest seen texel, in place."""
    targets, sources = weights._cached("fill", lambda: _nearest_copy(weights.seen, weights.texel_mask
                                                                     & ~weights.seen))
    texels = _texel_records(texture)
    texels[targets] = texels.take(sources)


def _pad_islands(texture: np.ndarray, weights: BakeWeights, padding: int) -> None:
    """Texels within ``padding`` of a UV island copy the nearest island texel, in place."""
    if padding == 0:
        return
    targets, sources = weights._cached(("pad", padding), lambda: _padding_copy(weights.texel_mask, padding))
    texels = _texel_records(texture)
    texels[targets] = texels.take(sources)


def _texel_records(texture: np.ndarray) -> np.ndarray:
    """(T, T, C) contiguous -> a (T*T,) view with one C-channel record per texel: whole
    texels copy faster than (T*T, C) rows."""
    return texture.reshape(-1).view(np.dtype((np.void, texture.dtype.itemsize * texture.shape[2])))


def _nearest_copy(sources: np.ndarray, targets: np.ndarray):
    """(target flat indices, flat index of the nearest ``sources`` texel of each)."""
    target_index = np.flatnonzero(targets)
    if target_index.size == 0:
        return target_index, target_index
    return target_index, _nearest_source(sources, target_index)


def _padding_copy(texel_mask: np.ndarray, padding: int):
    """(flat indices of the texels off the map within ``padding`` of it, flat index of
    the nearest map texel of each)."""
    if texel_mask.all():
        empty = np.zeros(0, np.int64)
        return empty, empty
    # The band is decided by the exact Euclidean distance (OpenCV's precise mask).
    distance = cv2.distanceTransform(np.ascontiguousarray(~texel_mask).view(np.uint8), cv2.DIST_L2,
                                     cv2.DIST_MASK_PRECISE)
    band = np.flatnonzero((distance <= padding) & ~texel_mask)
    return band, _nearest_source(texel_mask, band)


def _nearest_source(sources: np.ndarray, texels: np.ndarray) -> np.ndarray:
    """Flat index of the nearest ``sources`` texel of each of the flat ``texels``, by OpenCV's
    5x5 chamfer distance (within 2% of the Euclidean one; ties and near-ties may pick
    another texel than an exact transform would). Many times faster than scipy's exact
    feature transform at 2048^2."""
    # DIST_LABEL_PIXEL numbers the zero pixels 1, 2, ... in row-major order.
    _, labels = cv2.distanceTransformWithLabels(np.ascontiguousarray(~sources).view(np.uint8), cv2.DIST_L2,
                                                cv2.DIST_MASK_5, labelType=cv2.DIST_LABEL_PIXEL)
    return np.flatnonzero(sources)[labels.reshape(-1)[texels] - 1]


def _inpaint_unseen(texture: np.ndarray, weights: BakeWeights, radius: float = 3.0) -> np.ndarray:
    """Replace the unseen texels on the UV map with Telea inpainting, channel by channel
    (OpenCV inpaints float images one channel at a time)."""
    holes = (weights.texel_mask & ~weights.seen).astype(np.uint8)
    if not holes.any():
        return texture
    channels = [cv2.inpaint(np.ascontiguousarray(texture[..., c]), holes, radius, cv2.INPAINT_TELEA)
                for c in range(texture.shape[2])]
    return np.stack(channels, axis=-1).astype(np.float32)


# ------------------------------------------------------------------------------ render


def render(texture, uv, mask) -> np.ndarray:
    """Look the texture up through each view's UV pass -> (V, H, W, C) float32.

    ``texture (T, T, C)`` (any (Ht, Wt, C)), ``uv (V, H, W, 2)`` with (0, 0) the
    bottom-left of the texture image (texel row 0 is v = 1), ``mask (V, H, W)`` bool.
    Bilinear, clamped at the texture border; 0 outside the mask.
    """
    texture = np.asarray(texture)
    if texture.ndim != 3 or texture.dtype.kind not in "fiu":
        _fail("texture", f"expected a numeric (T, T, C) array, got shape {texture.shape}")
    texture = np.ascontiguousarray(texture, dtype=np.float32)
    mask = np.asarray(mask)
    if mask.ndim != 3 or mask.dtype != np.bool_:
        _fail("mask", f"expected a (V, H, W) bool array, got {mask.dtype} {mask.shape}")
    uv = np.asarray(uv)
    if uv.shape != (*mask.shape, 2):
        _fail("uv", f"expected shape {(*mask.shape, 2)} matching mask, got {uv.shape}")
    height, width = texture.shape[:2]
    out = np.zeros((*mask.shape, texture.shape[2]), np.float32)
    for view in range(mask.shape[0]):
        cols = uv[view, ..., 0] * width  # continuous texel coordinates (geometry.uv_to_texel)
        rows = (1.0 - uv[view, ..., 1]) * height
        out[view] = sample_bilinear(texture, cols, rows)
        out[view][~mask[view]] = 0.0
    return out


def sample_bilinear(image: np.ndarray, cols, rows) -> np.ndarray:
    """Bilinear samples of ``image (h, w, C)`` float32 at continuous coordinates
    ``cols, rows (H', W')`` (pixel centres at +0.5) -> (H', W', C) float32, clamped at
    the border. Sides must stay below 32767 (cv2.remap)."""
    map_x = np.asarray(cols, dtype=np.float32) - 0.5
    map_y = np.asarray(rows, dtype=np.float32) - 0.5
    sampled = cv2.remap(np.ascontiguousarray(image, dtype=np.float32), map_x, map_y, cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REPLICATE)
    return sampled.reshape(*map_x.shape, image.shape[2])
