"""What pixel sync costs in sharpness, and what it buys in steadiness, on the demo's shot.

The shot is the one ``zs demo --animation`` re-styles: ``blender_addon.batch.build_animated_demo_scene``
(Suzanne slides and turns over a floor before a dollying camera; frames 1-16 at 192x192),
captured through the animation API (``blender_addon.animation.check_shot(...).render``,
what ``api.animate`` renders: depth, UV and vector pass per frame, Suzanne the target, the
UV-mapped floor told apart by ``background_id``). The request, frames and size are the
demo's: ``zs demo --animation`` parsed by zs's own parser (``zs_cli.main``: 12 steps, its
prompt, seed 0, frames 1-16, size 192, and the parameter table's animation defaults:
surface noise, TMA attention, sync_strength 0.9, background_sync 0.9, background_uv on),
sampled in this process on the built-in tiny model.

Pixel sync works on the decoded frames only (``zs_core.animation.sample_frames`` denoises,
decodes, then calls ``animation.pixel_synced``): the object and the floor pulled towards
one texture of all frames through their UV. So the frames are sampled once with
pixel_sync 0 and ``animation.pixel_synced`` gives them pixel_sync 0.5, 0.9 (the default)
and 1: the same frames ``sample_frames`` returns for those settings. A second sampling
with the latent syncs off too (sync_strength 0, background_sync 0) shows how much the
shot itself changes.

Sharpness kept: ``metrics.sharpness_kept`` off the object, metrics.json's
``background_sharpness`` (mean |Laplacian| of the grey frame, float RGB before PNG
quantisation, over the pixels off the object; the last quarter of the frames, 12-15 of
0-15, over frame 0). Flicker: ``temporal_warp_error`` as in the job's metrics.json (mean
|difference| of consecutive frames at the same point; lower is steadier), and its object
(through UV) and background (along the vectors) parts.

Prints a table, then the JSON line: sharpness kept at the default pixel_sync against the
latent syncs alone (pixel_sync 0), measured in the same run. No target: it is a
trade-off against flicker, reported so the docs can quote it.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="zs-bench-blender-"))

import bpy  # noqa: E402
import numpy as np  # noqa: E402
from _common import report_value  # noqa: E402

from blender_addon import animation as shot_capture  # noqa: E402
from blender_addon import batch  # noqa: E402
from zs_cli.main import DEMO_DEFAULTS, DEMO_FRAMES, build_parser  # noqa: E402
from zs_core.protocol import parse_frame_range  # noqa: E402
from zs_core import animation, models  # noqa: E402
from zs_core.protocol import ANIMATION, PARAMETERS, Passes, Request, values_from_arguments  # noqa: E402

DEFAULT = PARAMETERS["pixel_sync"].default_for(ANIMATION)  # 0.9
PIXEL_SYNC = tuple(sorted({0.0, 0.5, 1.0, DEFAULT}))


@contextlib.contextmanager
def blender_quiet():
    """Blender's own console lines (a "Saved:" line per pass file, written from C to fd 1)
    go to /dev/null meanwhile; ours stay."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "wb") as null:
        os.dup2(null.fileno(), 1)
    try:
        yield
    finally:
        ctypes.CDLL(None).fflush(None)
        os.dup2(saved, 1)
        os.close(saved)


def demo_settings() -> tuple[dict, tuple[int, int], int]:
    """What `zs demo --animation` runs with when given no other flag, parsed by zs's own
    parser -> (request values, (first, last) frame, frame size)."""
    args = build_parser().parse_args(["demo", "--animation"])
    values = values_from_arguments(args, ANIMATION, capture=("views",), overrides=DEMO_DEFAULTS[ANIMATION])
    return values, args.frames or parse_frame_range(DEMO_FRAMES), args.size


def demo_shot(folder: Path, request: Request, frames: tuple[int, int], size: int) -> Passes:
    """The passes of the demo's animated shot, rendered by Blender as the demo does."""
    with blender_quiet():
        try:
            path = batch.build_animated_demo_scene(folder / "scene.blend", frames=frames, size=size)
        except TypeError:  # a build_animated_demo_scene that still takes the frame count
            path = batch.build_animated_demo_scene(folder / "scene.blend", frames=frames[1] - frames[0] + 1,
                                                   size=size)
        bpy.ops.wm.open_mainfile(filepath=str(path), load_ui=False)
        scene = bpy.context.scene
        shot = shot_capture.check_shot(scene, request, None, [bpy.data.objects[batch.DEMO_OBJECT]],
                                       f"{frames[0]}-{frames[1]}")
        captured = shot.render(scene)
    return Passes.from_arrays(captured.arrays()).validate()  # the add-on's Passes -> zs_core's


def measured(components, result: animation.AnimationResult, images: np.ndarray, passes: Passes) -> dict:
    """metrics.json's background_sharpness and temporal warp errors of ``images``."""
    out = animation.temporal_metrics(dataclasses.replace(result, images=images), passes,
                                     components.vae_scale_factor)
    return {key: out[key] for key in ("background_sharpness", "temporal_warp_error", "temporal_warp_error_object",
                                      "temporal_warp_error_background")}


def main() -> None:
    values, frames, size = demo_settings()
    base = dict(values, pixel_sync=0.0)
    synced_request = Request(kind=ANIMATION, **base).validate()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="zs-bench-pixel-sync-") as folder:
        passes = demo_shot(Path(folder), synced_request, frames, size)
    print(f"demo shot: {passes.views} frames of {passes.width}x{passes.height} rendered in "
          f"{time.perf_counter() - started:.1f} s", flush=True)
    components = models.load("tiny", device="cpu")
    rows = {}

    started = time.perf_counter()
    synced = animation.sample_frames(components, synced_request, passes)
    sampling_seconds = time.perf_counter() - started
    for strength in PIXEL_SYNC:
        images = animation.pixel_synced(synced.images, passes, dataclasses.replace(synced_request, pixel_sync=strength))
        rows[f"pixel_sync {strength:g}"] = measured(components, synced, images, passes)
    unsynced_request = Request(kind=ANIMATION, **dict(base, sync_strength=0.0, background_sync=0.0)).validate()
    unsynced = animation.sample_frames(components, unsynced_request, passes)
    rows["no sync at all"] = measured(components, unsynced, unsynced.images, passes)

    print(f"tiny model, {base['steps']} steps, sampled in {sampling_seconds:.1f} s; sharpness kept = "
          f"background_sharpness (last quarter of the frames / frame 0, off the object)")
    print(f"pixel_sync rows: latent syncs on (sync_strength {synced_request.sync_strength:g}, "
          f"background_sync {synced_request.background_sync:g}, background_uv "
          f"{synced_request.background_uv}); last row: both off too")
    print(f"{'setting':>18}{'sharpness kept':>15}{'warp error':>12}{'object':>9}{'background':>12}")
    for name, row in rows.items():
        print(f"{name:>18}{row['background_sharpness']:15.3f}{row['temporal_warp_error']:12.4f}"
              f"{row['temporal_warp_error_object']:9.4f}{row['temporal_warp_error_background']:12.4f}")
    default, alone = rows[f"pixel_sync {DEFAULT:g}"], rows["pixel_sync 0"]
    report_value("pixel_sync_sharpness", default["background_sharpness"], alone["background_sharpness"],
                 target=None, target_applies_to="ratio",
                 unit=f"background sharpness kept (last quarter / frame 0) at pixel_sync {DEFAULT:g} vs 0",
                 rows=rows, frames=passes.views, size=size, steps=base["steps"], model="tiny")


if __name__ == "__main__":
    main()
