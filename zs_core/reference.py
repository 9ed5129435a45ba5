"""(T) The reference image (IP-Adapter): one image embedding conditions every view / frame.

:func:`unet_conditioning` is what the sampler's :func:`zs_core.sampler.condition` stage
asks for; its result goes to the UNet only (``ModelBatch.unet_added``).
"""

from __future__ import annotations

from .models import Components
from .protocol import Passes, ProtocolError, Request


def unet_conditioning(components: Components, request: Request, passes: Passes, guidance: bool) -> dict:
    """The UNet-only extra conditioning of a job, one row per CFG group: ``{}`` without a
    reference image."""
    if passes.reference_image is None:
        return {}
    raise ProtocolError("reference_image", "reference images are not supported by this build")
