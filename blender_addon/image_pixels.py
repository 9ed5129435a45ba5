"""Blender images <-> numpy arrays, rows top to bottom like the wire format (Blender
stores the bottom row first): read an image's pixels, or make a NEW float image from an
array (never overwriting one). The numpy conversions (:func:`pixels_to_array`,
:func:`array_to_pixels`) stand apart from the bpy calls so they can be read and tested on
their own. Imports: bpy, the standard library and numpy only.
"""

from __future__ import annotations

import bpy
import numpy as np

from .datablocks import unique_name
from .errors import CaptureError


def pixels_to_array(flat: np.ndarray, width: int, height: int, channels: int) -> np.ndarray:
    """Blender's flat pixel buffer (bottom row first) -> (H, W, C) float32, top row first."""
    return np.ascontiguousarray(flat.reshape(height, width, channels)[::-1], dtype=np.float32)


def array_to_pixels(array: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C<=4) rows top to bottom -> flat RGBA float32, bottom row first.

    One channel is grey, two fill R and G (B = 0); alpha is 1 unless given.
    """
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or not 1 <= array.shape[2] <= 4:
        raise CaptureError(f"image array: expected shape (H, W) or (H, W, 1..4), got {array.shape}")
    height, width, channels = array.shape
    rgba = np.zeros((height, width, 4), np.float32)
    rgba[..., 3] = 1.0
    if channels == 1:
        rgba[..., :3] = array
    else:
        rgba[..., :channels] = array
    return rgba[::-1].ravel()


def image_to_numpy(image: bpy.types.Image, contiguous: bool = True) -> np.ndarray:
    """A Blender image -> (H, W, C) float32, rows top to bottom (C = image.channels).
    ``contiguous`` False returns a row-flipped view (no copy) for callers that copy anyway."""
    width, height = image.size
    channels = image.channels
    if width == 0 or height == 0:
        raise CaptureError(f"image {image.name!r} has no pixels (could not be read)")
    flat = np.empty(width * height * channels, np.float32)
    image.pixels.foreach_get(flat)
    if not contiguous:
        return flat.reshape(height, width, channels)[::-1]
    return pixels_to_array(flat, width, height, channels)


def numpy_to_image(name: str, array: np.ndarray, non_color: bool = False) -> bpy.types.Image:
    """(H, W[, C]) rows top to bottom -> a NEW float RGBA image datablock.

    Never overwrites an existing image: the name gets a numeric suffix when taken.
    Float pixels are scene linear; pass ``non_color=True`` for data (normals, positions).
    """
    pixels = array_to_pixels(array)
    height, width = np.shape(array)[:2]
    image = bpy.data.images.new(unique_name(bpy.data.images, name), width, height,
                                alpha=True, float_buffer=True)
    if non_color:
        image.colorspace_settings.is_data = True
    image.pixels.foreach_set(pixels)
    image.update()
    return image


__all__ = ["pixels_to_array", "array_to_pixels", "image_to_numpy", "numpy_to_image"]
