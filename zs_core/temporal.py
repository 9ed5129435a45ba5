"""Frame-to-frame correspondence as sparse matrices, and carrying values along them (numpy).

A *link matrix* ``L (P, P)`` (scipy CSR, P = H * W pixels of a frame) says where the
pixels of frame i come from in frame i - 1: row q holds bilinear weights over the frame
i - 1 pixels that see the same point, so ``L @ values`` is frame i - 1 carried into frame i
and the row sum (<= 1 for the object; about 1 for the background) is how well it is
covered (0 where the point is newly visible). Two sources of correspondence, both exact
renderer output:

- object pixels through the UV pass: frame i - 1 is splatted into a texture (bilinear,
  normalised per texel) and read back at frame i's UVs; only texels frame i - 1 saw count;
- other pixels through the vector pass: each frame i pixel gathers bilinearly from where
  it was in frame i - 1 (the forward motion inverted, checked forward-backward); only
  background-to-background links count, so nothing is smeared across an occlusion border.

:func:`carry` chains them: ``out_i = own_i + s c (L_i out_(i-1) / c - own_i)``: each frame
takes share ``s`` of its predecessor where covered, so frame i holds a decaying (``s^k``)
memory of the frames before it. The sampler uses it on the background's predicted x0
(latent resolution, :class:`zs_core.sync.VectorSync`). Each link resamples bilinearly, so
a chain of them blurs what keeps moving (a floor under a dolly smears into streaks): after
decoding the sampler fuses through one UV texture instead (:func:`zs_core.animation.pixel_synced`);
:func:`frame_links` at image resolution is the chain pixel sync used before, kept for
comparison (bench/animation_smear.py).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, sparse


def _bilinear_corners(cols: np.ndarray, rows: np.ndarray):
    """Continuous centre-based coordinates ``(N,)`` -> 4 x (integer col, integer row, weight)."""
    base_cols, base_rows = np.floor(cols), np.floor(rows)
    for d_row in (0, 1):
        for d_col in (0, 1):
            corner_cols, corner_rows = base_cols + d_col, base_rows + d_row
            weight = (1 - np.abs(cols - corner_cols)) * (1 - np.abs(rows - corner_rows))
            yield corner_cols.astype(np.int64), corner_rows.astype(np.int64), weight


def vector_links(motion: np.ndarray, source: np.ndarray, target: np.ndarray) -> sparse.csr_matrix:
    """Link matrix ``(P, P)`` from a vector pass frame, by gathering.

    ``motion (H, W, 2)``: each pixel's move to the next frame [col, row] in pixels (rows
    down); ``source (H, W) bool`` pixels allowed to give (e.g. background of this frame);
    ``target (H, W) bool`` pixels allowed to receive (background of the next frame).

    Every target pixel q looks up where it came from, p = q - m'(q), with m' the motion
    field carried to the next frame (forward motion splatted there, holes filled from the
    nearest pixel), and takes bilinear weights of the source pixels around p. Gathering
    leaves no holes where the picture expands (a forward splat would, and a chain of
    frames turns them into streaks). The link is kept only where p's own motion brings it
    back to within a pixel of q: disoccluded pixels get nothing (new content). Row q,
    column p: the bilinear weight, rows summing to 1 where linked.
    """
    height, width = source.shape
    motion = np.nan_to_num(np.asarray(motion, dtype=np.float64))
    arrived = _carried_motion(motion, source)  # (H, W, 2) motion of whatever lands on q
    grid_rows, grid_cols = np.mgrid[0:height, 0:width].astype(np.float64)
    from_cols = grid_cols - arrived[..., 0]
    from_rows = grid_rows - arrived[..., 1]
    # Forward-backward check: p's own (interpolated) motion must lead back to q.
    back = np.stack([_bilinear_sample(motion[..., axis], from_cols, from_rows) for axis in (0, 1)], axis=-1)
    consistent = (np.abs(from_cols + back[..., 0] - grid_cols) < 1.0) & (np.abs(from_rows + back[..., 1] - grid_rows) < 1.0)
    receivers = np.flatnonzero(target.ravel() & consistent.ravel())
    cols, rows = from_cols.ravel()[receivers], from_rows.ravel()[receivers]
    out_rows, out_cols, values = [], [], []
    for corner_cols, corner_rows, weight in _bilinear_corners(cols, rows):
        inside = (corner_cols >= 0) & (corner_cols < width) & (corner_rows >= 0) & (corner_rows < height) & (weight > 0)
        giver = np.zeros(len(receivers), np.int64)
        giver[inside] = corner_rows[inside] * width + corner_cols[inside]
        keep = inside & source.ravel()[giver]
        out_rows.append(receivers[keep])
        out_cols.append(giver[keep])
        values.append(weight[keep])
    size = height * width
    link = sparse.csr_matrix((np.concatenate(values), (np.concatenate(out_rows), np.concatenate(out_cols))),
                             shape=(size, size))
    # Renormalise over the corners that may give: a row is an interpolation, or empty.
    totals = np.asarray(link.sum(axis=1)).ravel()
    return (sparse.diags(np.where(totals > 0.5, 1.0 / np.maximum(totals, 1e-12), 0.0)) @ link).tocsr()


def _carried_motion(motion: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Forward motion ``(H, W, 2)`` of the ``source (H, W) bool`` pixels splatted to where
    it lands (bilinear, normalised) -> the motion of what arrives at each pixel; pixels
    nothing lands on take the value of the nearest pixel something landed on
    (scipy.ndimage). Other pixels (e.g. a moving object) do not blur the field."""
    height, width = source.shape
    grid_rows, grid_cols = np.mgrid[0:height, 0:width].astype(np.float64)
    cols, rows = (grid_cols + motion[..., 0]).ravel(), (grid_rows + motion[..., 1]).ravel()
    sums = np.zeros((height * width, 2))
    weights = np.zeros(height * width)
    flat_motion = motion.reshape(-1, 2)
    for corner_cols, corner_rows, weight in _bilinear_corners(cols, rows):
        inside = (corner_cols >= 0) & (corner_cols < width) & (corner_rows >= 0) & (corner_rows < height) \
            & source.ravel()
        landing = corner_rows[inside] * width + corner_cols[inside]
        weights += np.bincount(landing, weight[inside], minlength=height * width)
        for axis in (0, 1):
            sums[:, axis] += np.bincount(landing, weight[inside] * flat_motion[inside, axis], minlength=height * width)
    reached = (weights > 1e-6).reshape(height, width)
    carried = (sums / np.maximum(weights, 1e-12)[:, None]).reshape(height, width, 2)
    if not reached.any():
        return np.zeros((height, width, 2))
    if not reached.all():
        _, (near_rows, near_cols) = ndimage.distance_transform_edt(~reached, return_indices=True)
        carried = carried[near_rows, near_cols]
    return carried


