"""One exposure rule for ``pagelens serve``, ``pagelens app`` and ``pagelens mcp --http``
(issue 22, findings 3, 4 and 6): loopback needs nothing but answers only to its own names;
anything else needs a key or the password. And the app's password guards everything under
its address (page, ``/media``, uploads, the WebSocket), with failed attempts slowing down.

Real servers on free loopback ports (127.0.0.2 is loopback too, and a bind there must
answer to its own address and nothing else), real clients: httpx, the ``mcp`` client, a
WebSocket client against the real Streamlit process ``pagelens app`` execs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.exposure import decide, is_loopback
from app.web.auth import Throttle, client_key
from app.web.launch import PASSWORD_ENV, plan
from indexer.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
SECOND_LOOPBACK = "127.0.0.2"


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _serve(app, host: str) -> Iterator[str]:
    """``app`` on uvicorn in a thread, bound to ``host`` on a free port; yields the URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


# -- the rule ---------------------------------------------------------------------------
def test_one_rule_decides_every_bind():
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2", "[::1]"):
        assert decide(host).loopback and not decide(host).needs_secret, host
    for host in ("0.0.0.0", "::", "", "  ", "192.168.1.20", "my-laptop.lan", "127.1"):
        exposure = decide(host)
        assert exposure.needs_secret and exposure.allowed_hosts is None, host
    assert decide("").address == "0.0.0.0"  # empty: every interface, and says so
    second = decide(SECOND_LOOPBACK, ["box.lan"])
    assert second.answers(f"{SECOND_LOOPBACK}:8000") and second.answers("localhost")
    assert second.answers("[::1]:8000") and second.answers("box.lan")
    assert not second.answers("rebound.example:8000") and not second.answers(None)
    assert decide("127.0.0.1", ["*.lan"]).answers("box.lan:1")
    assert is_loopback("127.0.0.9") and not is_loopback("")


# -- the app: every way of asking for an address ------------------------------------------
def _streamlit_address(args: list[str], environ: dict[str, str]) -> str | None:
    """What Streamlit's own command line (click) takes for --server.address from ``args``."""
    from streamlit.web import cli as stcli

    old = {k: os.environ.get(k) for k in environ}
    os.environ.update(environ)
    try:
        ctx = stcli.main_run.make_context("run", ["s.py", *args])
        return ctx.params["server_address"]
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.mark.parametrize(
    ("args", "environ"),
    [
        (["--server.address="], {}),  # empty: Streamlit binds every interface
        (["--server.address", ""], {}),
        (["--server.address", "127.0.0.1", "--server.address", "0.0.0.0"], {}),  # last wins
        (["--server.address=127.0.0.1", "--server.address=192.168.1.20"], {}),
        ([], {"STREAMLIT_SERVER_ADDRESS": "0.0.0.0"}),
        (["--server.port", "9000"], {"STREAMLIT_SERVER_ADDRESS": "::"}),
    ],
)
def test_every_non_loopback_address_needs_the_password(args, environ, tmp_path):
    environ = {"HOME": str(tmp_path), **environ}
    with pytest.raises(UsageError, match=PASSWORD_ENV):
        plan("s.py", args, environ=environ)
    launch = plan("s.py", args, environ={**environ, PASSWORD_ENV: "pw"})
    assert launch.exposed and launch.warning
    # Streamlit gets one address, the one decided, whatever else was set.
    assert launch.args.count("--server.address") == 1
    assert not [a for a in launch.args if a.startswith("--server.address=")]
    assert _streamlit_address(launch.args[2:], environ) == launch.host
    assert not is_loopback(launch.host)


def test_the_address_is_read_as_streamlit_reads_it(tmp_path):
    home = {"HOME": str(tmp_path)}
    for args in (
        ["--server.address", "0.0.0.0", "--server.address", "127.0.0.1"],
        ["--server.address=", "--server.address=localhost"],
    ):
        launch = plan("s.py", args, environ=home)
        assert not launch.exposed
        assert _streamlit_address(args, {}) == launch.host  # Streamlit's last flag, too
    # a blank password is no password
    with pytest.raises(UsageError):
        plan("s.py", ["--server.address=0.0.0.0"], environ={**home, PASSWORD_ENV: "  "})


