"""The CLI through Typer's runner, on the tiny real GME checkpoint via PAGELENS_MODEL."""

from __future__ import annotations

import json
import zipfile

import pytest
from typer.testing import CliRunner

from app.cli import cli

runner = CliRunner()


@pytest.fixture
def env(tiny_model_dir, monkeypatch, tmp_path, store_spec, reuse_loaded_models):
    """The tiny model, and the test's collection on each engine (folder, then Milvus)."""
    monkeypatch.setenv("PAGELENS_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("PAGELENS_IMAGE_TOKENS", "16")  # small pages keep it fast
    monkeypatch.setenv("PAGELENS_COLLECTION", store_spec)
    return tmp_path


def run(*args: str):
    return runner.invoke(cli, list(args), catch_exceptions=False)


def test_index_search_docs_export_remove(env, make_pdf, tmp_path):
    a = make_pdf("report.pdf", ["Revenue grew.", "Churn rose to nine percent in 2023."])
    make_pdf("manual.pdf", ["Replace the hydraulic pump."])
    result = run("index", str(a.parent))
    assert result.exit_code == 0, result.output
    assert "added" in result.output and "pages/s" in result.output

    again = run("index", str(a))
    assert again.exit_code == 0 and "already" in again.output

    result = run("search", "churn in 2023", "-k", "3", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    hits = data["hits"]
    assert len(hits) == 3
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert {"document", "page", "score", "image"} <= set(hits[0])
    assert all(h["page"] >= 1 for h in hits)

    text = run("search", "nine percent", "--mode", "text", "--json")
    assert json.loads(text.stdout)["hits"][0]["page"] == 2

    docs = json.loads(run("docs", "--json").stdout)["documents"]
    assert sorted((d["name"], d["pages"]) for d in docs) == [("manual.pdf", 1), ("report.pdf", 2)]

    out = tmp_path / "messages.json"
    result = run("export", "churn", "--format", "openai", "-o", str(out), "-k", "2")
    assert result.exit_code == 0, result.output
    messages = json.loads(out.read_text())
    assert messages[1]["content"][2]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    md = tmp_path / "prompt.md"
    assert run("export", "churn", "-f", "markdown", "-o", str(md)).exit_code == 0
    assert "## Sources" in md.read_text()
    zp = tmp_path / "bundle.zip"
    assert run("export", "churn", "-f", "zip", "-o", str(zp), "-k", "2").exit_code == 0
    assert "prompt.md" in zipfile.ZipFile(zp).namelist()

    result = run("remove", "manual.pdf")
    assert result.exit_code == 0
    docs = json.loads(run("docs", "--json").stdout)["documents"]
    assert [d["name"] for d in docs] == ["report.pdf"]


def test_refused_files_exit_3_and_errors_are_one_line(env, make_pdf):
    good = make_pdf("good.pdf", ["hello"])
    (good.parent / "broken.pdf").write_bytes(b"%PDF-1.7\n garbage without objects")
    result = run("index", str(good.parent))
    assert result.exit_code == 3
    assert "refused" in result.output and "broken.pdf" in result.output
    assert "Traceback" not in result.output

    result = run("remove", "nope.pdf")
    assert result.exit_code == 1 and result.output.strip().startswith("error:")
    result = run("search", "")  # a usage error: exit 2, before any model loads
    assert result.exit_code == 2 and "question" in result.output.lower()


def test_missing_model_is_a_clear_paragraph(env, monkeypatch, make_pdf, tmp_path, engine):
    monkeypatch.setenv("PAGELENS_MODEL", str(tmp_path / "no-such-model"))
    result = run("index", str(make_pdf("a.pdf", ["x"])))
    assert "Traceback" not in result.output
    assert "huggingface-cli download" in result.output and "PAGELENS_MODEL" in result.output
    if engine == "local":
        assert result.exit_code == 0  # pages and text are stored; vectors come later
        return
    # The documented difference: a Milvus page row holds its vector field, so a new Milvus
    # collection needs the model's width (read from its files, even with --text-only)
    # before its first page; with no model files at all that is one clear error.
    assert result.exit_code == 1
    assert "has no model yet" in result.output.splitlines()[-1]


def test_search_on_missing_collection(env):
    result = run("--collection", "nothing-here", "search", "hello")
    assert result.exit_code == 1 and "No collection" in result.output


def test_search_falls_back_to_text_when_the_model_is_missing(env, monkeypatch, make_pdf, tmp_path):
    pdf = make_pdf("notes.pdf", ["Photosynthesis converts light.", "The hydraulic pump manual."])
    assert run("index", "--text-only", str(pdf)).exit_code == 0
    monkeypatch.setenv("PAGELENS_MODEL", str(tmp_path / "no-such-model"))
    result = run("search", "hydraulic pump", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["mode"] == "text" and data["hits"][0]["page"] == 2
    assert "not available" in result.stderr
    # asking for visual search explicitly is still an error
    assert run("search", "pump", "--mode", "visual").exit_code == 1
