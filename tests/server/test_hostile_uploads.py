"""Hostile uploads over real HTTP: decompression bombs, giant declared shapes, dtype
mismatches, 200 000-part bodies, deep or huge request JSON, a full disk, the shared
upload budgets. Every answer is a 4xx (or 503 / 507, documented) naming the field, never
a 500; nothing is queued; the spool folder is left empty; and the server's peak RSS under
the bombs stays within a stated bound (measured on a `zs serve` subprocess)."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest

import bombs
from exr_shots import write_shot, zipped
from zs_core.protocol import Request
from zs_server_helpers import ServerThread, free_port, job_form, make_settings, submit, wait_for, wait_until_healthy

ROOT = Path(__file__).resolve().parents[2]
GOOD = Request(prompt="hostile", steps=1, texture_size=64)
ZEROS = int(3.9 * 2 ** 30)  # the bomb: 3.9 GiB of zeros in about 4 MB


def assert_names(response: httpx.Response, status, field: str) -> dict:
    statuses = status if isinstance(status, tuple) else (status,)
    assert response.status_code in statuses, (response.status_code, response.text[:500])
    detail = response.json()["detail"]
    assert detail["field"] == field, detail
    assert isinstance(detail["message"], str) and detail["message"]
    return detail


def assert_nothing_left(server) -> None:
    spool = server.data_dir / "uploads"
    assert not spool.exists() or not list(spool.iterdir()), list(spool.iterdir())
    assert not [p for p in (server.data_dir / "jobs").iterdir() if p.name.startswith(".")]


def bomb_cases(arrays: dict) -> dict:
    """name -> (npz bytes, status, field): each is a few MB that would inflate to GBs."""
    return {
        "unused extra array of 3.9 GiB zeros": (
            bombs.passes_with(arrays, bombs.npy_member("extra", (ZEROS,), "|u1")), 422, "extra"),
        "depth declaring 2 x 20000 x 20000": (
            bombs.passes_with(arrays, bombs.npy_member("depth", (2, 20000, 20000), "<f4")), 422, "height"),
        "normal declaring 100000 channels": (
            bombs.passes_with(arrays, bombs.npy_member("normal", (2, 64, 64, 100000), "<f4")), 422, "normal"),
        "texel map 16000 texels a side": (
            bombs.passes_with(arrays, bombs.npy_member("texel_position", (16000, 16000, 3), "<f4")), 422,
            "texel_position"),
        "depth holding 3.9 GiB more than it declares": (
            bombs.passes_with(arrays, bombs.npy_member("depth", (2, 64, 64), "<f4", extra_zeros=ZEROS)), 422,
            "depth"),
        "mask declared float64": (
            bombs.passes_with(arrays, bombs.npy_member("mask", (2, 64, 64), "<f8")), 422, "mask"),
        "depth big-endian": (bombs.passes_with(arrays, bombs.npy_member("depth", (2, 64, 64), ">f4")), 422, "depth"),
        "depth of objects (a pickle)": (
            bombs.passes_with(arrays, bombs.member("depth.npy", bombs.npy_header((4,), "|O"), 32)), 422, "depth"),
        ".npy header declaring 4 GiB of header": (
            bombs.passes_with(arrays, bombs.member("depth.npy", b"\x93NUMPY\x02\x00\xf0\xff\xff\xff", ZEROS)), 422,
            "depth"),
        "2000 members": (bombs.zip_bytes([bombs.member(f"depth{i}.npy", b"") for i in range(2000)]), 422, "passes"),
    }


CASES = list(bomb_cases({}))


@pytest.mark.parametrize("case", CASES)
def test_bombs_are_refused_naming_the_array(server, small_passes, case):
    npz, status, field = bomb_cases(small_passes.arrays())[case]
    client = server.client()
    before = len(client.get("/v1/jobs", params={"limit": 1000}).json()["jobs"])
    assert_names(client.post("/v1/jobs", files=job_form(npz, GOOD)), status, field)
    assert len(client.get("/v1/jobs", params={"limit": 1000}).json()["jobs"]) == before
    assert_nothing_left(server)


def multipart(parts) -> bytes:
    return b"".join(b'--b\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n' % part for part in parts) \
        + b"--b--\r\n"


@pytest.mark.parametrize("parts, status, field", [
    ([(b"request", b"{}")] * 200_000, 400, "request"),  # a repeated field: refused at the second
    ([(b"f%d" % i, b"x") for i in range(200_000)], 422, "f0"),  # unknown fields: refused at the first
    ([(b"", b"x")] * 200_000, 400, "body"),  # parts without a name
])
def test_a_body_of_200k_parts_is_refused_at_once(server, parts, status, field):
    body = multipart(parts)
    started = time.monotonic()
    response = server.client().post("/v1/jobs", content=body,
                                    headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert_names(response, status, field)
    assert time.monotonic() - started < 30
    assert_nothing_left(server)


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.mark.parametrize("request_text, status, field", [
    (deep(100_000), 422, "request"),
    (json.dumps({"prompt": deep(9)}).replace('"[', "[").replace(']"', "]"), 422, "request"),
    ('{"seed": ' + "9" * 5000 + "}", 422, "seed"),
    ('{"protocol": -' + "9" * 5000 + "}", 422, "protocol"),
    ('{"guidance_scale": 1' + "0" * 5000 + ".5}", 422, "guidance_scale"),
    (json.dumps({"negative_prompt": "x" * 5000}), 422, "negative_prompt"),
    (json.dumps({"prompt": "x" * 5000}), 422, "prompt"),
    (json.dumps({"negative_prompt": "x" * 1_000_000}), 413, "request"),  # over max_request_bytes first
    (json.dumps({"prompt": "p", "pad": "x" * 50_000_000}), 413, "request"),  # the 50 MB request
    (b'{"prompt": "\xff\xfe"}', 422, "request"),
])
def test_hostile_request_json_names_the_field(server, small_npz, request_text, status, field):
    assert_names(server.client().post("/v1/jobs", files=job_form(small_npz, request_text)), status, field)
    assert_nothing_left(server)


def test_the_request_part_size_limit_is_a_setting(tiny, tmp_path, small_npz):
    with ServerThread(make_settings(tmp_path, max_request_bytes=2000), tiny) as running:
        detail = assert_names(running.client().post("/v1/jobs", files=job_form(small_npz, Request(
            prompt="x" * 1900, steps=1, texture_size=64))), 413, "request")
        assert "max_request_bytes" in detail["message"]
        response = running.client().post("/v1/jobs", files=job_form(small_npz, GOOD))
        assert response.status_code == 202, response.text


# ---------------------------------------------------------------- EXR sequences, bounded the same way

def exr_form(archive: bytes) -> dict:
    request = Request(kind="animation", prompt="x", steps=1, chunk=2)
    return {"request": (None, request.to_json()), "exr_sequence": ("frames.zip", archive, "application/zip")}


@pytest.fixture(scope="module")
def small_unpack_server(tiny, tmp_path_factory):
    """max_unpacked_bytes 64 MiB: a bomb over it is refused before anything is extracted."""
    settings = make_settings(tmp_path_factory.mktemp("zs-unpack"), max_unpacked_bytes=64 * 2 ** 20)
    with ServerThread(settings, tiny) as running:
        yield running


def test_exr_sequence_bombs_are_refused(small_unpack_server, tmp_path):
    server = small_unpack_server
    _, folder = write_shot(tmp_path / "shot")
    files = sorted(folder.iterdir())
    plain = [bombs.member(path.name, path.read_bytes()) for path in files]
    client = server.client()
    cases = {
        "an EXR of 3.9 GiB zeros": (bombs.zip_bytes(plain + [bombs.member("shot_0009.exr", b"", ZEROS)]),
                                    "exr_sequence", "unpacks to"),
        "5000 members": (bombs.zip_bytes([bombs.member(f"f{i}.json", b"") for i in range(5000)]), "frames",
                         "5000 files"),
        "a sidecar of 1 MB": (bombs.zip_bytes(plain + [bombs.member("shot_0009.json", b" ", 1 << 20)]),
                              "exr_sequence", "sidecars are at most"),
        "a sidecar declaring 100000 pixels": (bombs.zip_bytes(
            [m for m in plain if m.name != "shot_0001.json"]
            + [bombs.member("shot_0001.json", json.dumps(json.loads((folder / "shot_0001.json").read_text())
                                                         | {"width": 100_000}).encode())]), "width", "100000"),
    }
    for name, (archive, field, words) in cases.items():
        detail = assert_names(client.post("/v1/jobs", files=exr_form(archive)), 422, field)
        assert words in detail["message"], (name, detail)
    assert_nothing_left(server)
    response = client.post("/v1/jobs", files=exr_form(zipped(folder)))  # the real thing still works
    assert response.status_code == 202, response.text
    assert_nothing_left(server)


# ---------------------------------------------------------------- budgets shared by all uploads

def open_upload(base_url: str, token: str, length: int, sent: bytes) -> socket.socket:
    """A POST /v1/jobs that declares ``length`` bytes and has sent only ``sent`` so far."""
    host, port = base_url.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)))
    connection.sendall((f"POST /v1/jobs HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
                        f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {length}\r\n\r\n").encode()
                       + sent)
    return connection


def test_uploads_in_flight_share_a_byte_budget(tiny, tmp_path, small_npz):
    settings = make_settings(tmp_path, max_uploads_bytes=3_000_000)
    thread = ServerThread(settings, tiny)
    with thread as running:
        gate_of = lambda: getattr(thread.server.config.app.state, "upload_gate", None)  # noqa: E731
        held = open_upload(running.base_url, running.token, 2_500_000, b"--b\r\n")
        try:
            deadline = time.monotonic() + 10
            while gate_of() is None or gate_of().bodies.used < 2_500_000:
                assert time.monotonic() < deadline, "the held upload never reached the server"
                time.sleep(0.02)
            body = b"x" * 1_000_000
            response = running.client().post("/v1/jobs", files=job_form(body, GOOD))
            detail = assert_names(response, 503, "body")
            assert response.headers["Retry-After"].isdigit() and "max_uploads_bytes" in detail["message"]
        finally:
            held.close()
        deadline = time.monotonic() + 10
        while gate_of().bodies.used:  # the dropped upload gives its share back
            assert time.monotonic() < deadline
            time.sleep(0.02)
        response = running.client().post("/v1/jobs", files=job_form(small_npz, GOOD))
        assert response.status_code == 202, response.text
        assert_nothing_left(running)


def test_an_upload_needing_more_memory_than_the_budget_is_413(tiny, tmp_path, small_passes, small_npz):
    declared = sum(array.nbytes for array in small_passes.arrays().values())
    with ServerThread(make_settings(tmp_path, max_uploads_memory_bytes=declared - 1), tiny) as running:
        detail = assert_names(running.client().post("/v1/jobs", files=job_form(small_npz, GOOD)), 413, "passes")
        assert "max_uploads_memory_bytes" in detail["message"]
        assert_nothing_left(running)


def test_the_memory_budget_waits_then_gives_up():
    import asyncio

    from server.budget import Budget

    async def scenario():
        budget = Budget(100)
        assert budget.try_take(60)
        assert not await budget.take(50, 0.05)  # no room within the wait
        assert not await budget.take(101, 10)  # never fits: no wait at all
        waiter = asyncio.ensure_future(budget.take(50, 5))
        await asyncio.sleep(0.05)
        budget.give(60)
        assert await waiter and budget.used == 50

    asyncio.run(asyncio.wait_for(scenario(), 5))


# ---------------------------------------------------------------- a full disk: 507 with the space needed

@pytest.fixture
def tiny_disk(tmp_path):
    """A 20 MB tmpfs (the machine runs the tests as root; skipped where mount is refused)."""
    mount_point = tmp_path / "tiny-disk"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip() or result.returncode}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def chunks(body: bytes, size: int = 256 * 1024):
    for start in range(0, len(body), size):
        yield body[start:start + size]


def test_a_full_disk_during_an_upload_is_507(tiny, tiny_disk, small_npz):
    big = np.random.default_rng(1).bytes(30_000_000)  # more than the 20 MB disk holds
    # min_free_bytes 0: admission's own reserve (128 MiB by default) would refuse every
    # upload on this disk before the upload reader gets to write one.
    settings = make_settings(tiny_disk / "data", max_upload_bytes=64_000_000, min_free_bytes=0)
    with ServerThread(settings, tiny) as running:
        client = running.client()
        # With a Content-Length: refused before a byte is written, saying what it needs.
        detail = assert_names(client.post("/v1/jobs", files=job_form(big, GOOD)), 507, "body")
        assert "needs 300" in detail["message"] and "free" in detail["message"]
        # Chunked (no length): the write fails midway (ENOSPC), naming the part it was writing.
        body = b"".join(job_form_parts(big))
        response = client.post("/v1/jobs", content=chunks(body),
                               headers={"Content-Type": "multipart/form-data; boundary=b0undary"})
        detail = assert_names(response, 507, "passes")
        assert "no space left" in detail["message"] and "needs" in detail["message"]
        assert_nothing_left(running)
        # The space is back: the next job is taken.
        accepted = client.post("/v1/jobs", files=job_form(small_npz, GOOD))
        assert accepted.status_code == 202, accepted.text


def job_form_parts(npz: bytes):
    yield b"--b0undary\r\nContent-Disposition: form-data; name=\"request\"\r\n\r\n" + GOOD.to_json().encode()
    yield b"\r\n--b0undary\r\nContent-Disposition: form-data; name=\"passes\"; filename=\"p.npz\"\r\n\r\n" + npz
    yield b"\r\n--b0undary--\r\n"


# ---------------------------------------------------------------- peak RSS of `zs serve` under the bombs

MAX_UNPACKED = 64 * 2 ** 20
LIMITS = {"ZS_MAX_VIEWS": "8", "ZS_MAX_RESOLUTION": "256", "ZS_MAX_TEXTURE_SIZE": "1024",
          "ZS_MAX_UPLOAD_BYTES": str(256 * 2 ** 20), "ZS_MAX_UNPACKED_BYTES": str(MAX_UNPACKED),
          "ZS_MAX_UPLOADS_MEMORY_BYTES": str(MAX_UNPACKED)}


class Serve:
    """`zs serve --default-model tiny` in a subprocess with small limits; its RSS read from /proc."""

    def __init__(self, data_dir: Path, log_path: Path):
        port = free_port()
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), **LIMITS)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "zs_cli", "serve", "--port", str(port), "--data-dir", str(data_dir),
             "--device", "cpu", "--default-model", "tiny"],
            cwd=ROOT, env=env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)
        self.base_url = f"http://127.0.0.1:{port}"
        wait_until_healthy(self.base_url, lambda: self.process.poll() is None, log_path)
        token = (data_dir / "token").read_text().strip()
        self.client = httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=300)

    def memory(self, key: str) -> int:
        """VmRSS (now) or VmHWM (peak) in bytes."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    def reset_peak(self) -> None:
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS

    def stop(self) -> None:
        self.client.close()
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture(scope="module")
def serve(tmp_path_factory):
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc to read the server's peak RSS")
    folder = tmp_path_factory.mktemp("zs-serve")
    process = Serve(folder / "data", folder / "serve.log")
    yield process
    process.stop()


