"""The ``zs`` command. Heavy imports happen inside the sub-commands so ``zs --help`` is instant."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

from .protocol import (ANIMATION_ATTENTION, ANIMATION_DEFAULTS, ATTENTION_MODES, BACKGROUND_NOISE_MODES,
                       KEYFRAME_POLICIES, NOISE_MODES, SCHEDULERS, ProtocolError, Request, parse_frame_range)


def _add_sampling_options(parser: argparse.ArgumentParser, *, steps: int, noise: str, attention: str,
                          sync_strength: float, attention_choices=ATTENTION_MODES,
                          texture_size: bool = True) -> None:
    parser.add_argument("--prompt", default="a weathered bronze statue, detailed texture")
    parser.add_argument("--negative-prompt", default="blurry, low quality")
    parser.add_argument("--model", default="tiny", help="tiny, a diffusers folder, a hub id or a .safetensors file")
    parser.add_argument("--controlnet", default=None, help="depth ControlNet (default: tiny for tiny, else SD1.5 depth)")
    parser.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--scheduler", choices=SCHEDULERS, default="ddim")
    parser.add_argument("--noise", choices=NOISE_MODES, default=noise)
    parser.add_argument("--attention", choices=attention_choices, default=attention)
    parser.add_argument("--sync-strength", type=float, default=sync_strength,
                        help="UV latent synchronisation, 0 (off) to 1 (fully synced)")
    if texture_size:
        parser.add_argument("--texture-size", type=int, default=None, help="texture side in texels")


def _request_from_args(args: argparse.Namespace, **overrides):
    fields = dict(
        prompt=args.prompt, negative_prompt=args.negative_prompt, steps=args.steps, seed=args.seed,
        guidance_scale=args.guidance, scheduler=args.scheduler, noise=args.noise, attention=args.attention,
    )
    fields.update(overrides)
    return Request(**fields).validate()


def _run_with_bar(components, request, passes, out) -> dict:
    """zs_core.run.run_job in this process with a progress bar -> the metrics."""
    from . import run

    bar = _ProgressBar(request.steps, "sampling")
    try:
        return run.run_job(components, request, passes, out, progress=bar)
    finally:
        bar.close()


class _ProgressBar:
    """tqdm bar driven by the sampler's per-step progress callback."""

    def __init__(self, total: int, description: str):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=description, unit="step", file=sys.stderr)

    def __call__(self, progress) -> None:
        self.bar.update(progress.step - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def cmd_demo(args: argparse.Namespace) -> int:
    from . import models, scene

    out = Path(args.out)
    if args.background_uv and not args.animation:
        raise ValueError("--background-uv: only for the animation demo (--animation)")
    if args.animation:
        return _demo_animation(args, out)
    if _bpy_available():
        return _demo_blender(args, out)
    print("zs demo: Blender's Python module (bpy) is not installed, so this runs the numpy sphere scene "
          "instead of the Blender flow; install it with: pip install -e '.[blender]'", file=sys.stderr)
    print(f"zs demo: built-in scene ({args.views} views of {args.size}x{args.size}), model {args.model}",
          file=sys.stderr)
    request = _request_from_args(args, sync_strength=args.sync_strength, texture_size=args.texture_size or 512)
    passes = scene.sphere_scene(views=args.views, width=args.size, height=args.size,
                                texture_size=request.texture_size)
    metrics = _run_with_bar(models.load(args.model, args.controlnet, device=args.device), request, passes,
                            out)
    _print_outputs(out, metrics)
    return 0


def cmd_texture(args: argparse.Namespace) -> int:
    from . import models
    from .protocol import Passes

    source = Path(args.source)
    if source.suffix == ".blend":
        return _texture_blend(args, source)
    if source.suffix != ".npz":
        raise ValueError(f"source: expected a .blend file or a passes bundle (.npz), got {source.name!r}")
    if not source.is_file():
        raise ValueError(f"source: {source} does not exist")
    passes = Passes.load(source).validate()
    request = _request_from_args(args, sync_strength=args.sync_strength, texture_size=args.texture_size or
                                 (passes.texel_position.shape[0] if passes.texel_position is not None else 1024))
    metrics = _run_with_bar(models.load(args.model, args.controlnet, device=args.device), request, passes,
                            args.out)
    _print_outputs(Path(args.out), metrics)
    return 0


def _bpy_available() -> bool:
    try:
        return importlib.util.find_spec("bpy") is not None
    except (ImportError, ValueError):
        return False


def _blender_batch():
    """``blender_addon.batch``, imported here only: zs_core itself never needs bpy."""
    try:
        return importlib.import_module("blender_addon.batch")
    except ModuleNotFoundError as exc:
        if exc.name != "bpy":
            raise
        raise ValueError("source: texturing a .blend needs Blender's Python module; install it with "
                         "pip install -e '.[blender]' (bpy 5.0.1, Python 3.11)") from None


BLENDER_LOG = "blender.log"
SHORT_LOG = 4096  # bytes of Blender's log shown on stderr instead of kept, for a run that made no output


@contextlib.contextmanager
def _blender_log(out: Path):
    """Blender's console lines go to ``out/blender.log`` instead of the terminal meanwhile.

    Blender writes them from C to the process's stdout (fd 1): a "Saved:" line for every
    temporary pass file (three per view or frame), the files it reads and saves. Every line of
    ours, and the progress bars, go to stderr, so they stay. The log is written to a
    temporary file and moved into ``out`` at the end when ``out`` exists (a run stopped
    by bad input creates no output folder); its path is named on stderr. A short log of a
    run that stopped before creating ``out`` is written to stderr instead of kept."""
    _flush_stdout()
    try:
        saved = os.dup(1)
    except OSError:  # no stdout to redirect (closed): Blender's lines go nowhere anyway
        yield
        return
    handle, temporary = tempfile.mkstemp(prefix="zs-blender-", suffix=".log")
    os.dup2(handle, 1)
    os.close(handle)
    try:
        yield
    finally:
        _flush_stdout()
        os.dup2(saved, 1)
        os.close(saved)
        path = Path(temporary)
        if out.is_dir():
            try:
                path = Path(shutil.move(temporary, out / BLENDER_LOG))
            except OSError:
                pass  # kept where it is; named below
        elif path.stat().st_size <= SHORT_LOG:  # a run stopped early: show its few lines, keep no file
            sys.stderr.write(path.read_text(errors="replace"))
            path.unlink()
            path = None
        if path is not None:
            print(f"Blender's log: {path}", file=sys.stderr)


def _flush_stdout() -> None:
    """Python's and C's stdout buffers out, so no line lands on the wrong side of a switch."""
    if sys.stdout is not None:
        sys.stdout.flush()
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError, TypeError):  # no C library to ask (Windows): Python's flush only
        pass


