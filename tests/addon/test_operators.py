"""The registered add-on in real bpy: register/unregister, the panel, the rig operator, and
Generate against a real uvicorn server with the tiny model, over real HTTP.

Background mode has no event loop, so the modal operator cannot receive timer events:
Generate is driven through ``GenerateSession`` (what modal() polls) and through the
operator's windowless execute path, which polls the same session until the job ends.
"""

from __future__ import annotations

import io
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

import bpy
from addon_helpers import RecordingLayout, Timers, add_camera, add_monkey, moving_cube_shot, needs_motion_vectors
from blender_addon.client import Client
from zs_server_helpers import free_port

import blender_addon
from blender_addon import compat, jobs, pass_render, preferences, properties, rig
from blender_addon.operators import generate, preview, server as server_ops

SIZE, STEPS, TEXTURE = 64, 2, 64
RING = [(4.0, 0.0, 1.0), (0.0, 4.0, 1.0), (-4.0, 0.0, 1.0), (0.0, -4.0, 1.0)]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
def connected(addon, server):
    addon.server_url, addon.token = server.base_url, server.token
    return addon


def suzanne_scene(material: bool = True):
    """Suzanne (selected, active, with a material "Original") and 4 selected cameras."""
    scene = bpy.context.scene
    monkey = add_monkey()
    if material:
        original = compat.new_material("Original")
        original.diffuse_color = (0.2, 0.4, 0.6, 1.0)
        monkey.data.materials.append(original)
    cameras = [add_camera(scene, f"Cam {index}", eye) for index, eye in enumerate(RING)]
    for obj in [monkey, *cameras]:
        obj.select_set(True)
    bpy.context.view_layer.objects.active = monkey
    settings = scene.zs_texturing
    settings.prompt = "rusty metal"
    settings.view_size, settings.steps, settings.texture_size = SIZE, STEPS, TEXTURE
    settings.views_source = "CAMERAS"
    settings.complete = False  # completion views: tests/addon/test_auto_rig.py
    return monkey, cameras, settings


def snapshot() -> dict:
    """Everything a failed Generate must leave as it was."""
    kinds = ("objects", "materials", "images", "meshes", "cameras", "collections", "node_groups")
    state = {kind: sorted(item.name for item in getattr(bpy.data, kind)) for kind in kinds}
    state["uv"] = {obj.name: [layer.name for layer in obj.data.uv_layers]
                   for obj in bpy.data.objects if obj.type == "MESH"}
    state["slots"] = {obj.name: [slot.material.name if slot.material else None for slot in obj.material_slots]
                      for obj in bpy.data.objects}
    state["camera"] = bpy.context.scene.camera.name if bpy.context.scene.camera else None
    return state


def run(session: generate.GenerateSession, timeout: float = 60.0) -> list[str]:
    """Poll like the modal timer until the job ends -> the distinct states seen."""
    states, deadline = [], time.monotonic() + timeout
    while True:
        state = session.poll()
        if not states or states[-1] != state:
            states.append(state)
        if state in jobs.FINISHED:
            return states
        assert time.monotonic() < deadline, f"job still {state} after {timeout} s"
        time.sleep(0.02)