@pytest.mark.slow
def test_peak_rss_under_bombs_stays_bounded(serve, small_passes, small_npz):
    # Warm up every code path (a whole job), let it finish, then measure from here.
    job = submit(serve.client, small_npz, GOOD)
    assert wait_for(serve.client, job)["state"] == "done"
    time.sleep(0.5)
    serve.reset_peak()
    baseline = serve.memory("VmRSS")

    cases = bomb_cases(small_passes.arrays())
    uploads = [cases[name][0] for name in ("unused extra array of 3.9 GiB zeros", "depth declaring 2 x 20000 x 20000",
                                           "depth holding 3.9 GiB more than it declares",
                                           ".npy header declaring 4 GiB of header")]
    answers = []

    def send(npz: bytes) -> None:
        answers.append(serve.client.post("/v1/jobs", files=job_form(npz, GOOD)).status_code)

    for npz in uploads:
        send(npz)
    pair = [threading.Thread(target=send, args=(uploads[0],)) for _ in range(2)]  # two at once
    for thread in pair:
        thread.start()
    for thread in pair:
        thread.join()
    peak = serve.memory("VmHWM")

    assert answers == [422] * 6, answers
    # Each costs at most a few times its own size (~4 MB) plus the declared arrays the
    # limits allow (max_uploads_memory_bytes, shared); before, one cost +4.2 GB, two +8.4 GB.
    bound = 3 * 2 * max(map(len, uploads)) + MAX_UNPACKED + 64 * 2 ** 20
    print(f"\npeak RSS under the bombs: +{(peak - baseline) / 1e6:.1f} MB over {baseline / 1e6:.0f} MB "
          f"(bound +{bound / 1e6:.0f} MB)")
    assert peak - baseline <= bound


