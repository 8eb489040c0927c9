"""Rough edges of the command line: usage errors exit 2 before anything loads, an empty
collection says so, help without ``<bool>``, singular counts, a clean install metadata."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

import indexer
from app.cli import cli
from indexer.store import Collection

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: usage errors must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(indexer, "load_embedder", refuse)


@pytest.mark.parametrize(
    "args",
    [
        ["search"],
        ["search", "   "],
        ["search", "x", "--mode", "semantic"],
        ["search", "x", "-k", "0"],
        ["search", "x", "--pages", "7-3"],
        ["search", "--image", "missing.png"],
        ["export", "x", "-o", "out.json", "--mode", "nope"],
    ],
)
def test_usage_errors_exit_2_before_loading(args, no_model, tmp_path):
    Collection(tmp_path / "c").close()
    r = CliRunner().invoke(cli, ["-c", str(tmp_path / "c"), *args])
    assert r.exit_code == 2, r.output
    assert "model" not in r.output.lower()


def test_empty_collection_says_so_instead_of_a_model_error(no_model, open_store, store_spec):
    open_store().close()
    for args in (["search", "anything"], ["export", "anything", "-o", "x.json"]):
        r = CliRunner().invoke(cli, ["-c", store_spec, *args])
        assert r.exit_code == 1, r.output
        assert "is empty" in r.output and "pagelens index" in r.output


@pytest.mark.parametrize("command", [[], ["index"], ["search"], ["check"], ["app"]])
def test_help_shows_no_bool_after_flags(command):
    r = CliRunner().invoke(cli, [*command, "--help"], terminal_width=120)
    assert r.exit_code == 0
    assert "<bool>" not in r.output
    assert "--help" in r.output


def test_one_document_is_singular(tmp_path, make_pdf):
    pdf = make_pdf("a.pdf", ["one page"])
    r = CliRunner().invoke(cli, ["-c", str(tmp_path / "c"), "index", "--text-only", str(pdf)])
    assert r.exit_code == 0, r.output
    assert "1 document, 1 page" in r.output and "1 documents" not in r.output


def test_package_metadata_has_no_deprecated_license_table():
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert not [w for w in caught if "license" in str(w.message).lower()]
    assert dist.metadata.license_expression == "Apache-2.0"


def test_collections_do_not_depend_on_the_current_folder(tmp_path, monkeypatch):
    from indexer.config import home

    monkeypatch.delenv("PAGELENS_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    seen = set()
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        monkeypatch.chdir(tmp_path / folder)
        r = CliRunner().invoke(cli, ["collections", "--json"])
        assert r.exit_code == 0
        seen.add(json.loads(r.stdout)["home"])
        assert not (tmp_path / folder / "data").exists()  # no stray ./data
    assert seen == {str(tmp_path / "xdg" / "pagelens")} == {str(home())}
    # an explicit relative PAGELENS_HOME is pinned once, not re-read per folder
    monkeypatch.setenv("PAGELENS_HOME", "rel")
    assert home() == tmp_path / "two" / "rel"


def test_the_location_rule_and_first_run_facts_are_written_down():
    r = CliRunner().invoke(cli, ["--help"], terminal_width=200)
    text = re.sub(r"[\s│]+", " ", r.output)  # rich wraps the help inside a box
    assert "PAGELENS_HOME" in text and "user data folder" in text
    readme = (ROOT / "README.md").read_text()
    for fact in ("4.5 GB", "on first use", "-c trial", "PAGELENS_HOME", "Working offline"):
        assert fact in readme, fact
    assert "user data folder" in (ROOT / "data" / "README.md").read_text()
