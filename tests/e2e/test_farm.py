"""`zs farm BATCH.toml`: a batch of two passes bundles and a .blend through the in-process
server (its jobs and the .blend's pass render on a local Ray cluster), resumed, re-run
after a change, and bad batches named by job and key."""

from __future__ import annotations

import json
import os
import secrets

import pytest

bpy = pytest.importorskip("bpy")
ray = pytest.importorskip("ray")

import zs_cli as cli  # noqa: E402
from zs_cli import farm  # noqa: E402
from zs_core import scene  # noqa: E402
from zs_server_helpers import ServerThread, make_settings  # noqa: E402

SETTINGS = "steps = 2\ntexture_size = 64\nview_size = 64\nviews = 2\ncomplete = false\nnoise = \"surface\"\n"


@pytest.fixture(scope="module")
def bpy_cluster():
    """A local Ray cluster of 2 CPUs whose node declares the ``bpy`` resource, as the farm's
    own local cluster does (a session cluster of other tests is replaced: it lacks it)."""
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, resources={farm.BPY_RESOURCE: 1}, object_store_memory=200 * 1024 ** 2,
             include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Two sphere bundles (.npz) and a cube .blend (it has a UV map) in one folder."""
    folder = tmp_path_factory.mktemp("farm-sources")
    for name in ("sphere_a", "sphere_b"):
        scene.sphere_scene(views=2, width=64, height=64, texture_size=64).save(folder / f"{name}.npz")
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.mesh.primitive_cube_add()
    bpy.context.active_object.name = "Box"
    bpy.ops.wm.save_as_mainfile(filepath=str(folder / "box.blend"))
    return folder


def write_batch(folder, prompts: dict, extra: str = "") -> str:
    path = folder / "batch.toml"
    path.write_text(f"[defaults]\n{SETTINGS}\n"
                    f'[[job]]\nname = "a"\nsource = "sphere_a.npz"\nprompt = "{prompts["a"]}"\n\n'
                    f'[[job]]\nname = "b"\nsource = "sphere_b.npz"\nprompt = "{prompts["b"]}"\nseed = 3\n\n'
                    f'[[job]]\nname = "box"\nsource = "box.blend"\nobjects = ["Box"]\nprompt = "{prompts["box"]}"\n'
                    + extra)
    return str(path)


def recorded(out, name: str) -> dict:
    return json.loads((out / name / farm.FARM_JSON).read_text())


def test_farm_runs_resumes_and_reruns_what_changed(bpy_cluster, sources, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ZS_RAY_THREADS", "1")  # one worker of one CPU: the other is the pass render's
    out = tmp_path / "out"
    prompts = {"a": "red brick", "b": "blue tiles", "box": "oak wood"}
    batch = write_batch(sources, prompts)

    assert cli.main(["farm", batch, "--out", str(out), "--ray-workers", "1"]) == 0
    err = capsys.readouterr().err
    assert "passes render in Ray workers" in err
    for name in ("a", "b", "box"):
        metrics = json.loads((out / name / "metrics.json").read_text())
        assert metrics["views"] == 2 and metrics["steps"] == 2 and metrics["texture_size"] == 64
        assert (out / name / "texture.png").is_file() and (out / name / "views" / "0001.png").is_file()
    assert json.loads((out / "b" / "metrics.json").read_text())["request"]["seed"] == 3
    assert json.loads((out / "box" / "request.json").read_text())["prompt"] == "oak wood"
    assert (out / "box" / "passes.npz").is_file()  # the .blend's bundle, rendered on a Ray worker
    assert not list(out.glob(".*.partial"))
    first = {name: recorded(out, name)["job_id"] for name in ("a", "b", "box")}
    assert len(set(first.values())) == 3

    # The same batch again: everything skipped, no server started, nothing rewritten.
    assert cli.main(["farm", batch, "--out", str(out), "--ray", "off"]) == 0
    err = capsys.readouterr().err
    assert err.count("skipped") == 3 and "all 3 jobs done" in err
    assert {name: recorded(out, name)["job_id"] for name in first} == first

    # One prompt changed: only that job runs (the embedded worker is enough for a bundle).
    write_batch(sources, dict(prompts, b="green moss"))
    assert cli.main(["farm", batch, "--out", str(out), "--ray", "off"]) == 0
    err = capsys.readouterr().err
    assert "1 done, 2 skipped, 0 failed" in err
    again = {name: recorded(out, name)["job_id"] for name in first}
    assert again["a"] == first["a"] and again["box"] == first["box"] and again["b"] != first["b"]
    assert json.loads((out / "b" / "metrics.json").read_text())["request"]["prompt"] == "green moss"


@pytest.mark.parametrize("extra, message", [
    ('[[job]]\nname = "c"\nsource = "sphere_a.npz"\nstepz = 4\n', "job 'c': unknown key 'stepz'"),
    ('[[job]]\nname = "c"\nsource = "sphere_a.npz"\nsteps = 0\n', "job 'c': steps: 0 is outside [1, 1000]"),
    ('[[job]]\nname = "c"\nsource = "sphere_a.npz"\nview_size = 64\n', "job 'c': view_size: not taken by passes"),
    ('[[job]]\nname = "c"\nsource = "sphere_a.npz"\nchunk = 4\n', "job 'c': chunk: not taken by texture jobs"),
    ('[[job]]\nname = "a"\nsource = "sphere_b.npz"\n', "job 'a': the name is used twice"),
    ('[[job]]\nname = "c"\nsource = "missing.npz"\n', "job 'c': source:"),
])
def test_bad_batches_name_the_job_and_the_key(sources, tmp_path, capsys, extra, message):
    batch = write_batch(sources, {"a": "x", "b": "y", "box": "z"}, extra)
    assert cli.main(["farm", batch, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not (tmp_path / "out").exists()  # checked before anything runs


def test_a_failed_job_does_not_stop_the_others(sources, tmp_path, capsys, tiny):
    """Through ``--server`` (a real server): a .blend whose object is missing fails (its
    passes render in this process, no Ray here); the bundle still runs; exit code 1."""
    if ray.is_initialized():
        ray.shutdown()
    path = sources / "broken.toml"
    path.write_text(f"[defaults]\n{SETTINGS}\n"
                    '[[job]]\nname = "ghost"\nsource = "box.blend"\nobjects = ["Nobody"]\n\n'
                    '[[job]]\nname = "a"\nsource = "sphere_a.npz"\nprompt = "slate"\n')
    out = tmp_path / "out"
    with ServerThread(make_settings(tmp_path / "data"), tiny) as server:
        code = cli.main(["farm", str(path), "--out", str(out), "--server", server.base_url, "--token", server.token,
                         "--ray", "off"])
    assert code == 1
    err = capsys.readouterr().err
    assert "ghost: failed" in err and "Nobody" in err and "1 done, 0 skipped, 1 failed" in err
    assert "passes render in this process" in err
    assert (out / "a" / "metrics.json").is_file() and not (out / "ghost").exists()
    assert not list(out.glob(".*.partial"))  # a failed job leaves nothing behind
