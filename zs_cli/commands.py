"""The sub-commands: ``demo``, ``texture``, ``animate`` and ``serve``.

A ``.blend`` source runs the Blender flow (``blender_addon.batch``) with the sampling in
this process or on ``--server``; a passes bundle (``.npz``) and, for ``animate``, an EXR
sequence rendered with the "ZS passes" setting (``shot_####.exr``) are sampled here directly.
Whatever a run needs (the reference image, the model, its ControlNet, LoRAs and IP-Adapter,
or their names on the server) is resolved first (:mod:`.preflight`), before Blender starts."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from zs_core.protocol import ANIMATION, TEXTURE, Passes, Request, offered, parse_frame_range, values_from_arguments

from . import blender, preflight, report
from .local import LocalSampler

# The demo's own defaults: a small, quick run that still shows every part of the flow.
DEMO_PROMPT = "a weathered bronze statue, detailed texture"
DEMO_DEFAULTS = {
    TEXTURE: {"prompt": DEMO_PROMPT, "steps": 12, "attention": "self", "texture_size": 512},
    ANIMATION: {"prompt": DEMO_PROMPT, "steps": 12},
}
DEMO_FRAMES = "1-16"
DEMO_CAPTURE = ("views", "complete")  # the capture settings the demo takes
INSTALL_BLENDER = "pip install -e '.[blender]'"
# Flags that only a .blend source takes (besides the capture settings of the table).
BLEND_FLAGS = {"objects": "--object", "use_scene_cameras": "--use-scene-cameras", "frames": "--frames",
               "camera": "--camera", "server": "--server", "passes_only": "--passes-only"}


def demo(args: argparse.Namespace) -> int:
    kind = ANIMATION if args.animation else TEXTURE
    if args.frames is not None and kind == TEXTURE:
        raise ValueError("--frames: only for the animation demo (--animation)")
    values = values_from_arguments(args, kind, capture=DEMO_CAPTURE, overrides=DEMO_DEFAULTS[kind])
    out = Path(args.out)
    reference = preflight.reference_image(args.reference_image)
    resolved = preflight.resolve_local(args, values, reference)
    if kind == ANIMATION:
        return _demo_animation(args, out, values, args.frames or parse_frame_range(DEMO_FRAMES), resolved, reference)
    if blender.bpy_available():
        return _demo_blender(args, out, values, resolved, reference)
    if values["views"] == 0:
        raise ValueError(f"--views auto: the cameras are chosen in Blender; install its Python module with "
                         f"{INSTALL_BLENDER}, or give a number")
    print("zs demo: Blender's Python module (bpy) is not installed, so this runs the numpy sphere scene "
          f"instead of the Blender flow; install it with: {INSTALL_BLENDER}", file=sys.stderr)
    print(f"zs demo: built-in scene ({values['views']} views of {args.size}x{args.size}), model {args.model or 'tiny'}",
          file=sys.stderr)
    from zs_core import scene

    request = _request(TEXTURE, values)
    passes = scene.sphere_scene(views=values["views"], width=args.size, height=args.size,
                                texture_size=request.texture_size)
    report.texture_outputs(out, LocalSampler(resolved, args, reference, "demo").run(request, passes, out))
    return 0


def _demo_blender(args: argparse.Namespace, out: Path, values: dict, resolved, reference) -> int:
    """`zs demo` in Blender: Suzanne (with a material of her own) and an orbit rig."""
    batch = blender.batch()
    cameras = (f"{values['views']} cameras" if values["views"] else "auto cameras") + \
        (" and completion views" if values["complete"] else "")
    print(f"zs demo: Suzanne in Blender, {cameras} of {args.size}x{args.size}, model {args.model or 'tiny'}",
          file=sys.stderr)
    local = LocalSampler(resolved, args, None, "demo")  # the flow joins the reference image to the passes
    with blender.log_to(out), blender.sampling_backend("demo", local=local) as backend:
        scene_path = batch.build_demo_scene(out / "scene.blend")
        summary = batch.texture_blend(scene_path, out, [batch.DEMO_OBJECT], dict(values, view_size=args.size),
                                      reference_image=reference, **backend)
    report.textured_blend(summary)
    return 0


def _demo_animation(args: argparse.Namespace, out: Path, values: dict, frames: tuple[int, int], resolved,
                    reference) -> int:
    """`zs demo --animation`: Suzanne sliding and turning before a dollying camera,
    re-styled into consistent frames (the numpy animated scene without bpy)."""
    count = frames[1] - frames[0] + 1
    if blender.bpy_available():
        batch = blender.batch()
        print(f"zs demo --animation: Suzanne in Blender, {count} frames of {args.size}x{args.size}, model "
              f"{args.model or 'tiny'}", file=sys.stderr)
        local = LocalSampler(resolved, args, None, "demo")
        with blender.log_to(out), blender.sampling_backend("demo", local=local) as backend:
            scene_path = batch.build_animated_demo_scene(out / "scene.blend", frames=frames, size=args.size)
            summary = batch.animate_blend(scene_path, out, values, objects=[batch.DEMO_OBJECT],
                                          reference_image=reference, **backend)
        report.animated_blend(summary)
        return 0
    print("zs demo --animation: Blender's Python module (bpy) is not installed: the numpy animated scene instead",
          file=sys.stderr)
    from zs_core import scene

    request = _request(ANIMATION, values)
    passes = scene.animated_scene(frames=count, width=args.size, height=args.size)
    report.animation_outputs(out, LocalSampler(resolved, args, reference, "demo").run(request, passes, out))
    return 0


def texture(args: argparse.Namespace) -> int:
    return _sample(args, TEXTURE, _texture_blend, report.texture_outputs)


def animate(args: argparse.Namespace) -> int:
    return _sample(args, ANIMATION, _animate_blend, report.animation_outputs)


def _sample(args: argparse.Namespace, kind: str, blend_run, outputs) -> int:
    """A .blend source runs the Blender flow (``blend_run``); a bundle is sampled here."""
    source = _source(args.source, kind)
    if source.suffix == ".blend":
        return blend_run(args, source)
    _only_for_blend(args, kind)
    values = values_from_arguments(args, kind, capture=False)
    reference = preflight.reference_image(args.reference_image)
    resolved = preflight.resolve_local(args, values, reference)
    if source.suffix == ".exr":
        from zs_core import exr_sequence

        shot = exr_sequence.read_shot(source)
        passes = shot.passes
        values["fps"] = shot.fps
        print(f"zs {args.command}: frames {shot.frames[0]}-{shot.frames[-1]} of camera {shot.camera!r} from "
              f"{len(shot.files)} EXR files", file=sys.stderr)
    else:
        passes = Passes.load(source).validate()
    if reference is None and passes.reference_image is not None:  # the bundle's own
        preflight.resolve_ip_adapter(resolved.family, values["ip_adapter"])
    if kind == TEXTURE and args.texture_size is None and passes.texel_position is not None:
        values["texture_size"] = passes.texel_position.shape[0]  # the bundle's texel maps
    unit = "frames" if kind == ANIMATION else "views"
    print(f"zs {args.command}: {passes.views} {unit} of {passes.width}x{passes.height} from {source}, model "
          f"{args.model or 'tiny'}", file=sys.stderr)
    local = LocalSampler(resolved, args, reference, args.command)
    outputs(Path(args.out), local.run(_request(kind, values), passes, args.out))
    return 0


def _texture_blend(args: argparse.Namespace, source: Path) -> int:
    """`zs texture FILE.blend`: open, texture the objects, save out/textured.blend."""
    if not args.objects:
        raise ValueError("--object: name the object to texture (repeat --object for several)")
    if args.use_scene_cameras and args.views is not None:
        raise ValueError("--views: an orbit rig is not built with --use-scene-cameras; give one of the two")
    values = values_from_arguments(args, TEXTURE)
    reference = preflight.reference_image(args.reference_image)
    backend = _backend(args, "texture", values, reference)  # before Blender starts
    batch = blender.batch()
    with blender.log_to(Path(args.out)), backend as keywords:
        summary = batch.texture_blend(source, args.out, args.objects, values,
                                      use_scene_cameras=args.use_scene_cameras, passes_only=args.passes_only,
                                      reference_image=reference, **keywords)
    _report_blend(args, "texture", summary, report.textured_blend)
    return 0


def _animate_blend(args: argparse.Namespace, source: Path) -> int:
    """`zs animate FILE.blend`: open, re-style the camera's shot, save out/animated.blend."""
    values = values_from_arguments(args, ANIMATION)
    reference = preflight.reference_image(args.reference_image)
    backend = _backend(args, "animate", values, reference)  # before Blender starts
    batch = blender.batch()
    with blender.log_to(Path(args.out)), backend as keywords:
        summary = batch.animate_blend(source, args.out, values, camera=args.camera, frames=args.frames,
                                      objects=args.objects, passes_only=args.passes_only, reference_image=reference,
                                      **keywords)
    _report_blend(args, "animate", summary, report.animated_blend)
    return 0