def test_config_files_are_streamlits_sources_too(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".streamlit").mkdir(parents=True)
    project = tmp_path / "project"
    (project / ".streamlit").mkdir(parents=True)
    monkeypatch.chdir(project)
    environ = {"HOME": str(home)}
    (home / ".streamlit" / "config.toml").write_text('[server]\naddress = "0.0.0.0"\n')
    with pytest.raises(UsageError, match=PASSWORD_ENV):
        plan("s.py", [], environ=environ)
    # the project's file comes later and wins (as in Streamlit)
    (project / ".streamlit" / "config.toml").write_text('[server]\naddress = "127.0.0.1"\n')
    assert not plan("s.py", [], environ=environ).exposed
    (project / ".streamlit" / "config.toml").write_text('[server]\naddress = ""\n')
    with pytest.raises(UsageError, match=PASSWORD_ENV):
        plan("s.py", [], environ=environ)
    launch = plan("s.py", [], environ={**environ, PASSWORD_ENV: "pw"})
    assert launch.host == "0.0.0.0"

    # the command says it in one line and starts nothing
    execs = []
    monkeypatch.setattr(os, "execvpe", lambda *a: execs.append(a))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    result = CliRunner().invoke(cli, ["app"])
    assert result.exit_code == 2 and PASSWORD_ENV in result.output and execs == []


def _app_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMLIT_", "PAGELENS_"))}
    (tmp_path / "user").mkdir(exist_ok=True)
    env.update(
        PYTHONPATH=str(ROOT),
        HOME=str(tmp_path / "user"),
        PAGELENS_HOME=str(tmp_path / "data"),
        PAGELENS_MODEL=str(tmp_path / "no-model"),  # the gate needs no model
        **extra,
    )
    return env


