"""What a finished run prints on stderr: where everything went, one line each."""

from __future__ import annotations

import sys
from pathlib import Path

from zs_core.coverage import describe
from zs_core.protocol import CONTACT_SHEET_PNG, METRICS_JSON, TEXTURE_PNG


def texture_outputs(out: Path, metrics: dict) -> None:
    print(f"wrote {metrics['views']} views to {out / 'views'}", file=sys.stderr)
    if "texture_size" in metrics:
        print(f"texture: {out / TEXTURE_PNG} ({metrics['texture_size']}^2, "
              f"{100 * metrics['texture_coverage']:.1f}% of texels seen)", file=sys.stderr)
    _metrics(out, metrics, ("cross_view_disagreement", "latent_cross_view_disagreement", "bake_residual"))


def animation_outputs(out: Path, metrics: dict) -> None:
    print(f"wrote {metrics['frames']} frames to {out / 'frames'}", file=sys.stderr)
    if metrics.get("mp4"):
        print(f"video: {out / metrics['mp4']}", file=sys.stderr)
    _metrics(out, metrics, ("temporal_warp_error", "temporal_warp_error_object", "temporal_warp_error_background",
                            "latent_temporal_warp_error"))


def _metrics(out: Path, metrics: dict, keys) -> None:
    for key in keys:
        if key in metrics:
            print(f"{key}: {metrics[key]}", file=sys.stderr)
    print(f"contact sheet: {out / CONTACT_SHEET_PNG}", file=sys.stderr)
    print(f"metrics: {out / METRICS_JSON} (sampling {metrics['sampling_seconds']} s)", file=sys.stderr)


def textured_blend(summary: dict) -> None:
    texture_outputs(Path(summary["textured_blend"]).parent, summary["metrics"])
    cameras(summary)
    print(f"textured blend: {summary['textured_blend']} ({', '.join(summary['objects'])} wears new material "
          f"{', '.join(summary['materials'])}; the original materials are kept)", file=sys.stderr)


def animated_blend(summary: dict) -> None:
    animation_outputs(Path(summary["animated_blend"]).parent, summary["metrics"])
    first, last = summary["frames"]
    print(f"animated blend: {summary['animated_blend']} (camera {summary['camera']} shows the frames as its "
          f"background image {summary['image']}; Video Sequencer strip {summary['strip']!r} on channel "
          f"{summary['strip_channel']}, frames {first}-{last})", file=sys.stderr)


def cameras(summary: dict) -> None:
    """What the cameras of a texture capture see (the capture's coverage report)."""
    if summary.get("coverage"):
        print(f"cameras: {describe(summary['coverage'])}", file=sys.stderr)


def bundle(summary: dict) -> None:
    print(f"passes: {summary['passes']} ({summary['views']} {summary['unit']}s of {summary['width']}x"
          f"{summary['height']}); request: {summary['request']}", file=sys.stderr)
    cameras(summary)
    print(f"sample it without Blender: zs {summary['command']} {summary['passes']} --out DIR "
          f"[--prompt ...]", file=sys.stderr)
