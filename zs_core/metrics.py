"""Consistency metrics on numpy arrays (no torch): how much views, frames and textures agree."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from . import bake


def _texel_ids(uv: np.ndarray, texels: int) -> np.ndarray:
    """``uv (..., 2)`` in [0, 1] -> flat texel index (...) int64 on a ``texels``^2 grid."""
    cells = np.clip((uv * texels).astype(np.int64), 0, texels - 1)
    return cells[..., 1] * texels + cells[..., 0]


def downsample_correspondence(uv: np.ndarray, mask: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Image-resolution ``uv (V, H, W, 2)``, ``mask (V, H, W)`` -> latent resolution.

    A latent pixel takes the UV of its block's centre pixel and counts as on the target
    only when its whole block is, so mixed silhouette blocks do not pollute comparisons.
    """
    views, height, width = mask.shape
    centre = factor // 2
    small_uv = uv[:, centre::factor, centre::factor][:, : height // factor, : width // factor]
    blocks = mask[:, : height // factor * factor, : width // factor * factor]
    blocks = blocks.reshape(views, height // factor, factor, width // factor, factor)
    return small_uv, blocks.all(axis=(2, 4))


def cross_view_disagreement(images: np.ndarray, uv: np.ndarray, mask: np.ndarray, texels: int = 64) -> float:
    """Root-mean-square difference between views at the same surface point.

    ``images (V, H, W, C)``, ``uv (V, H, W, 2)`` in [0, 1], ``mask (V, H, W)`` bool.
    Pixels are matched through their UV on a ``texels``^2 grid: per texel and view the
    mean value is taken; for every texel seen by two or more views, the squared deviation
    of each view's mean from the texel's cross-view mean is averaged (over channels, views
    and texels, each texel weighted by its number of views; unbiased over the views).
    0 = perfectly consistent; independent unit-variance views give about 1 when each
    texel holds one pixel per view.
    """
    images = np.asarray(images, dtype=np.float64)
    if images.ndim != 4 or images.shape[:3] != mask.shape or uv.shape != (*mask.shape, 2):
        raise ValueError(f"images: expected (V, H, W, C) matching mask {mask.shape} and uv (V, H, W, 2), "
                         f"got images {images.shape}, uv {uv.shape}")
    views, channels = images.shape[0], images.shape[3]
    cells = texels * texels
    sums = np.zeros((views, cells, channels))
    counts = np.zeros((views, cells))
    for view in range(views):
        ids = _texel_ids(uv[view][mask[view]], texels)
        counts[view] = np.bincount(ids, minlength=cells)
        for channel in range(channels):
            sums[view, :, channel] = np.bincount(ids, weights=images[view][..., channel][mask[view]], minlength=cells)
    seen = counts > 0  # (V, cells)
    shared = seen.sum(0) >= 2
    if not shared.any():
        raise ValueError("uv: no surface point is seen by two views; nothing to compare")
    means = sums[:, shared] / np.maximum(counts[:, shared], 1)[..., None]  # (V, S, C)
    seen = seen[:, shared]
    centre = (means * seen[..., None]).sum(0) / seen.sum(0)[:, None]
    squared = ((means - centre) ** 2).mean(-1) * seen  # (V, S)
    # Unbiased over views: k views around their own mean keep (k-1)/k of the variance.
    views_per_texel = seen.sum(0)
    variance = squared.sum(0) / (views_per_texel - 1)
    return float(np.sqrt((variance * views_per_texel).sum() / views_per_texel.sum()))


# --------------------------------------------------------------------- bake residual


def bake_residual(images: np.ndarray, passes, texture: np.ndarray | None = None, weights=None) -> dict:
    """How far each view is from the texture they bake into, on the target pixels.

    ``images (V, H, W, C)`` one per view of ``passes`` (needs uv and mask; and what
    :func:`zs_core.bake.bake` needs when ``texture`` is not given). ``texture (T, T, C)``
    defaults to the bake of the images (with ``weights`` if given). Each view is compared
    with the texture rendered back into it: ``per_view`` is the mean absolute difference
    over its mask pixels and channels (NaN for a view with no target pixel), ``mean`` the
    mean of the per-view values. Consistent views give ~0.
    """
    if passes.uv is None:
        raise ValueError("uv: bake_residual needs the views' UV pass")
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[:3] != passes.mask.shape:
        raise ValueError(f"images: expected shape {(*passes.mask.shape, 'C')} matching the passes, got {images.shape}")
    if texture is None:
        texture = bake.bake(images, passes, weights=weights).texture
    rendered = bake.render(texture, passes.uv, passes.mask)
    per_view = []
    for view in range(images.shape[0]):
        on_target = passes.mask[view]
        difference = np.abs(images[view][on_target] - rendered[view][on_target])
        per_view.append(float(difference.mean()) if difference.size else float("nan"))
    counted = [value for value in per_view if not np.isnan(value)]
    return {"per_view": per_view, "mean": float(np.mean(counted)) if counted else float("nan")}


# ------------------------------------------------------------------- temporal warp error


def temporal_warp_error(frames: np.ndarray, uv: np.ndarray | None = None, mask: np.ndarray | None = None,
                        vector: np.ndarray | None = None, texels: int = 64) -> float:
    """:func:`temporal_warp_errors`' ``all``: object and background pooled."""
    return temporal_warp_errors(frames, uv, mask, vector, texels)["all"]


def temporal_warp_errors(frames: np.ndarray, uv: np.ndarray | None = None, mask: np.ndarray | None = None,
                         vector: np.ndarray | None = None, texels: int = 64) -> dict[str, float | None]:
    """Mean absolute difference between consecutive frames where they see the same point.

    ``frames (F, H, W, C)``. Object pixels (``mask (F, H, W)`` with ``uv (F, H, W, 2)``)
    are matched through their UV on a ``texels``^2 grid, like
    :func:`cross_view_disagreement` but between frame i and i+1 only: per texel the mean
    of each frame, compared on texels both frames see (one sample per texel). The other
    pixels (all of them without uv) are matched through ``vector (F or F-1, H, W, 2)``:
    pixel p of frame i moves to p + vector[i] in frame i+1, [col, row] in pixels with rows
    down (the wire format), sampled bilinearly and compared where it lands inside the
    image. Each pair's samples are pooled into one mean; returns the mean over pairs as
    ``all``, and the same of the object's samples alone (``object``, through UV) and of the
    rest (``background``, along the vectors); None where a part has no samples.
    0 = frames agree exactly; independent N(0, 1) frames give about 2/sqrt(pi) = 1.13.
    """
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim != 4 or frames.shape[0] < 2:
        raise ValueError(f"frames: expected shape (F >= 2, H, W, C), got {frames.shape}")
    count, height, width = frames.shape[:3]
    use_uv = uv is not None or mask is not None
    if use_uv:
        _check_correspondence(uv, mask, frames.shape)
    if vector is not None:
        vector = np.asarray(vector, dtype=np.float32)
        if vector.shape[1:] != (height, width, 2) or vector.shape[0] not in (count - 1, count):
            raise ValueError(f"vector: expected shape ({count}, {height}, {width}, 2), got {vector.shape}")
    if not use_uv and vector is None:
        raise ValueError("uv: temporal_warp_error needs uv with mask, or vector")
    pair_errors: dict[str, list[float]] = {"all": [], "object": [], "background": []}
    for index in range(count - 1):
        parts = {}
        if use_uv:
            parts["object"] = _texel_differences(frames[index:index + 2], uv[index:index + 2],
                                                 mask[index:index + 2], texels)
        if vector is not None:
            background = ~mask[index] if use_uv else np.ones((height, width), bool)
            parts["background"] = _warped_differences(frames[index], frames[index + 1], vector[index], background)
        parts["all"] = np.concatenate(list(parts.values()))
        for name, differences in parts.items():
            if differences.size:
                pair_errors[name].append(float(differences.mean()))
    if not pair_errors["all"]:
        raise ValueError("frames: no pixel of any frame could be matched in the next frame")
    return {name: float(np.mean(errors)) if errors else None for name, errors in pair_errors.items()}


def _check_correspondence(uv, mask, frames_shape) -> None:
    expected = frames_shape[:3]
    if mask is None or np.asarray(mask).shape != expected or np.asarray(mask).dtype != np.bool_:
        raise ValueError(f"mask: expected a bool array of shape {expected}, got {getattr(mask, 'shape', None)}")
    if uv is None or np.asarray(uv).shape != (*expected, 2):
        raise ValueError(f"uv: expected shape {(*expected, 2)}, got {getattr(uv, 'shape', None)}")


def _texel_differences(pair: np.ndarray, uv: np.ndarray, mask: np.ndarray, texels: int) -> np.ndarray:
    """Mean |difference| over channels (S,) of the two frames' per-texel means, on the S
    texels both frames see. pair (2, H, W, C), uv (2, H, W, 2), mask (2, H, W)."""
    cells = texels * texels
    means, seen = [], []
    for frame in range(2):
        ids = _texel_ids(uv[frame][mask[frame]], texels)
        counts = np.bincount(ids, minlength=cells)
        values = pair[frame][mask[frame]]
        sums = np.stack([np.bincount(ids, weights=values[:, c], minlength=cells) for c in range(values.shape[1])],
                        axis=-1)
        means.append(sums / np.maximum(counts, 1)[:, None])
        seen.append(counts > 0)
    both = seen[0] & seen[1]
    return np.abs(means[0][both] - means[1][both]).mean(axis=-1)


def _warped_differences(frame: np.ndarray, following: np.ndarray, vector: np.ndarray,
                        pixels: np.ndarray) -> np.ndarray:
    """Mean |difference| over channels (N,) between ``frame`` at the selected ``pixels
    (H, W)`` and ``following`` sampled bilinearly where each pixel moves to."""
    height, width = pixels.shape
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    target_cols = cols + 0.5 + vector[..., 0]  # continuous coordinates: centres at +0.5
    target_rows = rows + 0.5 + vector[..., 1]
    # Inside the span of pixel centres, where bilinear sampling needs no extrapolation.
    landed = pixels & (target_cols >= 0.5) & (target_cols <= width - 0.5) \
        & (target_rows >= 0.5) & (target_rows <= height - 0.5)
    warped = bake.sample_bilinear(following, target_cols, target_rows)
    return np.abs(frame[landed] - warped[landed]).mean(axis=-1)


# ------------------------------------------------------------------------- sharpness

LAST_SHARE = 0.25  # sharpness_kept compares the last quarter of the frames with frame 0


def sharpness(frame: np.ndarray, pixels: np.ndarray | None = None) -> float:
    """Mean |Laplacian| of ``frame (H, W, C)``'s grey image (the mean of its channels;
    scipy.ndimage.laplace, the 5-point stencil, borders reflected) over ``pixels (H, W)``
    bool (all when None); NaN when no pixel is selected. Blur and smear lower it."""
    laplacian = np.abs(ndimage.laplace(np.asarray(frame, dtype=np.float64).mean(axis=-1)))
    selected = laplacian if pixels is None else laplacian[np.asarray(pixels, dtype=bool)]
    return float(selected.mean()) if selected.size else float("nan")


def sharpness_kept(frames: np.ndarray, pixels: np.ndarray | None = None, last_share: float = LAST_SHARE) -> float:
    """How much of frame 0's :func:`sharpness` the last frames keep: the mean sharpness of
    the last ``last_share`` of ``frames (F, H, W, C)`` (at least one frame) over their
    ``pixels (F, H, W)`` bool (all when None) divided by frame 0's over its own.

    1 = as sharp as the first frame; a sequence smeared or blurred as it goes scores lower.
    A camera moving closer magnifies what it sees, which lowers it too where the content's
    grain is coarse (a fixed texture on the floor of the demo's dolly keeps 0.88 to 1.0,
    coarse to fine grain)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[0] < 2:
        raise ValueError(f"frames: expected shape (F >= 2, H, W, C), got {frames.shape}")
    if pixels is not None and np.shape(pixels) != frames.shape[:3]:
        raise ValueError(f"pixels: expected a bool array of shape {frames.shape[:3]}, got {np.shape(pixels)}")
    count = frames.shape[0]
    last = max(1, round(count * last_share))

    def of(index: int) -> float:
        return sharpness(frames[index], None if pixels is None else pixels[index])

    first = of(0)
    if not first > 0:
        return float("nan")
    return float(np.nanmean([of(index) for index in range(count - last, count)]) / first)


# ------------------------------------------------------------------------ seam energy


def seam_energy(texture: np.ndarray, texel_mask: np.ndarray, islands: np.ndarray | None = None) -> dict:
    """How much colour jumps across UV island borders compared with inside the islands.

    ``texture (T, T, C)`` (or (T, T)), ``texel_mask (T, T)`` bool, ``islands (T, T)`` int
    island ids (default: connected components of texel_mask, 4-connected; 0 = off the
    map). Over horizontally and vertically adjacent texel pairs, the jump is the mean
    absolute colour difference over channels. ``border``: mean jump over pairs that
    straddle an island border (two different ids, at least one texel on the map: island
    to padding, or island to island where islands touch); ``interior``: mean jump over
    pairs inside one island. ``ratio = border / interior``: ~1 when the texture runs on
    across borders as smoothly as inside (good padding), > 1 for visible seams (e.g.
    unpadded background), < 1 for padding flatter than the interior (nearest fill);
    NaN without border or interior pairs, 1 for a perfectly flat texture.
    Also ``islands`` (count) and ``border_pairs``.
    """
    texture = np.asarray(texture, dtype=np.float64)
    if texture.ndim == 2:
        texture = texture[..., None]
    texel_mask = np.asarray(texel_mask)
    if texel_mask.dtype != np.bool_ or texel_mask.ndim != 2:
        raise ValueError(f"texel_mask: expected a (T, T) bool array, got {texel_mask.dtype} {texel_mask.shape}")
    if texture.ndim != 3 or texture.shape[:2] != texel_mask.shape:
        raise ValueError(f"texture: expected shape {(*texel_mask.shape, 'C')} matching texel_mask, got {texture.shape}")
    if islands is None:
        islands, _ = ndimage.label(texel_mask)
    else:
        islands = np.asarray(islands)
        if islands.shape != texel_mask.shape or islands.dtype.kind not in "iu":
            raise ValueError(f"islands: expected an integer array of shape {texel_mask.shape}, got "
                             f"{islands.dtype} {islands.shape}")
        islands = np.where(texel_mask, islands, 0)
    border_jumps, interior_jumps = [], []
    for first, second in (((slice(None), slice(None, -1)), (slice(None), slice(1, None))),
                          ((slice(None, -1), slice(None)), (slice(1, None), slice(None)))):
        jump = np.abs(texture[first] - texture[second]).mean(axis=-1)
        same = islands[first] == islands[second]
        on_map = texel_mask[first] | texel_mask[second]
        border_jumps.append(jump[~same & on_map])
        interior_jumps.append(jump[same & texel_mask[first]])
    border = np.concatenate(border_jumps)
    interior = np.concatenate(interior_jumps)
    border_mean = float(border.mean()) if border.size else float("nan")
    interior_mean = float(interior.mean()) if interior.size else float("nan")
    return {"ratio": _ratio(border_mean, interior_mean), "border": border_mean, "interior": interior_mean,
            "islands": int(len(np.unique(islands[islands > 0]))), "border_pairs": int(border.size)}


def _ratio(border: float, interior: float) -> float:
    if np.isnan(border) or np.isnan(interior):
        return float("nan")
    if interior == 0.0:
        return 1.0 if border == 0.0 else float("inf")
    return border / interior