def test_streamlit_itself_refuses_an_exposed_address_without_the_password(tmp_path):
    """Past the command line (``python -m app.web.launch`` run by hand, a config file
    written after ``pagelens app`` decided): the launcher checks the address Streamlit
    resolved, before it binds."""
    user = tmp_path / "user" / ".streamlit"
    user.mkdir(parents=True)
    (user / "config.toml").write_text('[server]\naddress = ""\n')
    port = _free_port()
    script = str(ROOT / "app" / "streamlit_app.py")
    argv = [sys.executable, "-m", "app.web.launch", "run", script, "--server.port", str(port)]
    argv += ["--server.headless", "true", "--browser.gatherUsageStats", "false"]
    done = subprocess.run(
        argv, env=_app_env(tmp_path), capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert done.returncode != 0 and PASSWORD_ENV in done.stderr, done.stderr[-2000:]
    with socket.socket() as s:  # nothing listened
        s.bind(("0.0.0.0", port))


# -- the app: the gate in front of Streamlit's server -------------------------------------
@pytest.fixture(scope="module")
def gated_app(tmp_path_factory) -> Iterator[str]:
    """``pagelens app`` with a password, on a second loopback address (so the Host
    allow-list must name the bound address)."""
    tmp_path = tmp_path_factory.mktemp("gated-app")
    port = _free_port(SECOND_LOOPBACK)
    env = _app_env(tmp_path, PAGELENS_APP_PASSWORD="s3cret horse")
    argv = [sys.executable, "-m", "app.cli", "app", "--host", SECOND_LOOPBACK]
    argv += ["--server.port", str(port)]
    log = (tmp_path / "app.log").open("w")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    url = f"http://{SECOND_LOOPBACK}:{port}"
    deadline = time.monotonic() + 90
    try:
        while True:
            assert proc.poll() is None, (tmp_path / "app.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the app did not start"
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(url, timeout=2)
                break
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def _websocket(url: str, cookie: str | None = None, host: str | None = None) -> str:
    """Open Streamlit's WebSocket: "open", or the HTTP status that refused it."""
    import websockets

    headers = {}
    if cookie:
        headers["Cookie"] = cookie
    if host:
        headers["Host"] = host

    async def attempt() -> str:
        target = url.replace("http://", "ws://") + "/_stcore/stream"
        try:
            async with websockets.connect(
                target, additional_headers=headers, subprotocols=["streamlit"], open_timeout=10
            ):
                return "open"
        except websockets.InvalidStatus as exc:
            return str(exc.response.status_code)

    return asyncio.run(attempt())


def _sign_in(url: str, password: str) -> httpx.Response:
    return httpx.post(f"{url}/_pagelens/login", data={"password": password}, timeout=10)


def test_nothing_under_the_app_answers_without_the_password(gated_app):
    url = gated_app
    page = httpx.get(url, timeout=10)
    assert page.status_code == 401 and 'type="password"' in page.text
    assert "streamlit" not in page.text.lower()  # the login page, not the app's
    for path in (
        "/media/0123456789abcdef.png",
        "/_stcore/health",
        "/_stcore/host-config",
        "/_stcore/upload_file/session/file",
        "/static/js/main.js",
    ):
        got = httpx.get(url + path, timeout=10)
        assert got.status_code == 401, (path, got.status_code)
    put = httpx.put(url + "/_stcore/upload_file/s/f", files={"file": ("a.pdf", b"%PDF-1.4")})
    assert put.status_code == 401
    assert _websocket(url) == "403"
    assert _websocket(url, cookie="pagelens_session=forged.0000") == "403"

    # the right password: a session cookie, and then everything answers
    time.sleep(THROTTLE_BASE_WAIT)  # (another test's failures may have earned a wait)
    signed = _sign_in(url, "s3cret horse")
    assert signed.status_code == 303, signed.text
    cookie_header = signed.headers["set-cookie"]
    assert "HttpOnly" in cookie_header and "SameSite=Strict" in cookie_header
    cookie = cookie_header.split(";", 1)[0]
    assert httpx.get(url, headers={"Cookie": cookie}, timeout=10).status_code == 200
    health = httpx.get(url + "/_stcore/health", headers={"Cookie": cookie}, timeout=10)
    assert health.status_code == 200
    media = httpx.get(url + "/media/0123456789abcdef.png", headers={"Cookie": cookie})
    assert media.status_code == 404  # past the gate: Streamlit's own answer
    assert _websocket(url, cookie=cookie) == "open"
    # ... but only under the bind's own names (DNS rebinding), cookie or not
    evil = httpx.get(url, headers={"Cookie": cookie, "Host": "rebound.example"}, timeout=10)
    assert evil.status_code == 400
    rebound = f"rebound.example:{url.rsplit(':', 1)[1]}"
    assert _websocket(url, cookie=cookie, host=rebound) in ("400", "403")


THROTTLE_BASE_WAIT = 1.0


def test_wrong_passwords_slow_down(gated_app):
    url = gated_app
    time.sleep(THROTTLE_BASE_WAIT)
    first = _sign_in(url, "guess 1")
    assert first.status_code == 401 and "Wrong password" in first.text
    # at once again: refused unchecked, even the right password, and told how long to wait
    again = _sign_in(url, "s3cret horse")
    assert again.status_code == 429 and int(again.headers["retry-after"]) >= 1
    assert "set-cookie" not in again.headers
    time.sleep(0.6)
    assert _sign_in(url, "guess 2").status_code == 401  # allowed after 0.5 s; now 1 s
    time.sleep(0.6)
    assert _sign_in(url, "guess 3").status_code == 429  # not yet
    time.sleep(0.6)
    assert _sign_in(url, "s3cret horse").status_code == 303  # a success clears the count
    assert _sign_in(url, "guess 4").status_code == 401


def test_throttle_doubles_and_is_bounded():
    now = [0.0]
    throttle = Throttle(base=0.5, cap=60.0, clients=3, clock=lambda: now[0])
    assert throttle.wait("a") == 0
    waits = [throttle.failed("a") for _ in range(10)]
    assert waits[:4] == [0.5, 1.0, 2.0, 4.0] and max(waits) == 60.0
    assert throttle.wait("a") == 60.0 and throttle.wait("b") == 0  # per client
    now[0] += 60
    assert throttle.wait("a") == 0
    throttle.succeeded("a")
    assert throttle.failed("a") == 0.5
    for client in "bcde":  # bounded memory: the least recent client is forgotten
        throttle.failed(client)
    assert throttle.wait("a") == 0
    assert client_key("2001:db8::1") == client_key("2001:db8::ffff") == "2001:db8::/64"
    assert client_key("::ffff:10.0.0.1") == "10.0.0.1"


# -- serve ------------------------------------------------------------------------------
def test_serve_refuses_to_listen_beyond_loopback_without_a_key(tmp_path):
    env = _app_env(tmp_path)
    env.pop("PAGELENS_API_KEY", None)
    for host in ("0.0.0.0", "", "192.168.1.20"):
        port = _free_port()
        argv = [sys.executable, "-m", "app.cli", "serve", "--host", host, "--port", str(port)]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2, (host, done.stderr[-2000:])
        assert len(lines) == 1 and "--api-key" in lines[0] and "PAGELENS_API_KEY" in lines[0]


@pytest.fixture
def fake_embedder(monkeypatch):
    from app.cli.common import Options
    from indexer.model.fake import FakeEmbedder

    embedder = FakeEmbedder()
    monkeypatch.setattr(Options, "embedder", lambda self: embedder)
    return embedder


def test_serve_on_another_loopback_address_answers_to_it_and_no_other_name(
    monkeypatch, tmp_path, fake_embedder
):
    calls: dict = {}
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: calls.update(app=app, **kw))
    monkeypatch.setenv("PAGELENS_HOME", str(tmp_path))
    monkeypatch.delenv("PAGELENS_API_KEY", raising=False)
    result = CliRunner().invoke(cli, ["serve", "--host", SECOND_LOOPBACK])
    assert result.exit_code == 0, result.output
    assert calls["host"] == SECOND_LOOPBACK
    with _serve(calls["app"], SECOND_LOOPBACK) as url:
        assert httpx.get(f"{url}/health").status_code == 200  # Host: 127.0.0.2:PORT
        assert httpx.get(f"{url}/v1/models").status_code == 200
        evil = httpx.get(f"{url}/v1/models", headers={"Host": "rebound.example"})
        assert evil.status_code == 400 and evil.json()["error"]["code"] == "invalid_host"


# -- mcp --http -------------------------------------------------------------------------
def _mcp_app(monkeypatch, tmp_path, *args: str):
    from indexer.store import Collection

    Collection(tmp_path / "collection").close()
    calls: dict = {}
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: calls.update(app=app, **kw))
    monkeypatch.delenv("PAGELENS_API_KEY", raising=False)
    cmd = ["-c", str(tmp_path / "collection"), "mcp", "--http", *args]
    result = CliRunner().invoke(cli, cmd)
    return result, calls