def _in_process_sampler(args: argparse.Namespace):
    """sampler(request dict, passes, out_dir) -> metrics for blender_addon.api: zs_core in
    this process, with a progress bar. The model is loaded on the first call."""
    from . import models
    from .protocol import Passes, Request

    loaded = {}

    def sample(request_dict: dict, passes, out_dir) -> dict:
        if "components" not in loaded:
            loaded["components"] = models.load(args.model, args.controlnet, device=args.device)
        request = Request.from_dict(request_dict)
        core_passes = Passes.from_arrays(passes.arrays()).validate()  # the add-on's own Passes class
        return _run_with_bar(loaded["components"], request, core_passes, out_dir)

    return sample


class _EventBar:
    """tqdm bars driven by blender_addon.api's progress(event name, data): the pass
    render ("rendering"), then a server job's events."""

    def __init__(self, command: str = "texture"):
        self.command = command
        self.bar = None
        self.render_bar = None

    def __call__(self, name: str, data: dict) -> None:
        from tqdm import tqdm

        if name == "rendering":
            if self.render_bar is None:
                self.render_bar = tqdm(total=data["total"], desc="rendering passes", unit=data.get("unit", "view"),
                                       file=sys.stderr)
            self.render_bar.update(data["done"] - self.render_bar.n)
            if data["done"] >= data["total"]:
                self.render_bar.close()
                self.render_bar = None
        elif name == "queued":
            print(f"zs {self.command}: job {data.get('job')} queued (position {data.get('position')})",
                  file=sys.stderr)
        elif name == "started" and self.bar is None:
            self.bar = tqdm(total=data.get("total"), desc="sampling (server)", unit="step", file=sys.stderr)
        elif name == "progress" and self.bar is not None:
            self.bar.update(data["step"] - self.bar.n)
        elif name in ("done", "failed", "cancelled"):
            self.close()

    def close(self) -> None:
        for bar in (self.bar, self.render_bar):
            if bar is not None:
                bar.close()
        self.bar = self.render_bar = None