def dead_url() -> str:
    """A loopback URL where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"


# ------------------------------------------------------------------------ registration


def test_register_and_unregister_leave_nothing_behind(scene):
    started = time.perf_counter()
    blender_addon.register()
    elapsed = time.perf_counter() - started
    try:
        assert elapsed < 1.0, f"register took {elapsed:.2f} s"
        names = [cls.__name__ for cls in blender_addon.classes]
        assert len(names) == len(set(names)) and "ZS_OT_generate" in names and "ZS_PT_main" in names
        for cls in blender_addon.classes:
            assert cls.is_registered, cls
        assert hasattr(bpy.types, "ZS_PT_main") and hasattr(bpy.types, "ZS_PT_method")
        assert bpy.ops.zs.generate.poll() and bpy.ops.zs.build_rig.poll()
        assert not bpy.ops.zs.cancel.poll()  # nothing runs
        settings = scene.zs_texturing
        assert (settings.noise, settings.attention, settings.views_source) == ("surface", "extended", "RIG")
        assert preferences.ADDON_ID == "blender_addon"
    finally:
        blender_addon.unregister()
    assert not hasattr(bpy.types.Scene, "zs_texturing")
    assert not hasattr(bpy.types, "ZS_PT_main") and not hasattr(bpy.types, "ZS_OT_generate")
    assert all(not cls.is_registered for cls in (properties.ZS_Settings, preferences.ZS_AddonPreferences))
    assert blender_addon.classes == ()


def test_settings_become_a_valid_request(addon):
    settings = bpy.context.scene.zs_texturing
    settings.prompt, settings.seed, settings.steps, settings.guidance_scale = "moss", 7, 12, 4.5
    settings.noise, settings.attention, settings.controlnet_scale = "iid", "neighbors", 0.7
    settings.sync_strength, settings.texture_size, settings.reference_weight = 0.6, 256, 2.5
    request = properties.build_request(settings)
    assert (request.prompt, request.seed, request.steps, request.guidance_scale) == ("moss", 7, 12, 4.5)
    assert (request.noise, request.attention, request.kind, request.texture_size) == ("iid", "neighbors", "texture", 256)
    # Single-precision properties come back as the decimals that were typed.
    assert (request.controlnet_scale, request.sync_strength, request.reference_weight) == (0.7, 0.6, 2.5)


def test_panels_draw_existing_properties_and_operators(addon):
    from blender_addon import ui

    settings = bpy.context.scene.zs_texturing
    for source in ("RIG", "CAMERAS"):
        settings.views_source = source
        for panel in ui.classes:
            layout = RecordingLayout()
            panel.draw(type("Panel", (), {"layout": layout})(), bpy.context)
            if panel is ui.ZS_PT_main:
                assert {"prompt", "negative_prompt", "seed", "steps", "guidance_scale", "controlnet_scale",
                        "views_source", "view_size"} <= set(layout.props)
                assert {"zs.generate", "zs.check_server", "zs.start_server"} <= set(layout.operators)
                assert ("views" in layout.props) == (source == "RIG")
    layout = RecordingLayout()
    ui.ZS_PT_method.draw(type("Panel", (), {"layout": layout})(), bpy.context)
    assert layout.props == ["noise", "attention", "scheduler", "sync_strength"]
    layout = RecordingLayout()
    ui.ZS_PT_advanced.draw(type("Panel", (), {"layout": layout})(), bpy.context)
    assert {"noise_alpha", "reference_view", "layout", "control_end", "sync_exponent_end"} <= set(layout.props)
    assert not {"prompt", "attention", "sync_strength", "chunk", "pixel_sync"} & set(layout.props)


# ----------------------------------------------------------------------------- rig


def test_build_rig_operator_makes_n_cameras_and_rerunning_replaces_them(addon):
    monkey = add_monkey()
    settings = bpy.context.scene.zs_texturing
    settings.views, settings.elevation, settings.top_view, settings.complete = 5, 30.0, True, False
    assert bpy.ops.zs.build_rig() == {"FINISHED"}
    cameras = rig.rig_cameras()
    assert len(cameras) == 6 and [c.name for c in cameras][-1] == "ZS Top 00"
    settings.views, settings.top_view = 3, False
    bpy.ops.zs.build_rig()
    assert [c.name for c in rig.rig_cameras()] == ["ZS Cam 00", "ZS Cam 01", "ZS Cam 02"]
    assert len(bpy.data.cameras) == 3 and monkey.name in bpy.data.objects


def test_build_rig_without_a_mesh_reports_an_error(addon):
    with pytest.raises(RuntimeError, match="select at least one mesh"):
        bpy.ops.zs.build_rig()


# --------------------------------------------------------------------------- generate


def test_generate_operator_applies_a_new_material_and_keeps_the_original(connected, server, tmp_path):
    monkey, cameras, settings = suzanne_scene()
    settings.output_folder = str(tmp_path / "textures")
    original = bpy.data.materials["Original"]
    objects_before = sorted(o.name for o in bpy.data.objects)
    started = time.perf_counter()
    assert bpy.ops.zs.generate() == {"FINISHED"}
    elapsed = time.perf_counter() - started

    material = monkey.material_slots[0].material
    assert material is not original and material.name.startswith("Original ZS Texture")
    assert original.name in bpy.data.materials and original.diffuse_color[:] == pytest.approx((0.2, 0.4, 0.6, 1.0))
    image = next(n.image for n in material.node_tree.nodes if n.bl_idname == "ShaderNodeTexImage")
    assert tuple(image.size) == (TEXTURE, TEXTURE)
    assert Path(bpy.path.abspath(image.filepath)).parent == tmp_path / "textures"
    assert Path(bpy.path.abspath(image.filepath)).is_file() and image.packed_file is None
    pixels = np.empty(TEXTURE * TEXTURE * 4, np.float32)
    image.pixels.foreach_get(pixels)
    assert pixels.reshape(-1, 4)[:, :3].std() > 0.01  # a texture, not a blank image
    assert "ZS Preview" in bpy.data.images and bpy.data.images["ZS Preview"].size[0] > 0
    assert sorted(o.name for o in bpy.data.objects) == objects_before  # no camera left behind
    assert settings.status.startswith("Done") and settings.progress == pytest.approx(1.0) and settings.job_id
    status = Client(server.base_url, server.token).status(settings.job_id)
    assert status["state"] == "done"
    assert jobs.active() is None and bpy.ops.zs.generate.poll()
    print(f"generate operator: {elapsed:.2f} s for {len(cameras)} views of {SIZE}^2, {STEPS} steps")


def test_session_polled_like_the_modal_timer_with_a_temporary_rig(connected, server):
    monkey, _cameras, settings = suzanne_scene()
    settings.views_source, settings.views, settings.steps = "RIG", 3, 4
    before = snapshot()
    session = generate.GenerateSession(bpy.context.scene, generate.client_from_preferences(bpy.context))
    session.start(bpy.context)
    assert snapshot() == before  # the rig existed only for the capture
    assert session.views == 3 and jobs.active() is session.job and not bpy.ops.zs.generate.poll()
    seen_progress = []
    states, deadline = [], time.monotonic() + 60
    while (state := session.poll()) not in jobs.FINISHED:
        states.append(state)
        seen_progress.append(settings.progress)
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert state == "done", session.error
    assert settings.job_id == session.job.job_id and session.job.texture_path.is_file()
    assert seen_progress == sorted(seen_progress) and all(0.0 <= p <= 1.0 for p in seen_progress)
    assert "running" in states
    assert "ZS Preview" in bpy.data.images
    assert session.apply() == {"FINISHED"}
    session.close()
    assert not session.job.texture_path.exists()  # the download folder is cleaned up
    assert monkey.material_slots[0].material.name.startswith("Original ZS Texture")


def marked_undo_steps() -> None:
    """Two undo steps before an apply: "base", then "marker", which adds a material Marker.
    The applied result must be one step of its own after "marker": one undo lands on
    "marker" (Marker there, the result gone). Had the apply pushed no step, the result
    would belong to no step and that undo would skip back to "base" (no Marker); had it
    pushed two, the undo would stop halfway."""
    bpy.ops.ed.undo_push(message="base")
    compat.new_material("Marker").use_fake_user = True
    bpy.ops.ed.undo_push(message="marker")


def assert_one_undo_step(before: dict, after: dict, state=snapshot) -> None:
    """The real undo stack of the bpy module: undo -> ``before`` (marker step), redo ->
    ``after``, and the step before is "base" (no Marker)."""
    assert after != before
    bpy.ops.ed.undo()
    assert state() == before
    bpy.ops.ed.redo()
    assert state() == after
    bpy.ops.ed.undo()
    bpy.ops.ed.undo()
    assert "Marker" not in bpy.data.materials


@pytest.mark.parametrize("finish", ["modal", "execute"])
def test_generate_applies_its_texture_as_one_undo_step(connected, server, finish):
    """Found by trying: bpy.ops.ed.undo / redo work in the bpy module (its window manager
    has a window; bpy.ops.ed.undo_push starts the undo stack in background mode), and an
    operator called from Python pushes no undo step whatever its UNDO option, so Generate
    pushes "ZS Generate" itself. (The step's name is not readable from Python; the
    structure is: exactly one step holds the whole result.)"""
    monkey, _cameras, _settings = suzanne_scene()
    if finish == "modal":  # the modal timer's poll, then _end / _finish as in the UI
        driver = ModalDriver(generate.GenerateSession(bpy.context.scene,
                                                      generate.client_from_preferences(bpy.context)).start(bpy.context))
        marked_undo_steps()
        before = snapshot()
        deadline = time.monotonic() + 60
        while (result := driver.send("TIMER")) == {"PASS_THROUGH"}:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert result == {"FINISHED"}, driver.reports
    else:  # the windowless execute: check, capture, sample and apply in one call
        marked_undo_steps()
        before = snapshot()
        assert bpy.ops.zs.generate() == {"FINISHED"}
    after = snapshot()
    assert after["slots"]["Suzanne"][0].startswith("Original ZS Texture") and "ZS Preview" in after["images"]
    assert_one_undo_step(before, after)
    assert bpy.data.objects["Suzanne"].material_slots[0].material.name == "Original"


def test_apply_result_run_from_the_interface_is_one_undo_step(addon, tmp_path):
    """zs.apply_result on its own, called as the interface calls it (undo on: the second
    positional argument of a bpy.ops call)."""
    from PIL import Image

    monkey, _cameras, _settings = suzanne_scene()
    Image.new("RGB", (16, 16), (200, 40, 40)).save(tmp_path / "texture.png")
    marked_undo_steps()
    before = snapshot()
    assert bpy.ops.zs.apply_result("EXEC_DEFAULT", True, filepath=str(tmp_path / "texture.png"),
                                   objects=[{"name": monkey.name, "uv_map": ""}]) == {"FINISHED"}
    assert_one_undo_step(before, snapshot())


def test_server_down_reports_an_error_and_changes_nothing(addon):
    addon.server_url = dead_url()
    monkey, _cameras, settings = suzanne_scene()
    monkey.data.uv_layers.remove(monkey.data.uv_layers[0])
    settings.smart_uv = True  # would add a UV map if Generate got that far
    before = snapshot()
    started = time.perf_counter()
    with pytest.raises(RuntimeError, match="cannot reach the ZS server"):
        bpy.ops.zs.generate()
    assert time.perf_counter() - started < 5.0  # found before any rendering
    assert snapshot() == before and "ZS Preview" not in bpy.data.images
    assert jobs.active() is None


def test_rejected_token_reports_an_error_and_changes_nothing(connected):
    connected.token = "not-the-token"
    suzanne_scene()
    before = snapshot()
    with pytest.raises(RuntimeError, match="token rejected"):
        bpy.ops.zs.generate()
    assert snapshot() == before


def test_a_job_over_the_servers_limits_is_refused_before_the_capture(connected, server):
    """Steps over the server's limit of 200 (read from its health route): refused before
    anything is rendered or added (not even the Smart UV map), and no folder is left."""
    monkey, _cameras, settings = suzanne_scene()
    monkey.data.uv_layers.remove(monkey.data.uv_layers[0])
    settings.smart_uv, settings.steps = True, 500
    before = snapshot()
    folders = set(Path(tempfile.gettempdir()).glob("zs-*"))
    with pytest.raises(RuntimeError, match="steps"):
        bpy.ops.zs.generate()
    assert snapshot() == before
    assert set(Path(tempfile.gettempdir()).glob("zs-*")) <= folders  # no download folder left behind


def test_missing_uv_map_and_missing_cameras_are_clear_errors(connected):
    monkey, cameras, settings = suzanne_scene()
    monkey.data.uv_layers.remove(monkey.data.uv_layers[0])
    with pytest.raises(RuntimeError, match="has no UV map; unwrap it or enable Smart UV Project"):
        bpy.ops.zs.generate()
    for camera in cameras:
        camera.select_set(False)
    with pytest.raises(RuntimeError, match="no camera selected"):
        bpy.ops.zs.generate()
    settings.view_size = 100
    with pytest.raises(RuntimeError, match="multiple of 8"):
        bpy.ops.zs.generate()


def test_cancel_mid_job_cancels_it_on_the_server(connected, server):
    monkey, _cameras, settings = suzanne_scene()
    settings.steps = 200  # long enough to be caught running
    before = snapshot()
    session = generate.GenerateSession(bpy.context.scene, generate.client_from_preferences(bpy.context))
    session.start(bpy.context)
    deadline = time.monotonic() + 60
    while not (session.poll() == "running" and session.job.step >= 1):
        assert time.monotonic() < deadline and not session.finished, session.error
        time.sleep(0.02)
    assert bpy.ops.zs.cancel.poll()
    assert bpy.ops.zs.cancel() == {"FINISHED"}
    if session.poll() not in jobs.FINISHED:
        assert settings.status == "Cancelling"
    assert run(session)[-1] == "cancelled"
    assert session.job.wait(10)
    client = Client(server.base_url, server.token)
    deadline = time.monotonic() + 30
    while (status := client.status(session.job.job_id))["state"] != "cancelled":
        assert status["state"] == "running" and time.monotonic() < deadline, status
        time.sleep(0.05)
    assert status["step"] < 200
    session.close()
    assert settings.status == "Cancelled"
    state = snapshot()
    state["images"].remove("ZS Preview")  # the live preview stays; nothing else was added
    assert state == before
    assert [slot.material.name for slot in monkey.material_slots] == ["Original"]
    assert jobs.active() is None and bpy.ops.zs.generate.poll()


def test_a_queued_generate_says_its_place_and_the_job_it_waits_on(connected, server):
    """Another client's long job runs first: the panel says where ours stands, live."""
    from blender_addon import ui
    from zs_core import scene as zs_scene
    from zs_core.protocol import Request

    _monkey, _cameras, settings = suzanne_scene()
    client = Client(server.base_url, server.token)
    npz = zs_scene.sphere_scene(views=2, width=64, height=64, texture_size=64).to_npz_bytes()
    ahead = client.submit(Request(prompt="ahead", steps=200, texture_size=64).to_dict(), npz)
    try:
        session = generate.GenerateSession(bpy.context.scene, generate.client_from_preferences(bpy.context))
        session.start(bpy.context)
        deadline, statuses = time.monotonic() + 60, []
        while not (session.poll() == "queued" and "at step" in settings.status):
            statuses.append(settings.status)
            assert time.monotonic() < deadline and not session.finished, (session.error, statuses)
            time.sleep(0.02)
        match = re.fullmatch(r"Queued: 1st in line; waiting on a texture job at step (\d+)/200", settings.status)
        assert match, settings.status
        assert session.job.waiting_on["id"] == ahead and session.job.queue_position == 1
        layout = RecordingLayout()
        ui.ZS_PT_main.draw(type("Panel", (), {"layout": layout})(), bpy.context)
        assert settings.status in " ".join(layout.labels) and "zs.cancel" in layout.operators
        while session.poll() == "queued" and settings.status == match.group(0):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        later = re.fullmatch(r"Queued: 1st in line; waiting on a texture job at step (\d+)/200", settings.status)
        assert later and int(later.group(1)) > int(match.group(1)), settings.status  # the steps come live
    finally:
        client.cancel(ahead)  # then ours runs
    assert run(session)[-1] == "done", session.error
    session.close()


