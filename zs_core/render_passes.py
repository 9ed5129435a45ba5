"""Blender's raw render passes -> the wire format's per-view arrays (numpy only).

Both ways ZS gets passes out of Blender end here: the add-on's own capture
(``blender_addon/pass_render.py``, which loads this file by path as it loads
``protocol.py``) and an ordinary render with the "ZS passes" view-layer setting, whose
multilayer EXR files :mod:`zs_core.exr_sequence` reads. One decoder, so both give the
same arrays for the same pixels.

A view's raw passes are ``name -> (H, W, C) float32``, rows top to bottom, named as the
Render Layers node names them: Depth (planar camera depth, 1e10 where nothing is hit),
Normal and Position (world space), UV, Object Index, Vector (previous - current,
current - next motion in pixels, x right / y up). Imports: numpy only.
"""

from __future__ import annotations

import numpy as np

BACKGROUND_DEPTH = 1e10  # what Cycles writes where no geometry is hit
PASS_NAMES = ("Depth", "Normal", "UV", "Position", "Object Index", "Vector")
EVERY_OBJECT = None  # the marker meaning "every object the ray hits is a target"


def wrap_uv(uv: np.ndarray, tolerance: float = 1e-4) -> None:
    """UV (..., 2) float32 -> [0, 1] in place, the way a repeating texture reads it (inside
    values unchanged). Values within ``tolerance`` outside the square are rounding noise of
    an island on its border: clamped, not wrapped to the opposite side."""
    if uv.min(initial=0.0) >= 0.0 and uv.max(initial=1.0) <= 1.0:
        return  # the common case: every UV inside the square
    uv[(uv < 0.0) & (uv > -tolerance)] = 0.0
    uv[(uv > 1.0) & (uv < 1.0 + tolerance)] = 1.0
    outside = (uv < 0.0) | (uv > 1.0)
    if outside.any():  # rare: only UV islands placed outside the unit square
        uv[outside] -= np.floor(uv[outside])


def motion_to_next(vector: np.ndarray, out: np.ndarray) -> None:
    """Cycles' Vector pass (H, W, 4) -> ``out`` (H, W, 2) float32: motion to the next frame
    as [col, row] pixels with rows top to bottom (Blender's y points up)."""
    np.negative(vector[..., 2], out=out[..., 0])
    out[..., 1] = vector[..., 3]


def allocate_views(count: int, height: int, width: int, with_vector: bool = False,
                   with_uv: bool = True, background_ids: bool = False) -> dict[str, np.ndarray]:
    """Zeroed wire arrays for ``count`` views, filled one view at a time by :func:`decode_view`:
    depth (V, H, W) float32, mask (V, H, W) bool, normal / position (V, H, W, 3) float32
    [, uv (V, H, W, 2)] [, vector (V, H, W, 2)] [, background_id (V, H, W) int32, with uv].
    Filling in place avoids a stacking copy."""
    shape = (count, height, width)
    arrays = {"depth": np.zeros(shape, np.float32), "mask": np.zeros(shape, bool)}
    if with_uv:
        arrays["uv"] = np.zeros(shape + (2,), np.float32)
        if background_ids:
            arrays["background_id"] = np.zeros(shape, np.int32)
    arrays["normal"] = np.zeros(shape + (3,), np.float32)
    arrays["position"] = np.zeros(shape + (3,), np.float32)
    if with_vector:
        arrays["vector"] = np.zeros(shape + (2,), np.float32)
    return arrays


