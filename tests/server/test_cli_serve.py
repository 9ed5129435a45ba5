"""`zs serve` options reach the settings; binding beyond loopback warns."""

from __future__ import annotations

import pytest

import zs_cli as cli


@pytest.fixture
def captured_run(monkeypatch):
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append((app, kwargs)))
    return calls


def test_serve_defaults_to_loopback_without_warning(captured_run, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ZS_HOST", raising=False)
    assert cli.main(["serve", "--data-dir", str(tmp_path), "--port", "8911", "--device", "cpu"]) == 0
    app, kwargs = captured_run[0]
    assert kwargs["host"] == "127.0.0.1" and kwargs["port"] == 8911
    settings = app.state.settings
    assert settings.data_dir == tmp_path and settings.device == "cpu" and settings.default_model == "tiny"
    assert (tmp_path / "token").read_text().strip() == app.state.token
    err = capsys.readouterr().err
    assert "WARNING" not in err and "http://127.0.0.1:8911" in err


def test_serve_warns_when_bound_beyond_loopback(captured_run, tmp_path, capsys):
    assert cli.main(["serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path), "--default-model", "tiny-sdxl"]) == 0
    assert captured_run[0][1]["host"] == "0.0.0.0"
    assert captured_run[0][0].state.settings.default_model == "tiny-sdxl"
    assert "WARNING" in capsys.readouterr().err