def _local_token() -> str | None:
    """ZS_TOKEN, else the token file of the local server's data folder, else None."""
    import os

    if os.environ.get("ZS_TOKEN"):
        return os.environ["ZS_TOKEN"]
    from server.config import TOKEN_FILE, Settings

    path = Settings.from_env().data_dir / TOKEN_FILE
    return path.read_text().strip() if path.is_file() else None


@contextlib.contextmanager
def _sampling_backend(args: argparse.Namespace, command: str):
    """Yields blender_addon.api keywords: the server of ``--server``, else the in-process
    sampler; progress bars for the pass render and the server's steps (the in-process
    sampler has its own), closed at the end also when the run fails."""
    bar = _EventBar(command)
    try:
        if getattr(args, "server", None):  # zs demo has no --server
            yield dict(server=args.server, token=args.token or _local_token(), progress=bar)
        else:
            yield dict(sampler=_in_process_sampler(args), progress=bar)
    finally:
        bar.close()


def _blend_settings(args: argparse.Namespace, **overrides) -> dict:
    """Command-line options -> blender_addon.api.TextureSettings fields."""
    settings = dict(negative_prompt=args.negative_prompt, seed=args.seed, steps=args.steps,
                    guidance=args.guidance, scheduler=args.scheduler, noise=args.noise, attention=args.attention,
                    sync_strength=args.sync_strength, texture_size=args.texture_size,
                    view_size=getattr(args, "view_size", None), uv_map=getattr(args, "uv_map", None),
                    smart_uv=getattr(args, "smart_uv", False))
    settings.update(overrides)
    return {key: value for key, value in settings.items() if value is not None}


def _texture_blend(args: argparse.Namespace, source: Path) -> int:
    """`zs texture FILE.blend`: open, texture the objects, save out/textured.blend."""
    if not source.is_file():
        raise ValueError(f"source: {source} does not exist")
    if not args.objects:
        raise ValueError("--object: name the object to texture (repeat --object for several)")
    batch = _blender_batch()
    with _blender_log(Path(args.out)), _sampling_backend(args, "texture") as backend:
        summary = batch.texture_blend(source, args.objects, args.prompt, args.out, cameras=args.cameras,
                                      use_scene_cameras=args.use_scene_cameras, **backend, **_blend_settings(args))
    _print_blend_outputs(summary)
    return 0


def _demo_blender(args: argparse.Namespace, out: Path) -> int:
    """`zs demo` in Blender: Suzanne (with a material of her own) and an orbit rig."""
    batch = _blender_batch()
    print(f"zs demo: Suzanne in Blender, {args.views} cameras of {args.size}x{args.size}, model {args.model}",
          file=sys.stderr)
    with _blender_log(out), _sampling_backend(args, "demo") as backend:
        scene_path = batch.build_demo_scene(out / "scene.blend")
        summary = batch.texture_blend(scene_path, [batch.DEMO_OBJECT], args.prompt, out, cameras=args.views,
                                      **backend,
                                      **_blend_settings(args, view_size=args.size,
                                                        texture_size=args.texture_size or 512))
    _print_blend_outputs(summary)
    return 0


