"""Bake and render on the exact sphere scene: round trip, visibility, feather, fill,
padding, and errors that name the bad array."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy import ndimage

from zs_core import bake, geometry, scene

VIEWS, SIZE, TEXELS = 6, 256, 128
# Texels within this many columns of the u = 0 / 1 seam are left out of the strictest
# checks: the painted texture has a u gradient, so it jumps across the seam, and the
# view pixels a seam texel is sampled from (bilinearly) straddle that jump.
SEAM_BAND = 2


def painted_texture(size: int) -> np.ndarray:
    """A smooth, strictly positive RGB texture (T, T, 3): gradients + low sinusoids in UV."""
    uv = geometry.texel_uv(size)
    u, v = uv[..., 0], uv[..., 1]
    red = 0.2 + 0.6 * v
    green = 0.5 + 0.3 * np.sin(2 * np.pi * u) * np.cos(np.pi * (v - 0.5))
    blue = 0.3 + 0.2 * u + 0.2 * np.cos(4 * np.pi * u) * np.sin(2 * np.pi * v)
    return np.stack([red, green, blue], axis=-1).astype(np.float32)


@pytest.fixture(scope="module")
def passes():
    return scene.sphere_scene(views=VIEWS, width=SIZE, height=SIZE, texture_size=TEXELS)


@pytest.fixture(scope="module")
def truth():
    return painted_texture(TEXELS)


@pytest.fixture(scope="module")
def images(passes, truth):
    return bake.render(truth, passes.uv, passes.mask)


@pytest.fixture(scope="module")
def weights(passes):
    return bake.gather_weights(passes)


@pytest.fixture(scope="module")
def baked(images, passes, weights):
    return bake.bake(images, passes, weights=weights)


def away_from_seam() -> np.ndarray:
    columns = np.arange(TEXELS)
    return np.broadcast_to((columns >= SEAM_BAND) & (columns < TEXELS - SEAM_BAND), (TEXELS, TEXELS))


def camera_direction(passes, view: int) -> np.ndarray:
    position = geometry.camera_position(passes.world_to_camera[view])
    return position / np.linalg.norm(position)


# ---------------------------------------------------------------------------- round trip


def test_round_trip_recovers_the_seen_texels(baked, truth):
    error = np.abs(baked.texture - truth).mean(axis=-1)
    seen = baked.seen
    assert 0.5 < baked.coverage < 0.95  # the ring misses the south pole, sees the rest
    assert baked.coverage == pytest.approx(seen.mean())
    assert error[seen].mean() < 0.002
    assert np.percentile(error[seen], 99) < 0.005
    assert error[seen & away_from_seam()].max() < 0.03
    # Even on the seam the bake stays close (the band is a few texels wide).
    assert np.percentile(error[seen & ~away_from_seam()], 90) < 0.05


def test_unseen_texels_are_filled_from_seen_ones(baked, images, passes, weights):
    unseen = ~baked.seen
    assert unseen.sum() > 100  # the south cap is hidden from every camera
    assert (np.abs(baked.texture).sum(axis=-1) > 0).all()  # no zero left on the map
    # Nearest fill copies colours: every filled colour is some seen texel's colour.
    assert np.isin(baked.texture[unseen][:, 0], baked.texture[baked.seen][:, 0]).all()
    bare = bake.bake(images, passes, weights=weights, fill=False)
    assert (bare.texture[unseen] == 0).all()
    np.testing.assert_array_equal(bare.texture[bare.seen], baked.texture[baked.seen])


def test_fill_copies_a_nearest_seen_texel(passes, baked):
    # OpenCV's 5x5 chamfer distance picks the source; its weights (1, 1.4, 2.1969) are
    # within about 2% of the Euclidean length either way, so the source is within about
    # 4% of the exact nearest seen texel's distance (scipy's exact transform).
    seen = baked.seen
    targets, sources = bake._nearest_copy(seen, passes.texel_mask & ~seen)
    assert len(targets) == (~seen).sum() and seen.reshape(-1)[sources].all()
    np.testing.assert_array_equal(baked.texture.reshape(-1, 3)[targets], baked.texture.reshape(-1, 3)[sources])
    distance = np.hypot(*(np.divmod(targets, TEXELS)[axis] - np.divmod(sources, TEXELS)[axis] for axis in (0, 1)))
    exact = ndimage.distance_transform_edt(~seen).reshape(-1)[targets]
    assert (distance >= exact - 1e-9).all() and (distance <= 1.045 * exact).all()
    assert (distance == exact).mean() > 0.85  # mostly the very nearest (0.93 here)


def test_inpaint_replaces_only_the_unseen_texels(baked, images, passes, weights):
    inpainted = bake.bake(images, passes, weights=weights, inpaint=True)
    np.testing.assert_array_equal(inpainted.texture[baked.seen], baked.texture[baked.seen])
    unseen = ~baked.seen
    assert (np.abs(inpainted.texture[unseen]).sum(axis=-1) > 0).all()
    assert not np.array_equal(inpainted.texture[unseen], baked.texture[unseen])


def test_bake_then_render_reproduces_the_views(baked, images, passes):
    rendered = bake.render(baked.texture, passes.uv, passes.mask)
    residual = np.abs(rendered - images)[passes.mask]
    assert residual.mean() < 0.002
    assert (rendered[~passes.mask] == 0).all()


def test_reused_weights_bake_like_fresh_ones_for_any_channel_count(passes, weights):
    rng = np.random.default_rng(0)
    for channels in (1, 4, 5):
        values = rng.uniform(0.5, 1.5, channels).astype(np.float32)
        constant = np.broadcast_to(values, (VIEWS, SIZE, SIZE, channels))
        result = bake.bake(constant, passes, weights=weights)
        np.testing.assert_allclose(result.texture, np.broadcast_to(values, result.texture.shape), rtol=1e-5)
    latent = rng.normal(size=(VIEWS, SIZE, SIZE, 4)).astype(np.float32)
    fresh = bake.bake(latent, passes)
    reused = bake.bake(latent, passes, weights=weights)
    np.testing.assert_array_equal(fresh.texture, reused.texture)


def test_views_tiled_in_several_columns_bake_alike(passes, images, baked, monkeypatch):
    # A small remap canvas forces a grid of 3 views x 2 columns instead of one column.
    monkeypatch.setattr(bake, "REMAP_LIMIT", 800)
    weights = bake.gather_weights(passes)
    tiled = bake.bake(images, passes, weights=weights)
    assert weights.plans[0] == (3, 2)
    # Equal up to remap's 1/32-pixel position rounding of the offset coordinates.
    np.testing.assert_allclose(tiled.texture, baked.texture, atol=1e-3)
    np.testing.assert_array_equal(tiled.seen, baked.seen)


def test_tiles_and_threads_do_not_change_the_bake(passes, images, weights, baked, monkeypatch):
    # Texels are processed in square tiles shared among threads; a texel's views are
    # summed in view order whatever the tiling, so the bake is the same to the bit.
    monkeypatch.setattr(bake, "_BLOCK_SAMPLES", VIEWS * 300)  # 17x17 tiles, the last ones short
    for threads in (1, 2):
        monkeypatch.setattr(bake, "_THREADS", threads)
        small = bake.gather_weights(passes)
        assert len(small.plans[1]) == 64
        np.testing.assert_array_equal(small.weights, weights.weights)
        np.testing.assert_array_equal(bake.bake(images, passes, weights=small).texture, baked.texture)


def test_dense_weights_bake_like_gathered_ones(passes, images, weights, baked):
    # BakeWeights built from dense arrays (reweighted views, zs_core/completion.py) get
    # the same tile plans on their first bake; the float32 pixels move a remap position
    # by at most a 1/32-pixel step.
    dense = bake.BakeWeights(weights.pixels, weights.weights, weights.texel_mask, weights.image_size)
    result = bake.bake(images, passes, weights=dense)
    np.testing.assert_array_equal(result.seen, baked.seen)
    np.testing.assert_allclose(result.texture, baked.texture, atol=1e-4)
    # Reweighted: view 0 alone where it sees a texel, the others elsewhere.
    alone = weights.weights.copy()
    alone[1:, weights.weights[0] > 0] = 0.0
    only = bake.bake(images, passes, weights=bake.BakeWeights(weights.pixels, alone, weights.texel_mask,
                                                               weights.image_size), fill=False)
    view_zero = bake.bake(images[:1], passes.select([0]), fill=False)
    np.testing.assert_allclose(only.texture[view_zero.seen], view_zero.texture[view_zero.seen], atol=1e-4)


# --------------------------------------------------------------------------- visibility


def test_texels_on_the_far_side_get_no_weight(passes, weights):
    towards = camera_direction(passes, 0)
    facing = passes.texel_normal @ towards
    far_side = facing < -0.3
    near_side = facing > 0.5
    assert far_side.sum() > 1000
    assert (weights.weights[0][far_side] == 0).all()
    assert (weights.weights[0][near_side] > 0).mean() > 0.9


def test_occlusion_comes_from_the_position_pass(passes):
    # Normals flipped inwards: the far side now "faces" the camera, so only the
    # position test can keep it invisible (the near side faces away).
    flipped = dataclasses.replace(passes, texel_normal=-passes.texel_normal)
    towards = camera_direction(passes, 0)
    far_side = (passes.texel_normal @ towards) < -0.3
    occluded = bake.gather_weights(flipped, exponent=1.0)
    assert (occluded.weights[0][far_side] == 0).all()
    # Control: with a tolerance as large as the sphere, the same texels pass.
    loose = bake.gather_weights(flipped, exponent=1.0, tolerance=10.0)
    assert (loose.weights[0][far_side] > 0).mean() > 0.5


def nearest_pixel(weights, view: int) -> tuple[np.ndarray, np.ndarray]:
    pixels = np.nan_to_num(weights.pixels[view], nan=-1.0)
    return np.floor(pixels[..., 1]).astype(int), np.floor(pixels[..., 0]).astype(int)


def test_weights_fall_to_zero_at_the_silhouette(passes):
    # exponent 0: the weight is the feather alone (on texels facing the camera).
    feather_px = 3.0
    flat = bake.gather_weights(passes, exponent=0.0, feather_px=feather_px)
    rows, cols = nearest_pixel(flat, 0)
    inside = (rows >= 0) & (rows < SIZE) & (cols >= 0) & (cols < SIZE)
    distance = ndimage.distance_transform_edt(np.pad(passes.mask[0], 1))[1:-1, 1:-1]
    to_edge = np.where(inside, distance[rows.clip(0, SIZE - 1), cols.clip(0, SIZE - 1)], 0.0)
    weight = flat.weights[0]
    visible = weight > 0
    assert visible.sum() > 1000
    assert (weight[inside & (to_edge <= math.sqrt(2))] == 0).all()  # the silhouette ring
    # The mask-only feather; the rim, steeper than a depth jump, may start the ramp a
    # pixel further in, so it is an upper bound met by almost every texel.
    expected = np.clip((to_edge - math.sqrt(2)) / feather_px, 0, 1)
    assert (weight[visible] <= expected[visible] + 1e-6).all()
    assert np.isclose(weight[visible], expected[visible], atol=1e-6).mean() > 0.9
    ramp = visible & (expected < 1)
    assert ramp.sum() > 100 and (weight[ramp] < 1).all()


def test_depth_jumps_are_feathered_like_silhouettes(passes, weights):
    # Push the left half of view 0 back by one unit: a depth step down the middle.
    depth = passes.depth.copy()
    left = np.zeros_like(passes.mask)
    left[0, :, : SIZE // 2] = True
    depth[left & passes.mask] += 1.0
    stepped = bake.gather_weights(dataclasses.replace(passes, depth=depth))
    rows, cols = nearest_pixel(weights, 0)
    from_step = np.abs(cols + 0.5 - SIZE / 2)  # pixels from the step line
    at_step = (from_step < 1.5) & (weights.weights[0] > 0)
    assert at_step.sum() >= 10
    assert (stepped.weights[0][at_step] == 0).all()
    # Far from the rim, whose own feather (and steepness test) depends on depth.
    to_rim = ndimage.distance_transform_edt(passes.mask[0])[rows.clip(0, SIZE - 1), cols.clip(0, SIZE - 1)]
    central = to_rim > 10
    ramp = (from_step > 2) & (from_step < 4) & central & (weights.weights[0] > 0)
    assert ramp.sum() >= 10 and (stepped.weights[0][ramp] < weights.weights[0][ramp]).all()
    beyond = (from_step > 6) & central
    np.testing.assert_array_equal(stepped.weights[0][beyond], weights.weights[0][beyond])
    np.testing.assert_array_equal(stepped.weights[1:], weights.weights[1:])


# ---------------------------------------------------------------------- fill and padding


def test_padding_extends_islands_and_stops_after_padding_texels(passes, images):
    texel_mask = passes.texel_mask.copy()
    texel_mask[:, 60:70] = False  # a 10-texel gap between two islands
    cut = dataclasses.replace(passes, texel_mask=texel_mask)
    result = bake.bake(images, cut, padding=4)
    texture = result.texture
    np.testing.assert_array_equal(texture[:, 60:64], np.repeat(texture[:, 59:60], 4, axis=1))
    np.testing.assert_array_equal(texture[:, 66:70], np.repeat(texture[:, 70:71], 4, axis=1))
    assert (texture[:, 64:66] == 0).all()
    unpadded = bake.bake(images, cut, padding=0).texture
    assert (unpadded[:, 60:70] == 0).all()


# ------------------------------------------------------------------------------- render


def test_render_looks_up_texel_centres_with_v_up():
    texture = np.arange(4 * 4 * 2, dtype=np.float32).reshape(4, 4, 2)
    centres = geometry.texel_uv(4).astype(np.float32)  # (4, 4, 2): row 0 is v = 1
    uv = centres[None]
    mask = np.ones((1, 4, 4), bool)
    mask[0, 3, 3] = False
    rendered = bake.render(texture, uv, mask)
    expected = texture.copy()
    expected[3, 3] = 0
    np.testing.assert_allclose(rendered[0], expected, atol=1e-5)
    # uv (0, 0) is the bottom-left corner: the last row's first texel.
    corner = bake.render(texture, np.zeros((1, 1, 1, 2), np.float32), np.ones((1, 1, 1), bool))
    np.testing.assert_allclose(corner[0, 0, 0], texture[3, 0])


# ------------------------------------------------------- weights against a plain reference


def reference_weights(passes, exponent=4.0, feather_px=3.0, tolerance=None):
    """gather_weights written the plainest way: one view and one on-map texel array at a
    time, float64 throughout, scipy's distance transform for the feather -> (pixels
    (V, T, T, 2), weights (V, T, T))."""
    size = passes.texel_mask.shape[0]
    on_map = passes.texel_mask.reshape(-1)
    points = passes.texel_position.reshape(-1, 3)[on_map].astype(np.float64)
    normals = passes.texel_normal.reshape(-1, 3)[on_map].astype(np.float64)
    lengths = np.linalg.norm(normals, axis=1, keepdims=True)
    normals = normals / np.where(lengths > 0, lengths, 1.0)
    spacing = bake.texel_spacing(passes.texel_position, passes.texel_mask)
    pixels = np.full((passes.views, size * size, 2), np.nan)
    weights = np.zeros((passes.views, size * size))
    for view in range(passes.views):
        world_to_camera = passes.world_to_camera[view].astype(np.float64)
        projection = passes.projection[view].astype(np.float64)
        projected, depth, in_front = geometry.project(points, world_to_camera, projection, SIZE, SIZE)
        pixels[view, on_map] = projected
        cols, rows = projected[:, 0], projected[:, 1]
        with np.errstate(invalid="ignore"):
            inside = in_front & (cols >= 0) & (cols < SIZE) & (rows >= 0) & (rows < SIZE)
        index = np.where(inside, np.floor(np.nan_to_num(rows)) * SIZE + np.floor(np.nan_to_num(cols)), 0).astype(int)
        camera = np.linalg.inv(world_to_camera)[:3, 3]
        towards = camera - points
        facing = (normals * towards).sum(axis=1) / np.linalg.norm(towards, axis=1)
        good = passes.mask[view] & ~bake.depth_edges(passes.depth[view], passes.mask[view], projection)
        distance = ndimage.distance_transform_edt(np.pad(good, 1))[1:-1, 1:-1]
        feather = np.clip((distance - math.sqrt(2)) / feather_px, 0, 1).reshape(-1)
        gap = np.linalg.norm(passes.position[view].reshape(-1, 3)[index] - points, axis=1)
        footprint = max(2 / (abs(projection[0, 0]) * SIZE), 2 / (abs(projection[1, 1]) * SIZE)) * np.abs(depth)
        limit = tolerance if tolerance is not None else 3 * spacing + 3 * footprint
        visible = inside & (facing > 0) & passes.mask[view].reshape(-1)[index] & (gap < limit)
        weights[view, on_map] = np.where(visible, np.clip(facing, 0, None) ** exponent * feather[index], 0.0)
    return pixels.reshape(passes.views, size, size, 2), weights.reshape(passes.views, size, size)


def islands_of(passes):
    """The sphere scene with a texel mask of a few islands and garbage (NaN, huge values)
    in the texels off them, which gather_weights must ignore."""
    rows, cols = np.indices(passes.texel_mask.shape)
    islands = ((rows // 16 + cols // 16) % 3 != 0) & (rows > 3)
    position = passes.texel_position.copy()
    position[~islands] = np.float32(np.nan)
    position[0, :5] = np.float32(3e38)
    normal = passes.texel_normal.copy()
    normal[~islands] = np.float32(np.inf)
    return dataclasses.replace(passes, texel_mask=islands, texel_position=position, texel_normal=normal)


def lifted_off(passes):
    """The sphere's texels lifted off the surface along their normals by 0 .. 0.35 (about
    twice the default tolerance) across the columns: visibility then hangs on the
    tolerance, and the flipped normals of half the columns face inwards (only the
    position pass keeps their far side hidden)."""
    columns = np.arange(passes.texel_mask.shape[1])
    lift = (0.35 * columns / columns[-1]).astype(np.float32)[None, :, None]
    normal = np.where((columns % 2 == 0)[None, :, None], passes.texel_normal, -passes.texel_normal)
    return dataclasses.replace(passes, texel_position=passes.texel_position + lift * passes.texel_normal,
                               texel_normal=normal.astype(np.float32))


@pytest.mark.parametrize("blocks", ["one block", "many blocks"])
@pytest.mark.parametrize("options", [{}, {"exponent": 2.5, "feather_px": 1.5}, {"exponent": 0.0, "tolerance": 0.05}],
                         ids=["defaults", "fractional exponent", "fixed tolerance"])
def test_weights_equal_a_plain_reference(passes, monkeypatch, blocks, options):
    if blocks == "many blocks":  # several blocks and a short last one
        monkeypatch.setattr(bake, "_BLOCK_SAMPLES", VIEWS * 1000)
    for case in (passes, islands_of(passes), lifted_off(passes)):
        fast = bake.gather_weights(case, **options)
        pixels, weights = reference_weights(case, **options)
        assert (fast.weights > 0).sum() > 500  # enough visible samples to mean something
        np.testing.assert_array_equal(fast.weights > 0, weights > 0)  # the same samples are visible
        np.testing.assert_allclose(fast.weights, weights, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(np.isnan(fast.pixels), np.isnan(pixels))
        np.testing.assert_allclose(fast.pixels, pixels, rtol=1e-6, atol=1e-4)


def test_a_non_finite_texel_on_the_map_names_the_array(passes):
    for name in ("texel_position", "texel_normal"):
        broken = getattr(passes, name).copy()
        broken[TEXELS // 2, TEXELS - 1, 2] = np.inf
        with pytest.raises(ValueError, match=rf"^{name}: contains NaN or inf on texel_mask texels"):
            bake.gather_weights(dataclasses.replace(passes, **{name: broken}))


# ------------------------------------------------------------------------------- errors


def test_a_texture_no_view_sees_is_an_error(passes, images):
    away = dataclasses.replace(passes, texel_position=passes.texel_position + np.float32(50.0))
    with pytest.raises(ValueError, match="texture: no texel is seen by any view"):
        bake.bake(images, away)


def _with(passes, **changes):
    return dataclasses.replace(passes, **changes)


def _nan_at_a_target_pixel(passes):
    position = passes.position.copy()
    row, col = np.argwhere(passes.mask[0])[0]
    position[0, row, col, 1] = np.nan
    return _with(passes, position=position)


def _nan_texel(passes):
    texel_position = passes.texel_position.copy()
    texel_position[5, 7, 0] = np.nan
    return _with(passes, texel_position=texel_position)


BAD_PASSES = [  # (case, the field the error must name, how to break the passes)
    ("texel maps missing", "texel_position", lambda p: _with(p, texel_position=None)),
    ("texel maps of two sizes", "texel_normal", lambda p: _with(p, texel_normal=p.texel_normal[:64, :64])),
    ("all masks empty", "mask", lambda p: _with(p, mask=np.zeros_like(p.mask))),
    ("NaN position on a target pixel", "position", _nan_at_a_target_pixel),
    ("NaN texel position", "texel_position", _nan_texel),
]


@pytest.mark.parametrize("field, breaks", [case[1:] for case in BAD_PASSES], ids=[case[0] for case in BAD_PASSES])
def test_bad_passes_name_the_array(passes, images, field, breaks):
    with pytest.raises(ValueError, match=rf"^{field}:"):
        bake.bake(images, breaks(passes))


def test_bad_images_and_arguments_name_the_field(passes, images, weights):
    with pytest.raises(ValueError, match=r"^images: expected shape \(6, 256, 256, C\)"):
        bake.bake(images[:5], passes, weights=weights)
    nan_images = images.copy()
    nan_images[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="^images: contains NaN"):
        bake.bake(nan_images, passes, weights=weights)
    with pytest.raises(ValueError, match="^texture_size:"):
        bake.gather_weights(passes, texture_size=64)
    fewer = scene.sphere_scene(views=2, width=64, height=64, texture_size=TEXELS)
    with pytest.raises(ValueError, match="^weights:"):
        bake.bake(images[:2, :64, :64], fewer, weights=weights)
    with pytest.raises(ValueError, match="^uv:"):
        bake.render(np.zeros((8, 8, 3), np.float32), passes.uv[:, :10], passes.mask)