@pytest.mark.parametrize("position, waiting_on, text", [
    (None, None, "Queued on the server"),
    (1, None, "Queued: 1st in line"),
    (2, {"id": "x", "kind": "texture", "step": 3, "total": 20, "cancelling": False},
     "Queued: 2nd in line; waiting on a texture job at step 3/20"),
    (3, {"id": "x", "kind": "animation", "step": 0, "total": 20, "cancelling": False},
     "Queued: 3rd in line; waiting on an animation job that is starting"),
    (12, {"id": "x", "kind": "texture", "step": 7, "total": 20, "cancelling": True},
     "Queued: 12th in line; waiting for a cancelled job to stop"),
])
def test_queue_text_names_the_place_and_what_runs_ahead(position, waiting_on, text):
    assert jobs.queue_text(position, waiting_on) == text


# ----------------------------------------------------------------------------- preview


def test_preview_png_lands_in_the_preview_image(addon):
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    image = preview.show(buffer.getvalue())
    assert image.name == "ZS Preview" and tuple(image.size) == (40, 24)
    stored = np.empty(40 * 24 * 4, np.float32)
    image.pixels.foreach_get(stored)
    stored = stored.reshape(24, 40, 4)[::-1]  # Blender rows are bottom-up
    np.testing.assert_allclose(stored[..., :3] * 255.0, pixels, atol=0.51)
    images_before = len(bpy.data.images)
    smaller = io.BytesIO()
    Image.fromarray(pixels[:8, :16]).save(smaller, format="PNG")
    assert tuple(preview.show(smaller.getvalue()).size) == (16, 8)  # resized, not a second image
    assert len(bpy.data.images) == images_before
    with pytest.raises(ValueError, match="not a readable PNG"):
        preview.show(b"not a png")