@pytest.mark.slow
def test_the_file_size_limit_during_an_upload_is_507(serve, small_npz):
    """RLIMIT_FSIZE (ulimit -f) on the running server: the write fails with EFBIG (Python
    ignores SIGXFSZ), which is a 507 naming the part, not a 500; lifted, uploads work again."""
    soft, hard = resource.prlimit(serve.process.pid, resource.RLIMIT_FSIZE)
    resource.prlimit(serve.process.pid, resource.RLIMIT_FSIZE, (4_000_000, hard))
    try:
        big = np.random.default_rng(2).bytes(10_000_000)
        detail = assert_names(serve.client.post("/v1/jobs", files=job_form(big, GOOD)), 507, "passes")
        assert "file-size limit" in detail["message"] and "needs" in detail["message"]
    finally:
        resource.prlimit(serve.process.pid, resource.RLIMIT_FSIZE, (soft, hard))
    response = serve.client.post("/v1/jobs", files=job_form(small_npz, GOOD))
    assert response.status_code == 202, response.text


def test_an_accepted_upload_becomes_the_jobs_passes_intact(server, small_npz):
    """Uploads spool under the data dir (/tmp may be a tmpfs: memory again), and the
    spooled file is what the job keeps."""
    from server.uploads import SPOOL_FOLDER

    response = server.client().post("/v1/jobs", files=job_form(small_npz, GOOD))
    assert response.status_code == 202
    assert (server.data_dir / SPOOL_FOLDER).is_dir()
    with zipfile.ZipFile(server.data_dir / "jobs" / response.json()["id"] / "passes.npz") as archive:
        assert archive.testzip() is None  # the spooled file became the job's passes, intact
