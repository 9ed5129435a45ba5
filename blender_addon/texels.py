"""Texel maps by rasterising triangles in UV space: the world position and normal of the
surface point at every texel centre of a UV map. Pure numpy (no bpy): the extension reads
the evaluated mesh's triangles with ``foreach_get`` and hands them over.

A texel is covered when its centre lies inside a triangle's UV footprint (edges count);
where UV islands overlap, the later triangle wins. Texel row 0 is v = 1 (top), as for
every image here. Imports: the standard library and numpy only.
"""

from __future__ import annotations

import numpy as np

CANDIDATES_PER_CHUNK = 1 << 21  # texel candidates tested at once (bounds the temporaries)
EDGE_TOLERANCE = 1e-7  # barycentric slack, so centres on a shared edge are not lost to rounding
SLIVER = 1e-6  # triangles with 2 x area below this share of their longest edge squared are skipped


def rasterize(tri_uv: np.ndarray, tri_position: np.ndarray, tri_normal: np.ndarray, size: int,
              position: np.ndarray | None = None, normal: np.ndarray | None = None,
              covered: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Triangles -> texel maps of ``size`` x ``size``.

    ``tri_uv (M, 3, 2)`` UV of each corner; ``tri_position (M, 3, 3)`` world positions and
    ``tri_normal (M, 3, 3)`` world shading normals of the corners. -> (position (T, T, 3)
    float32, normal (T, T, 3) float32 unit, covered (T, T) bool); 0 where not covered.
    Pass the arrays of an earlier call to draw more triangles over them.
    """
    if position is None:
        position = np.zeros((size, size, 3), np.float32)
        normal = np.zeros((size, size, 3), np.float32)
        covered = np.zeros((size, size), bool)
    flat_position, flat_normal, flat_covered = (a.reshape(size * size, -1) for a in (position, normal, covered))
    # Texel space: x = u * T, y = (1 - v) * T; texel (row, col) has its centre at (col + 0.5, row + 0.5).
    corners = np.empty(tri_uv.shape, np.float64)
    corners[..., 0] = tri_uv[..., 0] * size
    corners[..., 1] = (1.0 - tri_uv[..., 1]) * size
    finite = np.isfinite(corners).all(axis=(1, 2))
    corners[~finite] = 0.0  # skipped below; zeroed so the bounds stay integers
    low = np.clip(np.ceil(corners.min(axis=1) - 0.5), 0, size - 1).astype(np.int64)  # (M, 2) first centre
    high = np.clip(np.floor(corners.max(axis=1) - 0.5), 0, size - 1).astype(np.int64)  # last centre
    (x0, y0), (x1, y1), (x2, y2) = (corners[:, i].T for i in range(3))
    area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
    # Slivers (three UVs on a line, up to float32 rounding) cover nothing: skip them rather
    # than let their arbitrary weights overwrite a neighbour.
    longest = np.max([(x1 - x0) ** 2 + (y1 - y0) ** 2, (x2 - x1) ** 2 + (y2 - y1) ** 2,
                      (x0 - x2) ** 2 + (y0 - y2) ** 2], axis=0)
    usable = finite & (np.abs(area) > SLIVER * longest) & np.all(high >= low, axis=1)
    usable &= (corners.max(axis=1) >= 0).all(axis=1) & (corners.min(axis=1) <= size).all(axis=1)
    triangles = np.flatnonzero(usable)
    # Barycentric weights are affine in the texel centre: w1 = a1 x + b1 y + c1, w2 likewise.
    (x0, y0), (x1, y1), (x2, y2) = (corners[triangles, i].T for i in range(3))
    inverse = 1.0 / area[triangles]
    a1, b1 = (y2 - y0) * inverse, -(x2 - x0) * inverse
    a2, b2 = -(y1 - y0) * inverse, (x1 - x0) * inverse
    c1, c2 = -(a1 * x0 + b1 * y0), -(a2 * x0 + b2 * y0)
    coefficients = np.stack([a1, b1, c1, a2, b2, c2], axis=1)  # (K, 6)
    triangles, coefficients, box_low, spans = _bands(triangles, coefficients, low[triangles],
                                                     high[triangles] - low[triangles] + 1)
    counts = spans[:, 0] * spans[:, 1]
    ends = np.cumsum(counts)
    start = 0
    while start < len(triangles):
        stop = int(np.searchsorted(ends, ends[start] - counts[start] + CANDIDATES_PER_CHUNK, side="right"))
        stop = max(stop, start + 1)
        part = slice(start, stop)
        _draw(triangles[part], coefficients[part], spans[part], counts[part], box_low[part], tri_position,
              tri_normal, size, flat_position, flat_normal, flat_covered)
        start = stop
    length = np.linalg.norm(normal, axis=-1, keepdims=True)
    np.divide(normal, np.where(length > 0, length, 1.0), out=normal)
    return position, normal, covered


def _bands(triangles, coefficients, low, spans):
    """Split boxes of more than :data:`CANDIDATES_PER_CHUNK` texels into bands of rows, so a
    chunk (at least one box) stays within the budget; order kept (later still wins).
    -> (triangles, coefficients, low (B, 2), spans (B, 2)) per band."""
    rows_per_band = np.maximum(1, CANDIDATES_PER_CHUNK // spans[:, 0])
    bands = -(-spans[:, 1] // rows_per_band)
    if (bands == 1).all():
        return triangles, coefficients, low, spans
    owner = np.repeat(np.arange(len(triangles)), bands)
    band = np.arange(owner.size) - np.repeat(np.cumsum(bands) - bands, bands)
    first_row = band * rows_per_band[owner]
    band_low = np.stack([low[owner, 0], low[owner, 1] + first_row], axis=1)
    band_spans = np.stack([spans[owner, 0], np.minimum(rows_per_band[owner], spans[owner, 1] - first_row)], axis=1)
    return triangles[owner], coefficients[owner], band_low, band_spans


def _draw(triangles, coefficients, spans, counts, low, tri_position, tri_normal, size,
          flat_position, flat_normal, flat_covered) -> None:
    """Test every texel centre in the bounding boxes of ``triangles`` (``coefficients``
    (K, 6) of their barycentric planes, boxes from ``low`` (K, 2) over ``spans``); write
    the centres inside. Candidates run triangle by triangle, so per-triangle values are
    repeated rather than gathered."""
    first = np.repeat(np.cumsum(counts) - counts, counts)
    local = np.arange(first.size) - first  # index inside the owner's box, row-major
    columns = np.repeat(spans[:, 0], counts)
    row, col = np.divmod(local, columns)
    col += np.repeat(low[:, 0], counts)
    row += np.repeat(low[:, 1], counts)
    px, py = col + 0.5, row + 0.5
    a1, b1, c1, a2, b2, c2 = (np.repeat(coefficients[:, k], counts) for k in range(6))
    w1 = a1 * px + b1 * py + c1
    w2 = a2 * px + b2 * py + c2
    w0 = 1.0 - w1 - w2
    inside = (w0 >= -EDGE_TOLERANCE) & (w1 >= -EDGE_TOLERANCE) & (w2 >= -EDGE_TOLERANCE)
    if not inside.any():
        return
    tri = np.repeat(triangles, counts)[inside]
    weights = np.stack([w0[inside], w1[inside], w2[inside]], axis=1)  # (N, 3)
    texel = row[inside] * size + col[inside]
    flat_position[texel] = np.einsum("nk,nkc->nc", weights, tri_position[tri])
    flat_normal[texel] = np.einsum("nk,nkc->nc", weights, tri_normal[tri])
    flat_covered[texel] = True