# ------------------------------------------------------------------------------ server


def test_check_reports_online_offline_and_a_bad_token(server):
    online = server_ops.check(server.base_url, server.token)
    assert online.state == "online" and online.server_model
    assert server_ops.check(server.base_url, "wrong").state == "error"
    offline = server_ops.check(dead_url(), None)
    assert offline.state == "offline" and "cannot reach" in offline.message


def test_launch_runs_the_command_with_the_port_and_data_dir(addon, tmp_path):
    port = free_port()
    addon.server_url = f"http://127.0.0.1:{port}"
    addon.data_dir = str(tmp_path / "data")
    script = "import os; print(os.environ['ZS_PORT'], os.environ['ZS_HOST'], os.environ['ZS_DATA_DIR'])"
    addon.launch_command = f'"{sys.executable}" -c "{script}"'
    process = server_ops.launch(addon)
    assert process.wait(30) == 0
    log = server_ops._log_path.read_text().split()
    assert log == [str(port), "127.0.0.1", str(tmp_path / "data")]
    assert not server_ops.started_here()

    addon.launch_command = "zs-no-such-command serve"
    with pytest.raises(ValueError, match="cannot run 'zs-no-such-command'"):
        server_ops.launch(addon)
    addon.server_url = "http://192.0.2.1:8765"
    with pytest.raises(ValueError, match="not on this computer"):
        server_ops.launch(addon)


