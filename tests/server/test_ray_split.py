"""A texture job and an animation split over two Ray workers (``zs serve --ray``, server/ray_pool.py and
zs_core/distributed.py across real actor processes): the same files as the job on one
worker in this process, a ``split`` event and both workers busy with it, completion views
sampled by the first worker after the split, a cancel that stops both, and a worker killed
mid-job (both replaced, the job run again with the same result)."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from zs_core import run, scene
from zs_core.protocol import Request

from zs_server_helpers import ServerThread, backend_settings, make_settings, read_events, submit, wait_for

ray = pytest.importorskip("ray")
from server.ray_pool import RETRY_EVENT, SPLIT_EVENT  # noqa: E402  (needs ray)

VIEWS = 6
REQUEST = dict(prompt="a stone ball", seed=7, texture_size=64, steps=4, attention="extended", sync_strength=1.0,
               scheduler="euler_a")


@pytest.fixture(scope="module")
def split_pool(request, tiny, tmp_path_factory):
    settings = make_settings(tmp_path_factory.mktemp("zs-data"),
                             **backend_settings(request, "ray", ray_workers=2, ray_split=2))
    with ServerThread(settings, tiny) as running:
        yield running


@pytest.fixture(scope="module")
def passes():
    return scene.sphere_scene(views=VIEWS, width=64, height=64, texture_size=64)


def pngs(client, job_id: str) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(io.BytesIO(client.get(f"/v1/jobs/{job_id}/result").content)) as archive:
        return {name: np.asarray(Image.open(io.BytesIO(archive.read(name))), np.int16)
                for name in archive.namelist() if name.endswith(".png")}


def local_pngs(tiny, request: Request, passes, folder) -> dict[str, np.ndarray]:
    run.run_job(tiny, request, passes, folder)
    return {path.relative_to(folder).as_posix(): np.asarray(Image.open(path), np.int16)
            for path in sorted(folder.rglob("*.png"))}


def assert_same_images(split: dict, single: dict) -> None:
    assert split.keys() == single.keys()
    for name in single:
        # Float rounding of a different reduction order may move a value across a rounding edge.
        difference = np.abs(split[name] - single[name])
        assert difference.max() <= 1 and (difference > 0).mean() < 0.01, name


def test_a_job_split_over_two_workers_gives_the_one_worker_files(split_pool, tiny, passes, tmp_path):
    client = split_pool.client()
    request = Request(**REQUEST)
    job_id = submit(client, passes.to_npz_bytes(), request)
    busy = set()

    def on_event(event):
        if event["event"] == "progress":
            busy.update(worker["id"] for worker in client.get("/v1/health").json()["workers"]
                        if worker["job"] == job_id)

    events = read_events(client, job_id, on_event=on_event)
    kinds = [event["event"] for event in events]
    assert kinds[-1] == "done", events[-1]
    split = next(event["data"] for event in events if event["event"] == SPLIT_EVENT)
    assert split["workers"] == ["w0", "w1"] and busy == {"w0", "w1"}
    assert [event["data"]["step"] for event in events if event["event"] == "progress"] == [1, 2, 3, 4]
    assert_same_images(pngs(client, job_id), local_pngs(tiny, request, passes, tmp_path))


def test_completion_views_run_on_the_first_worker_after_the_split(split_pool, tiny, passes, tmp_path):
    flagged = passes.select(range(VIEWS))
    flagged.completion = np.arange(VIEWS) >= VIEWS - 2  # four main views split, two completion views
    request = Request(**REQUEST)
    client = split_pool.client()
    job_id = submit(client, flagged.to_npz_bytes(), request)
    events = read_events(client, job_id)
    assert events[-1]["event"] == "done" and any(event["event"] == SPLIT_EVENT for event in events)
    assert_same_images(pngs(client, job_id), local_pngs(tiny, request, flagged, tmp_path))


def test_a_cancel_stops_both_workers_of_a_split_job(split_pool, passes):
    client = split_pool.client()
    job_id = submit(client, passes.to_npz_bytes(), Request(**{**REQUEST, "steps": 200}))
    cancel = {}

    def on_event(event):
        if event["event"] == "progress" and not cancel:
            cancel["step"] = event["data"]["step"]
            assert client.delete(f"/v1/jobs/{job_id}").status_code == 202

    events = read_events(client, job_id, on_event=on_event)
    assert events[-1]["event"] == "cancelled"
    steps = [event["data"]["step"] for event in events if event["event"] == "progress"]
    assert max(steps) <= cancel["step"] + 2
    health = client.get("/v1/health").json()
    assert all(worker["restarts"] == 0 for worker in health["workers"])  # they stopped, nobody was killed
    after = submit(client, passes.to_npz_bytes(), Request(**{**REQUEST, "steps": 1}))
    assert wait_for(client, after)["state"] == "done"


def test_a_worker_killed_mid_split_job_is_replaced_with_its_partner_and_the_job_runs_again(split_pool, passes):
    client = split_pool.client()
    request = Request(**REQUEST)
    undisturbed = submit(client, passes.to_npz_bytes(), request)
    assert wait_for(client, undisturbed)["state"] == "done"
    job_id = submit(client, passes.to_npz_bytes(), request)
    killed = {}

    def on_event(event):
        if event["event"] == "progress" and not killed:
            pool = split_pool.app.state.worker
            with pool._lock:
                killed["actor"] = next(slot.actor for slot in pool._slots if slot.id == "w1")
            ray.kill(killed["actor"])

    events = read_events(client, job_id, on_event=on_event, timeout=240)
    kinds = [event["event"] for event in events]
    assert kinds[-1] == "done" and kinds.count(RETRY_EVENT) == 1, kinds
    assert events[kinds.index(RETRY_EVENT)]["data"]["worker"] == "w1"
    assert_same_images(pngs(client, job_id), pngs(client, undisturbed))
    restarts = {worker["id"]: worker["restarts"] for worker in client.get("/v1/health").json()["workers"]}
    assert restarts == {"w0": 1, "w1": 1}  # w0 waited in a collective for w1: replaced too


def test_an_animation_split_over_two_workers_gives_the_one_worker_frames(split_pool, tiny, tmp_path):
    shot = scene.animated_scene(frames=8, width=64, height=64)
    settings = dict(kind="animation", prompt="stone", seed=3, attention="tma", background_sync=0.5)
    request = Request(**settings, steps=3, chunk=4)
    client = split_pool.client()
    job_id = submit(client, shot.to_npz_bytes(), request)
    events = read_events(client, job_id)
    assert events[-1]["event"] == "done", events[-1]
    assert next(event["data"] for event in events if event["event"] == SPLIT_EVENT)["workers"] == ["w0", "w1"]
    assert_same_images(pngs(client, job_id), local_pngs(tiny, request, shot, tmp_path))
    # A chunk of 2 would need four workers of two frames each: the job runs on one.
    alone = submit(client, shot.to_npz_bytes(), Request(**settings, steps=1, chunk=2))
    assert not any(event["event"] == SPLIT_EVENT for event in read_events(client, alone))
