"""The reference image of a job (IP-Adapter): a Blender image, an image file or an array
-> the wire's ``passes.reference_image``, (H', W', 3) float32 RGB in [0, 1], rows top to
bottom, each side within ``protocol.REFERENCE_IMAGE_SIDES`` (larger images are scaled
down by area averaging; smaller ones are refused).

Colours: what the image looks like as a plain sRGB picture, which is what an IP-Adapter's
image encoder was trained on.

- A byte image (PNG, JPEG ...): Blender's float pixels are the stored 8-bit values / 255,
  the sRGB-encoded values the file holds, sent as they are (whatever colour space the
  image is tagged with: the file's values are what a viewer shows).
- A float image (EXR, HDR, 16-bit PNG, float generated or rendered images): Blender holds
  scene-linear (Rec.709) values; they are sRGB-encoded and clipped to [0, 1] (no view
  transform, no exposure). A float image marked Non-Color is sent as it is, clipped.
- Alpha is dropped: transparent areas send their stored colour (byte images keep straight
  colours, float images premultiplied ones, so those are black there).

Reading never changes the image: its pixels are copied with ``foreach_get``; an image file
given by path is loaded as a new datablock and removed again. Imports: bpy, the standard
library and numpy only.
"""

from __future__ import annotations

import os
from pathlib import Path

import bpy
import numpy as np

from .errors import CaptureError
from .image_pixels import image_to_numpy
from .wire import protocol


def read(source) -> np.ndarray | None:
    """A reference: None, a Blender image, an image file's path or an (H, W, 3|4) array in
    [0, 1] -> (H', W', 3) float32 for the wire, or None. CaptureError names what is wrong
    (an image without pixels, a file Blender cannot read, a bad array)."""
    if source is None:
        return None
    if isinstance(source, bpy.types.Image):
        return from_image(source)
    if isinstance(source, (str, os.PathLike)):
        return from_file(source)
    if isinstance(source, np.ndarray):
        return fit(_rgb(np.asarray(source, np.float32), "the reference array"), "the reference array")
    raise CaptureError(f"reference image: expected a Blender image, an image file or an (H, W, 3) array, "
                       f"got {type(source).__name__}")


def from_image(image: bpy.types.Image) -> np.ndarray:
    """A Blender image's pixels -> (H', W', 3) float32 sRGB in [0, 1] (see the module)."""
    label = f"reference image {image.name!r}"
    width, height = image.size
    if width == 0 or height == 0 or len(image.pixels) == 0:
        raise CaptureError(f"{label} has no pixels: {_why_empty(image)}")
    pixels = _rgb(image_to_numpy(image), label)
    if image.is_float and not image.colorspace_settings.is_data:
        pixels = linear_to_srgb(pixels)
    return fit(np.clip(pixels, 0.0, 1.0), label)


def from_file(path) -> np.ndarray:
    """An image file Blender can read -> (H', W', 3) float32 sRGB in [0, 1]. The file is
    loaded as a new datablock (never one the artist has) and removed again."""
    path = Path(path)
    if not path.is_file():
        raise CaptureError(f"reference image: {path} is not a file")
    try:
        image = bpy.data.images.load(str(path), check_existing=False)
    except RuntimeError as exc:
        raise CaptureError(f"reference image: Blender cannot read {path} ({exc})") from None
    try:
        if tuple(image.size) == (0, 0):
            raise CaptureError(f"reference image: {path} is not an image Blender can read")
        return from_image(image)
    finally:
        bpy.data.images.remove(image)


def _why_empty(image: bpy.types.Image) -> str:
    if image.source in ("FILE", "SEQUENCE", "MOVIE") and image.packed_file is None:
        path = bpy.path.abspath(image.filepath) if image.filepath else ""
        if not path:
            return "it has no file; open or pack one, or pick another image"
        if not Path(path).is_file():
            return f"its file {path} is missing; reload it from where it is now, or pick another image"
        return f"Blender cannot read its file {path}"
    if image.type in ("RENDER_RESULT", "COMPOSITING"):
        return "render results have no pixels Python can read; save the render as an image first"
    return "Blender cannot read them; pick another image"


# ------------------------------------------------------------------------------- numpy


def _rgb(array: np.ndarray, label: str) -> np.ndarray:
    """(H, W), (H, W, 1|3|4) -> (H, W, 3) float32: grey repeated, alpha dropped."""
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise CaptureError(f"{label}: expected an (H, W, 3) image, got shape {array.shape}")
    if array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array[..., :3], dtype=np.float32)


def linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    """Scene-linear values -> sRGB-encoded values in [0, 1] (the sRGB curve; NaN -> 0)."""
    linear = np.clip(np.nan_to_num(linear, nan=0.0), 0.0, 1.0)
    curve = 1.055 * np.power(linear, 1.0 / 2.4) - 0.055
    return np.where(linear <= 0.0031308, 12.92 * linear, curve).astype(np.float32)


def fit(pixels: np.ndarray, label: str) -> np.ndarray:
    """(H, W, 3) -> the same image with each side within REFERENCE_IMAGE_SIDES: scaled
    down (area average, aspect kept) when a side is over; CaptureError when one is under."""
    low, high = protocol.REFERENCE_IMAGE_SIDES
    height, width = pixels.shape[:2]
    if max(height, width) > high:
        scale = high / max(height, width)
        height, width = max(1, round(height * scale)), max(1, round(width * scale))
        pixels = area_resize(pixels, height, width)
    if min(height, width) < low:
        raise CaptureError(f"{label} is {width}x{height} pixels; each side must be at least {low} "
                           f"(and at most {high}, larger images are scaled down)")
    if not np.isfinite(pixels).all() or pixels.min() < 0.0 or pixels.max() > 1.0:
        raise CaptureError(f"{label}: values must be finite and in [0, 1]")
    return np.ascontiguousarray(pixels, dtype=np.float32)


def area_resize(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, C) -> (height, width, C) float32, each output pixel the mean of the input
    pixels whose index falls in its span (for scaling down)."""
    for axis, size in ((0, height), (1, width)):
        count = pixels.shape[axis]
        starts = (np.arange(size) * count) // size
        sums = np.add.reduceat(pixels.astype(np.float64), starts, axis=axis)
        lengths = np.diff(np.append(starts, count)).astype(np.float64)
        shape = [1, 1, 1]
        shape[axis] = size
        pixels = sums / lengths.reshape(shape)
    return pixels.astype(np.float32)


__all__ = ["read", "from_image", "from_file", "linear_to_srgb", "fit", "area_resize"]