def test_token_is_read_from_the_data_folder_when_the_field_is_empty(addon, tmp_path):
    addon.data_dir = str(tmp_path)
    assert preferences.resolve_token(addon) is None
    (tmp_path / "token").write_text("abc123\n")
    assert preferences.resolve_token(addon) == "abc123"
    addon.token = "typed"
    assert preferences.resolve_token(addon) == "typed"
    addon.token, addon.server_url = "", "http://192.0.2.1:8765"
    assert preferences.resolve_token(addon) is None  # a remote server's token is not here


# ------------------------------------------------------------------------------- modal


class ModalDriver:
    """The operator's own modal()/_end()/_finish() code run on a stand-in ``self``.

    Blender refuses INVOKE calls in background mode ("Invalid operator call"), so no
    modal handler can be installed; the methods are plain functions on the class, so
    they can be bound to this object and fed timer and key events by hand."""

    def __init__(self, session):
        self._session, self._timer, self.reports = session, None, []
        for name in ("modal", "_end", "_finish", "_show_progress"):
            setattr(self, name, getattr(generate.ZS_OT_generate, name).__get__(self))

    def report(self, kind, message):
        self.reports.append((next(iter(kind)), message))

    def send(self, event_type: str, value: str = "NOTHING"):
        event = type("Event", (), {"type": event_type, "value": value})()
        return self.modal(bpy.context, event)


