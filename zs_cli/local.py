"""Sampling in this process: the resolved model loaded on the first job, the memory options
for that job's views (:func:`zs_core.memory.plan_for`, the flags overriding), the job's
LoRAs put on it, and the reference image of ``--reference-image`` joined to its passes."""

from __future__ import annotations

import sys

import numpy as np

from .preflight import ResolvedModel


class LocalSampler:
    """``run(request, passes, out)`` -> metrics for bundles, and :meth:`sample` as the
    Blender flow's sampler (``sampler(request dict, passes, out_dir) -> metrics``)."""

    def __init__(self, resolved: ResolvedModel, args, reference: np.ndarray | None = None, command: str = "zs"):
        self.resolved = resolved
        self.device = getattr(args, "device", "auto") or "auto"
        self.dtype = getattr(args, "dtype", None)
        self.offload = getattr(args, "offload", None)
        self.vae_tiling = getattr(args, "vae_tiling", None)
        self.reference = reference
        self.command = command
        self.components = None

    def load(self, request, passes):
        """The model, loaded once, with the memory plan for the job: its views (an
        animation's frames per model call, its chunk) and their size."""
        from zs_core import memory, models

        if self.components is None:
            # The family's inpainting ControlNet joins when it is on disk (completion views use it).
            self.components = models.load(self.resolved.model, self.resolved.controlnet, device=self.device,
                                          dtype=self.dtype, inpaint_controlnet="auto")
        chosen = memory.plan_for_job(self.components, request, passes, offload=self.offload,
                                     vae_tiling=self.vae_tiling)
        memory.apply(self.components, chosen)
        if chosen.usable_bytes is not None or chosen.offload or chosen.vae_tiling:  # a GPU, or asked for
            print(f"zs {self.command}: memory: {chosen.describe()}", file=sys.stderr)
        return self.components

    def run(self, request, passes, out) -> dict:
        """Sample ``passes`` (zs_core's) with ``request`` into ``out`` -> the metrics."""
        from zs_core import loras

        from .blender import run_with_bar

        if self.reference is not None:
            passes.reference_image = self.reference
            passes.validate()
        components = self.load(request, passes)
        loras.apply_request(components, request)  # none: the base model exactly
        if passes.reference_image is not None:
            height, width = passes.reference_image.shape[:2]
            print(f"zs {self.command}: reference image {width}x{height}, IP-Adapter "
                  f"{request.ip_adapter or 'the default of ' + components.family}, strength "
                  f"{request.reference_strength:g}", file=sys.stderr)
        return run_with_bar(components, request, passes, out)

    def sample(self, request_dict: dict, passes, out_dir) -> dict:
        """The Blender flow's sampler: its request dict and its (the add-on's) Passes."""
        from zs_core.protocol import Passes, Request

        request = Request.from_dict(request_dict)
        core_passes = Passes.from_arrays(passes.arrays()).validate()
        return self.run(request, core_passes, out_dir)
