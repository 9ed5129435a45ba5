"""A Ray node lost mid-job (``zs serve --ray``): a cluster of a head and two worker nodes
(Ray's own ``cluster_utils.Cluster``, real raylets), the node running the job removed while
it samples: the job runs again on the other node and finishes with the files the same job
gets undisturbed; the lost worker's slot waits for a node (health says so). In a process of
its own: the cluster replaces this session's Ray connection."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("ray")

SCRIPT = textwrap.dedent("""
    import io, json, sys, time, zipfile
    sys.path[:0] = [{tests!r}, {root!r}]
    import ray
    from ray.cluster_utils import Cluster
    from zs_core import models, scene
    from zs_core.protocol import Request
    from zs_server_helpers import ServerThread, make_settings, read_events, submit, wait_for

    cluster = Cluster(initialize_head=True, head_node_args={{"num_cpus": 0, "include_dashboard": False}})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    ray.init(address=cluster.address, log_to_driver=False)
    passes = scene.sphere_scene(views=2, width=64, height=64, texture_size=64).to_npz_bytes()
    settings = make_settings({data!r}, ray="auto", ray_workers=2, ray_threads=1, ray_split=1)
    request = Request(prompt="a stone ball", seed=7, texture_size=64, steps=6)

    def files(client, job_id):
        with zipfile.ZipFile(io.BytesIO(client.get(f"/v1/jobs/{{job_id}}/result").content)) as archive:
            return {{name: archive.read(name) for name in archive.namelist() if name.endswith(".png")}}

    report = {{}}
    with ServerThread(settings, models.load("tiny", device="cpu")) as server:
        client = server.client()
        undisturbed = submit(client, passes, request)
        assert wait_for(client, undisturbed, timeout=300)["state"] == "done"
        job_id = submit(client, passes, request)
        removed = {{}}

        def on_event(event):
            if event["event"] == "progress" and not removed:
                pool = server.app.state.worker
                with pool._lock:
                    slot = next(slot for slot in pool._slots if slot.job is not None and slot.job.id == job_id)
                removed["slot"], removed["node_id"] = slot.id, slot.node_id
                cluster.remove_node(next(node for node in nodes if node.node_id == slot.node_id))

        events = read_events(client, job_id, on_event=on_event, timeout=300)
        report["kinds"] = [event["event"] for event in events]
        report["retry"] = next((event["data"] for event in events if event["event"] == "retry"), None)
        report["removed"] = removed
        report["same_files"] = files(client, job_id) == files(client, undisturbed)
        report["workers"] = client.get("/v1/health").json()["workers"]
    ray.shutdown()
    cluster.shutdown()
    print("REPORT " + json.dumps(report))
""")


def test_a_node_lost_mid_job_reruns_the_job_on_another_node(tmp_path):
    root = Path(__file__).resolve().parents[2]
    script = SCRIPT.format(tests=str(root / "tests"), root=str(root), data=str(tmp_path / "data"))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    line = next((line for line in done.stdout.splitlines() if line.startswith("REPORT ")), None)
    assert line is not None, done.stdout[-3000:] + done.stderr[-5000:]
    report = json.loads(line[len("REPORT "):])
    assert report["kinds"][-1] == "done" and report["kinds"].count("retry") == 1, report["kinds"]
    assert report["retry"]["worker"] == report["removed"]["slot"]
    assert report["same_files"]  # byte for byte, the undisturbed job's files
    lost = next(worker for worker in report["workers"] if worker["id"] == report["removed"]["slot"])
    other = next(worker for worker in report["workers"] if worker["id"] != report["removed"]["slot"])
    assert lost["restarts"] == 1 and lost["state"] in ("restarting", "dead"), lost  # no node left to start on
    assert other["state"] == "idle" and other["node_id"] != report["removed"]["node_id"]