def test_modal_timer_drives_the_job_to_the_applied_texture(connected, server):
    monkey, _cameras, settings = suzanne_scene()
    session = generate.GenerateSession(bpy.context.scene, generate.client_from_preferences(bpy.context))
    driver = ModalDriver(session.start(bpy.context))
    assert driver.send("MOUSEMOVE") == {"PASS_THROUGH"}  # other events go on to Blender
    deadline = time.monotonic() + 60
    while (result := driver.send("TIMER")) == {"PASS_THROUGH"}:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert result == {"FINISHED"}, driver.reports
    material = monkey.material_slots[0].material
    assert material.name.startswith("Original ZS Texture")
    image = next(n.image for n in material.node_tree.nodes if n.bl_idname == "ShaderNodeTexImage")
    assert image.packed_file is not None  # the default //zs_textures/ of an unsaved file: packed
    assert driver._session is None and settings.status.startswith("Done")


def test_escape_in_modal_cancels_the_job_on_the_server(connected, server):
    monkey, _cameras, settings = suzanne_scene()
    settings.steps = 200
    session = generate.GenerateSession(bpy.context.scene, generate.client_from_preferences(bpy.context))
    driver = ModalDriver(session.start(bpy.context))
    deadline = time.monotonic() + 60
    while not (session.job.step >= 1 or session.finished):
        assert driver.send("TIMER") == {"PASS_THROUGH"} and time.monotonic() < deadline
        time.sleep(0.02)
    assert driver.send("ESC", "PRESS") == {"CANCELLED"}
    assert ("WARNING", "ZS job cancelled") in driver.reports
    assert session.job.wait(10)
    client = Client(server.base_url, server.token)
    deadline = time.monotonic() + 30
    while client.status(session.job.job_id)["state"] != "cancelled":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert [slot.material.name for slot in monkey.material_slots] == ["Original"]
    assert jobs.active() is None or not jobs.active().alive


def test_connect_button_checks_the_server_without_blocking(connected, server, monkeypatch):
    timers = Timers(monkeypatch)
    assert bpy.ops.zs.check_server() == {"FINISHED"}
    assert server_ops.STATUS.state == "checking" and len(timers.callbacks) == 1  # answered later
    timers.run()
    assert server_ops.STATUS.state == "online" and server_ops.STATUS.url == server.base_url
    connected.token = "wrong"
    bpy.ops.zs.check_server()
    timers.run()
    assert server_ops.STATUS.state == "error" and "token rejected" in server_ops.STATUS.message


def test_start_button_reports_a_server_that_exits(addon, monkeypatch):
    timers = Timers(monkeypatch)
    addon.server_url = dead_url()
    addon.launch_command = f'"{sys.executable}" -c "print(\\"no model here\\"); raise SystemExit(3)"'
    assert bpy.ops.zs.start_server() == {"FINISHED"}
    assert server_ops.STATUS.state == "starting"
    timers.run()
    assert server_ops.STATUS.state == "offline"
    assert "exited (code 3): no model here" in server_ops.STATUS.message
    assert not server_ops.started_here() and bpy.ops.zs.start_server.poll()


# -------------------------------------------------------------------------- animation


def shot_scene():
    """The moving cube over frames 1-4 (64x64 output) in the add-on fixture's fresh scene,
    Animation mode, 2 steps, 2 frames a chunk."""
    scene, cube, camera = moving_cube_shot(frames=4, size=SIZE, reset=False)
    settings = scene.zs_texturing
    settings.mode, settings.prompt, settings.steps, settings.chunk = "ANIMATION", "a tin toy", STEPS, 2
    return scene, cube, camera, settings


