r"""Headless texturing of a .blend file: the hook for `zs texture FILE.blend` and render farms.

    texture_blend("scene.blend", ["Suzanne"], "old bronze", "out/", cameras=6, server=URL, token=T)

opens the file, textures the objects (:func:`api.texture`) and writes into ``out_dir``:
``textured.blend`` (a copy; the source file is not changed), ``zs_textures/<name>.png``
(the texture the copy uses, by a relative path), ``texture.png``, ``views/NNNN.png``,
``contact_sheet.png`` and ``metrics.json``.

Inside Blender (no torch there, so sampling goes to a server), from the repository folder::

    blender -b scene.blend --python-expr "import sys; sys.path.insert(0, '.'); \
        from blender_addon import batch; \
        batch.main(['--object', 'Suzanne', '--prompt', 'old bronze', '--out', 'out', '--server', URL])"

(Blender ignores PYTHONPATH unless started with ``--python-use-system-env``).
Imports: bpy, the standard library and numpy only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import bpy

from . import api, capture
from .capture import CaptureError

TEXTURED_BLEND = "textured.blend"
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
    blend_path = Path(blend_path).resolve()
    if blend_path.suffix != ".blend" or not blend_path.is_file():
        raise CaptureError(f"blend file: {blend_path} is not an existing .blend file")
    if use_scene_cameras and cameras is not None:
        raise CaptureError("cameras: give a camera count or use the scene's cameras, not both")
    options = _settings(prompt, cameras, settings)
    out_dir = Path(out_dir).resolve()
    if (out_dir / TEXTURED_BLEND).resolve() == blend_path:
        raise CaptureError(f"out: {out_dir} would overwrite the source file; choose another folder")

    bpy.ops.wm.open_mainfile(filepath=str(blend_path), load_ui=False)
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
    textured = out_dir / TEXTURED_BLEND
    # A copy, with relative paths rebased: the texture (saved next to it) resolves from there.
    bpy.ops.wm.save_as_mainfile(filepath=str(textured), copy=True, relative_remap=True)

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


def _settings(prompt: str, cameras: int | None, settings: dict) -> api.TextureSettings:
    known = {f.name for f in dataclasses.fields(api.TextureSettings)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise CaptureError(f"{unknown[0]}: not a texture setting (expected one of {', '.join(sorted(known))})")
    values = {k: v for k, v in settings.items() if v is not None}
    if cameras is not None:
        values["views"] = cameras
    options = api.TextureSettings(prompt=prompt, **values)
    options.check()
    return options


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


# ------------------------------------------------------------------------------ argv


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blender_addon.batch",
                                     description="texture objects of a .blend file on a ZS server")
    parser.add_argument("blend", nargs="?", default=None,
                        help="the .blend file (default: the file Blender has open)")
    parser.add_argument("--object", dest="objects", action="append", required=True,
                        help="object to texture (repeat for several)")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--out", required=True, help="output folder")
    cameras = parser.add_mutually_exclusive_group()
    cameras.add_argument("--cameras", type=int, default=None, help="orbit rig of N cameras (default 6)")
    cameras.add_argument("--use-scene-cameras", action="store_true", help="every camera of the scene")
    parser.add_argument("--server", default=None, help="ZS server URL (default http://127.0.0.1:8765)")
    parser.add_argument("--token", default=None, help="the server's token (<data-dir>/token)")
    parser.add_argument("--negative-prompt", default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument("--view-size", type=int, default=None)
    parser.add_argument("--texture-size", type=int, default=None)
    parser.add_argument("--uv-map", default=None)
    parser.add_argument("--smart-uv", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``argv``-style entry (inside ``blender -b``: sampling goes to ``--server``)."""
    args = build_parser().parse_args(argv)
    blend = args.blend or bpy.data.filepath
    if not blend:
        print("batch: error: no .blend file given and none is open", file=sys.stderr)
        return 2
    settings = dict(negative_prompt=args.negative_prompt, steps=args.steps, seed=args.seed, guidance=args.guidance,
                    view_size=args.view_size, texture_size=args.texture_size, uv_map=args.uv_map,
                    smart_uv=args.smart_uv or None)
    try:
        summary = texture_blend(blend, args.objects, args.prompt, args.out, cameras=args.cameras,
                                use_scene_cameras=args.use_scene_cameras, server=args.server, token=args.token,
                                progress=_print_progress, **settings)
    except (ValueError, RuntimeError) as exc:  # CaptureError, ProtocolError, ServerError
        print(f"batch: error: {exc}", file=sys.stderr)
        return 2
    print_summary(summary)
    return 0


def _print_progress(name: str, data: dict) -> None:
    if name == "progress":
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


__all__ = ["texture_blend", "build_demo_scene", "main", "print_summary"]
