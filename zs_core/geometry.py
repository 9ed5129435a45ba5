"""Camera projection and pixel <-> texel conventions, written down once (pure numpy).

Camera (Blender's conventions):

- A camera looks down its local -Z axis, +Y is up in the image, +X is right.
- ``world_to_camera (4, 4)`` is the inverse of the camera object's world matrix.
- ``projection (4, 4)`` is what Blender's ``camera.calc_matrix_camera(depsgraph, x=W, y=H)``
  returns: an OpenGL-style clip matrix (perspective or orthographic, any aspect, lens
  shift) mapping camera space to clip space; NDC x, y in [-1, 1], NDC y up.
- Depth is planar camera-space depth, ``-z_cam`` (not the length of the ray).

Pixels (the wire format stores rows top to bottom):

- Pixel (row r, col c) covers NDC x in [-1 + 2c/W, -1 + 2(c+1)/W] and
  NDC y in [1 - 2(r+1)/H, 1 - 2r/H]; its centre is at
  ``x_ndc = 2(c + 0.5)/W - 1`` and ``y_ndc = 1 - 2(r + 0.5)/H``.
- Continuous pixel coordinates are ``[col, row]`` with ``col = (x_ndc + 1)/2 * W`` and
  ``row = (1 - y_ndc)/2 * H``: the image spans [0, W] x [0, H] and the centre of
  pixel (r, c) is (c + 0.5, r + 0.5). ``floor`` of a coordinate is the pixel index.

Texels (texture images are stored like image files, top row first):

- Texel row 0 is the top of the texture image, i.e. v = 1; texel (row i, col j) of a
  T x T texture has its centre at ``uv = ((j + 0.5)/T, 1 - (i + 0.5)/T)``.
"""

from __future__ import annotations

import math

import numpy as np

SENSOR_FITS = ("AUTO", "HORIZONTAL", "VERTICAL")


# ----------------------------------------------------------------------------- checks


def _matrix(name: str, value) -> np.ndarray:
    """A finite (4, 4) float64 matrix, or ValueError naming the argument."""
    array = np.asarray(value, dtype=np.float64) if _is_numeric(value) else None
    if array is None or array.shape != (4, 4):
        raise ValueError(f"{name}: expected a (4, 4) matrix, got shape {getattr(array, 'shape', None)}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: contains NaN or inf")
    return array


def _is_numeric(value) -> bool:
    try:
        np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return True


