"""Python API for scripts: texture objects, or re-style an animation, in one call.

    from blender_addon import api
    result = api.texture([bpy.data.objects["Suzanne"]],
                         settings=api.TextureSettings(prompt="old bronze", steps=20), token=TOKEN)
    result.materials, result.image, result.metrics

    shot = api.animate(None, ["Suzanne"], "1-48", api.AnimationSettings(prompt="old bronze"), token=TOKEN)
    shot.image, shot.strip, shot.frame_paths, shot.metrics["temporal_warp_error"]

Both run the one Blender flow of :mod:`.flow` to the end: check everything (objects, UV
maps, cameras or the shot, settings, the server and its token) -> render the passes with
Cycles -> sample, with an injected ``sampler`` callable (the ``zs`` command runs zs_core
in-process this way, so this module never imports torch) or on a ZS server over HTTP
(``token``: the server's token; default ``ZS_TOKEN``) -> apply: new materials, or the
frames as a new image sequence. The settings have one field per parameter of the wire
format's table (see :mod:`.settings`): ``model``, ``loras`` ("NAME[:WEIGHT]" entries joined
by "|", ``protocol.format_loras``), ``ip_adapter`` and ``reference_strength`` among them.
``reference_image`` (a Blender image, an image file's path or an (H, W, 3) array in
[0, 1]) is the look every view or frame is steered towards (IP-Adapter); its pixels
travel with the passes (see :mod:`.reference_image`).

    api.texture(["Suzanne"], settings=api.TextureSettings(prompt="bronze", model="sdxl-base",
                loras="patina.safetensors:0.7"), reference_image=bpy.data.images["Look"], token=TOKEN)

Undo: these functions push no undo step. A script run from Blender's Text Editor
(``text.run_script``) is one undo step with all it did; a ``blender -b`` run has no undo
history; a script of its own that wants one calls ``bpy.ops.ed.undo_push(message=...)``
after the call. (The panel's Generate pushes one step, "ZS Generate", itself.)

Imports: bpy, the standard library and numpy only.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import bpy

from .client import DEFAULT_URL, Client
from .flow import AnimationGeneration, Progress, Sampler, TextureGeneration
from .scene_objects import resolve_objects
from .settings import AnimationSettings, TextureSettings
from .wire import protocol

__all__ = ["texture", "animate", "backend", "TextureSettings", "AnimationSettings", "TextureResult",
           "AnimationResult", "Sampler", "Progress", "DEFAULT_URL"]


@dataclass
class TextureResult:
    """What :func:`texture` made: the new materials (one per object and source material),
    the new image, the baked texture PNG, the job's metrics, its output folder (views/,
    texture.png, metrics.json, contact_sheet.png), the cameras used and the server's job id."""

    materials: list
    image: Any
    texture_path: Path
    metrics: dict
    out_dir: Path
    cameras: list
    job_id: str | None = None


def texture(objects: Sequence, cameras: Sequence | None = None, settings: TextureSettings | None = None, *,
            server: str | None = None, token: str | None = None, sampler: Sampler | None = None,
            progress: Progress | None = None, out_dir=None, image_folder=None, name: str = "ZS Texture",
            scene=None, stop: threading.Event | None = None, reference_image=None) -> TextureResult:
    """Texture ``objects`` (mesh objects or their names) seen by ``cameras`` (None: a new
    orbit rig of ``settings.views`` cameras) -> :class:`TextureResult`.

    Sampling runs in ``sampler`` when given, else on the server at ``server`` (default
    http://127.0.0.1:8765) with ``token`` (default: ``ZS_TOKEN``); ``progress(event,
    data)`` sees each rendered view, then the server's events. ``out_dir`` keeps the job's
    outputs (default: a new temporary folder); ``image_folder`` is where the texture PNG
    goes (see :func:`apply.apply_texture`). Every check runs before the scene is changed;
    errors are CaptureError, ProtocolError or ServerError naming what is wrong; ``stop``
    (set from another thread) or Ctrl+C cancels the server's job. ``reference_image``: see
    the module.
    """
    generation = TextureGeneration(scene or bpy.context.scene, settings or TextureSettings(),
                                   resolve_objects(objects, "texture"), cameras,
                                   image_folder=image_folder, name=name, out_dir=out_dir, progress=progress,
                                   reference_image=reference_image, **backend(sampler, server, token))
    materials, image = generation.run(stop)
    return TextureResult(materials=materials, image=image, texture_path=generation.out_dir / protocol.TEXTURE_PNG,
                         metrics=generation.metrics, out_dir=generation.out_dir, cameras=generation.cameras,
                         job_id=generation.job.job_id if generation.job else None)


@dataclass
class AnimationResult:
    """What :func:`animate` made: the new image sequence, the camera background image and
    the Video Sequencer strip showing it, the frame files (``out_dir/frames/NNNN.png``),
    the job's metrics and output folder (frames/, metrics.json, contact_sheet.png), the
    camera, the scene frames rendered and the server's job id."""

    image: Any
    background: Any
    strip: Any
    frame_paths: list[Path]
    metrics: dict
    out_dir: Path
    camera: Any
    frames: list[int]
    job_id: str | None = None

    @property
    def frame_start(self) -> int:
        return self.frames[0]

    @property
    def frame_end(self) -> int:
        return self.frames[-1]


def animate(camera=None, objects=None, frames=None, settings: AnimationSettings | None = None, *,
            server: str | None = None, token: str | None = None, sampler: Sampler | None = None,
            progress: Progress | None = None, out_dir=None, name: str = "ZS Animation", scene=None,
            stop: threading.Event | None = None, reference_image=None) -> AnimationResult:
    """Re-style the shot of ``camera`` (an object or its name; None: the scene's camera)
    over ``frames`` (None: the scene's range; ``"1-48"``, a range or ``(first, last)``)
    -> :class:`AnimationResult`.

    ``objects`` (mesh objects or names; None: every mesh that renders) are the targets:
    their surface carries the noise and the UV sync from frame to frame. Sampling runs in
    ``sampler`` or on ``server`` as in :func:`texture`. ``out_dir`` receives the job's
    outputs (default: ``//zs_frames/<name>/`` next to the saved .blend, else a new
    temporary folder). The frames come back as a new image sequence, shown as a new
    background image of the camera and a new Video Sequencer strip at the first frame.
    Every check (frames inside the scene's range, the camera, UV maps where surface noise
    or UV sync need them, settings, server and token, the reference image) runs before
    anything renders.
    """
    generation = AnimationGeneration(scene or bpy.context.scene, settings or AnimationSettings(), camera,
                                     None if objects is None else resolve_objects(objects, "animate"),
                                     frames, name=name, out_dir=out_dir, progress=progress,
                                     reference_image=reference_image, **backend(sampler, server, token))
    loaded = generation.run(stop)
    shot = generation.shot
    return AnimationResult(image=loaded.image, background=loaded.background, strip=loaded.strip,
                           frame_paths=generation.frame_paths, metrics=generation.metrics, out_dir=generation.out_dir,
                           camera=shot.camera, frames=shot.frames,
                           job_id=generation.job.job_id if generation.job else None)


def backend(sampler: Sampler | None, server: str | None, token: str | None) -> dict:
    """The flow's sampling keywords: the sampler, or a client of ``server`` with ``token``
    (default ``ZS_TOKEN``)."""
    if sampler is not None:
        return {"sampler": sampler, "client": Client(server, token) if server is not None else None}
    return {"client": Client(server or DEFAULT_URL, token or os.environ.get("ZS_TOKEN"))}
