"""Private by default: the app listens on loopback only, asks for a password when exposed,
and nothing (app, browser page, API server, CLI) contacts anything but this machine.

The network proof runs the real processes under an audit hook (tests/netaudit/
sitecustomize.py records every connection, UDP send and name lookup of every Python process,
including the Streamlit process ``pagelens app`` execs) and, where strace may trace, the same
at the system-call level for native code too (tests/netaudit/syscalls.py: onnxruntime's
telemetry, loaded by ``import pymupdf`` 2.0, resolved its host with glibc and wrote a device
id under ``~/.cache``). No name lookup may leave the machine, and nothing may be written
outside the data folder, the model cache and the temp folder (``HOME`` points at an empty
folder that must stay empty). The page is loaded in Debian's Chromium with every request
the browser makes recorded by Playwright.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.web.launch import PASSWORD_ENV, is_loopback, plan
from indexer.errors import UsageError
from tests.netaudit import syscalls
from tests.support.pdfs import TOPICS, make_text_pdf
from tests.test_e2e_browser import CHROMIUM, CHROMIUM_ARGS, _require_browser

ROOT = Path(__file__).resolve().parents[1]
STARTUP_S = 90


# -- launch decisions (no processes) ----------------------------------------------------
def test_app_defaults_to_loopback_and_private_streamlit_settings():
    launch = plan("s.py", [], environ={})
    args = launch.args
    assert args[:2] == ["run", "s.py"] and not launch.exposed and launch.warning is None

    def value(name):
        return args[args.index(f"--{name}") + 1]

    assert value("server.address") == "127.0.0.1"
    assert value("browser.gatherUsageStats") == "false"
    assert value("client.toolbarMode") == "minimal"  # no Deploy button
    assert value("server.headless") == "true"  # no browser e-mail prompt


def test_exposing_the_app_needs_a_password_and_says_so(monkeypatch):
    with pytest.raises(UsageError, match=PASSWORD_ENV):
        plan("s.py", [], host="0.0.0.0", environ={})
    with pytest.raises(UsageError):
        plan("s.py", ["--server.address", "192.168.1.20"], environ={})
    with pytest.raises(UsageError):  # Streamlit's own variable is an explicit choice too
        plan("s.py", [], environ={"STREAMLIT_SERVER_ADDRESS": "0.0.0.0"})
    launch = plan("s.py", ["--server.port", "9000"], host="0.0.0.0", environ={PASSWORD_ENV: "pw"})
    assert launch.exposed and "EXPOSED on http://0.0.0.0:9000" in launch.warning
    assert plan("s.py", [], host="localhost", environ={}).exposed is False
    assert is_loopback("::1") and is_loopback("127.0.0.5") and not is_loopback("10.0.0.1")

    execs = []
    monkeypatch.setattr(os, "execvpe", lambda *a: execs.append(a))
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    r = CliRunner().invoke(cli, ["app", "--host", "0.0.0.0"])
    assert r.exit_code == 2 and PASSWORD_ENV in r.output and execs == []
    monkeypatch.setenv(PASSWORD_ENV, "correct horse")
    r = CliRunner().invoke(cli, ["app", "--host", "0.0.0.0"])
    assert r.exit_code == 0 and "WARNING: the PageLens app is EXPOSED" in r.output
    argv = execs[0][1]
    assert argv[1:3] == ["-m", "app.web.launch"]
    assert argv[argv.index("--server.address") + 1] == "0.0.0.0"


def test_password_gate_shows_nothing_before_the_password(monkeypatch, tiny_model_dir):
    from streamlit.testing.v1 import AppTest

    from app.web.auth import password_ok

    assert password_ok("s3cret", "s3cret") and not password_ok("s3cre", "s3cret")
    monkeypatch.setenv("PAGELENS_MODEL", str(tiny_model_dir))
    monkeypatch.setenv(PASSWORD_ENV, "s3cret")
    at = AppTest.from_file(str(ROOT / "app" / "streamlit_app.py"), default_timeout=60)
    at.run()
    assert not at.exception

    def page_text() -> str:
        parts = [*at.markdown, *at.caption, *at.info, *at.sidebar.markdown]
        return "\n".join(str(e.value) for e in parts)

    assert "collection" not in page_text().lower() and len(at.text_input) == 1
    at.text_input[0].input("s3cre")  # a form: typed values go in with the submit click
    at.button[0].click().run()
    assert any("Wrong password" in str(e.value) for e in at.error)
    assert "collection" not in page_text().lower()
    at.text_input[0].input("s3cret")
    at.button[0].click().run()
    assert not at.exception
    assert "This collection is empty" in page_text()


# -- the network proof ------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _audited_env(tmp_path: Path, tiny_model_dir: Path) -> tuple[dict, Path]:
    log = tmp_path / "netaudit.jsonl"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("STREAMLIT_", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "ORT_"))
    }
    (tmp_path / "user").mkdir(exist_ok=True)
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT / "tests" / "netaudit"), str(ROOT)]),
        PAGELENS_NETAUDIT_LOG=str(log),
        PAGELENS_HOME=str(tmp_path / "home"),
        PAGELENS_MODEL=str(tiny_model_dir),
        PAGELENS_DEVICE="cpu",
        PAGELENS_IMAGE_TOKENS="16",
        PAGELENS_CACHE=str(tmp_path / "cache"),
        HOME=str(tmp_path / "user"),  # no ~/.streamlit config or credentials of the user
        PYTHONDONTWRITEBYTECODE="1",  # Python's own .pyc cache is not PageLens writing
    )
    return env, log


def _traced(argv: list[str], tmp_path: Path) -> list[str]:
    """``argv`` under strace (its record in tmp_path/strace.txt) where strace may trace."""
    return syscalls.command(argv, tmp_path / "strace.txt") if syscalls.usable() else argv


def _contacts(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def _not_local(records: list[dict]) -> list[dict]:
    """Contacts and name lookups of anything but this machine; DNS (port 53) never local."""
    return [
        r
        for r in records
        if r.get("port") == 53 or (r["host"] not in ("None", "") and not is_loopback(r["host"]))
    ]


def _assert_stayed_here(tmp_path: Path, env: dict, tiny_model_dir: Path, tail: str = "") -> None:
    """Nothing but loopback contacted or looked up (Python's audit hook, and strace where it
    may trace); nothing written outside the data folder, the model cache and the temp folder,
    and nothing under HOME."""
    import tempfile

    assert _not_local(_contacts(tmp_path / "netaudit.jsonl")) == [], tail
    home = Path(env["HOME"])
    left = sorted(str(p.relative_to(home)) for p in home.rglob("*"))
    assert left == [], f"written under HOME: {left}"
    if not syscalls.usable():
        return
    record = tmp_path / "strace.txt"
    assert "openat(" in record.read_text(errors="replace"), "strace recorded nothing"
    contacts, writes = syscalls.read(record, cwd=tmp_path)
    assert [c for c in contacts if not c.local] == [], tail
    allowed = [
        Path(env["PAGELENS_HOME"]),
        Path(env["PAGELENS_CACHE"]),
        tiny_model_dir,
        Path(tempfile.gettempdir()),
    ]
    assert syscalls.outside(writes, allowed, forbidden=[home]) == [], tail


def test_rendering_pages_starts_no_telemetry(tmp_path, tiny_model_dir):
    """``import pymupdf`` (2.0) imported pymupdf.layout and pymupdf4llm, both of which load
    onnxruntime, whose telemetry resolved mobile.events.data.microsoft.com and wrote
    ~/.cache/Microsoft/DeveloperTools/.onnxruntime/deviceid. PageLens renders pages without
    them (indexer/pages/mupdf.py), and leaves them importable for anyone who asks."""
    env, _log = _audited_env(tmp_path, tiny_model_dir)
    pdf = make_text_pdf(tmp_path / "docs" / "notes.pdf", TOPICS[:1])
    script = (
        "import sys, time\n"
        "from indexer.pages import RenderSettings, render_pages\n"
        f"pages = list(render_pages({str(pdf)!r}, settings=RenderSettings()))\n"
        "assert pages and pages[0].image.size[0] > 0\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('onnxruntime', 'pymupdf4llm') or m.startswith('pymupdf.layout'))\n"
        "import importlib.util\n"
        "assert importlib.util.find_spec('pymupdf.layout') is not None\n"  # not hidden
        "time.sleep(3)\n"  # telemetry looked its host up a few seconds after the import
        "print(loaded)\n"
    )
    r = subprocess.run(
        _traced([sys.executable, "-c", script], tmp_path),
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_stayed_here(tmp_path, env, tiny_model_dir, r.stderr[-2000:])
    assert r.stdout.strip() == "[]", r.stdout  # the add-ons were not even imported


def _listening_hosts(pid: int, port: int) -> set[str]:
    """Where ``pid`` or a process under it (strace runs the real one) listens on ``port``."""
    import psutil

    parent = psutil.Process(pid)
    return {
        c.laddr.ip
        for p in (parent, *parent.children(recursive=True))
        for c in p.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }


def _wait_http(url: str, proc: subprocess.Popen, out: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while True:
        if proc.poll() is not None:
            pytest.fail(f"exited with {proc.returncode}:\n{out.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"no answer from {url} in {STARTUP_S}s:\n{out.read_text()[-3000:]}")
        time.sleep(0.3)


def _stop(proc: subprocess.Popen) -> None:
    """Stop ``proc`` and what runs under it (strace detaches on SIGTERM: stop its tracee)."""
    import psutil

    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    psutil.wait_procs(children, timeout=10)
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.mark.e2e
def test_app_in_a_browser_contacts_only_this_machine(tmp_path, tiny_model_dir):
    from playwright.sync_api import expect, sync_playwright

    _require_browser()
    env, log = _audited_env(tmp_path, tiny_model_dir)
    port = _free_port()
    out = tmp_path / "app.log"
    pdf = make_text_pdf(tmp_path / "docs" / "notes.pdf", TOPICS[:2])
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            _traced([sys.executable, "-m", "app.cli", "app", "--server.port", str(port),
                     "--server.fileWatcherType", "none"], tmp_path),
            cwd=tmp_path, env=env, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    requests: list[str] = []
    try:
        _wait_http(f"http://127.0.0.1:{port}/_stcore/health", proc, out)
        assert _listening_hosts(proc.pid, port) <= {"127.0.0.1"}, "listens beyond loopback"
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
            )
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            context.on("request", lambda r: requests.append(r.url))
            page = context.new_page()
            page.set_default_timeout(90_000)
            expect.set_options(timeout=90_000)
            try:
                page.goto(f"http://127.0.0.1:{port}")
                expect(page.get_by_text("This collection is empty")).to_be_visible()
                assert page.get_by_test_id("stAppDeployButton").count() == 0
                assert page.get_by_role("button", name="Deploy").count() == 0
                uploader = page.locator('[data-testid="stFileUploader"]').first
                uploader.locator('input[type="file"]').set_input_files([str(pdf)])
                expect(page.get_by_text(re.compile(r"notes\.pdf.*2 pages added"))).to_be_visible()
                sidebar = page.locator('[data-testid="stSidebar"]')
                expect(sidebar.get_by_text("All 2 pages embedded")).to_be_visible()  # model ran
                page.get_by_label("Question").fill("deep ocean trench")
                page.get_by_label("Question").press("Enter")
                expect(page.get_by_text(re.compile(r"^#1 · "))).to_be_visible()
                page.wait_for_timeout(1500)  # late requests (fonts, telemetry) would show
            finally:
                browser.close()
    finally:
        _stop(proc)
    origin = f"http://127.0.0.1:{port}"
    outside = [u for u in requests if not u.startswith((origin, "data:", "blob:", "about:"))]
    assert requests and outside == [], outside
    _assert_stayed_here(tmp_path, env, tiny_model_dir, out.read_text()[-2000:])


def test_serve_and_cli_contact_only_this_machine(tmp_path, tiny_model_dir):
    env, log = _audited_env(tmp_path, tiny_model_dir)
    # The harness sees connections: a (refused) loopback connect is recorded.
    # The harness sees connections and name lookups: each is recorded.
    probe = (
        f"import socket; socket.socket().connect_ex(('127.0.0.1', {_free_port()})); "
        "socket.gethostbyname('localhost'); socket.getaddrinfo('localhost', 80)"
    )
    subprocess.run([sys.executable, "-c", probe], env=env, check=True)
    seen = [(c["event"], c["host"]) for c in _contacts(log)]
    assert seen == [
        ("socket.connect", "127.0.0.1"),
        ("socket.gethostbyname", "localhost"),
        ("socket.getaddrinfo", "localhost"),
    ]
    log.unlink()
    pdf = make_text_pdf(tmp_path / "docs" / "notes.pdf", TOPICS[:2])
    run = [sys.executable, "-m", "app.cli", "-c", "c"]
    for args in (["index", str(pdf)], ["search", "ocean trench"]):
        r = subprocess.run(
            _traced([*run, *args], tmp_path), env=env, cwd=tmp_path, capture_output=True, text=True
        )
        assert r.returncode == 0, r.stderr
    assert _not_local(_contacts(log)) == []
    assert any(c["event"] == "socket.connect" for c in _contacts(log)) is False  # none at all

    port = _free_port()
    out = tmp_path / "serve.log"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            _traced([*run, "serve", "--port", str(port)], tmp_path),
            env=env, cwd=tmp_path, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", proc, out)
        assert _listening_hosts(proc.pid, port) <= {"127.0.0.1"}
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/search",
            data=json.dumps({"query": "ocean trench", "collection": "c"}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            assert json.load(r)["hits"]
        time.sleep(6)  # onnxruntime's telemetry looked its host up ~4 s after start-up
    finally:
        _stop(proc)
    _assert_stayed_here(tmp_path, env, tiny_model_dir, out.read_text()[-2000:])
