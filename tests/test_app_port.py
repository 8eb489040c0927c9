"""``pagelens app --port N``, as ``pagelens serve --port N`` (Streamlit's own
``--server.port`` keeps passing through; giving both is refused)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from typer.testing import CliRunner

from app.cli import cli


def _launched(monkeypatch, args: list[str]):
    calls: list[list[str]] = []
    monkeypatch.setattr(os, "execvpe", lambda file, argv, env: calls.append(list(argv)))
    result = CliRunner().invoke(cli, ["app", *args])
    return result, (calls[0] if calls else None)


def _port_of(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == "--server.port"]


def test_port_option_sets_streamlits_port(monkeypatch):
    result, argv = _launched(monkeypatch, ["--port", "8601"])
    assert result.exit_code == 0, result.output
    assert argv is not None and _port_of(argv) == ["8601"]


def test_streamlits_own_port_flag_still_passes_through(monkeypatch):
    result, argv = _launched(monkeypatch, ["--server.port", "8602"])
    assert result.exit_code == 0, result.output
    assert argv is not None and _port_of(argv) == ["8602"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "8601", "--server.port", "8602"], "not both"),
        (["--port", "8601", "--server.port=8602"], "not both"),
        (["--port", "0"], "between 1 and 65535"),
        (["--port", "70000"], "between 1 and 65535"),
    ],
)
def test_bad_port_is_refused_before_anything_starts(monkeypatch, args, message):
    result, argv = _launched(monkeypatch, args)
    assert result.exit_code == 2 and argv is None
    assert message in result.output


@pytest.mark.slow
def test_the_app_answers_on_the_port_given(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PAGELENS_HOME": str(tmp_path / "home"), "HOME": str(tmp_path)}
    env = {k: v for k, v in env.items() if not k.startswith("STREAMLIT_")}
    argv = [sys.executable, "-m", "app.cli", "app", "--port", str(port)]
    argv += ["--server.fileWatcherType", "none"]
    with (tmp_path / "app.log").open("wb") as log:
        proc = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "app.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the app did not answer on its --port"
            try:
                url = f"http://127.0.0.1:{port}/_stcore/health"
                with urllib.request.urlopen(url, timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                time.sleep(0.3)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