def test_mcp_on_another_loopback_address_answers_only_its_names(monkeypatch, tmp_path):
    import anyio
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    result, calls = _mcp_app(monkeypatch, tmp_path, "--host", SECOND_LOOPBACK)
    assert result.exit_code == 0, result.output
    assert calls["host"] == SECOND_LOOPBACK
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    accept = {"Accept": "application/json, text/event-stream"}
    with _serve(calls["app"], SECOND_LOOPBACK) as url:
        for name in ("rebound.example", "rebound.example:80", "192.168.1.20"):
            evil = httpx.post(f"{url}/mcp", json=ping, headers={**accept, "Host": name})
            assert evil.status_code == 400 and "invalid_host" in evil.text, (name, evil.text)
        origin = {**accept, "Origin": "http://rebound.example"}
        assert httpx.post(f"{url}/mcp", json=ping, headers=origin).status_code == 403

        async def session():  # its own address works, with the real MCP client
            async with httpx2.AsyncClient(timeout=30) as http:
                transport = streamable_http_client(f"{url}/mcp", http_client=http)
                async with Client(transport) as client:
                    return await client.call_tool("list_documents", {})

        listed = anyio.run(session)
    assert not listed.is_error and "empty" in listed.content[0].text


def test_mcp_beyond_loopback_needs_a_key(monkeypatch, tmp_path):
    for host in ("0.0.0.0", ""):
        result, calls = _mcp_app(monkeypatch, tmp_path, "--host", host)
        assert result.exit_code == 2 and "--api-key" in result.stderr and not calls
    result, _ = _mcp_app(monkeypatch, tmp_path, "--host", "0.0.0.0", "--api-key", " ")
    assert result.exit_code == 2 and "empty" in result.stderr
    result, calls = _mcp_app(monkeypatch, tmp_path, "--host", "0.0.0.0", "--api-key", "k")
    assert result.exit_code == 0 and calls["host"] == "0.0.0.0"


