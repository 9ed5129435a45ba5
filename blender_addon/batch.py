r"""Headless texturing and animation of a .blend file: the hook for `zs texture FILE.blend`,
`zs animate FILE.blend` and render farms.

    texture_blend("scene.blend", "out/", ["Suzanne"], {"prompt": "old bronze", "views": 6}, server=URL, token=T)

opens the file, textures the objects (the flow of :mod:`.flow`, as :func:`api.texture`)
and writes into ``out_dir``: ``textured.blend`` (a copy; the source file is not changed),
``zs_textures/<name>.png`` (the texture the copy uses, by a relative path), ``texture.png``,
``views/NNNN.png``, ``contact_sheet.png`` and ``metrics.json``.

    animate_blend("shot.blend", "out/", {"prompt": "old bronze"}, camera="Camera", frames="1-48", server=URL)

opens the file, re-styles the camera's shot over the frames and writes into ``out_dir``:
``frames/NNNN.png`` (0-based), ``metrics.json``, ``contact_sheet.png`` and
``animated.blend`` (a copy) where the frames are a new image sequence: the camera's
background image and a Video Sequencer strip from the first frame.

With ``passes_only`` both stop after the capture and write ``passes.npz`` and
``request.json`` (a bundle to sample later without Blender). A texture's camera coverage (what the
cameras see at a usable angle, :mod:`.auto_rig`) is the summary's ``coverage`` and
metrics.json's ``camera_coverage``. Settings are the names of
the wire format's parameter table (``protocol.PARAMETERS``); the flags of :func:`main` and
:func:`animate_main` are derived from it too (``--model``, ``--lora`` repeatable,
``--ip-adapter``, ``--reference-strength`` among them). ``reference_image`` (an image
file; the flag ``--reference-image``) is the look every view or frame is steered towards;
its pixels travel with the passes.

Inside Blender (no torch there, so sampling goes to a server), from the repository folder::

    blender -b scene.blend --python-expr "import sys; sys.path.insert(0, '.'); \
        from blender_addon import batch; \
        batch.main(['--object', 'Suzanne', '--prompt', 'old bronze', '--out', 'out', '--server', URL])"

and for an animation ``batch.animate_main(['--frames', '1-48', '--prompt', 'old bronze', '--out', 'out',
'--server', URL])``. The token is ``--token``, else ``ZS_TOKEN``.

(Blender ignores PYTHONPATH unless started with ``--python-use-system-env``).
Imports: bpy, the standard library and numpy only.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Sequence

import bpy

from . import api
from .compat import new_material, object_fcurves
from .errors import CaptureError
from .flow import AnimationGeneration, Generation, TextureGeneration
from .jobs import queue_text
from .reference_image import read as read_reference
from .scene_objects import target_objects
from .wire import coverage, protocol

TEXTURED_BLEND = "textured.blend"
ANIMATED_BLEND = "animated.blend"
PASSES_NPZ = "passes.npz"
REQUEST_JSON = "request.json"
DEMO_OBJECT = "Suzanne"


def texture_blend(blend_path, out_dir, object_names, settings: dict, *, use_scene_cameras: bool = False,
                  passes_only: bool = False, server: str | None = None, token: str | None = None,
                  sampler: api.Sampler | None = None, progress: api.Progress | None = None,
                  reference_image=None) -> dict:
    """Open ``blend_path``, texture ``object_names`` and save the results in ``out_dir`` ->
    a summary dict (paths of the outputs, object, material and image names, cameras,
    metrics). ``settings``: :class:`api.TextureSettings` fields (prompt, steps, seed, views,
    view_size, texture_size ...); ``use_scene_cameras`` renders every camera of the scene
    (by name) instead of an orbit rig of ``views`` cameras; ``reference_image``: an image
    file (or an array) whose look every view is steered towards, read before the file opens."""
    started = time.perf_counter()
    options = api.TextureSettings.from_values(settings)
    reference = read_reference(reference_image)  # a bad file is named before the .blend opens
    blend_path, out_dir = _open(blend_path, out_dir, TEXTURED_BLEND)
    names = [object_names] if isinstance(object_names, str) else list(object_names or [])
    objects = target_objects(names=names)
    scene = bpy.context.scene
    cameras = _scene_cameras(scene, blend_path) if use_scene_cameras else None
    generation = TextureGeneration(scene, options, objects, cameras, image_folder=out_dir / "zs_textures",
                                   out_dir=out_dir, progress=progress, reference_image=reference,
                                   **_backend(sampler, server, token, passes_only))
    if passes_only:
        return _bundle(generation, out_dir)
    materials, image = generation.run()
    textured = _save_copy(out_dir / TEXTURED_BLEND)
    summary = {
        "source_blend": str(blend_path),
        "textured_blend": str(textured),
        "texture": str(out_dir / protocol.TEXTURE_PNG),
        "texture_image": image.name,
        "texture_file": str(Path(bpy.path.abspath(image.filepath, start=str(blend_path.parent)))),
        "objects": [obj.name for obj in objects],
        "materials": [material.name for material in materials],
        "cameras": [camera.name for camera in generation.cameras or ()],
        "coverage": generation.coverage,
        "job_id": generation.job.job_id if generation.job else None,
        "seconds": round(time.perf_counter() - started, 3),
    }
    return _finish(out_dir, generation.metrics, summary, ("source_blend", "textured_blend", "objects", "materials",
                                                          "cameras", "texture_image", "job_id", "seconds"))


def animate_blend(blend_path, out_dir, settings: dict, *, camera: str | None = None, frames=None, objects=None,
                  passes_only: bool = False, server: str | None = None, token: str | None = None,
                  sampler: api.Sampler | None = None, progress: api.Progress | None = None,
                  reference_image=None) -> dict:
    """Open ``blend_path``, re-style the shot of ``camera`` (None: the scene's camera) over
    ``frames`` (``"1-48"``, a range, (first, last) or None for the scene's range) and save
    the results in ``out_dir`` -> a summary dict (paths, names, frames, metrics).

    ``objects`` (names; None: every mesh that renders) are the targets whose surface the
    noise and UV sync follow. ``settings``: :class:`api.AnimationSettings` fields (prompt,
    steps, seed, width, height, noise, attention, chunk, momentum, sync_strength ...);
    ``reference_image`` as in :func:`texture_blend`."""
    started = time.perf_counter()
    options = api.AnimationSettings.from_values(settings)
    reference = read_reference(reference_image)
    blend_path, out_dir = _open(blend_path, out_dir, ANIMATED_BLEND)
    scene = bpy.context.scene
    chosen = None if objects is None else target_objects(names=[objects] if isinstance(objects, str)
                                                         else list(objects))
    generation = AnimationGeneration(scene, options, camera, chosen, frames, out_dir=out_dir, progress=progress,
                                     reference_image=reference, **_backend(sampler, server, token, passes_only))
    if passes_only:
        return _bundle(generation, out_dir)
    loaded = generation.run()
    animated = _save_copy(out_dir / ANIMATED_BLEND)
    summary = {
        "source_blend": str(blend_path),
        "animated_blend": str(animated),
        "frames_dir": str(out_dir / Path(protocol.FRAME_PNG).parent),
        "frame_paths": [str(path) for path in generation.frame_paths],
        "frames": [loaded.frame_start, loaded.frame_end],
        "camera": generation.shot.camera.name,
        "image": loaded.image.name,
        "strip": loaded.strip.name,
        "strip_channel": loaded.strip.channel,
        "job_id": generation.job.job_id if generation.job else None,
        "seconds": round(time.perf_counter() - started, 3),
    }
    return _finish(out_dir, generation.metrics, summary, ("source_blend", "animated_blend", "frames", "camera",
                                                          "image", "strip", "strip_channel", "job_id", "seconds"))


def _backend(sampler, server, token, passes_only: bool) -> dict:
    """The flow's sampling keywords (none for a passes-only run; else the sampler, or the
    server at ``server``, by default the local one)."""
    return {} if passes_only else api.backend(sampler, server, token)


def _bundle(generation: Generation, out_dir: Path) -> dict:
    """Check and capture only -> write passes.npz and request.json into ``out_dir``."""
    generation.check()
    try:
        passes = generation.capture()
    finally:
        generation.close()
    out_dir.mkdir(parents=True, exist_ok=True)
    passes.save(out_dir / PASSES_NPZ)
    (out_dir / REQUEST_JSON).write_text(generation.request.to_json())
    return {"passes": str(out_dir / PASSES_NPZ), "request": str(out_dir / REQUEST_JSON), "views": passes.views,
            "unit": generation.unit, "width": passes.width, "height": passes.height,
            "coverage": getattr(generation, "coverage", {})}


def _finish(out_dir: Path, metrics: dict, summary: dict, recorded: Sequence[str]) -> dict:
    """metrics.json gains the summary's ``recorded`` keys under "blend"; the summary gains
    the metrics and the contact sheet's path."""
    metrics = dict(metrics, blend={key: summary[key] for key in recorded})
    (out_dir / protocol.METRICS_JSON).write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return dict(summary, metrics=metrics, contact_sheet=str(out_dir / protocol.CONTACT_SHEET_PNG))


def _scene_cameras(scene, blend_path: Path) -> list:
    cameras = sorted((obj for obj in scene.objects if obj.type == "CAMERA"), key=lambda obj: obj.name)
    if not cameras:
        raise CaptureError(f"{blend_path.name} has no camera in scene {scene.name!r}; "
                           "drop use-scene-cameras to build an orbit rig")
    return cameras


def _open(blend_path, out_dir, copy_name: str) -> tuple[Path, Path]:
    """Check the paths, then open the .blend -> (source path, output folder), resolved."""
    blend_path = Path(blend_path).resolve()
    if blend_path.suffix != ".blend" or not blend_path.is_file():
        raise CaptureError(f"blend file: {blend_path} is not an existing .blend file")
    out_dir = Path(out_dir).resolve()
    if (out_dir / copy_name).resolve() == blend_path:
        raise CaptureError(f"out: {out_dir} would overwrite the source file; choose another folder")
    bpy.ops.wm.open_mainfile(filepath=str(blend_path), load_ui=False)
    return blend_path, out_dir


def _save_copy(path: Path) -> Path:
    """Save the open file as a copy at ``path``; relative paths are rebased, so the files
    the results use (texture, frames: saved next to it) resolve from there."""
    bpy.ops.wm.save_as_mainfile(filepath=str(path), copy=True, relative_remap=True)
    return path


# ------------------------------------------------------------------------------ demo


def _suzanne_scene(subdivisions: int) -> bpy.types.Object:
    """A new empty file with Suzanne (smooth, subdivided, her own UV map) wearing a plain
    material ("Clay": what the demo must keep), and a sun -> Suzanne."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.mesh.primitive_monkey_add(location=(0.0, 0.0, 0.0))
    monkey = bpy.context.active_object
    monkey.name = DEMO_OBJECT
    for polygon in monkey.data.polygons:
        polygon.use_smooth = True
    if subdivisions:
        modifier = monkey.modifiers.new("Subdivision", "SUBSURF")
        modifier.levels = modifier.render_levels = subdivisions
    material = new_material("Clay")
    material.node_tree.nodes["Principled BSDF"].inputs["Base Color"].default_value = (0.6, 0.45, 0.35, 1.0)
    monkey.data.materials.append(material)
    light_data = bpy.data.lights.new("Key", "SUN")
    light = bpy.data.objects.new("Key", light_data)
    light.rotation_euler = (0.8, 0.2, 0.6)
    bpy.context.scene.collection.objects.link(light)
    return monkey


def _save_new(path) -> Path:
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    return path


def build_demo_scene(path, subdivisions: int = 1) -> Path:
    """The demo's file: Suzanne with a material of her own, saved at ``path`` -> ``path``."""
    _suzanne_scene(subdivisions)
    return _save_new(path)


def build_animated_demo_scene(path, frames: tuple[int, int] = (1, 16), size: int = 192) -> Path:
    """The demo scene, animated: Suzanne slides across a floor and turns towards the camera
    while the camera dollies in, over ``frames`` (first, last) at ``size`` x ``size``;
    saved at ``path`` -> ``path``. Keyframes are linear, so the motion is even."""
    monkey = _suzanne_scene(1)
    scene = bpy.context.scene
    bpy.ops.mesh.primitive_plane_add(size=30.0, location=(0.0, 0.0, -1.0))
    bpy.context.active_object.name = "Floor"
    camera = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    scene.collection.objects.link(camera)
    scene.camera = camera
    camera.rotation_euler = (math.radians(80.0), 0.0, 0.0)
    first, last = frames
    scene.frame_start, scene.frame_end = first, last
    scene.render.resolution_x = scene.render.resolution_y = size
    scene.render.resolution_percentage = 100
    for frame, x, turn, distance in ((first, -0.8, -35.0, 7.5), (last, 0.8, 35.0, 6.0)):
        monkey.location.x = x
        monkey.rotation_euler.z = math.radians(turn)
        camera.location = (0.0, -distance, 0.3)
        monkey.keyframe_insert("location", index=0, frame=frame)
        monkey.keyframe_insert("rotation_euler", index=2, frame=frame)
        camera.keyframe_insert("location", frame=frame)
    for obj in (monkey, camera):
        for curve in object_fcurves(obj):
            for key in curve.keyframe_points:
                key.interpolation = "LINEAR"
    scene.frame_set(first)
    return _save_new(path)


# ------------------------------------------------------------------------------ argv


def _common_arguments(parser: argparse.ArgumentParser, kind: str, objects_help: str, objects_required: bool) -> None:
    parser.add_argument("blend", nargs="?", default=None,
                        help="the .blend file (default: the file Blender has open)")
    parser.add_argument("--object", dest="objects", action="append", required=objects_required, help=objects_help)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--server", default=None, help="ZS server URL (default http://127.0.0.1:8765)")
    parser.add_argument("--token", default=None, help="the server's token (default: ZS_TOKEN)")
    parser.add_argument("--passes-only", action="store_true",
                        help="render the passes into OUT/passes.npz (with OUT/request.json) and stop")
    parser.add_argument("--reference-image", default=None, metavar="IMAGE",
                        help="an image file whose look every view or frame is steered towards (IP-Adapter)")
    protocol.add_arguments(parser, (kind,))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blender_addon.batch",
                                     description="texture objects of a .blend file on a ZS server")
    _common_arguments(parser, protocol.TEXTURE, "object to texture (repeat for several)", objects_required=True)
    parser.add_argument("--use-scene-cameras", action="store_true", help="every camera of the scene")
    return parser


def build_animate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blender_addon.batch animate",
                                     description="re-style a camera's shot of a .blend file on a ZS server")
    _common_arguments(parser, protocol.ANIMATION, "target object (repeat for several; default: every mesh that "
                                                  "renders)", objects_required=False)
    parser.add_argument("--frames", type=protocol.frame_range_argument, default=None,
                        help="FIRST-LAST, inside the scene's range (default: the scene's range)")
    parser.add_argument("--camera", default=None, help="camera object (default: the scene's camera)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``argv``-style entry (inside ``blender -b``: sampling goes to ``--server``)."""
    args = build_parser().parse_args(argv)
    return _run(args, protocol.TEXTURE, lambda blend, values, backend: texture_blend(
        blend, args.out, args.objects, values, use_scene_cameras=args.use_scene_cameras,
        passes_only=args.passes_only, reference_image=args.reference_image, **backend), print_summary)


def animate_main(argv: Sequence[str] | None = None) -> int:
    """``argv``-style entry of :func:`animate_blend` (inside ``blender -b``, with ``--server``)."""
    args = build_animate_parser().parse_args(argv)
    return _run(args, protocol.ANIMATION, lambda blend, values, backend: animate_blend(
        blend, args.out, values, camera=args.camera, frames=args.frames, objects=args.objects,
        passes_only=args.passes_only, reference_image=args.reference_image, **backend), print_animation_summary)


def _run(args, kind: str, work, report) -> int:
    blend = args.blend or bpy.data.filepath
    if not blend:
        print("batch: error: no .blend file given and none is open", file=sys.stderr)
        return 2
    # api.backend fills in the local server and ZS_TOKEN when they are not given.
    backend = {} if args.passes_only else dict(server=args.server, token=args.token, progress=_print_progress)
    try:
        summary = work(blend, protocol.values_from_arguments(args, kind), backend)
    except (ValueError, RuntimeError) as exc:  # CaptureError, ProtocolError, ServerError
        print(f"batch: error: {exc}", file=sys.stderr)
        return 2
    (print_bundle if args.passes_only else report)(summary)
    return 0


def _print_progress(name: str, data: dict) -> None:
    if name == "rendering":
        print(f"rendered {data['unit']} {data['done']}/{data['total']}", file=sys.stderr)
    elif name == "progress":
        print(f"step {data['step']}/{data['total']}", file=sys.stderr)
    elif name in ("queued", "queue"):  # behind other jobs: the place and what runs ahead
        print(f"job {data.get('job', '')}: {queue_text(data.get('position'), data.get('waiting_on'))}",
              file=sys.stderr)
    else:
        print(f"job {data.get('job', '')}: {name}", file=sys.stderr)


def print_summary(summary: dict, stream=None) -> None:
    """Where everything went, one line each."""
    stream = stream or sys.stderr
    metrics = summary["metrics"]
    print(f"textured blend: {summary['textured_blend']} (objects {', '.join(summary['objects'])}; "
          f"new materials {', '.join(summary['materials'])})", file=stream)
    texels = metrics.get("texture_coverage")
    seen = f", {100 * texels:.1f}% of texels seen" if texels is not None else ""
    print(f"texture: {summary['texture']} ({metrics.get('texture_size', '?')}^2{seen})", file=stream)
    if summary.get("coverage"):
        print(f"cameras: {coverage.describe(summary['coverage'])}", file=stream)
    print(f"contact sheet: {summary['contact_sheet']}", file=stream)
    print(f"metrics: {Path(summary['textured_blend']).parent / 'metrics.json'}", file=stream)


def print_animation_summary(summary: dict, stream=None) -> None:
    """Where an animation went, one line each."""
    stream = stream or sys.stderr
    metrics = summary["metrics"]
    first, last = summary["frames"]
    print(f"animated blend: {summary['animated_blend']} (camera {summary['camera']} shows image sequence "
          f"{summary['image']}; Video Sequencer strip {summary['strip']} on channel {summary['strip_channel']}, "
          f"frames {first}-{last})", file=stream)
    print(f"frames: {summary['frames_dir']} ({len(summary['frame_paths'])} PNGs)", file=stream)
    for key in ("temporal_warp_error", "latent_temporal_warp_error"):
        if key in metrics:
            print(f"{key}: {metrics[key]}", file=stream)
    print(f"contact sheet: {summary['contact_sheet']}", file=stream)
    print(f"metrics: {Path(summary['animated_blend']).parent / 'metrics.json'}", file=stream)


def print_bundle(summary: dict, stream=None) -> None:
    """Where a passes-only run's bundle went."""
    print(f"passes: {summary['passes']} ({summary['views']} {summary['unit']}s); request: {summary['request']}",
          file=stream or sys.stderr)
    if summary.get("coverage"):
        print(f"cameras: {coverage.describe(summary['coverage'])}", file=stream or sys.stderr)


__all__ = ["texture_blend", "animate_blend", "build_demo_scene", "build_animated_demo_scene", "main", "animate_main",
           "print_summary", "print_animation_summary", "print_bundle"]
