"""``zs serve --ray`` (server/ray_pool.py) on a local Ray cluster of CPU workers: the
workers in /v1/health, a worker killed mid-job (the job finishes on another with the same
result), every worker lost (degraded health, a waiting job cancelled, jobs resuming on the
new workers), two jobs at once with one cancelled, a job failing on a worker, the worker
plan, the flags; and that the embedded server never imports ray. The shared API tests
(test_jobs_api, test_animation_jobs, test_models_api) run on Ray workers too."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import textwrap
import time
import zipfile

import pytest

import zs_cli
from server.config import Settings
from zs_core.protocol import METRICS_JSON, TEXTURE_PNG, Request

from zs_server_helpers import ServerThread, backend_settings, make_settings, read_events, submit, wait_for

ray = pytest.importorskip("ray")
from server.ray_pool import RETRY_EVENT, worker_plan  # noqa: E402  (needs ray)

SEEDED = dict(prompt="a stone ball", seed=7, texture_size=64)


@pytest.fixture(scope="module")
def pool(request, tiny, tiny_dir, tmp_path_factory):
    """A server with two Ray workers (one CPU each; a job on one: test_ray_split.py splits
    them) and, in its models folder, a model whose
    UNet weights are cut short: listed (its files are all there), failing when loaded."""
    data_dir = tmp_path_factory.mktemp("zs-data")
    cracked = data_dir / "models" / "cracked"
    shutil.copytree(tiny_dir, cracked)
    weights = cracked / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])
    settings = make_settings(data_dir, **backend_settings(request, "ray", ray_workers=2, ray_split=1))
    with ServerThread(settings, tiny) as running:
        yield running


def workers(server) -> list[dict]:
    return server.client().get("/v1/health").json()["workers"]


def wait_for_workers(server, states, timeout: float = 120.0) -> dict:
    """Poll /v1/health until every worker is in one of ``states`` -> the health."""
    deadline = time.monotonic() + timeout
    while True:
        health = server.client().get("/v1/health").json()
        if all(worker["state"] in states for worker in health["workers"]):
            return health
        assert time.monotonic() < deadline, health
        time.sleep(0.1)


def result(client, job_id: str) -> tuple[dict[str, bytes], dict]:
    """A done job's files (bytes) and its metrics without the timings."""
    with zipfile.ZipFile(io.BytesIO(client.get(f"/v1/jobs/{job_id}/result").content)) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    metrics = {key: value for key, value in json.loads(files.pop(METRICS_JSON)).items() if "seconds" not in key}
    return files, metrics


def actor_running(server, job_id: str):
    pool = server.app.state.worker
    with pool._lock:
        return next(slot.actor for slot in pool._slots if slot.job is not None and slot.job.id == job_id)


def test_health_lists_each_worker_with_its_node_resources_state_and_last_seen(pool, small_npz):
    health = wait_for_workers(pool, ("idle",))
    assert health["status"] == "ok" and health["worker"]["alive"] is True
    assert [worker["id"] for worker in health["workers"]] == ["w0", "w1"]
    for worker in health["workers"]:
        assert worker["resources"] == {"CPU": 1} and worker["node"] and worker["job"] is None
        assert 0 <= worker["last_seen_seconds"] < 5 and worker["models"] == ["tiny"]
    client = pool.client()
    job_id = submit(client, small_npz, Request(**SEEDED, steps=40))
    deadline = time.monotonic() + 60
    while not any(worker["state"] == "running" for worker in workers(pool)):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert [worker["job"] for worker in workers(pool) if worker["state"] == "running"] == [job_id]
    client.delete(f"/v1/jobs/{job_id}")
    wait_for(client, job_id)


def test_two_jobs_run_at_once_and_a_cancel_reaches_only_its_worker(pool, small_npz):
    client = pool.client()
    wait_for_workers(pool, ("idle",))
    kept = submit(client, small_npz, Request(**SEEDED, steps=30))
    dropped = submit(client, small_npz, Request(**SEEDED, steps=200))
    deadline = time.monotonic() + 60
    while sorted(worker["job"] or "" for worker in workers(pool)) != sorted((kept, dropped)):
        assert time.monotonic() < deadline, workers(pool)
        time.sleep(0.05)
    assert sorted(client.get("/v1/health").json()["running_jobs"]) == sorted((kept, dropped))
    cancel = {}

    def on_event(event):
        if event["event"] == "progress" and not cancel:
            cancel["step"] = event["data"]["step"]
            assert client.delete(f"/v1/jobs/{dropped}").status_code == 202

    events = read_events(client, dropped, on_event=on_event)
    assert events[-1]["event"] == "cancelled"
    steps_after = [e for e in events if e["event"] == "progress" and e["data"]["step"] > cancel["step"]]
    assert len(steps_after) <= 2  # the step in flight, at most one more
    assert wait_for(client, kept)["state"] == "done"


def test_a_job_failing_on_a_worker_fails_with_its_reason_and_the_worker_goes_on(pool, small_npz):
    client = pool.client()
    failing = submit(client, small_npz, Request(**SEEDED, steps=2, model="cracked"))
    events = read_events(client, failing)
    assert [event["event"] for event in events][-1] == "failed"
    assert [event["data"]["state"] for event in events if event["event"] == "model"] == ["loading"]
    assert events[-1]["data"]["error"]
    fine = submit(client, small_npz, Request(**SEEDED, steps=2))
    assert wait_for(client, fine)["state"] == "done"
    assert all(worker["restarts"] == 0 for worker in workers(pool))  # a failed job costs no worker


