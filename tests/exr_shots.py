"""EXR sequences as a ZS-passes render writes them, made with OpenEXR's own writer from the
numpy animated scene (Blender's render-output channel naming: ``ViewLayer.Depth.Z``,
``IndexOB``), for the core and server tests."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import OpenEXR

from zs_core import render_passes, scene

FRAMES, SIZE, TARGET = 4, 32, 5


def write_shot(folder: Path, frames=range(1, FRAMES + 1), first_frame_camera="Camera", problems=()) -> tuple:
    """The numpy animated scene as an EXR sequence ``shot_NNNN.exr`` + sidecars -> (passes, folder)."""
    passes = scene.animated_scene(frames=len(frames), width=SIZE, height=SIZE)
    folder.mkdir(parents=True, exist_ok=True)
    for index, frame in enumerate(frames):
        raw = {
            "Depth.Z": passes.depth[index],
            "IndexOB.X": np.where(passes.mask[index], float(TARGET), 0.0),
            **{f"Normal.{c}": passes.normal[index][..., i] for i, c in enumerate("XYZ")},
            **{f"Position.{c}": passes.position[index][..., i] for i, c in enumerate("XYZ")},
            "UV.X": passes.uv[index][..., 0], "UV.Y": passes.uv[index][..., 1],
            "UV.Z": np.zeros((SIZE, SIZE)),
            # Blender's vector pass: (previous - current, current - next), x right, y up
            "Vector.X": np.zeros((SIZE, SIZE)), "Vector.Y": np.zeros((SIZE, SIZE)),
            "Vector.Z": -passes.vector[index][..., 0], "Vector.W": passes.vector[index][..., 1],
        }
        channels = {f"ViewLayer.{name}": np.ascontiguousarray(value, np.float32) for name, value in raw.items()}
        header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
        with OpenEXR.File(header, channels) as image:
            image.write(str(folder / f"shot_{frame:04d}.exr"))
        card = render_passes.make_sidecar(frame, first_frame_camera if index == 0 else "Camera", SIZE, SIZE,
                                          passes.world_to_camera[index], passes.projection[index], TARGET, 25.0,
                                          problems)
        (folder / f"shot_{frame:04d}.json").write_text(json.dumps(card))
    return passes, folder


def zipped(folder: Path) -> bytes:
    """The folder's files as the zip Restyle After Render uploads (``exr_sequence``)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.iterdir()):
            archive.write(path, path.name)
    return buffer.getvalue()
