"""Views -> UV texture (bake) and texture -> views (render). numpy, scipy.ndimage, OpenCV.

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
(texel, view) samples, a weighted sum and a copy for the filled texels.

Conventions are those of :mod:`zs_core.geometry`: continuous pixel coordinates
[col, row] have pixel centres at +0.5; texel row 0 is v = 1. Bilinear sampling goes
through ``cv2.remap``, whose sub-pixel positions are quantised to 1/32 pixel (a
position error below 1/64 pixel, far under anything a generated image resolves).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy import ndimage

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
SAMPLE_ROW = 8192  # bake samples are laid out in rows of this many for cv2.remap

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
class BakeWeights:
    """How every texel is seen by every view; reusable to bake any images of these views.

    pixels (V, T, T, 2) float32: continuous [col, row] pixel coordinates of each texel
    centre in each view (NaN off the UV map or where it does not project).
    weights (V, T, T) float32: cos(theta)^exponent * feather, 0 = not visible.
    texel_mask (T, T) bool; image_size (H, W) of the views.
    """

    pixels: np.ndarray
    weights: np.ndarray
    texel_mask: np.ndarray
    image_size: tuple[int, int]
    # Image-independent work derived from the weights, computed on first use.
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    views: int = field(init=False, compare=False)  # V
    texture_size: int = field(init=False, compare=False)  # T

    def __post_init__(self) -> None:
        self.views, self.texture_size = (int(size) for size in self.weights.shape[:2])

    @property
    def seen(self) -> np.ndarray:
        """(T, T) bool: texels with a positive weight in at least one view."""
        return self._cached("seen", lambda: (self.weights > 0).any(axis=0))

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

    The texels are processed in blocks of about :data:`_BLOCK_SAMPLES` (texel, view)
    samples, all views at once (:class:`_WeightKernel`).
    """
    passes = _checked_passes(passes, texture_size)
    exponent = _non_negative("exponent", exponent)
    feather_px = _non_negative("feather_px", feather_px)
    if tolerance is not None:
        tolerance = _non_negative("tolerance", tolerance)
    texel_mask = passes.texel_mask
    size = texel_mask.shape[0]
    texels = size * size
    spacing = texel_spacing(passes.texel_position, texel_mask)
    kernel = _WeightKernel(passes, feather_px, exponent,
                           tolerance if tolerance is not None else spacing * TEXEL_TOLERANCE, tolerance is None)
    pixels = np.empty((passes.views, texels, 2), np.float32)
    weights = np.empty((passes.views, texels), np.float32)
    positions = passes.texel_position.reshape(texels, 3)
    normals = passes.texel_normal.reshape(texels, 3)
    on_map = texel_mask.reshape(texels)
    block = max(1, _BLOCK_SAMPLES // passes.views)
    for start in range(0, texels, block):
        span = slice(start, min(start + block, texels))
        kernel.run(positions[span], normals[span], on_map[span], pixels[:, span], weights[:, span])
    return BakeWeights(pixels.reshape(passes.views, size, size, 2), weights.reshape(passes.views, size, size),
                       texel_mask.copy(), (passes.height, passes.width))


# (texel, view) samples per block of gather_weights: large enough that numpy's per-call
# overhead is small, small enough that the float64 temporaries stay in the CPU caches.
_BLOCK_SAMPLES = 1 << 15


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
        step = (positions[:, :-1] - positions[:, 1:])[both]
        distances.append(np.sqrt(np.einsum("ij,ij->i", step, step)))
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


# Rows of the per-texel feature matrix _WeightKernel multiplies the view matrices with.
_FEATURES = 9  # x, y, z, 1, nx, ny, nz, n.p, |p|^2
# Rows of its result, each (V, N): pixel column * w, pixel row * w, clip w, planar depth,
# n.(camera - p) (orthographic: n.towards camera), |camera - p|^2 (orthographic: 1).
_COL_W, _ROW_W, _CLIP_W, _DEPTH, _FACING, _DISTANCE2 = range(6)


class _WeightKernel:
    """Pixel coordinates and weights of blocks of texels in all views at once.

    Everything linear in a texel's position and normal -- the projection (as pixel
    coordinates times clip w), the planar depth, n.(camera - p) and |camera - p|^2 --
    comes out of one matrix product ``(6V, 9) @ (9, N)`` per block; the divisions,
    bound checks and cosines run on (V, N) arrays, and only samples that land in a view
    and face it reach the gathers of the feather and the position pass. Pixel
    coordinates, depths and the visibility test stay float64 (a texel's nearest pixel
    and visibility are exactly today's decisions); weights are float32.
    """

    def __init__(self, passes: Passes, feather_px: float, exponent: float, limit: float,
                 add_pixel_footprint: bool) -> None:
        self.views, self.height, self.width = passes.views, passes.height, passes.width
        self.exponent, self.limit, self.add_pixel_footprint = exponent, limit, add_pixel_footprint
        views = self.views
        matrix = np.zeros((6, views, _FEATURES))
        self.footprint = np.empty(views)  # pixel footprint per unit depth (orthographic: the footprint)
        self.orthographic = np.zeros(views, bool)
        feathers = []
        for view in range(views):
            world_to_camera = passes.world_to_camera[view].astype(np.float64)
            projection = passes.projection[view].astype(np.float64)
            clip = projection @ world_to_camera
            # Pixel [col, row] = ((x/w + 1) W/2, (1 - y/w) H/2) = (W/2 (x + w), H/2 (w - y)) / w.
            matrix[_COL_W, view, :4] = 0.5 * self.width * (clip[0] + clip[3])
            matrix[_ROW_W, view, :4] = 0.5 * self.height * (clip[3] - clip[1])
            matrix[_CLIP_W, view, :4] = clip[3]
            matrix[_DEPTH, view, :4] = -world_to_camera[2]
            camera_to_world = np.linalg.inv(world_to_camera)
            self.footprint[view] = _footprint_per_unit_depth(projection, self.width, self.height)
            if geometry.is_orthographic(projection):
                self.orthographic[view] = True
                matrix[_FACING, view, 4:7] = _unit(camera_to_world[None, :3, 2])[0]
                matrix[_DISTANCE2, view, 3] = 1.0
            else:
                camera = camera_to_world[:3, 3]
                matrix[_FACING, view, 4:8] = (*camera, -1.0)  # n.c - n.p
                matrix[_DISTANCE2, view, :4] = (*(-2.0 * camera), camera @ camera)  # |p|^2 - 2 c.p + |c|^2
                matrix[_DISTANCE2, view, 8] = 1.0
            feathers.append(feather_map(passes.depth[view], passes.mask[view], projection, feather_px))
        self.matrix = matrix  # (6, V, 9)
        self.feather = np.stack(feathers).reshape(-1)  # (V*H*W,) float32, 0 off the mask
        self.position = passes.position.reshape(-1, 3)  # (V*H*W, 3) float32
        self._buffers: dict[str, np.ndarray] = {}

    def run(self, positions: np.ndarray, normals: np.ndarray, on_map: np.ndarray, pixels_out: np.ndarray,
            weights_out: np.ndarray) -> None:
        """One block: positions, normals (N, 3) float32 texel maps, on_map (N,) bool ->
        pixels_out (V, N, 2) float32 (NaN off the map or with no projection) and
        weights_out (V, N) float32, written in place."""
        count = len(on_map)
        views = self.views
        points = positions.astype(np.float64)
        with np.errstate(all="ignore"):  # off-map texels may hold anything; they are discarded
            # |p|^2 and |n|^2 of float32 vectors cannot overflow float64: finite iff p, n are.
            squared_norms = np.einsum("ij,ij->i", points, points)
            units = normals.astype(np.float64)
            normal_norms = np.sqrt(np.einsum("ij,ij->i", units, units))
            for name, norms in (("texel_position", squared_norms), ("texel_normal", normal_norms)):
                finite = np.isfinite(norms)
                if not (finite.all() or finite[on_map].all()):
                    _fail(name, "contains NaN or inf on texel_mask texels")
            units /= np.where(normal_norms > 0, normal_norms, 1.0)[:, None]  # as _unit
            # Reused buffers: fresh (V, N) temporaries every block cost page faults.
            features = self._buffer("features", (_FEATURES, count))
            features[0:3] = points.T
            features[3] = 1.0
            features[4:7] = units.T
            np.einsum("ij,ij->i", units, points, out=features[7])
            features[8] = squared_norms
            # One small product per row group: each stays under OpenBLAS's threading
            # threshold, so no thread hand-offs (slow on a busy machine) per block.
            linear = np.matmul(self.matrix, features, out=self._buffer("linear", (6, views, count)))
            clip_w = linear[_CLIP_W]
            clip_w[clip_w <= 0] = np.nan  # behind a perspective camera: no projection
            cols = np.divide(linear[_COL_W], clip_w, out=self._buffer("cols", (views, count)))
            rows = np.divide(linear[_ROW_W], clip_w, out=self._buffer("rows", (views, count)))
            if not on_map.all():
                cols[:, ~on_map] = np.nan
                rows[:, ~on_map] = np.nan
            pixels_out[..., 0] = cols
            pixels_out[..., 1] = rows
            depth = linear[_DEPTH]
            # NaN coordinates compare False: no projection, or off the map.
            candidate = np.greater(depth, 0, out=self._buffer("candidate", (views, count), bool))
            for test in (np.greater(linear[_FACING], 0), cols >= 0, cols < self.width, rows >= 0,
                         rows < self.height):
                candidate &= test
            samples = np.flatnonzero(candidate)  # into (V, N)
            block_weights = self._buffer("weights", (views, count), np.float32)
            block_weights[...] = 0.0
            if samples.size:
                self._visible_weights(samples, cols, rows, depth, linear, points, count, block_weights)
            weights_out[...] = block_weights

    def _buffer(self, name: str, shape: tuple, dtype=np.float64) -> np.ndarray:
        """A contiguous scratch array of ``shape``, reusing the memory of earlier blocks."""
        size = math.prod(shape)
        store = self._buffers.get(name)
        if store is None or store.size < size:
            store = self._buffers[name] = np.empty(size, dtype)
        return store[:size].reshape(shape)

    def _visible_weights(self, samples, cols, rows, depth, linear, points, count, weights_out) -> None:
        """Weights of the candidate samples (flat indices into (V, N)) into the contiguous
        (V, N) float32 ``weights_out``."""
        view = samples // count
        # Non-negative coordinates: truncation is floor, the index of the nearest pixel.
        pixel = (view * self.height + rows.reshape(-1)[samples].astype(np.int64)) * self.width \
            + cols.reshape(-1)[samples].astype(np.int64)
        # The feather is 0 off the target mask and next to depth jumps: those samples get
        # weight 0 whatever their visibility, so only the rest are tested for occlusion.
        feather = self.feather[pixel]
        keep = np.flatnonzero(feather)
        samples, pixel, feather = samples[keep], pixel[keep], feather[keep]
        view, texel = np.divmod(samples, count)
        # Occlusion: the view must see this very point, not a surface in front of it.
        gap = np.take(self.position, pixel, axis=0) - np.take(points, texel, axis=0)
        gap = np.sqrt(np.einsum("ij,ij->i", gap, gap))
        limit = self.limit
        if self.add_pixel_footprint:
            sample_depth = np.abs(depth.reshape(-1)[samples])
            if self.orthographic.any():
                sample_depth[self.orthographic[view]] = 1.0
            limit = limit + PIXEL_TOLERANCE * (self.footprint[view] * sample_depth)
        visible = np.flatnonzero(gap < limit)
        samples, feather = samples[visible], feather[visible]
        numerator = linear[_FACING].reshape(-1)[samples]
        distance = np.sqrt(np.maximum(linear[_DISTANCE2].reshape(-1)[samples], 0.0))
        facing = numerator / np.maximum(distance, 1e-300)
        weights_out.reshape(-1)[samples] = _power(facing, self.exponent) * feather


def _power(values: np.ndarray, exponent: float) -> np.ndarray:
    """values ** exponent; small whole exponents by repeated squaring (several times
    faster than the general pow, equal to within a few float64 ulps)."""
    if exponent != int(exponent) or exponent > 64:
        return values ** exponent
    result, base, remaining = np.ones_like(values), values, int(exponent)
    while remaining:
        if remaining & 1:
            result = result * base
        remaining >>= 1
        if remaining:
            base = base * base
    return result


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
    plan = _sampling_plan(weights)
    texture = _blend(images, plan, weights.texture_size)
    seen = weights.seen
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


@dataclass
class _SamplingPlan:
    """Every (texel, view) sample with a positive weight, laid out for one cv2.remap.

    Seen texels are ordered by how many views see them (most first), so slot k (the
    k-th view of each texel) covers a prefix of that order: the slots' samples are
    concatenated and summed with plain slices, no scatter-add.
    texels (N,) flat texel indices; slot_lengths [n_0 >= n_1 >= ...]; map1 (R, L, 2)
    int16 / map2 (R, L) uint16 fixed-point remap maps into the tiled views;
    blend (M,) float32 normalised weights (the weights of a texel sum to 1).
    """

    texels: np.ndarray
    slot_lengths: list[int]
    map1: np.ndarray
    map2: np.ndarray
    blend: np.ndarray
    tiles: tuple[int, int]  # (views per tile column, tile columns)
    expanded: np.ndarray | None = None  # blend repeated over the last channel count (M, C)


def _sampling_plan(weights: BakeWeights) -> _SamplingPlan:
    return weights._cached("plan", lambda: _build_sampling_plan(weights))


def _build_sampling_plan(weights: BakeWeights) -> _SamplingPlan:
    flat = weights.weights.reshape(weights.views, -1)
    counts = (flat > 0).sum(axis=0)
    seen = np.flatnonzero(counts)
    if seen.size == 0:
        _fail("texture", "no texel is seen by any view")
    texels = seen[np.argsort(-counts[seen], kind="stable")]
    sorted_counts = counts[texels]
    slot_lengths = [int((sorted_counts > k).sum()) for k in range(int(sorted_counts[0]))]
    seen_weights = flat[:, texels]  # (V, N)
    views, slot_texels = _slot_views(seen_weights > 0, slot_lengths)
    blend = seen_weights[views, slot_texels] / seen_weights.sum(axis=0)[slot_texels]
    pixels = weights.pixels.reshape(weights.views, -1, 2)[views, texels[slot_texels]]
    map_x, map_y, tiles = _tiled_coordinates(pixels, views, weights.views, weights.image_size)
    map1, map2 = cv2.convertMaps(_rows_of(map_x), _rows_of(map_y), cv2.CV_16SC2)
    return _SamplingPlan(texels, slot_lengths, map1, map2, blend.astype(np.float32), tiles)


def _slot_views(active: np.ndarray, slot_lengths: list[int]):
    """For slot k, the k-th view (in view order) of each of the first n_k texels.

    active (V, N) bool, texels sorted by count descending -> (views (M,), texel positions
    (M,) into the order), slot after slot.
    """
    active = active.copy()
    views, positions = [], []
    for length in slot_lengths:
        first = np.argmax(active[:, :length], axis=0)
        order = np.arange(length)
        active[first, order] = False
        views.append(first)
        positions.append(order)
    return np.concatenate(views), np.concatenate(positions)


def _tile_layout(views: int, height: int, width: int) -> tuple[int, int]:
    """(views per column, columns) of the grid the views are tiled into for cv2.remap."""
    per_column = max(1, min(views, REMAP_LIMIT // height))
    columns = -(-views // per_column)
    if columns * width > REMAP_LIMIT:
        _fail("images", f"{views} views of {height}x{width} do not fit one {REMAP_LIMIT}-pixel remap canvas")
    return per_column, columns


def _tiled_coordinates(pixels: np.ndarray, views: np.ndarray, view_count: int, image_size):
    """Continuous [col, row] pixel coordinates (M, 2) of samples -> remap coordinates
    (pixel centres at integers) in the tiled canvas of all views."""
    height, width = image_size
    per_column, columns = _tile_layout(view_count, height, width)
    tile = np.arange(view_count)
    column_offset = ((tile // per_column) * width - 0.5).astype(np.float32)
    row_offset = ((tile % per_column) * height - 0.5).astype(np.float32)
    map_x = pixels[:, 0] + column_offset[views]
    map_y = pixels[:, 1] + row_offset[views]
    return map_x, map_y, (per_column, columns)


def _rows_of(values: np.ndarray) -> np.ndarray:
    """(M,) -> (R, SAMPLE_ROW) zero-padded: cv2.remap maps must be 2D with sides < 32767."""
    rows = -(-len(values) // SAMPLE_ROW)
    out = np.zeros(rows * SAMPLE_ROW, np.float32)
    out[: len(values)] = values
    return out.reshape(rows, SAMPLE_ROW)


def _tile(images: np.ndarray, tiles: tuple[int, int]) -> np.ndarray:
    """(V, H, W, C) -> one (per_column*H, columns*W, C) canvas (a free reshape for one column)."""
    views, height, width, channels = images.shape
    per_column, columns = tiles
    if columns == 1:
        return images.reshape(views * height, width, channels)
    canvas = np.zeros((per_column * height, columns * width, channels), np.float32)
    for view in range(views):
        row, column = view % per_column, view // per_column
        canvas[row * height:(row + 1) * height, column * width:(column + 1) * width] = images[view]
    return canvas


def _channel_weights(plan: _SamplingPlan, channels: int) -> np.ndarray:
    """The blend weights repeated over channels (M, C), cached: a plain elementwise
    multiply is several times faster than broadcasting (M, 1) over a short last axis."""
    if plan.expanded is None or plan.expanded.shape[1] != channels:
        plan.expanded = np.repeat(plan.blend[:, None], channels, axis=1)
    return plan.expanded


def _blend(images: np.ndarray, plan: _SamplingPlan, size: int) -> np.ndarray:
    """Weighted mean of the sampled views -> texture (T, T, C) float32, 0 where unseen."""
    channels = images.shape[3]
    canvas = _tile(images, plan.tiles)
    rows = plan.map2.shape[0]
    sampled = np.empty((rows, SAMPLE_ROW, channels), np.float32)
    for start in range(0, rows, REMAP_LIMIT):  # one call unless there are > 268M samples
        block = slice(start, start + REMAP_LIMIT)
        cv2.remap(canvas, plan.map1[block], plan.map2[block], cv2.INTER_LINEAR, dst=sampled[block],
                  borderMode=cv2.BORDER_REPLICATE)
    samples = sampled.reshape(-1, channels)[: len(plan.blend)]
    samples *= _channel_weights(plan, channels)
    total = samples[: plan.slot_lengths[0]]  # slot 0 accumulates the others in place
    start = plan.slot_lengths[0]
    for length in plan.slot_lengths[1:]:
        total[:length] += samples[start:start + length]
        start += length
    texture = np.zeros((size * size, channels), np.float32)
    texture[plan.texels] = total
    return texture.reshape(size, size, channels)


# ------------------------------------------------------------------ fill and padding


def _fill_unseen(texture: np.ndarray, weights: BakeWeights) -> None:
    """Unseen texels on the UV map copy the nearest seen texel, in place."""
    targets, sources = weights._cached("fill", lambda: _nearest_copy(weights.seen, weights.texel_mask
                                                                     & ~weights.seen))
    flat = texture.reshape(-1, texture.shape[2])
    flat[targets] = np.take(flat, sources, axis=0)


def _pad_islands(texture: np.ndarray, weights: BakeWeights, padding: int) -> None:
    """Texels within ``padding`` of a UV island copy the nearest island texel, in place."""
    if padding == 0:
        return
    targets, sources = weights._cached(("pad", padding), lambda: _padding_copy(weights.texel_mask, padding))
    flat = texture.reshape(-1, texture.shape[2])
    flat[targets] = flat[sources]


def _nearest_copy(sources: np.ndarray, targets: np.ndarray):
    """(target flat indices, flat index of the nearest ``sources`` texel of each)."""
    _, (rows, cols) = ndimage.distance_transform_edt(~sources, return_indices=True)
    nearest = rows * sources.shape[1] + cols
    target_index = np.flatnonzero(targets)
    return target_index, nearest.reshape(-1)[target_index]


def _padding_copy(texel_mask: np.ndarray, padding: int):
    distance, (rows, cols) = ndimage.distance_transform_edt(~texel_mask, return_indices=True)
    band = np.flatnonzero((distance <= padding) & ~texel_mask)
    nearest = (rows * texel_mask.shape[1] + cols).reshape(-1)
    return band, nearest[band]


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
