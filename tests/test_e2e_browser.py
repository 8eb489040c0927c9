"""End to end in a real browser: the app as a subprocess, Debian Chromium via Playwright.

Upload PDFs through the file chooser, watch them index, ask a question, check the page
grid, download the OpenAI export, unlock an encrypted PDF, remove a document. Screenshots
go to ``test-artifacts/`` at the repository root.

Needs /usr/bin/chromium: without it the test FAILS (so CI cannot silently skip it), unless
``PAGELENS_SKIP_E2E=1`` is set explicitly.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from tests.support.pdfs import TOPICS, make_encrypted_pdf, make_text_pdf

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STARTUP_S = 90
TIMEOUT_MS = 90_000
TYPED_KEY = "sk-typed-in-the-browser-5b1e"


def _require_browser() -> None:
    if os.environ.get("PAGELENS_SKIP_E2E") == "1":
        pytest.skip("PAGELENS_SKIP_E2E=1: browser test skipped on request")
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium) "
            "or set PAGELENS_SKIP_E2E=1 to skip the browser test explicitly."
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.fail("playwright is not installed (pip install -e '.[dev]').")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def app_url(tmp_path: Path, tiny_model_dir: Path):
    _require_browser()
    port = _free_port()
    home = tmp_path / "home"
    env = {
        **os.environ,
        "PAGELENS_HOME": str(home),
        "PAGELENS_MODEL": str(tiny_model_dir),
        "PAGELENS_DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1",
        "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
    }
    env.pop("PAGELENS_COLLECTION", None)
    log = open(tmp_path / "streamlit.log", "wb")  # noqa: SIM115 (closed in the finalizer)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(ROOT / "app" / "streamlit_app.py"),
            "--server.port",
            str(port),
            "--server.headless",
            "true",
            "--server.address",
            "127.0.0.1",
            "--browser.gatherUsageStats",
            "false",
            "--server.fileWatcherType",
            "none",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited with {proc.returncode}:\n{_tail(tmp_path)}")
            try:
                with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"streamlit did not start in {STARTUP_S}s:\n{_tail(tmp_path)}")
            time.sleep(0.3)
        yield url, home
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def _tail(tmp_path: Path) -> str:
    return (tmp_path / "streamlit.log").read_text(errors="replace")[-4000:]


def test_upload_search_export_remove(app_url, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, home = app_url
    expect.set_options(timeout=TIMEOUT_MS)
    docs = tmp_path / "docs"
    docs.mkdir()
    rev = make_text_pdf(docs / "Quarterly report.pdf", TOPICS[4:7] + TOPICS[:1])
    bio = make_text_pdf(docs / "biology notes.pdf", [TOPICS[2], TOPICS[0], TOPICS[8]])
    junk = docs / "broken.pdf"
    junk.write_bytes(b"this is not a pdf at all" * 10)
    locked = make_encrypted_pdf(docs / "locked.pdf", user_pw="s3cret", pages=TOPICS[9:11])
    ARTIFACTS.mkdir(exist_ok=True)

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        page = browser.new_page(viewport={"width": 1500, "height": 1100}, accept_downloads=True)
        page.set_default_timeout(TIMEOUT_MS)
        try:
            page.goto(url)
            expect(page.get_by_text("This collection is empty")).to_be_visible()
            expect(page.get_by_text("Built with GME")).to_be_visible()

            # 1. Upload two PDFs and a broken file: the broken one is refused on its own.
            uploader = page.locator('[data-testid="stFileUploader"]').first
            uploader.locator('input[type="file"]').set_input_files([str(rev), str(bio), str(junk)])
            expect(
                page.get_by_text(re.compile(r"Quarterly report\.pdf.*4 pages added"))
            ).to_be_visible()
            expect(
                page.get_by_text(re.compile(r"biology notes\.pdf.*3 pages added"))
            ).to_be_visible()
            expect(page.get_by_text(re.compile(r"broken\.pdf.*not a PDF"))).to_be_visible()
            sidebar = page.locator('[data-testid="stSidebar"]')
            expect(sidebar.get_by_text("Documents (2)")).to_be_visible()
            expect(sidebar.get_by_text("All 7 pages embedded")).to_be_visible()
            assert not (home / "default" / "uploads" / "broken.pdf").exists()

            # 2. Ask a question (Enter submits) and see ranked page images.
            page.get_by_label("Question").fill("Which quarter had cloud revenue growth?")
            page.get_by_label("Question").press("Enter")
            expect(page.get_by_text(re.compile(r"^#1 · "))).to_be_visible()
            main = page.locator('[data-testid="stMain"]')
            cards = main.locator('[data-testid="stImage"] img')
            expect(cards).to_have_count(7)  # k=8, 7 pages in the collection
            body = main.inner_text()
            assert "Quarterly report.pdf" in body and "biology notes.pdf" in body
            assert re.search(r"page \d · score", body)
            # The acceptance screenshot: the ranked page images after a query.
            page.get_by_role("button", name="Clear messages").click()
            expect(page.get_by_role("button", name="Clear messages")).to_have_count(0)
            page.set_viewport_size({"width": 1500, "height": 2000})
            main.get_by_text(re.compile(r"page\(s\) for")).scroll_into_view_if_needed()
            page.wait_for_timeout(800)  # let the images finish painting
            page.screenshot(path=str(ARTIFACTS / "results.png"))
            page.set_viewport_size({"width": 1500, "height": 1100})

            # 3. Text mode ranks the page with the words first.
            page.get_by_test_id("stRadioGroup").get_by_text("text", exact=True).click()
            page.get_by_label("Question").fill("Mariana Trench deepest")
            page.get_by_label("Question").press("Enter")
            expect(main.get_by_text("1 page(s) for “Mariana Trench deepest”")).to_be_visible()
            expect(main.get_by_text("text search · best first")).to_be_visible()
            expect(cards).to_have_count(1)  # the previous grid is gone once the run ends
            expect(main.get_by_text("#1 · Quarterly report.pdf")).to_be_visible()
            expect(main.get_by_text(re.compile(r"^page 2 · score"))).to_be_visible()

            # 4. Open the best page large, with its text layer highlighted.
            main.locator('[class*="st-key-open-"] button').first.click()
            dialog = page.get_by_role("dialog")
            expect(dialog.locator("mark").first).to_have_text(re.compile("mariana", re.IGNORECASE))
            page.screenshot(path=str(ARTIFACTS / "page-dialog.png"))
            page.keyboard.press("Escape")
            expect(dialog).to_have_count(0)

            # 5. Export: the Markdown preview is visible; the OpenAI JSON downloads.
            expect(main.get_by_text("Prompt preview")).to_be_visible()
            expect(main.locator('[data-testid="stCode"]')).to_contain_text("## Question")
            with page.expect_download(timeout=TIMEOUT_MS) as info:
                main.get_by_role("button", name="OpenAI messages (.json)").click()
            messages = json.loads(Path(info.value.path()).read_text(encoding="utf-8"))
            assert [m["role"] for m in messages] == ["system", "user"]
            content = messages[1]["content"]
            assert content[0] == {"type": "text", "text": "Question: Mariana Trench deepest"}
            assert content[1]["text"].startswith("[1] Quarterly report.pdf, p. 2")
            assert content[2]["image_url"]["url"].startswith("data:image/jpeg;base64,")
            with page.expect_download(timeout=TIMEOUT_MS) as info:
                main.get_by_role("button", name="ZIP: images + prompt (.zip)").click()
            with zipfile.ZipFile(info.value.path()) as bundle:
                names = set(bundle.namelist())
            assert {"prompt.md", "messages.json"} <= names
            assert any(n.startswith("pages/01-Quarterly_report-p2") for n in names)

            # 6. An encrypted PDF asks for its password, then goes in.
            uploader = page.locator('[data-testid="stFileUploader"]').first
            uploader.locator('input[type="file"]').set_input_files([str(locked)])
            expect(page.get_by_text(re.compile(r"locked\.pdf.*password"))).to_be_visible()
            page.get_by_label("Password", exact=True).fill("s3cret")
            page.get_by_role("button", name="Unlock and add").click()
            expect(page.get_by_text(re.compile(r"locked\.pdf.*2 pages added"))).to_be_visible()
            expect(sidebar.get_by_text("Documents (3)")).to_be_visible()

            # 7. Remove a document, with a confirmation.
            sidebar.get_by_role("button", name="Remove", exact=True).first.click()
            expect(
                sidebar.get_by_text(re.compile(r"Remove .*Quarterly report\.pdf"))
            ).to_be_visible()
            sidebar.get_by_role("button", name="Yes, remove").click()
            expect(page.get_by_text("Removed Quarterly report.pdf")).to_be_visible()
            expect(sidebar.get_by_text("Documents (2)")).to_be_visible()
            expect(page.locator('[data-testid="stException"]')).to_have_count(0)
            page.screenshot(path=str(ARTIFACTS / "after-remove.png"), full_page=True)
        except BaseException:
            page.screenshot(path=str(ARTIFACTS / "failure.png"), full_page=True)
            raise
        finally:
            browser.close()


def test_ask_streams_a_cited_answer(llm_stub, app_url, tmp_path: Path) -> None:
    """The "Ask" action in a real browser: the destination line shows before anything is
    sent, the stub LLM's answer streams in, and its citation opens the cited page.

    ``llm_stub`` comes first so the app starts with PAGELENS_LLM_* pointing at it. The
    collection is stored text-only through the library (no waiting for vectors)."""
    from playwright.sync_api import expect, sync_playwright

    from indexer.pipeline import Indexer
    from indexer.store import Collection

    url, home = app_url
    llm_stub.answer = (
        "The treaty was the Peace of Westphalia [history.pdf, p. 2] [elsewhere.pdf, p. 7]."
    )
    pdf = make_text_pdf(tmp_path / "docs" / "history.pdf", TOPICS[:3])
    with Collection(home / "default") as store:
        Indexer(store, None).add([pdf], embed=False)
    expect.set_options(timeout=TIMEOUT_MS)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        page = browser.new_page(viewport={"width": 1500, "height": 1400})
        page.set_default_timeout(TIMEOUT_MS)
        try:
            page.goto(url)
            main = page.locator('[data-testid="stMain"]')
            page.get_by_test_id("stRadioGroup").get_by_text("text", exact=True).click()
            page.get_by_label("Question").fill("Which treaty ended the Thirty Years War?")
            page.get_by_label("Question").press("Enter")
            expect(main.get_by_text("#1 · history.pdf")).to_be_visible()
            expect(
                main.get_by_text(re.compile(r"will be sent to .*stub-vision-model"))
            ).to_be_visible()
            assert llm_stub.requests == []

            # A key typed in the LLM settings is used, never shown back, never stored.
            main.get_by_text("LLM settings").click()
            main.get_by_role("textbox", name="API key").fill(TYPED_KEY)
            main.get_by_role("button", name="Use these settings").click()
            expect(main.get_by_text(re.compile("^Settings applied"))).to_be_visible()
            expect(main.get_by_text(re.compile("API key: typed in this session"))).to_be_visible()
            assert TYPED_KEY not in page.content()
            assert llm_stub.requests == []

            main.get_by_role("button", name="Ask", exact=True).click()
            expect(main.get_by_text("The treaty was the Peace of Westphalia")).to_be_visible()
            expect(
                main.get_by_text(re.compile(r"elsewhere\.pdf, p\. 7.*not verified"))
            ).to_be_visible()
            assert len(llm_stub.requests) == 1
            assert llm_stub.last.headers["authorization"] == f"Bearer {TYPED_KEY}"
            assert TYPED_KEY not in page.content()
            assert not [
                f for f in home.rglob("*") if f.is_file() and TYPED_KEY.encode() in f.read_bytes()
            ]
            assert "Question: Which treaty ended the Thirty Years War?" in llm_stub.last.texts
            assert len(llm_stub.last.images) >= 1
            page.screenshot(path=str(ARTIFACTS / "ask-answer.png"))

            main.get_by_role("button", name="history.pdf · p. 2").click()
            dialog = page.get_by_role("dialog")
            expect(dialog.get_by_text("history.pdf · page 2")).to_be_visible()
            expect(dialog.get_by_text(re.compile("Thirty Years War in 1648"))).to_be_visible()
            page.keyboard.press("Escape")
            expect(dialog).to_have_count(0)
            expect(main.get_by_text("The treaty was the Peace of Westphalia")).to_be_visible()
            assert len(llm_stub.requests) == 1  # reruns show the answer; never ask again
            expect(page.locator('[data-testid="stException"]')).to_have_count(0)
        except BaseException:
            page.screenshot(path=str(ARTIFACTS / "ask-failure.png"), full_page=True)
            raise
        finally:
            browser.close()


def test_page_dialog_shows_the_evidence(app_url, tmp_path: Path) -> None:
    """Issue 23's acceptance: upload, search, the page dialog shows boxes over the words of
    the query, its toggle hides them, "Where on this page?" shows a heat map."""
    from playwright.sync_api import expect, sync_playwright

    url, _home = app_url
    pdf = make_text_pdf(tmp_path / "docs" / "history.pdf", TOPICS[:3])
    expect.set_options(timeout=TIMEOUT_MS)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        page = browser.new_page(viewport={"width": 1500, "height": 1400})
        page.set_default_timeout(TIMEOUT_MS)
        try:
            page.goto(url)
            uploader = page.locator('[data-testid="stFileUploader"]').first
            uploader.locator('input[type="file"]').set_input_files([str(pdf)])
            expect(page.get_by_text(re.compile(r"history\.pdf.*3 pages added"))).to_be_visible()
            # Text search needs no vectors; the dialog stays open when embedding ends.
            main = page.locator('[data-testid="stMain"]')
            page.get_by_test_id("stRadioGroup").get_by_text("text", exact=True).click()
            page.get_by_label("Question").fill("Thirty Years War treaty")
            page.get_by_label("Question").press("Enter")
            expect(main.get_by_text("#1 · history.pdf")).to_be_visible()

            main.locator('[class*="st-key-open-"] button').first.click()
            dialog = page.get_by_role("dialog")
            expect(dialog.get_by_text("history.pdf · page 2")).to_be_visible()
            outlined = dialog.get_by_text(re.compile(r"^[1-9]\d* match\(es\) of the question"))
            expect(outlined).to_be_visible()
            picture = dialog.locator('[data-testid="stImage"] img').first
            with_boxes = picture.get_attribute("src")
            page.screenshot(path=str(ARTIFACTS / "evidence-boxes.png"))

            dialog.get_by_text("Show matches").click()
            expect(dialog.get_by_text("Matches hidden.")).to_be_visible()
            expect(outlined).to_have_count(0)
            expect(picture).not_to_have_attribute("src", with_boxes or "")

            dialog.get_by_role("button", name="Where on this page?").click()
            expect(dialog.get_by_text(re.compile(r"^Heat map: red = strong match"))).to_be_visible()
            expect(dialog.get_by_text(re.compile(r"^Approximate: "))).to_be_visible()
            expect(dialog.locator('[data-testid="stImage"] img')).to_have_count(2)
            page.screenshot(path=str(ARTIFACTS / "evidence-heatmap.png"))
            expect(page.locator('[data-testid="stException"]')).to_have_count(0)
        except BaseException:
            page.screenshot(path=str(ARTIFACTS / "evidence-failure.png"), full_page=True)
            raise
        finally:
            browser.close()
