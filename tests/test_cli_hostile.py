"""The CLI and exports under hostile names and paths (issue #15).

Collection resolution (bare names are always named collections, paths are paths), read-only
commands that create nothing, unexpandable ``~user`` paths, folders that are collections,
and document names escaped for the terminal, Markdown and HTML.
"""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from app.cli import cli
from retriever.escaping import for_html, for_markdown, for_terminal

runner = CliRunner()


def run(*args: str):
    return runner.invoke(cli, list(args))


@pytest.fixture
def cwd(tmp_path, monkeypatch, _isolated_home):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def test_bare_name_is_the_named_collection_even_with_a_same_named_folder(
    cwd, make_pdf, _isolated_home
):
    pdf = make_pdf("a.pdf", ["alpha beta"], folder=cwd / "odd")
    assert run("--collection", "odd", "index", "--text-only", "odd").exit_code == 0
    assert (_isolated_home / "odd" / "catalog.sqlite").is_file()
    assert not (cwd / "odd" / "catalog.sqlite").exists()
    again = run("--collection", "odd", "index", "--text-only", "odd", "--json")
    assert again.exit_code == 0, again.output
    docs = json.loads(run("--collection", "odd", "docs", "--json").stdout)["documents"]
    assert [d["name"] for d in docs] == [pdf.name]
    # ./odd is the folder itself
    assert run("--collection", "./odd2", "index", "--text-only", "odd").exit_code == 0
    assert (cwd / "odd2" / "catalog.sqlite").is_file()


def test_indexing_skips_folders_that_are_collections(cwd, make_pdf):
    make_pdf("a.pdf", ["alpha", "beta"], folder=cwd / "src")
    inner = cwd / "src" / "kept"
    assert run("--collection", str(inner), "index", "--text-only", "src").exit_code == 0
    assert any((inner / "pages").rglob("*.png")) or (inner / "catalog.sqlite").is_file()
    result = run("--collection", str(inner), "index", "--text-only", "src", "--json")
    assert result.exit_code == 0, result.output
    docs = json.loads(run("--collection", str(inner), "docs", "--json").stdout)["documents"]
    assert [d["name"] for d in docs] == ["a.pdf"]  # not the collection's own page images
    # indexing the collection folder itself adds nothing
    result = run("index", "--text-only", str(inner), "--json")
    assert result.exit_code in (0, 1)
    assert json.loads(run("docs", "--json").stdout)["documents"] == []


@pytest.mark.parametrize("command", [["docs"], ["search", "x", "--mode", "text"], ["check"]])
def test_read_only_commands_create_nothing(cwd, command, _isolated_home):
    plain = cwd / "plain"
    plain.mkdir()
    before = sorted(os.listdir(plain))
    result = run("--collection", "./plain", *command)
    assert result.exit_code == 1, result.output
    assert "not a PageLens collection" in result.output and "Traceback" not in result.output
    assert sorted(os.listdir(plain)) == before
    missing = run("--collection", "../nowhere", *command)
    assert missing.exit_code == 1 and not (cwd.parent / "nowhere").exists()


def test_docs_on_a_new_named_collection_creates_nothing(cwd, _isolated_home):
    result = run("--collection", "fresh", "docs", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["documents"] == []
    assert not (_isolated_home / "fresh").exists()


def test_unknown_user_in_path_is_one_clean_line(cwd):
    result = run("--collection", "~nouser-pagelens-xyz/x", "docs")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "~nouser" in lines[0]
    assert "Traceback" not in result.output


# --------------------------------------------------------------------------- names


def test_escaping_per_output():
    evil = 'a\nb\x1b[31m\u202e<img src=x onerror="alert(1)">[x](javascript:y)*'
    term = for_terminal(evil)
    assert "\n" not in term and "\x1b" not in term and "\u202e" not in term
    assert "\\x0a" in term and "\\u202e" in term
    md = for_markdown(evil)
    assert "<img" not in md and "](" not in md.replace("\\](", "") and "\n" not in md
    html = for_html(evil)
    assert "<img" not in html and '"' not in html and "&lt;img" in html
    assert for_terminal("Rapport annuel — 2023.pdf") == "Rapport annuel — 2023.pdf"


def test_names_are_escaped_in_docs_and_exports(cwd, make_pdf, tmp_path):
    import zipfile

    name = 'q1\n   7  fake.pdf  99 pages <img src=x onerror="alert(1)">.pdf'
    make_pdf(name, ["revenue grew in europe"], folder=cwd / "in")
    assert run("index", "--text-only", "in").exit_code == 0
    listing = run("docs")
    assert listing.exit_code == 0
    rows = [line for line in listing.stdout.splitlines() if line.strip()]
    assert len(rows) == 1 and "q1\\x0a" in rows[0]
    out = tmp_path / "prompt.zip"
    result = run("export", "revenue", "--mode", "text", "--format", "zip", "-o", str(out))
    assert result.exit_code == 0, result.output
    prompt = zipfile.ZipFile(out).read("prompt.md").decode()
    assert "<img" not in prompt and "&lt;img" in prompt
    sources = prompt.split("## Sources", 1)[1].split("## Pages", 1)[0]
    assert len([line for line in sources.splitlines() if line.strip()]) == 1


# --------------------------------------------------------------------------- the app


def test_loopback_app_accepts_only_loopback_host_names():
    from streamlit import config as st_config
    from streamlit.web.server.starlette.starlette_websocket import is_host_allowed

    from app.web.launch import LOOPBACK_NAMES, plan

    launch = plan("app.py", [], environ={})
    given = [launch.args[i + 1] for i, a in enumerate(launch.args) if a == "--server.allowedHosts"]
    assert tuple(given) == LOOPBACK_NAMES
    exposed = plan("app.py", [], host="0.0.0.0", environ={"PAGELENS_APP_PASSWORD": "pw"})
    assert "--server.allowedHosts" not in exposed.args  # names unknown; the password guards it
    mine = plan("app.py", ["--server.allowedHosts", "box.lan"], environ={})
    assert mine.args.count("--server.allowedHosts") == 1
    # What Streamlit does with the list: the WebSocket refuses other Host headers.
    old = st_config.get_option("server.allowedHosts")
    st_config.set_option("server.allowedHosts", list(given))
    try:
        assert is_host_allowed("localhost:8501") and is_host_allowed("[::1]:8501")
        assert not is_host_allowed("rebound.example:8501")
    finally:
        st_config.set_option("server.allowedHosts", old)
