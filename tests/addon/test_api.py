"""blender_addon.api and batch with real bpy, the tiny model in-process or a real server."""

from __future__ import annotations

import json

import numpy as np
import pytest

import bpy
from addon_helpers import add_camera, add_monkey, add_plane, data_counts
from blender_addon import api, apply, batch, image_pixels, rig
from blender_addon.errors import CaptureError
from blender_addon.client import Client, ServerError
from blender_addon.wire import ProtocolError
from zs_core import images
from zs_server_helpers import free_port

SMALL = dict(steps=2, view_size=64, texture_size=64, views=3, complete=False)  # completion: test_auto_rig.py


def image_matches_png(image, path) -> bool:
    return np.abs(image_pixels.image_to_numpy(image)[..., :3] - images.load_png(path)).max() <= 1 / 255 + 1e-6


def test_checks_run_before_the_scene_changes(scene, sampler, server):
    monkey = add_monkey()
    bare = add_plane(location=(3.0, 0.0, 0.0))
    bare.data.uv_layers.remove(bare.data.uv_layers[0])
    counts = data_counts()

    def fails(error, match, objects=(monkey,), **options):
        settings = api.TextureSettings(**{**SMALL, **options.pop("settings", {})})
        cameras = options.pop("cameras", None)
        with pytest.raises(error, match=match) as info:
            api.texture(list(objects), cameras, settings, **options)
        return info.value

    fails(CaptureError, "no mesh object", objects=(), sampler=sampler)
    fails(CaptureError, "object 'Plane' has no UV map; unwrap it or enable Smart UV Project",
          objects=(monkey, bare), sampler=sampler)
    fails(CaptureError, "object 'Nobody' does not exist", objects=("Nobody",), sampler=sampler)
    fails(ProtocolError, "view_size: 100 is not a multiple of 8", settings={"view_size": 100}, sampler=sampler)
    assert fails(ProtocolError, "steps", settings={"steps": 0}, sampler=sampler).field == "steps"
    fails(CaptureError, "is not a camera", cameras=[monkey], sampler=sampler)
    down = fails(ServerError, "cannot reach the ZS server", server=f"http://127.0.0.1:{free_port()}")
    assert down.status is None
    assert fails(ServerError, "token rejected", server=server.base_url, token="wrong").status == 401
    over = fails(ProtocolError, "steps: 500 is over this server's limit of 200", server=server.base_url,
                 token=server.token, settings={"steps": 500})  # refused before the capture, not after
    assert over.field == "steps"
    assert data_counts() == counts and rig.RIG_COLLECTION not in bpy.data.collections
    assert len(bare.data.uv_layers) == 0 and sampler.requests == []


def test_sampler_path_scene_cameras_and_smart_uv(scene, sampler, tmp_path):
    plane = add_plane()
    plane.data.uv_layers.remove(plane.data.uv_layers[0])
    cameras = [add_camera(scene, "Left", (-2.0, -4.0, 3.0)), add_camera(scene, "Right", (2.0, -4.0, 3.0))]
    settings = api.TextureSettings(prompt="wood", guidance_scale=5.0, smart_uv=True, seed=7, control_end=0.8,
                                   **SMALL)

    result = api.texture([plane], cameras, settings, sampler=sampler, out_dir=tmp_path / "job")

    (request,) = sampler.requests
    assert request["guidance_scale"] == 5.0 and request["seed"] == 7 and request["control_end"] == 0.8
    assert request["kind"] == "texture" and request["texture_size"] == 64 and request["prompt"] == "wood"
    assert result.cameras == cameras and result.metrics["views"] == 2 and result.job_id is None
    assert result.out_dir == tmp_path / "job" and result.texture_path == tmp_path / "job" / "texture.png"
    assert [layer.name for layer in plane.data.uv_layers] == ["ZS UV"]  # the requested Smart UV map
    (material,) = result.materials
    assert plane.material_slots[0].material == material
    node = material.node_tree.nodes[apply.NODE_LABEL]
    assert node.image == result.image and node.inputs["Vector"].links[0].from_node.uv_map == "ZS UV"
    assert image_matches_png(result.image, result.texture_path)
    assert result.image.packed_file is not None  # the file was never saved
    assert rig.RIG_COLLECTION not in bpy.data.collections  # cameras were given: no rig


