"""The ``zs`` command. Heavy imports happen inside the sub-commands so ``zs --help`` is instant."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .protocol import ATTENTION_MODES, NOISE_MODES, SCHEDULERS, ProtocolError


def _add_sampling_options(parser: argparse.ArgumentParser, *, steps: int, noise: str, attention: str,
                          sync_strength: float) -> None:
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
    parser.add_argument("--attention", choices=ATTENTION_MODES, default=attention)
    parser.add_argument("--sync-strength", type=float, default=sync_strength,
                        help="UV latent synchronisation, 0 (off) to 1 (fully synced)")
    parser.add_argument("--texture-size", type=int, default=None, help="texture side in texels")


def _request_from_args(args: argparse.Namespace, **overrides):
    from .protocol import Request

    fields = dict(
        prompt=args.prompt, negative_prompt=args.negative_prompt, steps=args.steps, seed=args.seed,
        guidance_scale=args.guidance, scheduler=args.scheduler, noise=args.noise, attention=args.attention,
    )
    fields.update(overrides)
    return Request(**fields).validate()


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
    from . import models, run, scene

    out = Path(args.out)
    print(f"zs demo: built-in scene ({args.views} views of {args.size}x{args.size}), model {args.model}",
          file=sys.stderr)
    request = _request_from_args(args, sync_strength=args.sync_strength, texture_size=args.texture_size or 512)
    passes = scene.sphere_scene(views=args.views, width=args.size, height=args.size,
                                texture_size=request.texture_size)
    components = models.load(args.model, args.controlnet, device=args.device)
    bar = _ProgressBar(request.steps, "sampling")
    try:
        metrics = run.run_job(components, request, passes, out, progress=bar)
    finally:
        bar.close()
    _print_outputs(out, metrics)
    return 0


def cmd_texture(args: argparse.Namespace) -> int:
    from . import models, run
    from .protocol import Passes

    source = Path(args.source)
    if source.suffix != ".npz":
        raise ValueError(f"source: expected a passes bundle (.npz), got {source.name!r}")
    if not source.is_file():
        raise ValueError(f"source: {source} does not exist")
    passes = Passes.load(source).validate()
    request = _request_from_args(args, sync_strength=args.sync_strength, texture_size=args.texture_size or
                                 (passes.texel_position.shape[0] if passes.texel_position is not None else 1024))
    components = models.load(args.model, args.controlnet, device=args.device)
    bar = _ProgressBar(request.steps, "sampling")
    try:
        metrics = run.run_job(components, request, passes, args.out, progress=bar)
    finally:
        bar.close()
    _print_outputs(Path(args.out), metrics)
    return 0


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
    demo.add_argument("--size", type=int, default=256, help="view width and height (multiple of 8)")
    _add_sampling_options(demo, steps=12, noise="surface", attention="self", sync_strength=1.0)
    demo.set_defaults(func=cmd_demo)

    texture = commands.add_parser("texture", help="texture from a passes bundle (.npz in the wire format)")
    texture.add_argument("source", help="passes.npz (arrays as in DESIGN.md, camera matrices and texel maps inside)")
    texture.add_argument("--out", required=True, help="output folder")
    _add_sampling_options(texture, steps=20, noise="surface", attention="extended", sync_strength=1.0)
    texture.set_defaults(func=cmd_texture)

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
        if isinstance(exc, (ProtocolError, ValueError)) or type(exc).__name__ == "ModelLoadError":
            print(f"zs {args.command}: error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