def test_the_docs_name_the_rule():
    text = (ROOT / "docs" / "SECURITY.md").read_text()
    assert re.search(r"PAGELENS_APP_PASSWORD", text) and "127.0.0.2" in text


def test_a_browser_signs_in_and_the_page_images_stay_behind_the_password(tmp_path, tiny_model_dir):
    """In Chromium: the login page, then the whole app (WebSocket, upload, search, the page
    images under /media); the same image URL without the cookie is 401."""
    from playwright.sync_api import expect, sync_playwright

    from tests.support.pdfs import TOPICS, make_text_pdf
    from tests.test_e2e_browser import CHROMIUM, CHROMIUM_ARGS, _require_browser

    _require_browser()
    port = _free_port(SECOND_LOOPBACK)
    env = _app_env(tmp_path, PAGELENS_APP_PASSWORD="s3cret horse")
    env.update(PAGELENS_MODEL=str(tiny_model_dir), PAGELENS_DEVICE="cpu")
    env.update(PAGELENS_IMAGE_TOKENS="16", PAGELENS_CACHE=str(tmp_path / "cache"))
    pdf = make_text_pdf(tmp_path / "docs" / "notes.pdf", TOPICS[:2])
    argv = [sys.executable, "-m", "app.cli", "app", "--host", SECOND_LOOPBACK]
    argv += ["--server.port", str(port), "--server.fileWatcherType", "none"]
    log = tmp_path / "app.log"
    url = f"http://{SECOND_LOOPBACK}:{port}"
    with log.open("wb") as sink:
        proc = subprocess.Popen(argv, env=env, stdout=sink, stderr=subprocess.STDOUT)
    media: list[tuple[str, int]] = []
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(url, timeout=2)
                break
            time.sleep(0.3)
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
            )
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on(
                "response",
                lambda r: media.append((r.url, r.status)) if "/media/" in r.url else None,
            )
            page.set_default_timeout(90_000)
            expect.set_options(timeout=90_000)
            try:
                page.goto(url)
                page.get_by_label("Password").fill("wrong")
                page.get_by_role("button", name="Open").click()
                expect(page.get_by_text("Wrong password.")).to_be_visible()
                time.sleep(0.6)  # the first failure's wait
                page.get_by_label("Password").fill("s3cret horse")
                page.get_by_role("button", name="Open").click()
                expect(page.get_by_text("This collection is empty")).to_be_visible()
                uploader = page.locator('[data-testid="stFileUploader"]').first
                uploader.locator('input[type="file"]').set_input_files([str(pdf)])
                expect(page.get_by_text(re.compile(r"notes\.pdf.*2 pages added"))).to_be_visible()
                sidebar = page.locator('[data-testid="stSidebar"]')
                expect(sidebar.get_by_text("All 2 pages embedded")).to_be_visible()
                page.get_by_label("Question").fill("deep ocean trench")
                page.get_by_label("Question").press("Enter")
                expect(page.get_by_text(re.compile(r"^#1 · "))).to_be_visible()
                page.wait_for_timeout(1500)
            finally:
                browser.close()
        assert media and all(status == 200 for _, status in media), media
        # the same page image, asked for by anyone without the cookie
        assert httpx.get(media[0][0], timeout=10).status_code == 401
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