def _demo_animation(args: argparse.Namespace, out: Path) -> int:
    """`zs demo --animation`: Suzanne sliding and turning before a dollying camera,
    re-styled into consistent frames (the numpy animated scene without bpy)."""
    from . import models, scene

    if _bpy_available():
        batch = _blender_batch()
        print(f"zs demo --animation: Suzanne in Blender, {args.frames} frames of {args.size}x{args.size}, model "
              f"{args.model}", file=sys.stderr)
        with _blender_log(out), _sampling_backend(args, "demo") as backend:
            scene_path = batch.build_animated_demo_scene(out / "scene.blend", frames=args.frames, size=args.size)
            summary = batch.animate_blend(scene_path, out, prompt=args.prompt, objects=[batch.DEMO_OBJECT],
                                          steps=args.steps, seed=args.seed, guidance=args.guidance,
                                          scheduler=args.scheduler, background_uv=args.background_uv,
                                          **backend, **ANIMATION_DEFAULTS)
        _print_animation_outputs(out, summary["metrics"])
        print(f"animated blend: {summary['animated_blend']}", file=sys.stderr)
        return 0
    if args.background_uv:
        raise ValueError("--background-uv: the numpy scene has no UV-mapped floor; the Blender shot needs "
                         "Blender's Python module: pip install -e '.[blender]'")
    print("zs demo --animation: Blender's Python module (bpy) is not installed: the numpy animated scene instead",
          file=sys.stderr)
    request = _request_from_args(args, kind="animation", **ANIMATION_DEFAULTS)
    passes = scene.animated_scene(frames=args.frames, width=args.size, height=args.size)
    metrics = _run_with_bar(models.load(args.model, args.controlnet, device=args.device), request, passes,
                            out)
    _print_animation_outputs(out, metrics)
    return 0


def _print_blend_outputs(summary: dict) -> None:
    out = Path(summary["textured_blend"]).parent
    _print_outputs(out, summary["metrics"])
    print(f"textured blend: {summary['textured_blend']} ({', '.join(summary['objects'])} wears new material "
          f"{', '.join(summary['materials'])}; the original materials are kept)", file=sys.stderr)


def frame_range(text: str) -> tuple[int, int]:
    """argparse type of ``--frames``: ``FIRST-LAST`` (or a single frame) -> (first, last)."""
    try:
        return parse_frame_range(text)
    except ProtocolError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("frames: ")) from None


def _animation_fields(args: argparse.Namespace) -> dict:
    """The animation-only request fields of ``zs animate``'s options."""
    return dict(background_noise=args.background_noise, keyframes=args.keyframes, momentum=args.momentum,
                chunk=args.chunk, sync_strength=args.sync_strength, background_sync=args.background_sync,
                pixel_sync=args.pixel_sync, background_uv=args.background_uv)


def cmd_animate(args: argparse.Namespace) -> int:
    from . import models
    from .protocol import Passes

    source = Path(args.source)
    if source.suffix not in (".blend", ".npz"):
        raise ValueError(f"source: expected a .blend file or a passes bundle (.npz), got {source.name!r}")
    if not source.is_file():
        raise ValueError(f"source: {source} does not exist")
    if source.suffix == ".blend":
        return _animate_blend(args, source)
    for option, value in (("--frames", args.frames), ("--camera", args.camera), ("--object", args.objects),
                          ("--width", args.width), ("--height", args.height), ("--server", args.server),
                          ("--uv-map", args.uv_map)):
        if value is not None:
            raise ValueError(f"{option}: only for .blend files; a passes bundle is animated whole, in this process")
    passes = Passes.load(source).validate()
    request = _request_from_args(args, kind="animation", **_animation_fields(args))
    print(f"zs animate: {passes.views} frames of {passes.width}x{passes.height} from {source}, model {args.model}",
          file=sys.stderr)
    metrics = _run_with_bar(models.load(args.model, args.controlnet, device=args.device), request, passes,
                            args.out)
    _print_animation_outputs(Path(args.out), metrics)
    return 0


def _animate_blend(args: argparse.Namespace, source: Path) -> int:
    """`zs animate FILE.blend`: open, re-style the camera's shot, save out/animated.blend."""
    batch = _blender_batch()
    settings = dict(negative_prompt=args.negative_prompt, seed=args.seed, steps=args.steps, guidance=args.guidance,
                    scheduler=args.scheduler, noise=args.noise, attention=args.attention, width=args.width,
                    height=args.height, uv_map=args.uv_map, **_animation_fields(args))
    with _blender_log(Path(args.out)), _sampling_backend(args, "animate") as backend:
        summary = batch.animate_blend(source, args.out, camera=args.camera, frames=args.frames, prompt=args.prompt,
                                      objects=args.objects, **backend,
                                      **{key: value for key, value in settings.items() if value is not None})
    _print_animation_outputs(Path(args.out), summary["metrics"])
    first, last = summary["frames"]
    print(f"animated blend: {summary['animated_blend']} (camera {summary['camera']} shows the frames as its "
          f"background image {summary['image']}; Video Sequencer strip {summary['strip']!r} on channel "
          f"{summary['strip_channel']}, frames {first}-{last})", file=sys.stderr)
    return 0


