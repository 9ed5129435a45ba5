"""Bearer-token auth: every route but /v1/health needs the token from <data-dir>/token."""

from __future__ import annotations

import os
import stat

import httpx
import pytest

from server.config import Settings, ensure_token_file

PROTECTED = [
    ("GET", "/v1/models"),
    ("GET", "/v1/jobs"),
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs/0123456789abcdef0123"),
    ("GET", "/v1/jobs/0123456789abcdef0123/events"),
    ("GET", "/v1/jobs/0123456789abcdef0123/result"),
    ("GET", "/v1/jobs/0123456789abcdef0123/files/texture.png"),
    ("DELETE", "/v1/jobs/0123456789abcdef0123"),
]


@pytest.mark.parametrize("method,path", PROTECTED)
@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", "Basic Zm9vOmJhcg==", "Bearer", "token"])
def test_protected_routes_reject_missing_or_wrong_tokens(server, method, path, authorization):
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = httpx.request(method, server.base_url + path, headers=headers, timeout=10)
    assert response.status_code == 401, response.text
    assert response.json()["detail"]["field"] == "authorization"
    assert response.headers["www-authenticate"] == "Bearer"


def test_right_token_passes_and_health_needs_none(server):
    assert httpx.get(server.base_url + "/v1/health").status_code == 200
    assert httpx.get(server.base_url + "/v1/models", headers=server.auth).status_code == 200
    # A token with a different case or extra characters is still wrong.
    wrong = {"Authorization": f"Bearer {server.token}x"}
    assert httpx.get(server.base_url + "/v1/jobs", headers=wrong).status_code == 401


def test_openapi_docs_are_served(server):
    schema = httpx.get(server.base_url + "/openapi.json").json()
    assert {"/v1/health", "/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/events",
            "/v1/jobs/{job_id}/result", "/v1/jobs/{job_id}/files/{name}"} <= set(schema["paths"])
    assert "multipart/form-data" in schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    assert httpx.get(server.base_url + "/docs").status_code == 200


def test_token_file_is_created_once_with_mode_0600(server, tmp_path):
    path = server.data_dir / "token"
    assert path.read_text().strip() == server.token and len(server.token) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    fresh = tmp_path / "fresh" / "token"
    first = ensure_token_file(fresh)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600
    assert ensure_token_file(fresh) == first  # stable across restarts
    os.chmod(fresh, 0o644)
    assert ensure_token_file(fresh) == first and stat.S_IMODE(fresh.stat().st_mode) == 0o600
    assert Settings(data_dir=tmp_path / "other").resolve_token() != first  # random per data dir


def test_settings_defaults_and_env_overrides(tmp_path):
    settings = Settings.from_env({})
    assert settings.host == "127.0.0.1" and settings.is_loopback
    assert settings.data_dir.name == "zs-texturing"
    env = {"ZS_PORT": "9123", "ZS_MAX_STEPS": "7", "ZS_DATA_DIR": str(tmp_path), "ZS_HOST": "0.0.0.0"}
    settings = Settings.from_env(env, max_steps=9)
    assert settings.port == 9123 and settings.max_steps == 9 and settings.data_dir == tmp_path
    assert not settings.is_loopback
    with pytest.raises(ValueError, match="ZS_PORT"):
        Settings.from_env({"ZS_PORT": "eighty"})