def test_a_job_that_fails_after_the_capture_removes_the_smart_uv_map_it_added(scene, tmp_path):
    plane = add_plane()
    plane.data.uv_layers.remove(plane.data.uv_layers[0])
    camera = add_camera(scene, "Front", (0.0, -4.0, 3.0))

    def broken(request, passes, out_dir):
        assert [layer.name for layer in plane.data.uv_layers] == ["ZS UV"]  # there while sampling
        raise RuntimeError("the sampler broke")

    with pytest.raises(RuntimeError, match="the sampler broke"):
        api.texture([plane], [camera], api.TextureSettings(smart_uv=True, **SMALL), sampler=broken,
                     out_dir=tmp_path / "job")
    assert len(plane.data.uv_layers) == 0 and not (tmp_path / "job").exists()


def test_server_path_reports_progress_and_builds_a_rig(scene, server, tmp_path):
    monkey = add_monkey()
    events = []
    result = api.texture([monkey.name], None, api.TextureSettings(prompt="gold", **SMALL), server=server.base_url,
                         token=server.token, progress=lambda name, data: events.append((name, data)),
                         out_dir=tmp_path / "job")
    names = [name for name, _ in events]
    assert names[:3] == ["rendering"] * 3 and names[3:5] == ["submitted", "queued"] and names[-1] == "done"
    assert [data for name, data in events[:3]] == [{"done": i, "total": 3, "unit": "view"} for i in (1, 2, 3)]
    assert [data["step"] for name, data in events if name == "progress"] == [1, 2]
    assert len(result.cameras) == 3 and rig.rig_cameras() == result.cameras
    assert Client(server.base_url, server.token).status(result.job_id)["state"] == "done"
    assert result.metrics == json.loads((tmp_path / "job" / "metrics.json").read_text())
    assert (tmp_path / "job" / "views" / "0002.png").is_file()
    assert image_matches_png(result.image, result.texture_path)


def test_interrupt_cancels_the_job_on_the_server(scene, server, tmp_path):
    monkey = add_monkey()
    counts = data_counts()

    def interrupt(name, data):
        if name == "progress":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        api.texture([monkey], None, api.TextureSettings(**{**SMALL, "steps": 150}), server=server.base_url,
                    token=server.token, progress=interrupt, out_dir=tmp_path / "job")
    client = Client(server.base_url, server.token)
    (job,) = [j for j in client._json("GET", "/v1/jobs")["jobs"] if j["total"] == 150]
    states = [name for name, _ in client.events(job["id"])]
    assert states[-1] == "cancelled"
    # Nothing applied: only the rig the run built.
    assert data_counts()["materials"] == counts["materials"] and data_counts()["images"] == counts["images"]


def test_batch_main_argv_through_a_server(scene, server, tmp_path, capsys):
    source = batch.build_demo_scene(tmp_path / "in" / "scene.blend", subdivisions=0)
    out = tmp_path / "out"
    code = batch.main([str(source), "--object", "Suzanne", "--prompt", "jade", "--out", str(out),
                       "--server", server.base_url, "--token", server.token, "--cameras", "2",
                       "--no-complete", "--view-size", "64", "--steps", "2", "--texture-size", "64"])
    assert code == 0, capsys.readouterr().err
    assert str(out / "textured.blend") in capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["blend"]["cameras"] == ["ZS Cam 00", "ZS Cam 01"] and metrics["views"] == 2
    assert len(list((out / "zs_textures").glob("*.png"))) == 1
    # Inside `blender -b file.blend` the open file is the default.
    bpy.ops.wm.open_mainfile(filepath=str(source))
    assert batch.main(["--object", "Suzanne", "--prompt", "jade", "--out", str(tmp_path / "again"),
                       "--server", server.base_url, "--token", "wrong"]) == 2
    assert "token rejected" in capsys.readouterr().err
    assert not (tmp_path / "again" / "textured.blend").exists()