def _print_animation_outputs(out: Path, metrics: dict) -> None:
    print(f"wrote {metrics['frames']} frames to {out / 'frames'}", file=sys.stderr)
    if metrics.get("mp4"):
        print(f"video: {out / metrics['mp4']}", file=sys.stderr)
    for key in ("temporal_warp_error", "latent_temporal_warp_error"):
        if key in metrics:
            print(f"{key}: {metrics[key]}", file=sys.stderr)
    print(f"contact sheet: {out / 'contact_sheet.png'}", file=sys.stderr)
    print(f"metrics: {out / 'metrics.json'} (sampling {metrics['sampling_seconds']} s)", file=sys.stderr)


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from server.app import create_app
    from server.config import TOKEN_FILE, Settings

    settings = Settings.from_env(host=args.host, port=args.port, model=args.model, controlnet=args.controlnet,
                                 data_dir=args.data_dir, device=args.device)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not settings.is_loopback:
        print(f"zs serve: WARNING: binding {settings.host} makes the server reachable from other machines; "
              "anyone who can reach it and has the token can run jobs. Use 127.0.0.1 unless you mean it.",
              file=sys.stderr)
    app = create_app(settings)
    token_note = "from ZS_TOKEN" if settings.token else f"in {settings.data_dir / TOKEN_FILE}"
    print(f"zs serve: http://{settings.host}:{settings.port} (API docs at /docs, token {token_note}, "
          f"jobs in {settings.jobs_dir}); loading model {settings.model}", file=sys.stderr)
    # A short graceful timeout: open event streams would otherwise hold up Ctrl+C.
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", timeout_graceful_shutdown=3)
    return 0


