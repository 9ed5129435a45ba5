"""The server's models over real HTTP: GET /v1/models lists the built-ins, the models
folder, the hub cache, LoRAs and IP-Adapters with their families; a job runs on the model
it names (loaded on demand, with ``model`` events) with its LoRAs; names not on the list,
adapters of another family and incomplete models are refused before anything is queued;
the loaded models are an LRU bounded by the memory budget; ``zs serve`` names a missing
default model's files. The jobs run on the embedded worker and on a Ray worker (each with
its own loaded models)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

import zs_cli
from server.model_cache import ModelCache
from zs_core import models
from zs_core.protocol import METRICS_JSON, Request

from adapter_files import write_ip_adapter, write_lora
from zs_server_helpers import ServerThread, backend_settings, job_form, make_settings, read_events, submit

BACKENDS = ("embedded", "ray")  # the jobs' tests run on both (tests/server/conftest.py); the lists' on one

# Quick jobs: the model is what these tests are about.
QUICK = dict(prompt="a stone ball", steps=2, noise="iid", attention="self", sync_strength=0.0, texture_size=64)


def put_in_hub_cache(cache: Path, repo_id: str, folder: Path) -> Path:
    """``folder``'s files laid out as the hub cache holds a download: blobs named by their
    hash, the snapshot's files symlinks to them, ``refs/main`` naming the snapshot."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    for file in sorted(path for path in folder.rglob("*") if path.is_file()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / file.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture(scope="module")
def other_model(tmp_path_factory) -> Path:
    """The tiny model with other UNet weights (so its images differ), as a diffusers folder
    with its ControlNet in controlnet/ (zs_core.models.save)."""
    components = models.load("tiny", device="cpu")
    with torch.no_grad():
        components.unet.conv_out.weight.neg_()
    return models.save(components, tmp_path_factory.mktemp("other") / "model")


@pytest.fixture(scope="module")
def hub(tiny_dir, tmp_path_factory) -> Path:
    """A hub cache holding a pipeline (without a ControlNet of its own) and a ControlNet."""
    cache = tmp_path_factory.mktemp("hub")
    pipeline = tmp_path_factory.mktemp("pipeline")
    shutil.copytree(tiny_dir, pipeline, dirs_exist_ok=True, ignore=shutil.ignore_patterns("controlnet"))
    put_in_hub_cache(cache, "zs-test/tiny-hub", pipeline)
    put_in_hub_cache(cache, "zs-test/tiny-depth", tiny_dir / "controlnet")
    return cache


@pytest.fixture(scope="module")
def tiny_xl():
    return models.load("tiny-sdxl", device="cpu")


