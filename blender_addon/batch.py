r"""Headless texturing and animation of a .blend file: the hook for `zs texture FILE.blend`,
`zs animate FILE.blend` and render farms.

    texture_blend("scene.blend", ["Suzanne"], "old bronze", "out/", cameras=6, server=URL, token=T)

opens the file, textures the objects (:func:`api.texture`) and writes into ``out_dir``:
``textured.blend`` (a copy; the source file is not changed), ``zs_textures/<name>.png``
(the texture the copy uses, by a relative path), ``texture.png``, ``views/NNNN.png``,
``contact_sheet.png`` and ``metrics.json``.

    animate_blend("shot.blend", "out/", camera="Camera", frames="1-48", prompt="old bronze", server=URL)

opens the file, re-styles the camera's shot over the frames (:func:`api.animate`) and
writes into ``out_dir``: ``frames/NNNN.png`` (0-based), ``metrics.json``,
``contact_sheet.png`` and ``animated.blend`` (a copy) where the frames are a new image
sequence: the camera's background image and a Video Sequencer strip from the first frame.

Inside Blender (no torch there, so sampling goes to a server), from the repository folder::

    blender -b scene.blend --python-expr "import sys; sys.path.insert(0, '.'); \
        from blender_addon import batch; \
        batch.main(['--object', 'Suzanne', '--prompt', 'old bronze', '--out', 'out', '--server', URL])"

and for an animation ``batch.animate_main(['--frames', '1-48', '--prompt', 'old bronze', '--out', 'out',
'--server', URL])``.

(Blender ignores PYTHONPATH unless started with ``--python-use-system-env``).
Imports: bpy, the standard library and numpy only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Sequence

import bpy

from . import animation, api, capture
from .capture import CaptureError

TEXTURED_BLEND = "textured.blend"
ANIMATED_BLEND = "animated.blend"
DEMO_OBJECT = "Suzanne"


def texture_blend(blend_path, object_names, prompt: str, out_dir, cameras: int | None = None,
                  use_scene_cameras: bool = False, server: str | None = None, token: str | None = None,
                  sampler: api.Sampler | None = None, progress: api.Progress | None = None, **settings) -> dict:
    """Open ``blend_path``, texture ``object_names`` with ``prompt`` and save the results in
    ``out_dir`` -> a summary dict (paths of the outputs, object, material and image names,
    cameras, metrics).

    Cameras: ``cameras`` N builds an orbit rig of N cameras; ``use_scene_cameras`` uses
    every camera of the scene (by name); neither builds the default rig. ``settings`` are
    :class:`api.TextureSettings` fields (steps, seed, view_size, texture_size ...).
    """
    started = time.perf_counter()
    if use_scene_cameras and cameras is not None:
        raise CaptureError("cameras: give a camera count or use the scene's cameras, not both")
    options = _settings(prompt, cameras, settings)
    blend_path, out_dir = _open(blend_path, out_dir, TEXTURED_BLEND)
    names = [object_names] if isinstance(object_names, str) else list(object_names or [])
    objects = capture.target_objects(names=names)
    scene = bpy.context.scene
    scene_cameras = None
    if use_scene_cameras:
        scene_cameras = sorted((obj for obj in scene.objects if obj.type == "CAMERA"), key=lambda obj: obj.name)
        if not scene_cameras:
            raise CaptureError(f"{blend_path.name} has no camera in scene {scene.name!r}; "
                               "drop use-scene-cameras to build an orbit rig")

    out_dir.mkdir(parents=True, exist_ok=True)
    result = api.texture(objects, scene_cameras, options, server=server, token=token, sampler=sampler,
                         progress=progress, out_dir=out_dir, image_folder=out_dir / "zs_textures",
                         scene=scene)
    textured = _save_copy(out_dir / TEXTURED_BLEND)

    summary = {
        "source_blend": str(blend_path),
        "textured_blend": str(textured),
        "texture": str(result.texture_path),
        "texture_image": result.image.name,
        "texture_file": str(Path(bpy.path.abspath(result.image.filepath, start=str(blend_path.parent)))),
        "objects": [obj.name for obj in objects],
        "materials": [material.name for material in result.materials],
        "cameras": [camera.name for camera in result.cameras],
        "job_id": result.job_id,
        "seconds": round(time.perf_counter() - started, 3),
    }
    metrics = dict(result.metrics)
    metrics["blend"] = {key: summary[key] for key in ("source_blend", "textured_blend", "objects", "materials",
                                                      "cameras", "texture_image", "job_id", "seconds")}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    summary["metrics"] = metrics
    summary["contact_sheet"] = str(out_dir / "contact_sheet.png")
    return summary


def animate_blend(blend_path, out_dir, camera: str | None = None, frames=None, prompt: str = "",
                  objects=None, server: str | None = None, token: str | None = None,
                  sampler: api.Sampler | None = None, progress: api.Progress | None = None, **settings) -> dict:
    """Open ``blend_path``, re-style the shot of ``camera`` (None: the scene's camera) over
    ``frames`` (``"1-48"``, a range, (first, last) or None for the scene's range) with
    ``prompt``, and save the results in ``out_dir`` -> a summary dict (paths, names,
    frames, metrics).

    ``objects`` (names; None: every mesh that renders) are the targets whose surface the
    noise and UV sync follow. ``settings`` are :class:`api.AnimationSettings` fields
    (steps, seed, width, height, noise, attention, chunk, momentum, sync_strength ...).
    """
    started = time.perf_counter()
    options = _options(api.AnimationSettings, "an animation", dict(settings, prompt=prompt))
    blend_path, out_dir = _open(blend_path, out_dir, ANIMATED_BLEND)
    scene = bpy.context.scene
    targets = None if objects is None else capture.target_objects(
        names=[objects] if isinstance(objects, str) else list(objects))
    result = api.animate(camera, targets, frames, options, server=server, token=token, sampler=sampler,
                         progress=progress, out_dir=out_dir, scene=scene)
    animated = _save_copy(out_dir / ANIMATED_BLEND)

    summary = {
        "source_blend": str(blend_path),
        "animated_blend": str(animated),
        "frames_dir": str(result.frame_paths[0].parent),
        "frame_paths": [str(path) for path in result.frame_paths],
        "frames": [result.frame_start, result.frame_end],
        "camera": result.camera.name,
        "image": result.image.name,
        "strip": result.strip.name,
        "strip_channel": result.strip.channel,
        "job_id": result.job_id,
        "seconds": round(time.perf_counter() - started, 3),
    }
    metrics = dict(result.metrics)
    metrics["blend"] = {key: summary[key] for key in ("source_blend", "animated_blend", "frames", "camera", "image",
                                                      "strip", "strip_channel", "job_id", "seconds")}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    summary["metrics"] = metrics
    summary["contact_sheet"] = str(out_dir / "contact_sheet.png")
    return summary


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


def _options(kind, what: str, values: dict):
    """Keyword settings -> a checked ``kind`` (TextureSettings or AnimationSettings);
    None values keep the defaults."""
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise CaptureError(f"{unknown[0]}: not {what} setting (expected one of {', '.join(sorted(known))})")
    options = kind(**{k: v for k, v in values.items() if v is not None})
    options.check()
    return options


def _settings(prompt: str, cameras: int | None, settings: dict) -> api.TextureSettings:
    values = dict(settings, prompt=prompt)
    if cameras is not None:
        values["views"] = cameras
    return _options(api.TextureSettings, "a texture", values)


# ------------------------------------------------------------------------------ demo


def build_demo_scene(path, subdivisions: int = 1) -> Path:
    """A new file with Suzanne (smooth, subdivided, her own UV map) wearing a plain
    material, saved at ``path`` -> ``path``. The material is what the demo must keep."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.mesh.primitive_monkey_add(location=(0.0, 0.0, 0.0))
    monkey = bpy.context.active_object
    monkey.name = DEMO_OBJECT
    for polygon in monkey.data.polygons:
        polygon.use_smooth = True
    if subdivisions:
        modifier = monkey.modifiers.new("Subdivision", "SUBSURF")
        modifier.levels = modifier.render_levels = subdivisions
    material = bpy.data.materials.new("Clay")
    material.node_tree.nodes["Principled BSDF"].inputs["Base Color"].default_value = (0.6, 0.45, 0.35, 1.0)
    monkey.data.materials.append(material)
    light_data = bpy.data.lights.new("Key", "SUN")
    light = bpy.data.objects.new("Key", light_data)
    light.rotation_euler = (0.8, 0.2, 0.6)
    bpy.context.scene.collection.objects.link(light)
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    return path


def build_animated_demo_scene(path, frames: int = 16, size: int = 192) -> Path:
    """The demo scene, animated: Suzanne slides across a floor and turns towards the camera
    while the camera dollies in, over frames 1 .. ``frames`` at ``size`` x ``size``; saved
    at ``path`` -> ``path``. Keyframes are linear, so the motion is even."""
    build_demo_scene(path)
    scene = bpy.context.scene
    monkey = bpy.data.objects[DEMO_OBJECT]
    bpy.ops.mesh.primitive_plane_add(size=30.0, location=(0.0, 0.0, -1.0))
    bpy.context.active_object.name = "Floor"
    camera = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    scene.collection.objects.link(camera)
    scene.camera = camera
    camera.rotation_euler = (math.radians(80.0), 0.0, 0.0)
    scene.frame_start, scene.frame_end = 1, frames
    scene.render.resolution_x = scene.render.resolution_y = size
    scene.render.resolution_percentage = 100
    for frame, x, turn, distance in ((1, -0.8, -35.0, 7.5), (frames, 0.8, 35.0, 6.0)):
        monkey.location.x = x
        monkey.rotation_euler.z = math.radians(turn)
        camera.location = (0.0, -distance, 0.3)
        monkey.keyframe_insert("location", index=0, frame=frame)
        monkey.keyframe_insert("rotation_euler", index=2, frame=frame)
        camera.keyframe_insert("location", frame=frame)
    for obj in (monkey, camera):
        for curve in capture.object_fcurves(obj):
            for key in curve.keyframe_points:
                key.interpolation = "LINEAR"
    scene.frame_set(1)
    bpy.ops.wm.save_as_mainfile(filepath=str(Path(path).resolve()))
    return Path(path).resolve()


# ------------------------------------------------------------------------------ argv


def _common_arguments(parser: argparse.ArgumentParser, objects_help: str, objects_required: bool) -> None:
    parser.add_argument("blend", nargs="?", default=None,
                        help="the .blend file (default: the file Blender has open)")
    parser.add_argument("--object", dest="objects", action="append", required=objects_required, help=objects_help)
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--server", default=None, help="ZS server URL (default http://127.0.0.1:8765)")
    parser.add_argument("--token", default=None, help="the server's token (<data-dir>/token)")
    parser.add_argument("--negative-prompt", default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument("--uv-map", default=None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blender_addon.batch",
                                     description="texture objects of a .blend file on a ZS server")
    _common_arguments(parser, "object to texture (repeat for several)", objects_required=True)
    cameras = parser.add_mutually_exclusive_group()
    cameras.add_argument("--cameras", type=int, default=None, help="orbit rig of N cameras (default 6)")
    cameras.add_argument("--use-scene-cameras", action="store_true", help="every camera of the scene")
    parser.add_argument("--view-size", type=int, default=None)
    parser.add_argument("--texture-size", type=int, default=None)
    parser.add_argument("--smart-uv", action="store_true")
    return parser


def _frames_argument(text: str) -> tuple[int, int]:
    try:
        return animation.parse_frames(text)
    except CaptureError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_animate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blender_addon.batch animate",
                                     description="re-style a camera's shot of a .blend file on a ZS server")
    _common_arguments(parser, "target object (repeat for several; default: every mesh that renders)",
                      objects_required=False)
    parser.add_argument("--frames", type=_frames_argument, default=None,
                        help="FIRST-LAST, inside the scene's range (default: the scene's range)")
    parser.add_argument("--camera", default=None, help="camera object (default: the scene's camera)")
    parser.add_argument("--width", type=int, default=None, help="frame width (default: the scene's output size)")
    parser.add_argument("--height", type=int, default=None, help="frame height")
    parser.add_argument("--noise", default=None)
    parser.add_argument("--background-noise", default=None)
    parser.add_argument("--attention", default=None)
    parser.add_argument("--keyframes", default=None, help="anchor policy: first, first_previous, middle")
    parser.add_argument("--momentum", type=float, default=None)
    parser.add_argument("--chunk", type=int, default=None)
    parser.add_argument("--sync-strength", type=float, default=None)
    parser.add_argument("--background-sync", type=float, default=None)
    parser.add_argument("--pixel-sync", type=float, default=None)
    parser.add_argument("--background-uv", action="store_true", default=None,
                        help="sync the other UV-mapped meshes through their UVs instead of the vector pass")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``argv``-style entry (inside ``blender -b``: sampling goes to ``--server``)."""
    args = build_parser().parse_args(argv)
    settings = dict(negative_prompt=args.negative_prompt, steps=args.steps, seed=args.seed, guidance=args.guidance,
                    view_size=args.view_size, texture_size=args.texture_size, uv_map=args.uv_map,
                    smart_uv=args.smart_uv or None)
    return _run(args, lambda blend: texture_blend(
        blend, args.objects, args.prompt, args.out, cameras=args.cameras, use_scene_cameras=args.use_scene_cameras,
        server=args.server, token=args.token, progress=_print_progress, **settings), print_summary)


def animate_main(argv: Sequence[str] | None = None) -> int:
    """``argv``-style entry of :func:`animate_blend` (inside ``blender -b``, with ``--server``)."""
    args = build_animate_parser().parse_args(argv)
    settings = {name: getattr(args, name) for name in (
        "negative_prompt", "steps", "seed", "guidance", "uv_map", "width", "height", "noise", "background_noise",
        "attention", "keyframes", "momentum", "chunk", "sync_strength", "background_sync", "pixel_sync",
        "background_uv")}
    return _run(args, lambda blend: animate_blend(
        blend, args.out, camera=args.camera, frames=args.frames, prompt=args.prompt, objects=args.objects,
        server=args.server, token=args.token, progress=_print_progress, **settings), print_animation_summary)


def _run(args, work, report) -> int:
    blend = args.blend or bpy.data.filepath
    if not blend:
        print("batch: error: no .blend file given and none is open", file=sys.stderr)
        return 2
    try:
        summary = work(blend)
    except (ValueError, RuntimeError) as exc:  # CaptureError, ProtocolError, ServerError
        print(f"batch: error: {exc}", file=sys.stderr)
        return 2
    report(summary)
    return 0


def _print_progress(name: str, data: dict) -> None:
    if name == "rendering":
        print(f"rendered {data['unit']} {data['done']}/{data['total']}", file=sys.stderr)
    elif name == "progress":
        print(f"step {data['step']}/{data['total']}", file=sys.stderr)
    else:
        print(f"job {data.get('job', '')}: {name}", file=sys.stderr)


def print_summary(summary: dict, stream=None) -> None:
    """Where everything went, one line each."""
    stream = stream or sys.stderr
    metrics = summary["metrics"]
    print(f"textured blend: {summary['textured_blend']} (objects {', '.join(summary['objects'])}; "
          f"new materials {', '.join(summary['materials'])})", file=stream)
    coverage = metrics.get("texture_coverage")
    seen = f", {100 * coverage:.1f}% of texels seen" if coverage is not None else ""
    print(f"texture: {summary['texture']} ({metrics.get('texture_size', '?')}^2{seen})", file=stream)
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


__all__ = ["texture_blend", "animate_blend", "build_demo_scene", "build_animated_demo_scene", "main", "animate_main", "print_summary",
           "print_animation_summary"]
