"""The wire format: request validation and the passes archive."""

from __future__ import annotations

import numpy as np
import pytest

from zs_core import scene
from zs_core.protocol import Passes, ProtocolError, Request


def small_passes(views=2, size=16) -> Passes:
    rng = np.random.default_rng(0)
    mask = np.zeros((views, size, size), bool)
    mask[:, 4:12, 4:12] = True
    depth = np.where(mask, 2.0, 1e10).astype(np.float32)
    uv = rng.uniform(0, 1, (views, size, size, 2)).astype(np.float32)
    return Passes(depth=depth, mask=mask, uv=uv,
                  world_to_camera=np.tile(np.eye(4, dtype=np.float32), (views, 1, 1)))


def test_request_round_trips_through_json():
    request = Request(prompt="mossy stone", seed=7, noise="mixed", noise_alpha=2.0, attention="tma", momentum=0.3)
    again = Request.from_json(request.to_json())
    assert again == request


@pytest.mark.parametrize("field_name, value, words", [
    ("noise", "pink", "expected one of"),
    ("attention", "global", "expected one of"),
    ("steps", 0, "outside"),
    ("steps", 2.5, "expected int"),
    ("guidance_scale", float("nan"), "finite"),
    ("momentum", 1.5, "outside"),
    ("sync_strength", -0.1, "outside"),
    ("prompt", 3, "expected str"),
    ("seed", True, "expected int"),
])
def test_bad_request_fields_are_named(field_name, value, words):
    with pytest.raises(ProtocolError) as error:
        Request.from_dict({"prompt": "x", field_name: value})
    assert error.value.field == field_name
    assert words in str(error.value)


@pytest.mark.parametrize("changes, field_name", [
    (dict(attention="extended"), "attention"),
    (dict(attention="neighbors"), "attention"),
    (dict(layout="grid"), "layout"),
])
def test_animation_requests_take_only_frame_attention_and_the_views_layout(changes, field_name):
    Request(kind="animation", attention="tma").validate()
    Request(kind="texture", **changes).validate()  # fine for texturing
    with pytest.raises(ProtocolError) as raised:
        Request(kind="animation", **changes).validate()
    assert raised.value.field == field_name


def test_unknown_request_field_and_bad_json_are_named():
    with pytest.raises(ProtocolError, match="^colour: unknown field"):
        Request.from_dict({"colour": "red"})
    with pytest.raises(ProtocolError, match="^request: not valid JSON"):
        Request.from_json("{nope")
    with pytest.raises(ProtocolError, match="^control_end"):
        Request.from_dict({"control_start": 0.8, "control_end": 0.2})


def test_passes_round_trip_through_npz_bytes():
    passes = small_passes()
    loaded = Passes.load(passes.to_npz_bytes()).validate()
    for name, array in passes.arrays().items():
        np.testing.assert_array_equal(getattr(loaded, name), array)
        assert getattr(loaded, name).dtype == array.dtype


@pytest.mark.parametrize("mutate, field_name, words", [
    (lambda p: setattr(p, "uv", p.uv[:1]), "uv", "expected shape (2, 16, 16, 2)"),
    (lambda p: setattr(p, "mask", p.mask.astype(np.uint8)), "mask", "dtype bool"),
    (lambda p: setattr(p, "depth", p.depth.astype(np.float64)), "depth", "dtype float32"),
    (lambda p: p.uv.__setitem__((0, 5, 5, 0), np.nan), "uv", "NaN"),
    (lambda p: p.uv.__setitem__((0, 5, 5, 0), 1.5), "uv", "outside [0, 1]"),
    (lambda p: setattr(p, "mask", np.zeros_like(p.mask)), "mask", "empty"),
    (lambda p: setattr(p, "world_to_camera", p.world_to_camera[:, :3]), "world_to_camera", "(2, 4, 4)"),
    (lambda p: setattr(p, "texel_mask", np.ones((8, 4), bool)), "texel_mask", "T=8"),
])
def test_bad_passes_are_named(mutate, field_name, words):
    passes = small_passes()
    mutate(passes)
    with pytest.raises(ProtocolError) as error:
        passes.validate()
    assert error.value.field == field_name
    assert words in str(error.value)