def extension(args: argparse.Namespace) -> int:
    """`zs extension`: the zip to install in Blender, and how."""
    if not blender.bpy_available():
        raise ValueError(f"extension: building the zip uses Blender's own tool from its Python module; install it "
                         f"with {INSTALL_BLENDER}")
    path = blender.build_extension(Path(args.out))
    print(f"extension: {path}", file=sys.stderr)
    zs = Path(sys.executable).with_name("zs.exe" if sys.platform == "win32" else "zs")  # this environment's
    print("install it in Blender 4.2 or newer: drag the zip into Blender's window, or Edit > Preferences > "
          "Get Extensions > (the arrow at the top right) > Install from Disk...; then set up a server once: Edit > "
          "Preferences > Add-ons > ZS Texturing > Set Up Server (or set the Launch Command there to "
          f"{zs} serve); press Start, then Connect, in the 3D Viewport's ZS tab (N)", file=sys.stderr)
    return 0


def serve(args: argparse.Namespace) -> int:
    import importlib.util
    import logging

    import uvicorn

    from server.app import create_app, default_entry
    from server.config import TOKEN_FILE, Settings
    from server.model_registry import ModelRegistry

    settings = Settings.from_env(host=args.host, port=args.port, default_model=args.default_model,
                                 controlnet=args.controlnet, data_dir=args.data_dir, device=args.device,
                                 dtype=args.dtype, offload=args.offload, vae_tiling=args.vae_tiling,
                                 model_memory_bytes=args.model_memory_bytes, hub_cache=args.hub_cache,
                                 ray=args.ray, ray_workers=args.ray_workers, ray_split=args.ray_split)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not settings.is_loopback:
        print(f"zs serve: WARNING: binding {settings.host} makes the server reachable from other machines; "
              "anyone who can reach it and has the token can run jobs. Use 127.0.0.1 unless you mean it.",
              file=sys.stderr)
    # Before the server starts: a missing model is a ModelLoadError naming its files, which
    # main() prints as one line (exit code 2), not a traceback from the server's startup.
    default_entry(settings, ModelRegistry(settings))
    if settings.ray and importlib.util.find_spec("ray") is None:
        raise ValueError("--ray: Ray is not installed here; pip install 'zs-texturing[ray]'")
    app = create_app(settings)
    token_note = "from ZS_TOKEN" if settings.token else f"in {settings.data_dir / TOKEN_FILE}"
    print(f"zs serve: http://{settings.host}:{settings.port} (API docs at /docs, token {token_note}, "
          f"jobs in {settings.jobs_dir}); loading model {settings.default_model}"
          + (f", jobs on Ray workers ({settings.ray})" if settings.ray else ""), file=sys.stderr)
    # A short graceful timeout: open event streams would otherwise hold up Ctrl+C.
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", timeout_graceful_shutdown=3)
    return 0


