"""(T) One job from passes to files on disk: sample, bake, measure, write the result layout.

Shared by the ``zs`` CLI and the server's worker so both produce the same files
(``views/NNNN.png`` or an animation's ``frames/NNNN.png``, ``texture.png``, ``metrics.json``,
``contact_sheet.png``; see protocol.py).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from . import animation, bake, completion, distributed, geometry, images, metrics, sampler
from .models import Components
from .protocol import ANIMATION, CONTACT_SHEET_PNG, FRAME_PNG, METRICS_JSON, TEXTURE_PNG, VIEW_PNG, Passes, Request


def consistency_metrics(result: sampler.SampleResult, passes: Passes, factor: int) -> dict:
    """Cross-view disagreement on RGB views and on final latents (see metrics.py).

    Pixels are matched through UV at about one texel per pixel (per latent pixel for the
    latents), so every view contributes about one sample per texel.
    """
    if passes.uv is None or passes.views < 2:
        return {}
    rgb_texels = geometry.footprint_texture_size(passes.uv, passes.mask, 1.0)
    latent_uv, latent_mask = metrics.downsample_correspondence(passes.uv, passes.mask, factor)
    latent_texels = geometry.footprint_texture_size(passes.uv, passes.mask, float(factor))
    latent_images = result.latents.permute(0, 2, 3, 1).numpy()
    out = {
        "cross_view_disagreement": _overlap_metric(result.images, passes.uv, passes.mask, rgb_texels),
        "latent_cross_view_disagreement": _overlap_metric(latent_images, latent_uv, latent_mask, latent_texels),
        "texels_rgb": rgb_texels,
        "texels_latent": latent_texels,
    }
    return {k: round(v, 5) if isinstance(v, float) else v for k, v in out.items()}


def _overlap_metric(values, uv, mask, texels) -> float | None:
    """Cross-view disagreement, or None when no surface point is seen twice (tiny views)."""
    try:
        return metrics.cross_view_disagreement(values, uv, mask, texels=texels)
    except ValueError:
        return None


def check_inputs(components: Components, request: Request, passes: Passes) -> None:
    """The checks of whichever loop runs ``request``; ProtocolError names the field."""
    if request.kind == "animation":
        animation.check_inputs(components, request, passes)
    else:
        completion.check_inputs(components, request, passes)


def run_job(
    components: Components,
    request: Request,
    passes: Passes,
    out_dir: str | Path,
    *,
    progress: Callable[[sampler.StepProgress], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    collective: distributed.Collective | None = None,
) -> dict | None:
    """Sample ``passes`` with ``request`` and write every output under ``out_dir``.

    Every job writes one PNG per view (``views/NNNN.png``; ``frames/NNNN.png`` for an
    animation, sampled by :func:`zs_core.animation.sample_frames`), ``contact_sheet.png``
    and ``metrics.json``. Texture jobs whose passes carry texel maps are baked to
    ``texture.png``; animation jobs add the outputs of
    :func:`zs_core.animation.write_outputs`. Returns the metrics dict that is also written
    to ``metrics.json``. Input errors raise ProtocolError before any sampling.

    ``collective``: a job split over several workers (:mod:`zs_core.distributed`), every
    one of them calling this with the whole job: they sample the main views (or the
    frames) together, and the first (rank 0) runs the completion views (or pixel sync),
    bakes and writes the files; the others return None once their views are handed over.
    """
    out_dir = Path(out_dir)
    animated = request.kind == ANIMATION
    started = time.perf_counter()
    if collective is not None and collective.size > 1:
        split = functools.partial(distributed.sample_split, collective=collective)
        if animated:
            result = split(components, request, passes, progress=progress, cancel=cancel)
        else:
            distributed.check_split(request, passes.select(passes.main_views))
            result = completion.sample(components, request, passes, progress=progress, cancel=cancel,
                                       sample_main=split)
        if result is None:
            return None
    else:
        sample = animation.sample_frames if animated else completion.sample
        result = sample(components, request, passes, progress=progress, cancel=cancel)
    sampling_seconds = time.perf_counter() - started

    image_name = FRAME_PNG if animated else VIEW_PNG
    for index, image in enumerate(result.images):
        images.save_png(image, out_dir / image_name.format(index=index))

    metrics_out = {
        "frames" if animated else "views": passes.views,
        "height": passes.height,
        "width": passes.width,
        "steps": request.steps,
        "sampling_seconds": round(sampling_seconds, 3),
        "model": components.name,
        "request": request.to_dict(),
    }
    write_outputs = animation.write_outputs if animated else write_texture_outputs
    metrics_out.update(write_outputs(components, request, passes, result, out_dir, sampling_seconds))
    (out_dir / METRICS_JSON).write_text(json.dumps(metrics_out, indent=2, sort_keys=True))
    return metrics_out


def write_texture_outputs(components: Components, request: Request, passes: Passes, result: sampler.SampleResult,
                          out_dir: Path, sampling_seconds: float) -> dict:
    """A texture job's own outputs beside its ``views/NNNN.png``: ``texture.png`` (baked when
    the passes carry texel maps; completion views fill what the main views missed, see
    :mod:`zs_core.completion`) and ``contact_sheet.png`` -> its own metrics (cross-view
    consistency of the main views, texture size, coverage, where the texels come from,
    bake residual)."""
    flags = getattr(result, "completion", None)
    flags = np.zeros(passes.views, bool) if flags is None or not len(flags) else flags
    main = passes.main_views if flags.any() else np.arange(passes.views)
    main_passes = passes.select(main) if flags.any() else passes
    main_result = dataclasses.replace(result, images=result.images[main], latents=result.latents[main])
    metrics_out = consistency_metrics(main_result, main_passes, components.vae_scale_factor)
    texture = None
    if passes.texel_position is not None:
        weights = getattr(result, "weights", None)
        weights = bake.gather_weights(passes) if weights is None else weights
        blended = completion.completed_weights(weights, flags) if flags.any() else weights
        baked = bake.bake(result.images, passes, weights=blended)
        residual = metrics.bake_residual(result.images, passes, texture=baked.texture)
        # Texel maps fix the bake's grain; a different requested size is a resample.
        texture = images.resize_square(baked.texture, request.texture_size)
        images.save_png(texture, out_dir / TEXTURE_PNG)
        metrics_out["texture_size"] = int(texture.shape[0])
        metrics_out["texture_coverage"] = round(float(baked.coverage), 5)
        metrics_out["bake_residual"] = round(float(residual["mean"]), 5)
        metrics_out.update(completion.texel_sources(weights, flags, blended))  # the bake's own blend
        metrics_out["surface_coverage"] = completion.surface_coverage(weights, passes.texel_position, flags)
        metrics_out["completion_views"] = int(flags.sum())

    control = sampler.control_images(passes.depth).numpy()
    rows = [("depth (ControlNet input)", [images.depth_to_gray(c) for c in control[main]]),
            ("generated views", list(result.images[main]))]
    if texture is not None:
        # The baked texture seen through every camera: where views disagreed, it blurs.
        rendered = bake.render(baked.texture, passes.uv, passes.mask)
        rows.append(("baked texture on the object", list(rendered[main])))
        if flags.any():
            rows.append(("completion views: generated | baked texture",
                         [image for view in np.flatnonzero(flags) for image in (result.images[view], rendered[view])]))
    sheet = images.contact_sheet(rows, extra=("baked texture", texture) if texture is not None else None)
    images.save_png(sheet, out_dir / CONTACT_SHEET_PNG)
    return metrics_out