def test_truncated_archive_is_a_clear_error():
    data = small_passes().to_npz_bytes()
    with pytest.raises(ProtocolError, match="^passes: not a readable .npz"):
        Passes.load(data[: len(data) // 2])


def test_background_uv_may_be_anything():
    passes = small_passes()
    passes.uv[~passes.mask] = -5.0
    passes.validate()


def test_background_surface_data_may_be_nan_but_target_pixels_may_not():
    passes = small_passes()
    passes.uv[~passes.mask] = np.nan
    passes.validate()
    passes.uv[0, 5, 5, 1] = np.inf  # a target pixel
    with pytest.raises(ProtocolError, match="^uv: contains NaN or inf on target pixels"):
        passes.validate()


def test_background_ids_round_trip_and_bad_ones_are_named():
    passes = small_passes()
    ids = np.zeros(passes.mask.shape, np.int32)
    ids[:, :3, :] = 2  # a background surface above the target
    passes.background_id = ids
    loaded = Passes.load(passes.validate().to_npz_bytes()).validate()
    np.testing.assert_array_equal(loaded.background_id, ids)
    for mutate, words in [
        (lambda p: setattr(p, "background_id", ids.astype(np.float32)), "dtype int32"),
        (lambda p: p.background_id.__setitem__((0, 5, 5), 1), "target pixels must have id 0"),
        (lambda p: p.uv.__setitem__((0, 1, 1, 0), 1.5), r"outside \[0, 1\] or not finite on background"),
        (lambda p: setattr(p, "uv", None), "needs the uv pass"),
    ]:
        broken = small_passes()
        broken.background_id = ids.copy()
        mutate(broken)
        with pytest.raises(ProtocolError, match=words):
            broken.validate()


# ---------------------------------------------------------------- hostile input

@pytest.mark.parametrize("text, field_name, words", [
    ("[" * 100_000 + "]" * 100_000, "request", "nested deeper"),  # RecursionError in the decoder
    ('{"prompt": ' + "[" * 9 + '"x"' + "]" * 9 + "}", "request", "nested deeper"),
    ('{"seed": ' + "9" * 5000 + "}", "seed", "5000 digits"),  # past Python's int digit limit
    ('{"seed": ' + "9" * 41 + "}", "seed", "41 digits"),
    ('{"seed": 9223372036854775808}', "seed", "outside"),  # one past the range: still a number
    ('{"kind": ' + "1" * 5000 + "}", "kind", "5000 digits"),
    ('{"guidance_scale": 1e99999}', "guidance_scale", "finite"),
    (b'{"prompt": "\xff"}', "request", "not valid JSON"),
])
def test_hostile_request_json_is_a_protocol_error_naming_the_field(text, field_name, words):
    with pytest.raises(ProtocolError) as error:
        Request.from_json(text)
    assert error.value.field == field_name and words in str(error.value)


def test_every_text_parameter_is_capped():
    from zs_core.protocol import PARAMETERS

    uncapped = [p.name for p in PARAMETERS.values() if p.type is str and p.max_length is None and not p.choices]
    assert not uncapped
    with pytest.raises(ProtocolError, match="^negative_prompt: longer than 4000"):
        Request.from_dict({"negative_prompt": "x" * 1_000_000})


def npz_with(**arrays) -> bytes:
    import io

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def test_an_npz_is_read_only_through_checked_headers():
    from zs_core.protocol import NpzArchive

    passes = small_passes()
    arrays = passes.arrays() | {"depth": np.asfortranarray(passes.depth)}
    with NpzArchive(npz_with(**arrays)) as archive:
        assert archive.headers["uv"].shape == (2, 16, 16, 2) and archive.headers["depth"].fortran_order
        assert archive.declared_bytes == sum(a.nbytes for a in arrays.values())
        loaded = archive.passes()
    for name, array in arrays.items():
        assert np.array_equal(getattr(loaded, name), array) and getattr(loaded, name).dtype == array.dtype


@pytest.mark.parametrize("change, field_name, words", [
    ({"colour": np.zeros(3)}, "colour", "unknown array"),
    ({"mask": np.zeros((2, 16, 16))}, "mask", "declared dtype <f8"),
    ({"depth": np.zeros((2, 16, 16), ">f4")}, "depth", "declared dtype >f4"),
    ({"depth": np.array([object()] * 2)}, "depth", "pickles"),
])
def test_unknown_arrays_and_wrong_dtypes_are_named_before_reading(change, field_name, words):
    with pytest.raises(ProtocolError) as error:
        Passes.load(npz_with(**(small_passes().arrays() | change)))
    assert error.value.field == field_name and words in str(error.value)


def test_passes_save_streams_to_the_file(tmp_path):
    passes = small_passes()
    passes.save(tmp_path / "passes.npz")  # no ".npz" appended, no second file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["passes.npz"]
    assert np.array_equal(Passes.load(tmp_path / "passes.npz").uv, passes.uv)


def test_zip_directory_reads_the_end_records_plain_and_zip64():
    import io
    import zipfile

    from zs_core.protocol import zip_directory

    for force_zip64 in (False, True):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for index in range(3):
                with archive.open(f"m{index}", "w", force_zip64=force_zip64) as member:
                    member.write(b"x")
            archive.comment = b"a comment after the record"
        entries, size = zip_directory(buffer)
        assert entries == 3 and size == sum(46 + len(i.filename) + len(i.extra) for i in
                                            zipfile.ZipFile(buffer).infolist())
    with pytest.raises(ValueError):
        zip_directory(io.BytesIO(b"not a zip"))


def test_completion_flags_round_trip_and_are_checked():
    passes = scene.sphere_scene(views=3, width=32, height=32, texture_size=32)
    passes.completion = np.array([False, False, True])
    loaded = Passes.load(passes.to_npz_bytes()).validate()
    assert loaded.completion.tolist() == [False, False, True]
    assert loaded.main_views.tolist() == [0, 1]
    for flags, message in ((np.array([True, True, True]), "at least one must not be"),
                           (np.array([False, True]), "expected shape (3,)"),
                           (np.array([0, 0, 1]), "expected dtype bool")):
        passes.completion = flags
        with pytest.raises(ProtocolError, match="completion") as caught:
            passes.validate()
        assert message in str(caught.value)
    passes.completion = np.array([False, False, True])
    passes.texel_mask = None
    with pytest.raises(ProtocolError, match="texel_mask"):
        passes.validate()
