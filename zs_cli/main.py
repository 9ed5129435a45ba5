"""``zs``'s parser and entry point. The sampling flags come from the parameter table
(:data:`zs_core.protocol.PARAMETERS`), so every front end offers the same names, defaults
and ranges, and ``--help`` shows them."""

from __future__ import annotations

import argparse
import sys

from zs_core.protocol import ANIMATION, TEXTURE, ProtocolError, add_arguments, frame_range_argument

from . import commands, farm
from .commands import DEMO_CAPTURE, DEMO_DEFAULTS, DEMO_FRAMES


def _model_options(parser) -> None:
    # --model, --lora, --ip-adapter come from the parameter table (they travel in the request).
    group = parser.add_argument_group("model and memory (sampling in this process)")
    group.add_argument("--controlnet", default=None,
                       help="depth ControlNet: a diffusers folder, a .safetensors file or a hub id (default: a model "
                            "folder's own controlnet/, else the built-in's or the family's: "
                            "lllyasviel/control_v11f1p_sd15_depth for SD 1.5, diffusers/controlnet-depth-sdxl-1.0 "
                            "for SDXL)")
    group.add_argument("--device", default="auto", help="auto, cuda, cuda:N, mps or cpu (default: auto)")
    group.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default=None,
                       help="precision (default: fp16 on GPUs, fp32 on the CPU)")
    group.add_argument("--offload", action=argparse.BooleanOptionalAction, default=None,
                       help="model CPU offload: weights wait on the CPU, each stage's models move to the GPU when "
                            "they run (default: when the model does not fit the GPU's memory otherwise)")
    group.add_argument("--vae-tiling", action=argparse.BooleanOptionalAction, default=None,
                       help="decode views in tiles of 512 pixels, one view at a time (default: when decoding "
                            "whole views does not fit the GPU's memory)")


def _reference_option(group) -> None:
    group.add_argument("--reference-image", default=None, metavar="IMAGE",
                       help="an image file (PNG, JPEG ...) whose look steers every view or frame (IP-Adapter; "
                            "see --ip-adapter and --reference-strength); it travels with the passes")


def _server_options(group) -> None:
    group.add_argument("--server", default=None, help="sample on this ZS server (e.g. http://127.0.0.1:8765) "
                                                      "instead of in this process")
    group.add_argument("--token", default=None, help="the server's token (default: ZS_TOKEN or the local "
                                                     "server's token file)")
    group.add_argument("--passes-only", action="store_true",
                       help="render the passes into OUT/passes.npz (with OUT/request.json) and stop: a bundle "
                            "to sample later without Blender")


def _demo_parser(commands_) -> None:
    demo = commands_.add_parser("demo", help="run the built-in scene on the built-in model and write results",
                                description="Texture Suzanne (or, with --animation, re-style an animated shot) "
                                            "in Blender on the built-in tiny model.")
    demo.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    demo.add_argument("--animation", action="store_true",
                      help="the animation demo: an animated shot re-styled into consistent frames")
    demo.add_argument("--size", type=int, default=192,
                      help="view (frame) width and height, a multiple of 8 (default: 192)")
    demo.add_argument("--frames", type=frame_range_argument, default=None,
                      help=f"FIRST-LAST frames of the animation demo's shot (default: {DEMO_FRAMES}); "
                           "animation only")
    _model_options(demo)
    sampling = demo.add_argument_group("sampling")
    add_arguments(sampling, (TEXTURE, ANIMATION), capture=DEMO_CAPTURE, overrides=DEMO_DEFAULTS)
    _reference_option(sampling)
    demo.set_defaults(func=commands.demo)


def _texture_parser(commands_) -> None:
    texture = commands_.add_parser("texture", help="texture objects of a .blend file, or a passes bundle (.npz)")
    texture.add_argument("source", help="FILE.blend, or passes.npz (a bundle: see docs/protocol.md)")
    texture.add_argument("--out", required=True, help="output folder")
    _model_options(texture)
    sampling = texture.add_argument_group("sampling")
    add_arguments(sampling, (TEXTURE,), capture=False)
    _reference_option(sampling)
    blend = texture.add_argument_group(".blend files")
    blend.add_argument("--object", dest="objects", action="append", default=None,
                       help="object to texture (repeat for several)")
    blend.add_argument("--use-scene-cameras", action="store_true",
                       help="render every camera of the scene instead of an orbit rig")
    add_arguments(blend, (TEXTURE,), capture=True, wire=False)
    _server_options(blend)
    texture.set_defaults(func=commands.texture)


def _animate_parser(commands_) -> None:
    animate = commands_.add_parser("animate", help="re-style a camera's shot of a .blend file, or an animation "
                                                   "passes bundle (.npz), into consistent frames")
    animate.add_argument("source", help="FILE.blend; passes.npz (frames first, with uv, mask and vector); or an EXR "
                                        "sequence rendered with the ZS passes setting, e.g. renders/shot_####.exr")
    animate.add_argument("--out", required=True, help="output folder")
    _model_options(animate)
    sampling = animate.add_argument_group("sampling")
    add_arguments(sampling, (ANIMATION,), capture=False)
    _reference_option(sampling)
    blend = animate.add_argument_group(".blend files")
    blend.add_argument("--frames", type=frame_range_argument, default=None,
                       help="FIRST-LAST, inside the scene's frame range (default: the scene's range)")
    blend.add_argument("--camera", default=None, help="camera object (default: the scene's active camera)")
    blend.add_argument("--object", dest="objects", action="append", default=None,
                       help="target object whose surface the noise and UV sync follow (repeat for several; "
                            "default: every mesh that renders)")
    add_arguments(blend, (ANIMATION,), capture=True, wire=False)
    _server_options(blend)
    animate.set_defaults(func=commands.animate)