def decode_view(raw: dict[str, np.ndarray], marker: int | None, arrays: dict[str, np.ndarray], index: int,
                surface_ids: np.ndarray | None = None) -> None:
    """One view's EXR pixels (name -> (H, W, C) float32, rows top to bottom) -> view ``index``
    of ``arrays`` (from :func:`allocate_views`, still zero there).

    depth planar, 1e10 where nothing is hit (every object counts: ControlNet sees the
    whole scene); mask where the object index is ``marker`` (:data:`EVERY_OBJECT`: where
    anything is hit, no Object Index pass needed); normal, position and uv on
    target pixels only (0 elsewhere); vector everywhere. A ``background_id`` array is
    filled through ``surface_ids`` (pass index -> background id, 0 for none; indices past
    its end are 0; given whenever that array is), and uv is kept on those pixels too.
    """
    mask = arrays["mask"][index]
    depth = arrays["depth"][index]
    np.copyto(depth, raw["Depth"][..., 0])
    hit = np.isfinite(depth) & (depth < BACKGROUND_DEPTH)
    depth[~hit] = BACKGROUND_DEPTH
    object_index = raw["Object Index"][..., 0] if "Object Index" in raw else None
    if marker is EVERY_OBJECT:
        np.copyto(mask, hit)
    else:
        np.less(np.abs(object_index - marker), 0.5, out=mask)
    on = mask[..., None]  # only target pixels carry surface data
    for key, name in (("normal", "Normal"), ("position", "Position")):
        np.copyto(arrays[key][index], raw[name][..., :3], where=on)
    if "background_id" in arrays:
        ids = arrays["background_id"][index]
        lookup = np.asarray(surface_ids, np.int32)
        pass_index = np.rint(np.nan_to_num(object_index, nan=0.0, posinf=0.0, neginf=0.0)).astype(np.int64)
        pass_index[(pass_index < 0) | (pass_index >= len(lookup))] = 0
        np.take(lookup, pass_index, out=ids)
        ids[mask] = 0
        on = on | (ids > 0)[..., None]
    if "uv" in arrays:
        np.copyto(arrays["uv"][index], raw["UV"][..., :2], where=on)
        wrap_uv(arrays["uv"][index])
    if "vector" in arrays:
        motion_to_next(raw["Vector"], arrays["vector"][index])


def view_arrays(raw: dict[str, np.ndarray], marker: int | None, with_vector: bool = False,
                with_uv: bool = True, surface_ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """One view's EXR pixels -> its wire arrays (H, W[, C]), as :func:`decode_view` fills
    them (``background_id`` too when ``surface_ids`` is given)."""
    height, width = raw["Depth"].shape[:2]
    arrays = allocate_views(1, height, width, with_vector, with_uv, surface_ids is not None)
    decode_view(raw, marker, arrays, 0, surface_ids)
    return {name: array[0] for name, array in arrays.items()}


# ------------------------------------------------------------------ the camera sidecar

SIDECAR_FORMAT = "zs-passes"
SIDECAR_VERSION = 1
SIDECAR_SUFFIX = ".json"


def make_sidecar(frame: int, camera: str, width: int, height: int, world_to_camera, projection,
                 target_pass_index: int = 0, fps: float = 24.0, problems=(), **extra) -> dict:
    """The JSON sidecar one frame's EXR carries: what the pixels cannot say. ``world_to_camera``
    and ``projection`` (4, 4) as :func:`blender_addon.camera_projection.camera_matrices`
    gives them; ``target_pass_index`` 0 means every object is a target; ``problems`` lists
    why this render cannot give usable passes (a reader refuses the frame, naming them)."""
    return {"format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, "frame": int(frame), "camera": str(camera),
            "width": int(width), "height": int(height),
            "world_to_camera": np.asarray(world_to_camera, np.float64).tolist(),
            "projection": np.asarray(projection, np.float64).tolist(),
            "target_pass_index": int(target_pass_index), "fps": float(fps), "problems": [str(p) for p in problems],
            **extra}


def parse_sidecar(data) -> dict:
    """A sidecar's JSON value -> the checked dict; ValueError naming the bad key."""
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise ValueError(f"not a ZS passes sidecar (no \"format\": \"{SIDECAR_FORMAT}\")")
    if data.get("version") != SIDECAR_VERSION:
        raise ValueError(f"sidecar version {data.get('version')!r}; this reader knows {SIDECAR_VERSION}")
    card = dict(data)
    for key in ("frame", "width", "height", "target_pass_index"):
        value = card.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key}: expected an integer, got {value!r}")
    if not (1 <= card["width"] <= 65536 and 1 <= card["height"] <= 65536):
        raise ValueError(f"size {card['width']}x{card['height']} is out of range")
    for key in ("world_to_camera", "projection"):
        matrix = np.asarray(card.get(key), dtype=object)
        if matrix.shape != (4, 4):
            raise ValueError(f"{key}: expected a 4x4 matrix")
        try:
            card[key] = np.asarray(card[key], np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{key}: expected numbers") from None
        if not np.isfinite(card[key]).all():
            raise ValueError(f"{key}: not finite")
    fps = card.get("fps", 24.0)
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps <= 1000:
        raise ValueError(f"fps: expected a positive number, got {fps!r}")
    card["fps"] = float(fps)
    card["camera"] = str(card.get("camera", ""))
    problems = card.get("problems", [])
    card["problems"] = [str(p) for p in problems] if isinstance(problems, list) else [str(problems)]
    return card