def _print_outputs(out: Path, metrics: dict) -> None:
    print(f"wrote {metrics['views']} views to {out / 'views'}", file=sys.stderr)
    if "texture_size" in metrics:
        print(f"texture: {out / 'texture.png'} ({metrics['texture_size']}^2, "
              f"{100 * metrics['texture_coverage']:.1f}% of texels seen)", file=sys.stderr)
    for key in ("cross_view_disagreement", "latent_cross_view_disagreement", "bake_residual"):
        if key in metrics:
            print(f"{key}: {metrics[key]}", file=sys.stderr)
    print(f"contact sheet: {out / 'contact_sheet.png'}", file=sys.stderr)
    print(f"metrics: {out / 'metrics.json'} (sampling {metrics['sampling_seconds']} s)", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zs", description="ZS Texturing: consistent multi-view texturing")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run the built-in scene on the built-in model and write results")
    demo.add_argument("--out", default="out/demo", help="output folder")
    demo.add_argument("--views", type=int, default=6)
    demo.add_argument("--size", type=int, default=192, help="view width and height (multiple of 8)")
    demo.add_argument("--animation", action="store_true",
                      help="the animation demo: an animated shot re-styled into consistent frames")
    demo.add_argument("--frames", type=int, default=16, help="frames of the animation demo")
    demo.add_argument("--background-uv", action="store_true",
                      help="animation demo in Blender: sync the floor through its UV instead of the vector pass")
    _add_sampling_options(demo, steps=12, noise="surface", attention="self", sync_strength=1.0)
    demo.set_defaults(func=cmd_demo)

    texture = commands.add_parser("texture", help="texture objects of a .blend file, or a passes bundle (.npz)")
    texture.add_argument("source", help="FILE.blend, or passes.npz (arrays as in DESIGN.md, camera matrices and "
                                        "texel maps inside)")
    texture.add_argument("--out", required=True, help="output folder")
    blend = texture.add_argument_group(".blend files")
    blend.add_argument("--object", dest="objects", action="append", default=None,
                       help="object to texture (repeat for several)")
    cameras = blend.add_mutually_exclusive_group()
    cameras.add_argument("--cameras", type=int, default=None, help="orbit rig of N cameras (default 6)")
    cameras.add_argument("--use-scene-cameras", action="store_true", help="use every camera of the scene")
    blend.add_argument("--view-size", type=int, default=None, help="view width and height (default 512)")
    blend.add_argument("--uv-map", default=None, help="UV map to texture (default: the active render UV map)")
    blend.add_argument("--smart-uv", action="store_true", help="add a Smart UV Project map where it is missing")
    blend.add_argument("--server", default=None, help="sample on this ZS server (e.g. http://127.0.0.1:8765) "
                                                      "instead of in this process")
    blend.add_argument("--token", default=None, help="the server's token (default: ZS_TOKEN or the local "
                                                     "server's token file)")
    _add_sampling_options(texture, steps=20, noise="surface", attention="extended", sync_strength=1.0)
    texture.set_defaults(func=cmd_texture)

    animate = commands.add_parser("animate", help="re-style a camera's shot of a .blend file, or an animation "
                                                  "passes bundle (.npz), into consistent frames")
    animate.add_argument("source", help="FILE.blend, or passes.npz (frames first, with uv, mask and vector)")
    animate.add_argument("--out", required=True, help="output folder")
    blend = animate.add_argument_group(".blend files")
    blend.add_argument("--frames", type=frame_range, default=None,
                       help="FIRST-LAST, inside the scene's frame range (default: the scene's range)")
    blend.add_argument("--camera", default=None, help="camera object (default: the scene's active camera)")
    blend.add_argument("--object", dest="objects", action="append", default=None,
                       help="target object whose surface the noise and UV sync follow (repeat for several; "
                            "default: every mesh that renders)")
    blend.add_argument("--width", type=int, default=None, help="frame width (default: the scene's output size)")
    blend.add_argument("--height", type=int, default=None, help="frame height (default: the scene's output size)")
    blend.add_argument("--uv-map", default=None, help="UV map to follow (default: the active render UV map)")
    blend.add_argument("--server", default=None, help="sample on this ZS server instead of in this process")
    blend.add_argument("--token", default=None, help="the server's token (default: ZS_TOKEN or the local "
                                                     "server's token file)")
    _add_sampling_options(animate, steps=20, noise=ANIMATION_DEFAULTS["noise"],
                          attention=ANIMATION_DEFAULTS["attention"], sync_strength=ANIMATION_DEFAULTS["sync_strength"],
                          attention_choices=ANIMATION_ATTENTION, texture_size=False)
    method = animate.add_argument_group("animation")
    method.add_argument("--background-noise", choices=BACKGROUND_NOISE_MODES, default="auto",
                        help="how the background's noise moves (auto: warped along the vector pass)")
    method.add_argument("--keyframes", choices=KEYFRAME_POLICIES, default="first",
                        help="anchor frames of keyframes attention")
    method.add_argument("--momentum", type=float, default=0.5, help="tma momentum mu (0: self, 1: first frame)")
    method.add_argument("--chunk", type=int, default=16, help="frames per model batch")
    method.add_argument("--background-sync", type=float, default=ANIMATION_DEFAULTS["background_sync"],
                        help="background carried along the vector pass, 0 (off) to 1")
    method.add_argument("--background-uv", action="store_true",
                        help="sync the other UV-mapped meshes of a .blend through their UVs instead of along the "
                             "vector pass")
    method.add_argument("--pixel-sync", type=float, default=ANIMATION_DEFAULTS["pixel_sync"],
                        help="decoded frames carried frame to frame in pixels, 0 (off) to 1")
    animate.set_defaults(func=cmd_animate)

    serve = commands.add_parser("serve", help="run the local sampling server (HTTP on 127.0.0.1) for Blender")
    serve.add_argument("--host", default=None, help="address to bind (default 127.0.0.1; anything else warns)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8765)")
    serve.add_argument("--model", default=None, help="tiny, a diffusers folder, a hub id or a .safetensors file")
    serve.add_argument("--controlnet", default=None, help="depth ControlNet (default: tiny for tiny, else SD1.5 depth)")
    serve.add_argument("--data-dir", default=None, help="jobs, results and the token (default: the user data folder)")
    serve.add_argument("--device", default=None, help="auto (default), cuda, cuda:N, mps or cpu")
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as exc:  # bad input and missing models get one clear line, not a traceback
        if isinstance(exc, (ProtocolError, ValueError)) or type(exc).__name__ in ("ModelLoadError", "ServerError"):
            print(f"zs {args.command}: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