def _size(name: str, value) -> int:
    """A positive integer image size, or ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def _positive(name: str, value) -> float:
    if not (isinstance(value, (int, float, np.number)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name}: expected a positive finite number, got {value!r}")
    return float(value)


def _finite(name: str, value) -> float:
    if not (isinstance(value, (int, float, np.number)) and math.isfinite(value)):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    return float(value)


def _vector3(name: str, value) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64) if _is_numeric(value) else None
    if array is None or array.shape != (3,) or not np.isfinite(array).all():
        raise ValueError(f"{name}: expected 3 finite numbers, got {value!r}")
    return array


def _clip_range(near, far) -> tuple[float, float]:
    near = _positive("near", near)
    far = _positive("far", far)
    if far <= near:
        raise ValueError(f"far: must be greater than near ({near}), got {far}")
    return near, far


# ------------------------------------------------------------------------ projections


def _fitted_dimension(sensor_fit: str, width: int, height: int) -> int:
    """The image dimension (in pixels) that the sensor size / ortho scale spans.

    AUTO: the larger one (Blender picks horizontal when width >= height).
    """
    if sensor_fit not in SENSOR_FITS:
        raise ValueError(f"sensor_fit: expected one of {', '.join(SENSOR_FITS)}, got {sensor_fit!r}")
    if sensor_fit == "HORIZONTAL" or (sensor_fit == "AUTO" and width >= height):
        return width
    return height


def _view_plane(span: float, width: int, height: int, shift_x: float, shift_y: float,
                sensor_fit: str) -> tuple[float, float, float, float]:
    """(left, right, bottom, top) of the image window, where ``span`` is the extent of
    the fitted dimension. Mirrors Blender's ``BKE_camera_params_compute_viewplane``:
    shift is measured in units of the fitted dimension.
    """
    fitted = _fitted_dimension(sensor_fit, width, height)
    units_per_pixel = span / fitted
    dx = shift_x * fitted
    dy = shift_y * fitted
    left = (-0.5 * width + dx) * units_per_pixel
    right = (0.5 * width + dx) * units_per_pixel
    bottom = (-0.5 * height + dy) * units_per_pixel
    top = (0.5 * height + dy) * units_per_pixel
    return left, right, bottom, top


def perspective(lens_mm: float, sensor_mm: float, width: int, height: int, near: float = 0.1,
                far: float = 100.0, shift_x: float = 0.0, shift_y: float = 0.0,
                sensor_fit: str = "AUTO") -> np.ndarray:
    """Blender's perspective ``calc_matrix_camera`` -> (4, 4) float64.

    ``sensor_mm`` is the sensor size along the fitted dimension: the larger image
    dimension for AUTO (Blender's sensor width), the width for HORIZONTAL, the height
    for VERTICAL (Blender's sensor height).
    """
    lens_mm = _positive("lens_mm", lens_mm)
    sensor_mm = _positive("sensor_mm", sensor_mm)
    width, height = _size("width", width), _size("height", height)
    near, far = _clip_range(near, far)
    shift_x, shift_y = _finite("shift_x", shift_x), _finite("shift_y", shift_y)
    # The window on the near plane (glFrustum's l, r, b, t).
    span = sensor_mm * near / lens_mm
    left, right, bottom, top = _view_plane(span, width, height, shift_x, shift_y, sensor_fit)
    matrix = np.zeros((4, 4))
    matrix[0, 0] = 2.0 * near / (right - left)
    matrix[0, 2] = (right + left) / (right - left)
    matrix[1, 1] = 2.0 * near / (top - bottom)
    matrix[1, 2] = (top + bottom) / (top - bottom)
    matrix[2, 2] = -(far + near) / (far - near)
    matrix[2, 3] = -2.0 * near * far / (far - near)
    matrix[3, 2] = -1.0
    return matrix


def orthographic(ortho_scale: float, width: int, height: int, near: float = 0.1,
                 far: float = 100.0, shift_x: float = 0.0, shift_y: float = 0.0,
                 sensor_fit: str = "AUTO") -> np.ndarray:
    """Blender's orthographic ``calc_matrix_camera`` -> (4, 4) float64.

    ``ortho_scale`` is the extent (world units) of the fitted dimension (the larger one
    for AUTO), exactly like Blender's Orthographic Scale.
    """
    ortho_scale = _positive("ortho_scale", ortho_scale)
    width, height = _size("width", width), _size("height", height)
    near, far = _clip_range(near, far)
    shift_x, shift_y = _finite("shift_x", shift_x), _finite("shift_y", shift_y)
    left, right, bottom, top = _view_plane(ortho_scale, width, height, shift_x, shift_y, sensor_fit)
    matrix = np.zeros((4, 4))
    matrix[0, 0] = 2.0 / (right - left)
    matrix[0, 3] = -(right + left) / (right - left)
    matrix[1, 1] = 2.0 / (top - bottom)
    matrix[1, 3] = -(top + bottom) / (top - bottom)
    matrix[2, 2] = -2.0 / (far - near)
    matrix[2, 3] = -(far + near) / (far - near)
    matrix[3, 3] = 1.0
    return matrix


def is_orthographic(projection) -> bool:
    """True if the clip matrix has no perspective divide (its last row is (0, 0, 0, 1))."""
    projection = _matrix("projection", projection)
    return bool(np.allclose(projection[3], (0.0, 0.0, 0.0, 1.0)))


# ---------------------------------------------------------------------------- cameras


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Camera world matrix (4, 4) float64 at ``eye`` whose -Z axis points at ``target``.

    +X is ``forward x up`` (image right), +Y completes a right-handed frame (image up).
    When ``up`` is parallel to the view direction, the world axis least aligned with it
    is used instead, so a camera straight above the target still gets a valid frame.
    ``world_to_camera = np.linalg.inv(look_at(...))``.
    """
    eye, target, up = _vector3("eye", eye), _vector3("target", target), _vector3("up", up)
    forward = target - eye
    distance = np.linalg.norm(forward)
    if distance == 0.0:
        raise ValueError("target: must differ from eye")
    forward /= distance
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-9 * max(np.linalg.norm(up), 1e-300):
        fallback = np.eye(3)[np.argmin(np.abs(forward))]
        right = np.cross(forward, fallback)
    right /= np.linalg.norm(right)
    camera_up = np.cross(right, forward)
    matrix = np.eye(4)
    matrix[:3, 0] = right
    matrix[:3, 1] = camera_up
    matrix[:3, 2] = -forward
    matrix[:3, 3] = eye
    return matrix


def camera_position(world_to_camera) -> np.ndarray:
    """World-space position (3,) float64 of a camera given its ``world_to_camera``."""
    camera_to_world = np.linalg.inv(_matrix("world_to_camera", world_to_camera))
    return camera_to_world[:3, 3].copy()


# ------------------------------------------------------------------ project / unproject


def ndc_to_pixels(ndc_xy: np.ndarray, width: int, height: int) -> np.ndarray:
    """NDC (..., 2) -> continuous pixel coordinates (..., 2) [col, row], rows top-down."""
    ndc_xy = np.asarray(ndc_xy, dtype=np.float64)
    col = (ndc_xy[..., 0] + 1.0) * 0.5 * width
    row = (1.0 - ndc_xy[..., 1]) * 0.5 * height
    return np.stack([col, row], axis=-1)


def pixel_centers_ndc(width: int, height: int) -> np.ndarray:
    """NDC x, y of every pixel centre -> (H, W, 2) float64, row 0 at the top."""
    x, y = _pixel_centre_ndc_axes(_size("width", width), _size("height", height))
    xx, yy = np.meshgrid(x, y)
    return np.stack([xx, yy], axis=-1)


def _pixel_centre_ndc_axes(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """NDC x of each column (W,) and NDC y of each row (H,), row 0 at the top."""
    x = 2.0 * (np.arange(width) + 0.5) / width - 1.0
    y = 1.0 - 2.0 * (np.arange(height) + 0.5) / height
    return x, y


def project(points, world_to_camera, projection, width: int, height: int):
    """Project world points into a view.

    points (..., 3) world space -> ``(pixels (..., 2) float64 [col, row] continuous,
    pixel centres at +0.5; depth (...,) float64 planar camera depth = -z_cam;
    in_front (...,) bool = depth > 0)``. Pixels are NaN where the clip-space w is not
    positive (behind a perspective camera), where no projection exists. Points outside
    the image get coordinates outside [0, W] x [0, H]; callers bound-check.
    """
    world_to_camera = _matrix("world_to_camera", world_to_camera)
    projection = _matrix("projection", projection)
    width, height = _size("width", width), _size("height", height)
    points = np.asarray(points, dtype=np.float64) if _is_numeric(points) else None
    if points is None or points.ndim < 1 or points.shape[-1] != 3:
        raise ValueError(f"points: expected shape (..., 3), got {getattr(points, 'shape', None)}")
    # World -> clip in one matrix, and only the rows used (clip x, y, w; camera z for the
    # planar depth), each as x * m0 + y * m1 + z * m2 + m3: cheaper than (N, 3) @ (3, 4).
    world_to_clip = projection @ world_to_camera
    x, y, z = points[..., 0], points[..., 1], points[..., 2]

    def row(matrix, index):
        return matrix[index, 0] * x + matrix[index, 1] * y + matrix[index, 2] * z + matrix[index, 3]

    depth = -row(world_to_camera, 2)
    w = row(world_to_clip, 3)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(w > 0, w, np.nan)
        ndc = np.stack([row(world_to_clip, 0) / w, row(world_to_clip, 1) / w], axis=-1)
    return ndc_to_pixels(ndc, width, height), depth, depth > 0


def pixel_rays(world_to_camera, projection, width: int, height: int):
    """Rays through every pixel centre -> (origins (H, W, 3), directions (H, W, 3) unit),
    float64, world space, row 0 at the top.

    Each ray is the preimage of its pixel centre (the line between the near and far
    clip planes), extended back to the camera plane (z_cam = 0): perspective rays all
    start at the camera, orthographic rays are parallel and start on the camera plane.
    A point at planar depth d lies at ``origin + d / cos * direction`` where
    ``cos = -(direction in camera space).z``.
    """
    world_to_camera = _matrix("world_to_camera", world_to_camera)
    projection = _matrix("projection", projection)
    width, height = _size("width", width), _size("height", height)
    near_point, far_point = _unproject_pixel_centres(projection, width, height)
    direction = far_point - near_point
    # Slide from the near plane back to z_cam = 0 (the camera for perspective).
    origin = near_point - direction * (near_point[..., 2:3] / direction[..., 2:3])
    camera_to_world = np.linalg.inv(world_to_camera)
    rotation = camera_to_world[:3, :3]
    origins = origin @ rotation.T + camera_to_world[:3, 3]
    directions = direction @ rotation.T
    # Normalise in world space so a scaled camera object still yields unit directions.
    directions /= np.sqrt(np.einsum("...i,...i->...", directions, directions))[..., None]
    return origins, directions


def _unproject_pixel_centres(projection: np.ndarray, width: int, height: int):
    """Camera-space points (H, W, 3) float64 of every pixel centre on the near (NDC z = -1)
    and far (NDC z = +1) clip planes."""
    inverse = np.linalg.inv(projection)
    x, y = _pixel_centre_ndc_axes(width, height)
    # Unprojection is linear in NDC x and y: one (W, 4) and one (H, 4) term, broadcast.
    column_term = x[:, None] * inverse[:, 0]
    row_term = y[:, None] * inverse[:, 1] + inverse[:, 3]
    near = column_term[None] + (row_term - inverse[:, 2])[:, None]
    far = column_term[None] + (row_term + inverse[:, 2])[:, None]
    return near[..., :3] / near[..., 3:4], far[..., :3] / far[..., 3:4]


# ------------------------------------------------------------------------------ texels


def texel_uv(texture_size: int) -> np.ndarray:
    """UV of every texel centre -> (T, T, 2) float64: texel (row i, col j) has
    ``uv = ((j + 0.5)/T, 1 - (i + 0.5)/T)`` (row 0 is v = 1, the top of the image)."""
    size = _size("texture_size", texture_size)
    u = (np.arange(size) + 0.5) / size
    v = 1.0 - (np.arange(size) + 0.5) / size
    uu, vv = np.meshgrid(u, v)
    return np.stack([uu, vv], axis=-1)


def uv_to_texel(uv, texture_size: int) -> np.ndarray:
    """UV (..., 2) -> continuous texel coordinates (..., 2) float64 [col, row], texel
    centres at +0.5 (same convention as pixels: ``floor`` gives the texel index)."""
    size = _size("texture_size", texture_size)
    uv = np.asarray(uv, dtype=np.float64)
    if uv.ndim < 1 or uv.shape[-1] != 2:
        raise ValueError(f"uv: expected shape (..., 2), got {uv.shape}")
    return np.stack([uv[..., 0] * size, (1.0 - uv[..., 1]) * size], axis=-1)


def footprint_texture_size(uv: np.ndarray, mask: np.ndarray, pixels_per_texel: float = 1.0,
                           lowest: int = 8, highest: int = 4096) -> int:
    """Texels per side so that one texel spans about ``pixels_per_texel`` image pixels.

    ``uv (V, H, W, 2)``, ``mask (V, H, W)`` bool. The pixel footprint in UV is the median
    step between neighbouring target pixels over all views (the median ignores the jumps
    at UV seams). Used to match pixels of different views through UV at a fair grain.
    """
    steps = []
    for axis in (1, 2):
        length = mask.shape[axis]
        both = np.take(mask, range(1, length), axis=axis) & np.take(mask, range(0, length - 1), axis=axis)
        delta = np.abs(np.diff(uv, axis=axis)).max(-1)[both]
        if delta.size:
            steps.append(delta)
    if not steps:
        raise ValueError("mask: no two neighbouring target pixels; cannot measure the UV footprint")
    footprint = float(np.median(np.concatenate(steps))) * pixels_per_texel
    return int(np.clip(np.ceil(1.0 / max(footprint, 1e-9)), lowest, highest))


def uv_footprint(uv: np.ndarray, surface: np.ndarray) -> np.ndarray:
    """UV distance one pixel spans, per pixel ``(V, H, W)`` float32 (NaN where unknown).

    ``uv (V, H, W, 2)``, ``surface (V, H, W)`` int: pixels are compared only with
    neighbours of the same surface (> 0). Along each image axis the smaller of the steps
    to the two neighbours is used, so a UV seam on one side does not count; the footprint
    is the larger of the two axes (the long side of the pixel's footprint in UV).
    """
    uv = uv.astype(np.float32)
    axes = []
    for axis in (1, 2):
        step = np.abs(np.diff(uv, axis=axis)).max(-1)
        same = (np.diff(surface, axis=axis) == 0) & (np.take(surface, range(1, surface.shape[axis]), axis=axis) > 0)
        step = np.where(same, step, np.inf)
        pad = [(0, 0)] * 3
        pad[axis] = (1, 0)
        before = np.pad(step, pad, constant_values=np.inf)
        pad[axis] = (0, 1)
        after = np.pad(step, pad, constant_values=np.inf)
        axes.append(np.minimum(before, after))
    footprint = np.maximum(axes[0], axes[1])
    footprint[~np.isfinite(footprint) | (surface <= 0)] = np.nan
    return footprint.astype(np.float32)
