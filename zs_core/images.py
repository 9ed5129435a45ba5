"""Image files: float arrays <-> PNG, and contact sheets people can look at (numpy + Pillow)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw


def to_uint8(image: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` or ``(H, W)`` float in [0, 1] (or uint8) -> uint8."""
    if image.dtype == np.uint8:
        return image
    return (np.clip(np.nan_to_num(image), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_png(image: np.ndarray, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(image)).save(path)
    return path


def load_png(path: str | Path) -> np.ndarray:
    """PNG -> ``(H, W, 3)`` float32 in [0, 1]."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """``(T, T, C)`` float32 -> ``(size, size, C)``: area-average down, bilinear up."""
    import cv2

    if image.shape[0] == size:
        return image
    interpolation = cv2.INTER_AREA if size < image.shape[0] else cv2.INTER_LINEAR
    return cv2.resize(image.astype(np.float32), (size, size), interpolation=interpolation)


def depth_to_gray(control: np.ndarray) -> np.ndarray:
    """ControlNet input ``(3, H, W)`` or ``(H, W)`` in [0, 1] -> ``(H, W, 3)`` for display."""
    control = np.asarray(control, dtype=np.float32)
    gray = control[0] if control.ndim == 3 else control
    return np.repeat(gray[..., None], 3, axis=2)


def contact_sheet(rows: Sequence[tuple[str, Sequence[np.ndarray]]], cell: int = 192,
                  extra: tuple[str, np.ndarray] | None = None) -> np.ndarray:
    """Labelled rows of images (e.g. "depth", "views"), plus an optional large image on the
    right (e.g. the baked texture). Returns ``(H, W, 3)`` uint8."""
    label_height, gap = 18, 4
    columns = max(len(images) for _, images in rows)
    width = columns * (cell + gap) + gap
    height = len(rows) * (cell + label_height + gap) + gap
    extra_size = 0
    if extra is not None:
        extra_size = min(height - label_height - 2 * gap, 2 * cell + label_height)
        width += extra_size + gap
        height = max(height, extra_size + label_height + 2 * gap)
    sheet = Image.new("RGB", (width, height), (32, 32, 32))
    draw = ImageDraw.Draw(sheet)
    for row_index, (label, images) in enumerate(rows):
        top = gap + row_index * (cell + label_height + gap)
        draw.text((gap, top + 2), label, fill=(220, 220, 220))
        for column, image in enumerate(images):
            tile = Image.fromarray(to_uint8(image)).resize((cell, cell), Image.Resampling.BILINEAR)
            sheet.paste(tile, (gap + column * (cell + gap), top + label_height))
    if extra is not None:
        label, image = extra
        left = columns * (cell + gap) + gap
        draw.text((left, gap + 2), label, fill=(220, 220, 220))
        tile = Image.fromarray(to_uint8(image)).resize((extra_size, extra_size), Image.Resampling.BILINEAR)
        sheet.paste(tile, (left, gap + label_height))
    return np.asarray(sheet)