def test_a_worker_killed_mid_job_is_replaced_and_the_job_finishes_elsewhere_with_the_same_result(pool, small_npz):
    client = pool.client()
    request = Request(**SEEDED, steps=12)
    undisturbed = submit(client, small_npz, request)
    assert wait_for(client, undisturbed)["state"] == "done"
    expected_files, expected_metrics = result(client, undisturbed)

    job_id = submit(client, small_npz, request)
    killed = {}

    def on_event(event):
        if event["event"] == "progress" and not killed:
            killed["actor"] = actor_running(pool, job_id)
            ray.kill(killed["actor"])

    events = read_events(client, job_id, on_event=on_event)
    kinds = [event["event"] for event in events]
    assert kinds[-1] == "done" and kinds.count(RETRY_EVENT) == 1, kinds
    retry = next(event["data"] for event in events if event["event"] == RETRY_EVENT)
    assert retry["attempt"] == 2 and retry["worker"] in ("w0", "w1") and "again" in retry["message"]
    # The second run's steps follow the retry from 1 to the end.
    after = [event["data"]["step"] for event in events[kinds.index(RETRY_EVENT):] if event["event"] == "progress"]
    assert after == list(range(1, 13))
    files, metrics = result(client, job_id)
    assert files.keys() == expected_files.keys() and TEXTURE_PNG in files
    assert all(files[name] == expected_files[name] for name in files)  # byte for byte
    assert metrics == expected_metrics

    health = pool.client().get("/v1/health").json()
    lost = next(worker for worker in health["workers"] if worker["id"] == retry["worker"])
    assert lost["restarts"] == 1 and "kill" in lost["error"] and health["worker"]["restarts"] == 1


def test_with_every_worker_lost_health_is_degraded_a_waiting_job_cancels_and_jobs_resume(pool, small_npz):
    client = pool.client()
    stranded = submit(client, small_npz, Request(**SEEDED, steps=200))
    wait_for(client, stranded, states=("running",))
    deadline = time.monotonic() + 60
    while client.get(f"/v1/jobs/{stranded}").json()["step"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pool_state = pool.app.state.worker
    with pool_state._lock:  # the running one, an idle one or one still starting after the test before
        actors = [slot.actor for slot in pool_state._slots]
    for actor in actors:
        ray.kill(actor)
    while (health := client.get("/v1/health").json())["status"] == "ok":
        assert time.monotonic() < deadline, health
        time.sleep(0.05)
    assert health["worker"]["alive"] is False and "no Ray worker is alive" in health["reasons"][0]
    assert {worker["state"] for worker in health["workers"]} <= {"restarting", "starting", "dead"}, health["workers"]

    # The job waits to run again; a cancel ends it at once.
    store = pool.app.state.store
    while RETRY_EVENT not in [event.type for event in store.events_after(stranded, 0)[0]]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert client.delete(f"/v1/jobs/{stranded}").status_code == 202
    assert wait_for(client, stranded, timeout=10)["state"] == "cancelled"

    job_id = submit(client, small_npz, Request(**SEEDED, steps=2))  # waits for a new worker, then runs
    assert wait_for(client, job_id)["state"] == "done"
    assert wait_for_workers(pool, ("idle",))["status"] == "ok"


@pytest.mark.parametrize("cluster, nodes, fields, plan", [
    ({"CPU": 16, "GPU": 2}, [], {}, (2, {"num_gpus": 1, "num_cpus": 1}, 0)),  # one per GPU
    ({"CPU": 16, "GPU": 2}, [{"Alive": True, "Resources": {"CPU": 16}}], {"device": "cpu"},
     (4, {"num_cpus": 4, "num_gpus": 0}, 4)),  # --device cpu leaves the GPUs alone
    ({"CPU": 16}, [{"Alive": True, "Resources": {"CPU": 16}}], {}, (4, {"num_cpus": 4, "num_gpus": 0}, 4)),
    ({"CPU": 2}, [{"Alive": True, "Resources": {"CPU": 2}}], {}, (1, {"num_cpus": 2, "num_gpus": 0}, 2)),
    ({"CPU": 2}, [{"Alive": True, "Resources": {"CPU": 2}}], {"ray_workers": 2}, (2, {"num_cpus": 1, "num_gpus": 0}, 1)),
    ({"CPU": 12}, [{"Alive": True, "Resources": {"CPU": 6}}] * 2, {"ray_threads": 8},
     (2, {"num_cpus": 6, "num_gpus": 0}, 6)),  # no more threads than a node has
])
def test_worker_plan(cluster, nodes, fields, plan, tmp_path):
    assert worker_plan(Settings(data_dir=tmp_path, **fields), cluster, nodes) == plan


def test_serve_ray_flags_reach_the_settings(monkeypatch, tmp_path):
    import uvicorn

    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: apps.append(app))
    for flags, ray_setting, count in ((["--ray"], "auto", 0), (["--ray", "10.0.0.5:6379", "--ray-workers", "3"],
                                                                "10.0.0.5:6379", 3), ([], "", 0)):
        assert zs_cli.main(["serve", "--data-dir", str(tmp_path), "--device", "cpu", *flags]) == 0
        settings = apps[-1].state.settings
        assert (settings.ray, settings.ray_workers) == (ray_setting, count)


def test_zs_serve_without_ray_does_not_import_ray(tmp_path):
    """The embedded server, started and serving a health check, has not imported ray."""
    code = textwrap.dedent(f"""
        import sys
        import uvicorn
        from fastapi.testclient import TestClient
        import zs_cli

        def run(app, **kwargs):
            with TestClient(app, base_url="http://127.0.0.1") as client:
                assert client.get("/v1/health").json()["status"] == "ok"

        uvicorn.run = run
        assert zs_cli.main(["serve", "--data-dir", {str(tmp_path)!r}, "--device", "cpu"]) == 0
        print("ray imported:", "ray" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ray imported: False" in done.stdout