@pytest.fixture(scope="module")
def server(backend, request, tiny, tiny_xl, other_model, hub, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("zs-data")
    folder = data_dir / "models"
    shutil.copytree(other_model, folder / "alpha")
    shutil.copytree(other_model, folder / "incomplete")
    (folder / "incomplete" / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    (folder / "notes").mkdir()  # a folder that is no model
    (folder / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    write_lora(folder / "loras" / "style.safetensors", tiny)
    write_lora(folder / "loras" / "brush.safetensors", tiny, seed=1, format="kohya")
    write_lora(folder / "loras" / "xl.safetensors", tiny_xl)
    write_ip_adapter(folder / "ip_adapters" / "look", tiny)
    write_ip_adapter(folder / "ip_adapters" / "look-xl", tiny_xl)
    settings = make_settings(data_dir, hub_cache=str(hub), **backend_settings(request, backend))
    with ServerThread(settings, tiny) as running:
        yield running


def view_png(client: httpx.Client, job_id: str) -> np.ndarray:
    response = client.get(f"/v1/jobs/{job_id}/files/views/0000.png")
    assert response.status_code == 200
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


def run(client: httpx.Client, npz: bytes, **fields) -> tuple[str, list[dict]]:
    job_id = submit(client, npz, Request(**QUICK, **fields))
    events = read_events(client, job_id)
    assert events[-1]["event"] == "done", events[-1]
    return job_id, events


def model_events(events: list[dict]) -> list[dict]:
    return [event["data"] for event in events if event["event"] == "model"]


@pytest.mark.embedded_only  # the lists and the checks at submission, not the worker
def test_models_lists_builtins_the_models_folder_and_the_hub_cache(server):
    listing = server.client().get("/v1/models").json()
    assert listing["default"] == "tiny"
    by_name = {model["name"]: model for model in listing["models"]}
    # Not notes/ nor the broken file; the incomplete model is listed (its files are checked when a job names it).
    assert set(by_name) == {"tiny", "tiny-sdxl", "alpha", "incomplete", "zs-test/tiny-hub"}
    assert by_name["tiny"]["family"] == "sd15" and by_name["tiny"]["loaded"] is True
    assert by_name["tiny-sdxl"]["family"] == "sdxl" and by_name["tiny-sdxl"]["source"] == "builtin"
    alpha = by_name["alpha"]
    assert (alpha["family"], alpha["source"], alpha["loaded"]) == ("sd15", "folder", False)
    # Its own ControlNet first, then the cache's of its family.
    assert alpha["controlnets"] == ["alpha/controlnet", "zs-test/tiny-depth"]
    on_disk = sum(path.stat().st_size for path in (server.data_dir / "models" / "alpha").rglob("*.safetensors"))
    assert alpha["bytes"] == on_disk
    cached = by_name["zs-test/tiny-hub"]
    assert (cached["family"], cached["source"], cached["controlnets"]) == ("sd15", "hub", ["zs-test/tiny-depth"])
    assert listing["loras"] == [{"name": "brush.safetensors", "family": "sd15"},  # kohya's format
                                {"name": "style.safetensors", "family": "sd15"},
                                {"name": "xl.safetensors", "family": "sdxl"}]
    assert listing["ip_adapters"] == [{"name": "look", "family": "sd15"}, {"name": "look-xl", "family": "sdxl"}]


@pytest.mark.embedded_only  # the lists and the checks at submission, not the worker
def test_the_list_follows_the_models_folder(server, other_model):
    client = server.client()
    target = server.data_dir / "models" / "later"
    shutil.copytree(other_model, target)
    try:
        assert "later" in {model["name"] for model in client.get("/v1/models").json()["models"]}
    finally:
        shutil.rmtree(target)
    assert "later" not in {model["name"] for model in client.get("/v1/models").json()["models"]}


def test_a_job_runs_on_the_model_it_names_loaded_on_demand(server, small_npz):
    client = server.client()
    default_id, default_events = run(client, small_npz)
    assert model_events(default_events) == []  # the default model is loaded at start
    alpha_id, events = run(client, small_npz, model="alpha")

    kinds = [event["event"] for event in events]
    assert kinds[:4] == ["queued", "started", "model", "model"] and "progress" in kinds[4:], kinds
    loading, loaded = model_events(events)
    assert loading == {"type": "model", "job": alpha_id, "model": "alpha", "state": "loading",
                       "message": "loading model alpha"}
    assert loaded["state"] == "loaded" and loaded["seconds"] >= 0
    assert loaded["message"] == f"model loaded in {loaded['seconds']:.1f} s"

    metrics = json.loads(client.get(f"/v1/jobs/{alpha_id}/files/{METRICS_JSON}").content)
    assert metrics["model"] == "alpha" and metrics["request"]["model"] == "alpha"
    assert not np.array_equal(view_png(client, alpha_id), view_png(client, default_id))  # other weights
    health = client.get("/v1/health").json()
    assert health["model_loaded"] is True
    if server.settings.ray:  # the server keeps its own copy of the default model; the worker loaded alpha
        assert health["models_loaded"] == ["tiny"] and health["workers"][0]["models"] == ["tiny", "alpha"]
    else:
        assert health["models_loaded"] == ["tiny", "alpha"]

    _, again = run(client, small_npz, model="alpha")
    assert model_events(again) == []  # loaded already


def test_a_model_from_the_hub_cache_runs(server, small_npz):
    client = server.client()
    job_id, events = run(client, small_npz, model="zs-test/tiny-hub")
    assert [data["state"] for data in model_events(events)] == ["loading", "loaded"]
    metrics = json.loads(client.get(f"/v1/jobs/{job_id}/files/{METRICS_JSON}").content)
    assert metrics["model"] == "zs-test/tiny-hub"


def test_a_job_runs_with_its_loras_and_the_next_one_without_them(server, small_npz):
    client = server.client()
    plain, _ = run(client, small_npz, model="alpha")
    styled, _ = run(client, small_npz, model="alpha", loras="style:0.8|brush.safetensors:0.5")
    again, events = run(client, small_npz, model="alpha")
    assert model_events(events) == []  # the LoRAs came off without a reload
    assert not np.array_equal(view_png(client, styled), view_png(client, plain))
    assert np.array_equal(view_png(client, again), view_png(client, plain))
    metrics = client.get(f"/v1/jobs/{styled}/files/{METRICS_JSON}").text
    # The result names the LoRAs as the job did; where they are on the server stays there.
    assert json.loads(metrics)["request"]["loras"] == "style:0.8|brush.safetensors:0.5"
    assert str(server.data_dir) not in metrics


@pytest.mark.embedded_only  # the lists and the checks at submission, not the worker
@pytest.mark.parametrize("fields, field, words", [
    (dict(model="alpha", loras="xl.safetensors:0.5"), "loras", ("'xl.safetensors'", "sdxl", "'alpha'", "sd15")),
    (dict(model="tiny-sdxl", loras="style"), "loras", ("'style.safetensors'", "sd15", "'tiny-sdxl'", "sdxl")),
    (dict(model="alpha", ip_adapter="look-xl"), "ip_adapter", ("'look-xl'", "IP-Adapter", "sdxl", "'alpha'")),
    (dict(model="incomplete"), "model", ("vae/diffusion_pytorch_model.safetensors",)),
])
def test_a_misfit_is_a_422_naming_both_before_queueing(server, small_npz, fields, field, words):
    client = server.client()
    before = client.get("/v1/jobs").json()["jobs"]
    response = client.post("/v1/jobs", files=job_form(small_npz, Request(**QUICK, **fields)))
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail["field"] == field and all(word in detail["message"] for word in words), detail
    assert client.get("/v1/jobs").json()["jobs"] == before


@pytest.mark.embedded_only  # the lists and the checks at submission, not the worker
@pytest.mark.parametrize("fields, field, named", [
    (dict(model="nope"), "model", "'nope'"),
    (dict(model="/etc"), "model", "'/etc'"),  # a server path is no name on the list
    (dict(loras="nope.safetensors:0.5"), "loras", "'nope.safetensors'"),
    (dict(ip_adapter="nope"), "ip_adapter", "'nope'"),
])
def test_a_name_not_on_the_list_is_a_422_and_nothing_is_queued(server, small_npz, fields, field, named):
    client = server.client()
    before = client.get("/v1/jobs").json()["jobs"]
    response = client.post("/v1/jobs", files=job_form(small_npz, Request(**QUICK, **fields)))
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail["field"] == field and named in detail["message"] and "is not on this server" in detail["message"]
    if field == "model":
        assert "'alpha'" in detail["message"] and "'tiny'" in detail["message"]  # what there is
    assert client.get("/v1/jobs").json()["jobs"] == before


@pytest.mark.embedded_only  # the lists and the checks at submission, not the worker
def test_the_model_is_checked_before_the_passes_are_read(server):
    """The request part comes first: a missing model is refused, not the (bad) passes after it."""
    client = server.client()
    garbage = os.urandom(3 * 1024 * 1024)  # no .npz at all: reading it would fail on "passes"
    response = client.post("/v1/jobs", files=job_form(garbage, Request(**QUICK, model="nope")))
    assert response.status_code == 422 and response.json()["detail"]["field"] == "model", response.text
    response = client.post("/v1/jobs", files=job_form(garbage, Request(**QUICK)))
    assert response.status_code == 422 and response.json()["detail"]["field"] == "passes", response.text
    assert not any((server.data_dir / "uploads").iterdir())  # the refused uploads are gone


@pytest.mark.slow
def test_the_loaded_models_are_an_lru_within_the_memory_budget(tiny, other_model, small_npz, tmp_path):
    for name in ("alpha", "beta"):
        shutil.copytree(other_model, tmp_path / "models" / name)
    size = sum(p.numel() * p.element_size() for m in tiny.modules().values()
               for p in [*m.parameters(), *m.buffers()])
    settings = make_settings(tmp_path, hub_cache=str(tmp_path / "no-cache"), model_memory_bytes=int(size * 2.2))
    with ServerThread(settings, tiny) as running:
        client = running.client()

        def job(model: str) -> list[str]:
            _, events = run(client, small_npz, model=model)
            return [data["state"] for data in model_events(events)]

        def loaded() -> list[str]:
            return client.get("/v1/health").json()["models_loaded"]

        assert loaded() == ["tiny"]
        assert job("alpha") == ["loading", "loaded"] and loaded() == ["tiny", "alpha"]
        assert job("beta") == ["loading", "loaded"] and loaded() == ["alpha", "beta"]  # tiny was least recent
        assert job("alpha") == [] and loaded() == ["beta", "alpha"]
        assert job("tiny") == ["loading", "loaded"] and loaded() == ["alpha", "tiny"]  # beta was least recent
        assert job("beta") == ["loading", "loaded"] and loaded() == ["tiny", "beta"]  # reloaded on demand
        listing = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
        assert [name for name, m in listing.items() if m["loaded"]] == ["tiny", "beta"]
        assert sum(listing[name]["bytes"] for name in ("tiny", "beta")) <= settings.model_memory_bytes


def test_a_model_in_use_is_never_dropped_and_one_over_the_budget_still_loads(tiny, other_model):
    cache = ModelCache(budget_bytes=1)  # room for no model at all
    with cache.use("tiny", lambda: tiny) as components:
        assert components is tiny and [m["name"] for m in cache.loaded()] == ["tiny"]
        cache.put("other", models.load(str(other_model), str(other_model / "controlnet"), device="cpu"))
        assert [(m["name"], m["in_use"]) for m in cache.loaded()] == [("tiny", True), ("other", False)]
    assert [m["name"] for m in cache.loaded()] == ["tiny"]  # the last used one stays
    assert cache.loads == 1


def test_zs_serve_names_the_missing_files_of_its_default_model(other_model, tmp_path, capsys, monkeypatch):
    import uvicorn

    started = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: started.append(app))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("ZS_HUB_CACHE", str(tmp_path / "empty-cache"))
    data = tmp_path / "data"
    shutil.copytree(other_model, data / "models" / "alpha")

    def serve(model: str) -> tuple[int, str]:
        code = zs_cli.main(["serve", "--data-dir", str(data), "--device", "cpu", "--default-model", model])
        return code, capsys.readouterr().err

    code, err = serve("alpha")  # a name of the models folder
    assert code == 0 and started[-1].state.settings.default_model == "alpha", err
    code, err = serve("zs-test/not-downloaded")
    assert code == 2 and len(started) == 1 and "Traceback" not in err
    assert "zs serve: error: model: " in err and "model_index.json" in err
    assert "`hf download zs-test/not-downloaded " in err
    (data / "models" / "alpha" / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    code, err = serve("alpha")
    assert code == 2 and len(started) == 1 and "unet/diffusion_pytorch_model.safetensors" in err, err
