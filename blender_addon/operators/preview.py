"""The live preview of a running job: the server's PNG previews into one Blender image.

Every progress event carries a small PNG of all views' current predictions, tiled. It is
decoded by Blender itself (a temporary image loaded from a temporary file and removed),
then its pixels are written into the image "ZS Preview" with ``foreach_set``: one
datablock for the whole session that an Image Editor can keep showing.
Imports: bpy, the standard library and numpy only.
"""

from __future__ import annotations

import os
import tempfile

import bpy
import numpy as np

from ..errors import CaptureError
from ..image_pixels import array_to_pixels, image_to_numpy

PREVIEW_IMAGE = "ZS Preview"


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> (H, W, 4) float32 in [0, 1], rows top to bottom (the stored values)."""
    handle, path = tempfile.mkstemp(prefix="zs-preview-", suffix=".png")
    image = None
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        image = bpy.data.images.load(path, check_existing=False)
        image.colorspace_settings.is_data = True  # no colour conversion: the PNG's values
        pixels = image_to_numpy(image)
    except (RuntimeError, CaptureError) as exc:  # Blender could not read it (no pixels)
        raise ValueError(f"the preview is not a readable PNG ({exc})") from None
    finally:
        if image is not None:
            bpy.data.images.remove(image)
        os.unlink(path)
    if pixels.shape[2] == 3:
        pixels = np.concatenate([pixels, np.ones_like(pixels[..., :1])], axis=-1)
    return pixels


def preview_image(width: int, height: int, name: str = PREVIEW_IMAGE) -> bpy.types.Image:
    """The preview image ``name`` at ``width`` x ``height``: created when missing, resized
    when the preview's size changed (e.g. another number of views)."""
    image = bpy.data.images.get(name)
    if image is None:
        image = bpy.data.images.new(name, width, height, alpha=True)
    elif tuple(image.size) != (width, height):
        image.scale(width, height)
    return image


def show(data: bytes, name: str = PREVIEW_IMAGE) -> bpy.types.Image:
    """Write the PNG ``data`` into the preview image -> the image."""
    pixels = decode_png(data)
    height, width = pixels.shape[:2]
    image = preview_image(width, height, name)
    image.pixels.foreach_set(array_to_pixels(pixels))
    image.update()
    return image
