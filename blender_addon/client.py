"""HTTP client of the ZS sampling server (docs/protocol.md). Standard library only, no bpy.

Every failure is a :class:`ServerError` whose message says what is wrong and what to do;
``status`` is the HTTP status (None when the server could not be reached) and ``field``
the part of the request the server named in its error body.

    client = Client("http://127.0.0.1:8765", token)
    job = client.submit(request.to_dict(), passes.to_npz_bytes())
    for name, data in client.events(job):      # queued, started, progress..., done
        ...
    client.download_result(job, folder)        # views/NNNN.png, texture.png, metrics.json ...
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import shutil
import socket
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
from pathlib import Path, PurePosixPath
from typing import Iterator

DEFAULT_URL = "http://127.0.0.1:8765"
TERMINAL_EVENTS = ("done", "failed", "cancelled")
STREAM_READ_TIMEOUT = 60.0  # the server sends a keepalive comment after 15 s of silence
TRANSFER_TIMEOUT = 120.0  # uploads and downloads: the server checks a job before answering


class ServerError(RuntimeError):
    """A request to the server failed. ``status``: HTTP status, None when unreachable;
    ``field``: what the server said was wrong (a request field, an array, a header)."""

    def __init__(self, message: str, status: int | None = None, field: str | None = None):
        super().__init__(message)
        self.status = status
        self.field = field


class Client:
    """One server: ``url`` (scheme, host, port) and the bearer ``token``; ``timeout`` is
    the per-request socket timeout in seconds."""

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, timeout: float = 10.0):
        url = (url or DEFAULT_URL).strip().rstrip("/")
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ServerError(f"server URL {url!r} is not an http(s) address such as {DEFAULT_URL}",
                              field="url")
        self.url = url
        self.token = token or None
        self.timeout = float(timeout)
        # A local server is never reached through an HTTP proxy from the environment.
        handlers = [urllib.request.ProxyHandler({})] if _is_loopback(parsed.hostname) else []
        self._opener = urllib.request.build_opener(*handlers)

    # ------------------------------------------------------------------ the routes

    def health(self) -> dict:
        """GET /v1/health (no token needed): status, version, model, queue_length ..."""
        return self._json("GET", "/v1/health")

    def models(self) -> dict:
        """GET /v1/models: the loaded model. Needs the token, so it also checks it."""
        return self._json("GET", "/v1/models")

    def submit(self, request: dict, passes: bytes, field: str = "passes") -> str:
        """POST /v1/jobs: the request dict (``Request.to_dict()``) and the passes as a
        multipart form -> the new job's id. ``passes``: the .npz bytes, or with ``field``
        "exr_sequence" a zip of a ZS-passes render's EXR files and sidecars."""
        text = request if isinstance(request, str) else json.dumps(request)
        file_name = {"passes": "passes.npz", "exr_sequence": "frames.zip"}[field]
        body, content_type = encode_multipart(
            [("request", None, "application/json", text.encode("utf-8")),
             (field, file_name, "application/octet-stream", bytes(passes))])
        answer = self._json("POST", "/v1/jobs", body=body, headers={"Content-Type": content_type},
                            timeout=max(self.timeout, TRANSFER_TIMEOUT))
        return str(answer["id"])

    def status(self, job_id: str) -> dict:
        """GET /v1/jobs/{id}: state, step, total, eta_seconds, error, files ..."""
        return self._json("GET", f"/v1/jobs/{_quote(job_id)}")

    def cancel(self, job_id: str) -> dict:
        """DELETE /v1/jobs/{id}: cancel (queued at once, running before its next step)."""
        return self._json("DELETE", f"/v1/jobs/{_quote(job_id)}")

    def events(self, job_id: str, stop: threading.Event | None = None) -> Iterator[tuple[str, dict]]:
        """Follow the job's server-sent events -> (event name, data dict), in order, until
        ``done``, ``failed`` or ``cancelled`` (included), or until ``stop`` is set.

        A stream that drops before the terminal event is reopened with ``Last-Event-ID``
        (no event lost or repeated); a second drop without any event in between is an
        error. Setting ``stop`` from another thread interrupts a waiting read at once.
        """
        last_id = None
        reconnected = False
        while True:
            if stop is not None and stop.is_set():
                return
            headers = {"Accept": "text/event-stream"}
            if last_id is not None:
                headers["Last-Event-ID"] = str(last_id)
            response = self._open("GET", f"/v1/jobs/{_quote(job_id)}/events", headers=headers,
                                  timeout=max(self.timeout, STREAM_READ_TIMEOUT))
            watcher = _StopWatcher(response, stop)
            dropped = None
            try:
                for event_id, name, data in _parse_sse(response):
                    if event_id is not None:
                        last_id = event_id
                    reconnected = False
                    yield name, data
                    if name in TERMINAL_EVENTS:
                        return
                    if stop is not None and stop.is_set():
                        return
                dropped = "the server closed the event stream before the job finished"
            except (OSError, http.client.HTTPException, ValueError) as exc:
                dropped = f"the event stream broke ({type(exc).__name__}: {exc})"
            finally:
                watcher.close()
                response.close()
            if stop is not None and stop.is_set():
                return
            if reconnected:
                raise ServerError(f"{dropped} (job {job_id}, reconnecting once did not help); "
                                  f"check the server at {self.url} and its log")
            reconnected = True

    def download_file(self, job_id: str, name: str, dest_path) -> Path:
        """GET /v1/jobs/{id}/files/{name} (e.g. ``texture.png``) -> ``dest_path``, written
        whole (a temporary file renamed into place)."""
        parts = PurePosixPath(name).parts
        path = f"/v1/jobs/{_quote(job_id)}/files/" + "/".join(_quote(part) for part in parts)
        return self._download(path, Path(dest_path))

    def download_result(self, job_id: str, folder) -> Path:
        """GET /v1/jobs/{id}/result (a zip) and extract it into ``folder`` -> ``folder``.

        Entries that would land outside ``folder`` (absolute paths, ``..``) are refused."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="zs-result-") as scratch:
            archive_path = self._download(f"/v1/jobs/{_quote(job_id)}/result", Path(scratch) / "result.zip")
            try:
                with zipfile.ZipFile(archive_path) as archive:
                    root = folder.resolve()
                    for member in archive.infolist():
                        target = (root / member.filename).resolve()
                        if not target.is_relative_to(root) or "\\" in member.filename:
                            raise ServerError(f"the result of job {job_id} holds an unsafe path "
                                              f"{member.filename!r}; nothing after it was extracted")
                        if member.is_dir():
                            target.mkdir(parents=True, exist_ok=True)
                            continue
                        target.parent.mkdir(parents=True, exist_ok=True)
                        with archive.open(member) as source, open(target, "wb") as handle:
                            shutil.copyfileobj(source, handle)
            except zipfile.BadZipFile as exc:
                raise ServerError(f"the result of job {job_id} is not a readable zip ({exc})") from None
        return folder

    # ------------------------------------------------------------------ plumbing

    def _headers(self, extra: dict | None) -> dict:
        headers = {"User-Agent": "zs-texturing-blender"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        headers.update(extra or {})
        return headers

    def _open(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
              timeout: float | None = None):
        """Send one request -> the open response (2xx); anything else -> ServerError."""
        request = urllib.request.Request(self.url + path, data=body, method=method,
                                         headers=self._headers(headers))
        try:
            return self._opener.open(request, timeout=timeout or self.timeout)
        except urllib.error.HTTPError as exc:
            with exc:
                raise self._http_error(method, path, exc.code, exc.read()) from None
        except (TimeoutError, socket.timeout):
            raise ServerError(f"the ZS server at {self.url} did not answer {method} {path} within "
                              f"{timeout or self.timeout:g} s; is it busy or stuck? Check its log") from None
        except (urllib.error.URLError, ConnectionError, http.client.HTTPException, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServerError(f"cannot reach the ZS server at {self.url} ({reason}): press Start in the ZS panel "
                              f"(the first time, Set Up Server in the add-on preferences), or run `zs serve` "
                              f"(the ZS Texturing folder's .venv/bin/zs) in a terminal") from None

    def _json(self, method: str, path: str, **options) -> dict:
        response = self._open(method, path, **options)
        with response:
            try:
                raw = response.read()
            except (OSError, http.client.HTTPException) as exc:
                raise ServerError(f"the connection to the ZS server at {self.url} broke during "
                                  f"{method} {path} ({exc})") from None
        try:
            return json.loads(raw)
        except ValueError:
            raise ServerError(f"the server at {self.url} answered {method} {path} with something that is "
                              f"not JSON; is {self.url} really a ZS server?") from None

    def _download(self, path: str, dest: Path) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        response = self._open("GET", path, timeout=max(self.timeout, TRANSFER_TIMEOUT))
        handle, temporary = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        try:
            with response, os.fdopen(handle, "wb") as out:
                shutil.copyfileobj(response, out)
            os.replace(temporary, dest)
        except (OSError, http.client.HTTPException) as exc:
            raise ServerError(f"downloading {path} from {self.url} failed ({exc})") from None
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
        return dest

    def _http_error(self, method: str, path: str, status: int, raw: bytes) -> ServerError:
        field, message = _error_detail(raw)
        if status == 401:
            text = (f"token rejected by the ZS server at {self.url}: use the token in <data-dir>/token "
                    f"(`zs serve` prints where it is): in the add-on preferences, or as ZS_TOKEN or --token "
                    f"on the command line")
        elif status == 404 and field == "job_id":
            text = f"the server at {self.url} does not know this job ({message}); it may have been pruned"
        elif status == 413:
            text = f"the job is too large for the server at {self.url} ({message}); use fewer or smaller views"
        elif 400 <= status < 500:
            what = f"{field}: {message}" if field else message
            text = f"the ZS server refused {method} {path} ({status}): {what}"
        else:
            text = (f"the ZS server at {self.url} failed on {method} {path} ({status}: {message}); "
                    f"see the server's log")
        return ServerError(text, status=status, field=field)


# ------------------------------------------------------------------------ helpers


def encode_multipart(parts) -> tuple[bytes, str]:
    """[(field name, file name or None, content type, bytes)] -> (body, Content-Type)
    of a ``multipart/form-data`` request with a random boundary."""
    boundary = f"zs-{uuid.uuid4().hex}"
    chunks = []
    for name, filename, content_type, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        chunks.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
                      f"Content-Type: {content_type}\r\n\r\n".encode("ascii"))
        chunks.append(data)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode("ascii"))
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def _parse_sse(stream) -> Iterator[tuple[int | None, str, dict]]:
    """Lines of a text/event-stream -> (id or None, event name, data as JSON), per event.
    Comments (``: keepalive``) and ``retry:`` lines are skipped."""
    event_id, name, data = None, None, []
    for raw in stream:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data:
                yield event_id, name or "message", json.loads("\n".join(data))
            event_id, name, data = None, None, []
            continue
        if line.startswith(":"):
            continue
        key, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if key == "data":
            data.append(value)
        elif key == "event":
            name = value
        elif key == "id" and value.isdigit():
            event_id = int(value)


class _StopWatcher:
    """While a stream is open, watch ``stop`` from a helper thread; when it is set, shut
    the socket down so a read blocked in the stream returns at once."""

    def __init__(self, response, stop: threading.Event | None):
        self._done = threading.Event()
        self._thread = None
        if stop is not None:
            self._thread = threading.Thread(target=self._watch, args=(response, stop), daemon=True,
                                            name="zs-events-stop")
            self._thread.start()

    def _watch(self, response, stop: threading.Event) -> None:
        while not self._done.is_set():
            if stop.wait(0.1):
                sock = _socket_of(response)
                if sock is not None:
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                return

    def close(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(1.0)


def _socket_of(response):
    """The socket under an urllib response (http.client keeps it in its file object)."""
    raw = getattr(getattr(response, "fp", None), "raw", None)
    return getattr(raw, "_sock", None)


def _error_detail(raw: bytes) -> tuple[str | None, str]:
    """The server's error body ``{"detail": {"field", "message"}}`` -> (field, message)."""
    try:
        detail = json.loads(raw).get("detail")
    except (ValueError, AttributeError):
        return None, raw.decode("utf-8", "replace").strip()[:300] or "no details"
    if isinstance(detail, dict):
        return detail.get("field"), str(detail.get("message", detail))
    return None, str(detail)


def _quote(part: str) -> str:
    return urllib.parse.quote(str(part), safe="")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
