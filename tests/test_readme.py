"""The README's first two commands are the set-up contract; CI must run the second exactly."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", text, re.S)
    assert block, "README must open with a code block of commands"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_opens_with_install_and_test_commands():
    commands = _readme_commands()
    assert len(commands) == 2
    assert "pagelens app" in commands[0] and "install.sh" in commands[0]
    assert "pytest" in commands[1] and "install.sh --dev" in commands[1]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _readme_commands()[1] in [line.strip() for line in ci]


def test_readme_credits_gme():
    assert "Built with GME" in (ROOT / "README.md").read_text()


def test_ruff_is_clean():
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--quiet", str(ROOT)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _python_blocks(marker: str, doc: str = "README.md") -> str:
    text = (ROOT / doc).read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    return next(b for b in blocks if marker in b)


def test_readme_library_snippets_run_as_written(make_pdf, tiny_model_dir, tmp_path, monkeypatch):
    """Both library examples (README's and docs/LIBRARY.md's), executed verbatim: ``~/papers``
    is a folder of PDFs under a temporary HOME, the model is the tiny checkpoint via
    ``PAGELENS_MODEL``."""
    make_pdf("bees.pdf", ["Honey bees dance.", "What changed in 2023?"], tmp_path / "papers")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PAGELENS_MODEL", str(tiny_model_dir))
    monkeypatch.delenv("PAGELENS_HOME")  # the default home, as a reader would have it
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.chdir(tmp_path)

    first = _python_blocks("from pagelens import PageLens")
    assert len(first.strip().splitlines()) == 5  # the import and the three-line happy path
    scope: dict = {}
    exec(compile(first, "README.md", "exec"), scope)
    assert sorted((h.document, h.page) for h in scope["hits"]) == [("bees.pdf", 1), ("bees.pdf", 2)]
    assert scope["lens"].store.stats().pending == 0  # the tiny GME really embedded both pages
    from indexer.config import user_data_dir

    home = user_data_dir()  # under the temporary HOME
    assert home.is_relative_to(tmp_path)
    assert scope["lens"].store.path == home / "research"
    assert (home / "research" / "catalog.sqlite").is_file()
    scope["lens"].close()

    scope = {}
    layers = _python_blocks("from indexer import load_embedder", "docs/LIBRARY.md")
    exec(compile(layers, "docs/LIBRARY.md", "exec"), scope)
    assert {h.document for h in scope["hits"]} == {"bees.pdf"}
    assert scope["messages"][-1]["role"] == "user"
    assert (tmp_path / "data" / "default" / "catalog.sqlite").is_file()


# --------------------------------------------------------------------------- docs links

#: The files README.md links to for the detail it leaves out (docs/ARCHITECTURE.md aside).
MOVED_DOCS = ("CLI", "LIBRARY", "API", "ASK", "SCALE", "PERFORMANCE", "SECURITY")


def _without_code(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _anchors(path: Path, level: int | None = None) -> set[str]:
    """GitHub's heading anchors (of the headings of one level, if given): lower case,
    punctuation dropped, spaces to hyphens."""
    hashes = "#" * level if level else "#{1,6}"
    headings = re.findall(rf"^{hashes} +(.+?) *$", _without_code(path.read_text()), re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def _links(path: Path) -> list[tuple[Path, str]]:
    """Relative links in a Markdown file, as (target file, anchor or "")."""
    found = re.findall(r"\]\(([^)\s]+)\)", _without_code(path.read_text()))
    out = []
    for link in found:
        if re.match(r"[a-z]+:", link):
            continue  # http(s) and the like
        target, _, anchor = link.partition("#")
        out.append(((path.parent / target).resolve() if target else path, anchor))
    return out


def test_readme_and_docs_links_resolve():
    """Every relative link in README.md and docs/*.md names a file that exists and, with an
    anchor, a heading of that file."""
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target, anchor in _links(doc):
            assert target.exists(), f"{doc.name}: {target} does not exist"
            if anchor:
                assert anchor in _anchors(target), f"{doc.name}: no #{anchor} in {target.name}"


def test_every_moved_section_is_one_click_from_readme():
    """README.md stays short; what it leaves out is one link away: each docs file it hands
    detail to, and each of that file's sections, is linked from README itself."""
    readme = ROOT / "README.md"
    assert len(readme.read_text().splitlines()) <= 350
    linked = set(_links(readme))
    for name in MOVED_DOCS:
        doc = (ROOT / "docs" / f"{name}.md").resolve()
        assert (doc, "") in linked, f"README does not link docs/{name}.md"
        for anchor in _anchors(doc, level=2):
            assert (doc, anchor) in linked, f"README does not link docs/{name}.md#{anchor}"