def shot_snapshot(scene) -> dict:
    """snapshot() plus what loading frames adds: strips and camera background images."""
    state = snapshot()
    editor = scene.sequence_editor
    state["strips"] = sorted(strip.name for strip in compat.strips(editor)) if editor is not None else []
    state["backgrounds"] = {camera.name: len(camera.background_images) for camera in bpy.data.cameras}
    return state


def test_animation_settings_become_a_valid_request(addon):
    settings = bpy.context.scene.zs_texturing
    settings.mode = "ANIMATION"
    settings.prompt, settings.seed, settings.noise, settings.background_noise = "ink", 4, "fixed", "dependency"
    settings.anim_attention, settings.keyframes, settings.momentum, settings.chunk = "keyframes", "middle", 0.2, 5
    settings.anim_sync_strength, settings.background_sync, settings.pixel_sync = 0.8, 0.6, 0.3
    settings.background_uv = True
    request = properties.build_request(settings)
    assert request.background_uv is True
    assert (request.kind, request.prompt, request.seed, request.noise) == ("animation", "ink", 4, "fixed")
    assert (request.background_noise, request.attention, request.keyframes, request.chunk) == \
        ("dependency", "keyframes", "middle", 5)
    assert (request.momentum, request.sync_strength, request.background_sync, request.pixel_sync) == \
        pytest.approx((0.2, 0.8, 0.6, 0.3))
    items = properties.ZS_Settings.bl_rna.properties["anim_attention"].enum_items
    assert [item.identifier for item in items] == ["self", "keyframes", "tma"]
    settings.mode = "TEXTURE"
    assert properties.build_request(settings).kind == "texture"


def test_panels_in_animation_mode_draw_the_shot_and_the_animation_method(addon):
    from blender_addon import ui

    settings = bpy.context.scene.zs_texturing
    settings.mode = "ANIMATION"
    for use_scene_range, attention in ((True, "tma"), (False, "keyframes")):
        settings.use_scene_range, settings.anim_attention = use_scene_range, attention
        main, method, output = RecordingLayout(), RecordingLayout(), RecordingLayout()
        ui.ZS_PT_main.draw(type("Panel", (), {"layout": main})(), bpy.context)
        ui.ZS_PT_method.draw(type("Panel", (), {"layout": method})(), bpy.context)
        ui.ZS_PT_output.draw(type("Panel", (), {"layout": output})(), bpy.context)
        assert {"mode", "prompt", "use_scene_range", "anim_camera"} <= set(main.props)
        assert not {"views_source", "view_size", "views"} & set(main.props)
        range_props = {"frame_start", "frame_end"} if use_scene_range else {"anim_frame_start", "anim_frame_end"}
        assert range_props <= set(main.props)
        assert "No scene camera: add one or pick one" in main.labels  # the empty scene has none
        assert "zs.generate" in main.operators
        expected = ["noise", "background_noise", "anim_attention", "momentum" if attention == "tma" else "keyframes",
                    "chunk", "scheduler", "anim_sync_strength", "background_sync", "background_uv", "pixel_sync"]
        assert method.props == expected
        assert output.props == ["uv_map", "frames_folder"]


@needs_motion_vectors
def test_generate_in_animation_mode_loads_the_frames(connected, server, tmp_path):
    scene, cube, camera, settings = shot_scene()
    settings.frames_folder = str(tmp_path / "frames")
    started = time.perf_counter()
    assert bpy.ops.zs.generate() == {"FINISHED"}
    elapsed = time.perf_counter() - started

    out = tmp_path / "frames" / "ZS_Animation"  # a new folder under the Frames setting
    files = [out / "frames" / f"{index:04d}.png" for index in range(4)]
    assert all(path.is_file() for path in files) and (out / "metrics.json").is_file()
    (strip,) = compat.strips(scene.sequence_editor)
    assert (strip.type, strip.frame_final_start, strip.frame_final_duration) == ("IMAGE", 1, 4)
    assert Path(bpy.path.abspath(strip.directory)).resolve() == (out / "frames").resolve()
    (background,) = camera.data.background_images
    assert camera.data.show_background_images and background.image.source == "SEQUENCE"
    assert Path(bpy.path.abspath(background.image.filepath)).resolve() == files[0].resolve()
    assert [slot.material.name for slot in cube.material_slots] == ["Original"]
    assert settings.status.startswith("Done: 4 frames") and settings.progress == pytest.approx(1.0)
    assert Client(server.base_url, server.token).status(settings.job_id)["state"] == "done"
    assert "ZS Preview" in bpy.data.images and jobs.active() is None
    print(f"generate (animation): {elapsed:.2f} s for 4 frames of {SIZE}^2, {STEPS} steps")

    # The load operator on its own: the same frames again, from frame 10, on the next free channel.
    assert bpy.ops.zs.load_animation(directory=str(out / "frames"), frame_start=10) == {"FINISHED"}
    strips = sorted(compat.strips(scene.sequence_editor), key=lambda s: s.frame_final_start)
    assert [(s.frame_final_start, s.frame_final_duration, s.channel) for s in strips] == [(1, 4, 1), (10, 4, 1)]
    assert len(camera.data.background_images) == 2
    with pytest.raises(RuntimeError, match="no frames"):
        bpy.ops.zs.load_animation(directory=str(tmp_path))