# ----------------------------------------------------------------------------- helpers


def _source(text: str, kind: str) -> Path:
    source = Path(text)
    suffixes = (".blend", ".npz", ".exr") if kind == ANIMATION else (".blend", ".npz")
    if source.suffix not in suffixes:
        expected = "a .blend file, a passes bundle (.npz) or an EXR sequence (shot_####.exr)" if kind == ANIMATION \
            else "a .blend file or a passes bundle (.npz)"
        raise ValueError(f"source: expected {expected}, got {source.name!r}")
    if source.suffix != ".exr" and not source.is_file():  # a sequence pattern names no one file
        raise ValueError(f"source: {source} does not exist")
    return source


def _only_for_blend(args: argparse.Namespace, kind: str) -> None:
    """A bundle is sampled whole, in this process: .blend-only flags are an error."""
    flags = dict(BLEND_FLAGS, **{parameter.name: parameter.flag for parameter in offered(kind, wire=False)})
    for name, flag in flags.items():
        if getattr(args, name, None) not in (None, False):
            raise ValueError(f"{flag}: only for .blend files; a passes bundle is sampled whole, in this process")


def _request(kind: str, values: dict) -> Request:
    wire = {name: value for name, value in values.items() if name in Request.__dataclass_fields__}
    return Request(kind=kind, **wire).validate()


def _backend(args: argparse.Namespace, command: str, values: dict, reference):
    """The sampling backend of a .blend run, everything it needs resolved: the names on
    ``--server``, or the model in this process. None for a passes-only run (the reference
    image still joins the bundle)."""
    if args.passes_only:
        return contextlib.nullcontext({})
    if args.server:
        preflight.reject_local_flags(args, f"the server at {args.server}")
        token = preflight.server_token(args)
        preflight.check_server(args.server, token, values)
        return blender.sampling_backend(command, server=args.server, token=token)
    resolved = preflight.resolve_local(args, values, reference)
    # The flow joins the reference image to the passes it captures.
    return blender.sampling_backend(command, local=LocalSampler(resolved, args, None, command))


def _report_blend(args: argparse.Namespace, command: str, summary: dict, full) -> None:
    if args.passes_only:
        report.bundle(dict(summary, command=command))
    else:
        full(summary)