def _serve_parser(commands_) -> None:
    serve = commands_.add_parser("serve", help="run the local sampling server (HTTP on 127.0.0.1) for Blender")
    serve.add_argument("--host", default=None, help="address to bind (default 127.0.0.1; anything else warns)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8765)")
    serve.add_argument("--default-model", default=None,
                       help="the model of jobs that name none: tiny, a diffusers folder, a hub id or a "
                            ".safetensors file (default: tiny)")
    serve.add_argument("--controlnet", default=None, help="depth ControlNet (default: tiny for tiny, else SD1.5 "
                                                          "depth)")
    serve.add_argument("--data-dir", default=None, help="jobs, results and the token (default: the user data "
                                                        "folder)")
    serve.add_argument("--device", default=None, help="auto (default), cuda, cuda:N, mps or cpu")
    memory = serve.add_argument_group("memory (default: auto, chosen per job from the device's memory)")
    memory.add_argument("--dtype", default=None, choices=("auto", "fp32", "fp16", "bf16"),
                        help="precision of the models (auto: fp16 on GPUs, fp32 on the CPU)")
    memory.add_argument("--offload", default=None, choices=("auto", "on", "off"), help="model CPU offload")
    memory.add_argument("--vae-tiling", default=None, choices=("auto", "on", "off"),
                        help="decode large views in tiles")
    serve.add_argument("--model-memory", dest="model_memory_bytes", type=int, default=None, metavar="BYTES",
                       help="keep loaded models up to this many bytes of weights (default: from the device)")
    serve.add_argument("--hub-cache", default=None, help="the Hugging Face hub cache whose models are listed "
                                                         "(default: huggingface_hub's)")
    ray = serve.add_argument_group("Ray (pip install 'zs-texturing[ray]')")
    ray.add_argument("--ray", nargs="?", const="auto", default=None, metavar="auto|ADDRESS",
                     help="run the jobs on Ray workers: auto (the cluster `ray start` made on this machine, else a "
                          "new local one) or a cluster's address")
    ray.add_argument("--ray-workers", type=int, default=None, metavar="N",
                     help="Ray workers (default: one per GPU, else one per 4 CPUs; ZS_RAY_THREADS sets the 4)")
    ray.add_argument("--ray-split", type=int, default=None, metavar="N",
                     help="split a texture job over at most N idle workers when it is the only one waiting, with "
                          "the one-worker result (default 0: every idle worker; 1: never split)")
    serve.set_defaults(func=commands.serve)


def _farm_parser(commands_) -> None:
    batch = commands_.add_parser(
        "farm", help="run a batch of texture / animation jobs (BATCH.toml) on a server, resumable",
        description="Run the jobs of a TOML batch ([defaults] and [[job]] tables: source, kind, prompt and any "
                    "parameter of `zs texture` / `zs animate`) through a ZS server; re-running skips the jobs "
                    "already done with the same inputs and settings.")
    batch.add_argument("batch", metavar="BATCH.toml", help="the batch file")
    batch.add_argument("--out", default=None, help="output folder, one folder per job (default: beside the batch "
                                                   "file, named after it)")
    batch.add_argument("--server", default=None, help="run the jobs on this ZS server (default: a server started in "
                                                      "this process)")
    batch.add_argument("--token", default=None, help="the server's token (default: ZS_TOKEN or the local "
                                                     "server's token file)")
    batch.add_argument("--parallel", type=int, default=4, metavar="N",
                       help="jobs in flight at once: rendering, queued or sampling (default: 4)")
    batch.add_argument("--ray", default="auto", metavar="auto|ADDRESS|off",
                       help="the Ray cluster: auto (the one `ray start` made on this machine, else a new local one), "
                            "a cluster's address, or off. The server started here runs its jobs on its workers (off: "
                            "one worker thread here); .blend passes render on its workers with the bpy resource "
                            "(with --server: only on a cluster that exists; else in this process)")
    local = batch.add_argument_group("the server in this process (without --server)")
    local.add_argument("--ray-workers", type=int, default=None, metavar="N",
                       help="Ray workers (default: one per GPU, else one per 4 CPUs)")
    local.add_argument("--default-model", default=None, help="the model of jobs that name none (default: tiny)")
    local.add_argument("--device", default=None, help="auto (default), cuda, cuda:N, mps or cpu")
    batch.set_defaults(func=farm.farm)


def _extension_parser(commands_) -> None:
    extension = commands_.add_parser("extension", help="build the Blender extension zip to install in Blender")
    extension.add_argument("--out", default="dist", help="folder for the zip (default: dist)")
    extension.set_defaults(func=commands.extension)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zs", description="ZS Texturing: consistent multi-view texturing")
    commands_ = parser.add_subparsers(dest="command", required=True)
    for add in (_demo_parser, _texture_parser, _animate_parser, _serve_parser, _farm_parser, _extension_parser):
        add(commands_)
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