@needs_motion_vectors
def test_animation_session_progress_per_step_and_one_undo_step(connected, server):
    scene, _cube, camera, settings = shot_scene()
    settings.steps = 3
    session = generate.session_for(scene, generate.client_from_preferences(bpy.context))
    assert isinstance(session, generate.AnimationSession)
    driver = ModalDriver(session.start(bpy.context))
    assert session.views == 4 and session.frames == [1, 2, 3, 4]
    statuses, deadline = [], time.monotonic() + 120
    marked_undo_steps()
    before = shot_snapshot(scene)
    while (result := driver.send("TIMER")) == {"PASS_THROUGH"}:
        statuses.append(settings.status)
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert result == {"FINISHED"}, driver.reports
    steps = [status for status in statuses if status.startswith("Step")]
    assert steps and set(steps) <= {"Step 1/3", "Step 2/3", "Step 3/3"} and steps == sorted(steps)
    after = shot_snapshot(scene)  # image sequence, camera background and strip: one "ZS Generate" step
    assert after["strips"] == ["ZS Animation"] and after["backgrounds"]["Camera"] == 1
    assert_one_undo_step(before, after, lambda: shot_snapshot(bpy.context.scene))


@needs_motion_vectors
def test_animation_mode_checks_frames_camera_and_uv_before_rendering(addon, monkeypatch):
    addon.server_url = dead_url()  # the checks come before the server is asked
    scene, cube, camera, settings = shot_scene()
    renders = []
    monkeypatch.setattr(pass_render, "render_frame_passes", lambda *args, **kwargs: renders.append(args))
    before = shot_snapshot(scene)
    settings.use_scene_range, settings.anim_frame_start, settings.anim_frame_end = False, 3, 8
    with pytest.raises(RuntimeError, match=r"frame\(s\) 5-8 are outside the frame range 1-4 of scene 'Scene'"):
        bpy.ops.zs.generate()
    settings.use_scene_range = True
    scene.camera = None
    with pytest.raises(RuntimeError, match="scene 'Scene' has no active camera"):
        bpy.ops.zs.generate()
    stray = bpy.data.objects.new("Stray", bpy.data.cameras.new("Stray"))
    settings.anim_camera = stray
    with pytest.raises(RuntimeError, match="camera 'Stray' is not in scene 'Scene'"):
        bpy.ops.zs.generate()
    settings.anim_camera = camera
    uv = cube.data.uv_layers[0].name
    cube.data.uv_layers.remove(cube.data.uv_layers[0])
    with pytest.raises(RuntimeError, match="object 'Cube' has no UV map; surface noise"):
        bpy.ops.zs.generate()
    cube.data.uv_layers.new(name=uv)
    settings.background_uv = True  # the default; the cube is the only mesh: the vector pass alone, no error
    with pytest.raises(RuntimeError, match="cannot reach the ZS server"):  # all checks passed: the server next
        bpy.ops.zs.generate()
    assert renders == []
    settings.anim_camera = None
    scene.camera = camera
    bpy.data.objects.remove(stray)
    bpy.data.cameras.remove(bpy.data.cameras["Stray"])
    assert shot_snapshot(scene) == before


@needs_motion_vectors
def test_cancelled_animation_leaves_no_frames_folder(connected, server, tmp_path):
    scene, _cube, camera, settings = shot_scene()
    settings.steps, settings.frames_folder = 200, str(tmp_path)
    before = shot_snapshot(scene)
    session = generate.session_for(scene, generate.client_from_preferences(bpy.context)).start(bpy.context)
    deadline = time.monotonic() + 60
    while not (session.poll() == "running" and session.job.step >= 1):
        assert time.monotonic() < deadline and not session.finished, session.error
        time.sleep(0.02)
    session.cancel()
    assert run(session)[-1] == "cancelled"
    assert session.job.wait(10)
    session.close()
    assert session.out_dir == tmp_path / "ZS_Animation" and not session.out_dir.exists()
    state = shot_snapshot(scene)
    state["images"].remove("ZS Preview")
    assert state == before