def _bilinear_sample(field: np.ndarray, cols: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``field (H, W)`` at centre-based continuous coordinates (clamped to the image)."""
    height, width = field.shape
    return ndimage.map_coordinates(field, [np.clip(rows, 0, height - 1), np.clip(cols, 0, width - 1)],
                                   order=1, mode="nearest")


def _texel_weights(uv: np.ndarray, pixels: np.ndarray, size: int) -> sparse.csr_matrix:
    """Bilinear texel weights ``(P, size^2)`` of the given flat pixel indices' UVs."""
    flat_uv = uv.reshape(-1, 2)[pixels].astype(np.float64)
    cols = np.clip(flat_uv[:, 0] * size - 0.5, 0, size - 1)
    rows = np.clip(flat_uv[:, 1] * size - 0.5, 0, size - 1)
    out_rows, out_cols, values = [], [], []
    for corner_cols, corner_rows, weight in _bilinear_corners(cols, rows):
        inside = (corner_cols < size) & (corner_rows < size) & (weight > 0)
        out_rows.append(pixels[inside])
        out_cols.append(corner_rows[inside] * size + corner_cols[inside])
        values.append(weight[inside])
    return sparse.csr_matrix((np.concatenate(values), (np.concatenate(out_rows), np.concatenate(out_cols))),
                             shape=(uv.shape[0] * uv.shape[1], size * size))


def uv_links(uv: np.ndarray, mask: np.ndarray, size: int) -> sparse.csr_matrix:
    """Link matrix ``(P, P)`` from frame 0 to frame 1 of ``uv (2, H, W, 2)``, ``mask (2, H, W)
    bool`` through a ``size``^2 texture: splat frame 0 (mean per texel), read at frame 1."""
    splat = _texel_weights(uv[0], np.flatnonzero(mask[0]), size).T.tocsr()  # (T, P)
    texel_weight = np.asarray(splat.sum(axis=1)).ravel()
    seen = texel_weight > 0
    splat = sparse.diags(np.where(seen, 1.0 / np.maximum(texel_weight, 1e-12), 0.0)) @ splat
    read = _texel_weights(uv[1], np.flatnonzero(mask[1]), size)  # (P, T)
    read = read @ sparse.diags(seen.astype(np.float64))  # unseen texels carry nothing
    return (read @ splat).tocsr()


def frame_links(uv: np.ndarray | None, mask: np.ndarray, vector: np.ndarray | None, texels: int,
                object_links: bool = True, background_links: bool = True) -> list[sparse.csr_matrix]:
    """Link matrices from frame i - 1 to frame i, i = 1..F-1 (F - 1 of them).

    ``uv (F, H, W, 2)`` and ``mask (F, H, W) bool`` (the target object) give the object's
    links through a ``texels``^2 texture; ``vector (F or F-1, H, W, 2)`` the background's
    (pixels off the object in both frames). Either part may be switched off or missing.
    """
    frames, height, width = mask.shape
    links = []
    for frame in range(1, frames):
        link = sparse.csr_matrix((height * width, height * width))
        if object_links and uv is not None:
            link = link + uv_links(uv[frame - 1:frame + 1], mask[frame - 1:frame + 1], texels)
        if background_links and vector is not None:
            link = link + vector_links(vector[frame - 1], ~mask[frame - 1], ~mask[frame])
        links.append(link.tocsr())
    return links


def carry(values: np.ndarray, links: list[sparse.csr_matrix], strength: np.ndarray) -> np.ndarray:
    """Carry each frame's values into the next along ``links``.

    ``values (F, P, C)``; ``links`` F - 1 matrices ``(P, P)``; ``strength (F, P)`` or a
    float: the share s a frame takes from its predecessor where fully covered.
    -> ``(F, P, C)`` float64 with ``out_0 = values_0`` and
    ``out_i = values_i + s c (L_i out_(i-1) / c - values_i)``, c the row sums of L_i
    clipped to [0, 1] (c = 0: the point is new in frame i and keeps its own value).
    """
    values = np.asarray(values, dtype=np.float64)
    frames, pixels, _ = values.shape
    if len(links) != frames - 1:
        raise ValueError(f"links: expected {frames - 1} link matrices for {frames} frames, got {len(links)}")
    strength = np.broadcast_to(np.asarray(strength, dtype=np.float64), (frames, pixels))
    out = np.empty_like(values)
    out[0] = values[0]
    for frame, link in enumerate(links, start=1):
        weight = np.asarray(link.sum(axis=1)).ravel()
        carried = (link @ out[frame - 1]) / np.maximum(weight, 1e-12)[:, None]
        share = (strength[frame] * np.clip(weight, 0.0, 1.0))[:, None]
        out[frame] = values[frame] + share * (carried - values[frame])
    return out
