"""``pagelens sync``: the collection mirrors folders, on both engines.

After indexing a folder, one file is added, one changed, one renamed (moved into a
subfolder) and one deleted; a sync applies exactly those four changes, rendering and
embedding only the added and changed files (counted through the embedder), and ``--prune``
removes the deleted one. A changed file's new version replaces the old one atomically
(searched while staged: only the old version is found), and a ``kill -9`` anywhere in a
sync followed by a re-run leaves the collection equal to the folder, without duplicates.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from indexer.model import FakeEmbedder
from indexer.pages import RenderSettings
from indexer.pipeline import Indexer
from indexer.sync import plan_sync, sync_folders
from tests.support.pdfs import make_text_pdf

WORKER = Path(__file__).parent / "support" / "crash_worker.py"
ROOT = WORKER.parents[1]
SMALL = RenderSettings(max_pixels=16 * 28 * 28)  # as the crash worker: small pages
KEYS = ["added", "changed", "moved", "removed", "missing", "unchanged"]


def _pages(name: str, n: int, tag: str = "") -> list[str]:
    return [f"{name} {tag} page {i} words {name}{tag}{i}" for i in range(n)]


def _folder(root: Path) -> Path:
    docs = root / "docs"
    for name in ("keep", "change", "rename", "delete"):
        make_text_pdf(docs / f"{name}.pdf", _pages(name, 2))
    return docs


def _four_changes(docs: Path) -> dict[str, Path]:
    """Add one file (2 pages), change one (3 new pages), rename one, delete one."""
    added = make_text_pdf(docs / "new.pdf", _pages("fresh", 2))
    changed = make_text_pdf(docs / "change.pdf", _pages("change", 3, tag="v2"))
    (docs / "sub").mkdir()
    moved = docs / "sub" / "renamed.pdf"
    os.rename(docs / "rename.pdf", moved)
    (docs / "delete.pdf").unlink()
    return {"added": added, "changed": changed, "moved": moved, "deleted": docs / "delete.pdf"}


def _embedded_images(embedder: FakeEmbedder) -> int:
    return sum(n for kind, n in embedder.calls if kind == "images")


def _mirror(store, docs: Path) -> None:
    """The collection's documents under ``docs`` are exactly its files: one ready document
    per file, every page embedded, nothing hidden left over."""
    files = sorted(str(p.resolve()) for p in docs.rglob("*.pdf"))
    mine = [d for d in store.documents() if d.path.startswith(str(docs.resolve()))]
    assert sorted(d.path for d in mine) == files
    assert all(d.status == "ready" for d in mine), [(d.path, d.status) for d in mine]
    assert len({d.sha256 for d in mine}) == len(mine)
    assert all(d.pages_embedded == d.pages_stored == d.page_count for d in mine)
    assert store.stats().pending == 0


def test_four_changes_applied_and_prune(open_store, tmp_path):
    docs = _folder(tmp_path)
    store = open_store()
    Indexer(store, FakeEmbedder(), settings=SMALL).add([docs])
    before = {Path(d.path).name: d for d in store.documents()}
    renamed_pages = [p.id for p in store.pages(before["rename.pdf"].id)]
    paths = _four_changes(docs)

    embedder = FakeEmbedder()
    report = sync_folders(store, embedder, [docs], settings=SMALL)
    result = report.as_dict()
    assert list(result)[:6] == KEYS
    assert result["added"] == [str(paths["added"].resolve())]
    assert result["changed"] == [str(paths["changed"].resolve())]
    assert result["moved"] == [
        {"from": before["rename.pdf"].path, "to": str(paths["moved"].resolve())}
    ]
    assert result["removed"] == []
    assert result["missing"] == [before["delete.pdf"].path]
    assert result["unchanged"] == 1
    # Only the added (2 pages) and changed (3 pages) files were rendered and embedded.
    assert report.index is not None and report.index.pages_stored == 5
    assert _embedded_images(embedder) == 5

    after = {Path(d.path).name: d for d in store.documents()}
    assert set(after) == {"keep.pdf", "change.pdf", "renamed.pdf", "new.pdf", "delete.pdf"}
    moved = after["renamed.pdf"]
    assert moved.id == before["rename.pdf"].id and moved.name == "renamed.pdf"
    assert [p.id for p in store.pages(moved.id)] == renamed_pages  # pages and vectors kept
    assert after["change.pdf"].page_count == 3
    assert after["change.pdf"].sha256 != before["change.pdf"].sha256
    assert after["keep.pdf"] == before["keep.pdf"]

    again = FakeEmbedder()
    pruned = sync_folders(store, again, [docs], prune=True, settings=SMALL).as_dict()
    assert pruned["removed"] == [before["delete.pdf"].path] and pruned["missing"] == []
    assert pruned["added"] == pruned["changed"] == pruned["moved"] == []
    assert pruned["unchanged"] == 4
    assert _embedded_images(again) == 0
    _mirror(store, docs)


def test_renamed_then_path_reused(open_store, tmp_path):
    """a.pdf renamed to b.pdf and a new a.pdf written: b keeps a's pages (a move), and only
    the new a.pdf is rendered and embedded (not a change of a plus a duplicate b)."""
    docs = tmp_path / "docs"
    make_text_pdf(docs / "a.pdf", _pages("first", 2))
    store = open_store()
    Indexer(store, FakeEmbedder(), settings=SMALL).add([docs])
    (old,) = store.documents()
    os.rename(docs / "a.pdf", docs / "b.pdf")
    make_text_pdf(docs / "a.pdf", _pages("second", 3))
    embedder = FakeEmbedder()
    report = sync_folders(store, embedder, [docs], settings=SMALL)
    a, b = (str((docs / n).resolve()) for n in ("a.pdf", "b.pdf"))
    assert report.moved == [{"from": a, "to": b}]
    assert report.added == [a] and report.changed == [] and report.duplicates == []
    assert _embedded_images(embedder) == 3
    assert store.document(b).id == old.id
    _mirror(store, docs)


def test_repair_leaves_a_staged_version_to_sync(open_store, tmp_path):
    """``check --repair`` finishes stuck documents by marking them ready; a staged version
    (whole, an interrupted sync's) must stay hidden, or two versions would show."""
    from indexer.maintenance.repair import repair

    docs = tmp_path / "docs"
    make_text_pdf(docs / "a.pdf", ["alpha oldversion"])
    store = open_store()
    Indexer(store, FakeEmbedder(), settings=SMALL).add([docs])
    make_text_pdf(docs / "a.pdf", ["alpha newversion"])
    store.replace_document = lambda old_id, new_id: (_ for _ in ()).throw(KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):  # stops right before the swap
        sync_folders(store, FakeEmbedder(), [docs], settings=SMALL)
    del store.replace_document
    staged = [d for d in store.documents() if d.status == "staged"]
    assert len(staged) == 1 and staged[0].pages_embedded == 1
    report = repair(store, embedder=FakeEmbedder())
    assert store.documents_by_id([staged[0].id])[staged[0].id].status == "staged"
    assert "document-stuck" in {p.kind for p in report.problems}
    assert store.search_text("newversion", 5) == []
    sync_folders(store, FakeEmbedder(), [docs], settings=SMALL)
    assert [d.status for d in store.documents()] == ["ready"]
    assert len(store.search_text("newversion", 5)) == 1


def test_dry_run_changes_nothing(open_store, tmp_path):
    docs = _folder(tmp_path)
    store = open_store()
    Indexer(store, FakeEmbedder(), settings=SMALL).add([docs])
    before = store.documents()
    _four_changes(docs)
    report = sync_folders(store, None, [docs], prune=True, dry_run=True)
    assert report.dry_run
    assert len(report.added) == len(report.changed) == len(report.moved) == 1
    assert len(report.removed) == 1 and report.missing == []
    assert store.documents() == before
    assert store.source_stamps() == {}
    assert plan_sync(store, [docs]).as_dict(prune=True) == {
        k: v for k, v in report.as_dict().items() if k in KEYS
    }


def test_outside_documents_untouched(open_store, tmp_path):
    docs = _folder(tmp_path)
    other = make_text_pdf(tmp_path / "elsewhere" / "other.pdf", _pages("other", 1))
    sibling = make_text_pdf(tmp_path / "docs2" / "sibling.pdf", _pages("sibling", 1))
    store = open_store()
    Indexer(store, FakeEmbedder(), settings=SMALL).add([docs, other, sibling])
    other.unlink()  # gone, but not under the synced folder: not ours to list or remove
    report = sync_folders(store, FakeEmbedder(), [docs], prune=True, settings=SMALL)
    assert report.removed == report.missing == []
    names = {d.name for d in store.documents()}
    assert {"other.pdf", "sibling.pdf"} <= names  # docs2 is not inside docs


def test_bad_folder_is_refused(open_store, tmp_path):
    from indexer.errors import UsageError

    store = open_store()
    with pytest.raises(UsageError, match="does not exist"):
        sync_folders(store, FakeEmbedder(), [tmp_path / "unmounted"], prune=True)
    file = make_text_pdf(tmp_path / "one.pdf", ["x"])
    with pytest.raises(UsageError, match="not a folder"):
        sync_folders(store, FakeEmbedder(), [file])


def test_changed_file_swaps_atomically(open_store, tmp_path):
    docs = tmp_path / "docs"
    make_text_pdf(docs / "report.pdf", ["quarterly revenue oldversion", "appendix oldversion"])
    store = open_store()
    Indexer(store, FakeEmbedder(), settings=SMALL).add([docs])
    old = store.documents()[0]
    make_text_pdf(docs / "report.pdf", ["quarterly revenue newversion", "appendix newversion"])
    seen: dict[str, object] = {}
    real_replace = store.replace_document

    def spy(old_id: int, new_id: int) -> None:
        # The new version is complete and embedded, and still staged: no search sees it.
        staged = store.documents_by_id([new_id])[new_id]
        assert staged.status == "staged" and staged.pages_embedded == 2
        seen["text_new"] = store.search_text("newversion", 10)
        seen["text_old"] = store.search_text("oldversion", 10)
        vectors = store.vectors([p.id for p in store.pages(new_id)])
        seen["visual"] = [store.search(v, 10) for v in vectors.values()]
        seen["hybrid"] = store.search_hybrid(
            next(iter(vectors.values())), "newversion", 10, depth=20
        )[0]
        seen["staged_pages"] = set(vectors)
        real_replace(old_id, new_id)

    store.replace_document = spy
    report = sync_folders(store, FakeEmbedder(), [docs], settings=SMALL)
    assert report.changed == [str((docs / "report.pdf").resolve())]
    assert seen["text_new"] == []
    assert len(seen["text_old"]) == 2  # the old version stayed searchable
    staged = seen["staged_pages"]
    assert staged and all(pid not in staged for hits in seen["visual"] for pid, _ in hits)
    assert all(pid not in staged for pid, _ in seen["hybrid"])
    # After: only the new version.
    assert [d.status for d in store.documents()] == ["ready"]
    assert store.documents()[0].id != old.id
    assert store.search_text("oldversion", 10) == []
    new_hits = store.search_text("newversion", 10)
    assert {pid for pid, _ in new_hits} == staged


def test_hidden_documents_excluded_with_filters(open_store, tmp_path):
    """A document filter naming a staged document still finds nothing of it."""
    docs = tmp_path / "docs"
    make_text_pdf(docs / "a.pdf", ["shared word alpha"])
    store = open_store()
    Indexer(store, FakeEmbedder(), settings=SMALL).add([docs])
    make_text_pdf(docs / "a.pdf", ["shared word beta"])
    captured = {}
    real_replace = store.replace_document

    def spy(old_id: int, new_id: int) -> None:
        from indexer.stores.types import PageFilter

        captured["hits"] = store.search_text("shared", 10, where=PageFilter(documents=(new_id,)))
        captured["all"] = store.search_text("shared", 10, where=PageFilter(first=1))
        captured["old"] = [p.id for p in store.pages(old_id)]
        real_replace(old_id, new_id)

    store.replace_document = spy
    sync_folders(store, FakeEmbedder(), [docs], settings=SMALL)
    assert captured["hits"] == []
    assert [pid for pid, _ in captured["all"]] == captured["old"]


def test_sync_cli_json_and_exit_codes(
    store_spec, tmp_path, monkeypatch, tiny_model_dir, reuse_loaded_models
):
    """The CLI on the tiny GME checkpoint: ``--dry-run --json``, a refused file's exit code
    (3, as ``index``), human output, and ``docs`` showing each source path."""
    from app.cli import cli

    monkeypatch.setenv("PAGELENS_COLLECTION", store_spec)
    monkeypatch.setenv("PAGELENS_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("PAGELENS_IMAGE_TOKENS", "16")
    docs = _folder(tmp_path)
    runner = CliRunner()
    first = runner.invoke(cli, ["sync", str(docs), "--json"])
    assert first.exit_code == 0, first.output
    assert len(json.loads(first.stdout)["added"]) == 4
    _four_changes(docs)
    make_text_pdf(docs / "broken.pdf", ["x"]).write_bytes(b"%PDF-1.7 not really")
    plan = runner.invoke(cli, ["sync", str(docs), "--dry-run", "--json"])
    assert plan.exit_code == 0, plan.output
    planned = json.loads(plan.stdout)
    assert list(planned)[:6] == KEYS and planned["dry_run"] is True
    assert len(planned["added"]) == 2 and len(planned["missing"]) == 1
    done = runner.invoke(cli, ["sync", str(docs), "--json"])
    assert done.exit_code == 3, done.output  # a refused file: exit code as index's
    result = json.loads(done.stdout)
    assert result["refused"][0]["path"].endswith("broken.pdf")
    assert len(result["added"]) == 1 and len(result["changed"]) == 1
    assert len(result["moved"]) == 1 and len(result["missing"]) == 1
    (docs / "broken.pdf").unlink()
    human = runner.invoke(cli, ["sync", str(docs), "--prune"])
    assert human.exit_code == 0, human.output
    assert "removed  " in human.stderr and "delete.pdf" in human.stderr
    listing = runner.invoke(cli, ["docs"])
    assert str((docs / "sub" / "renamed.pdf").resolve()) in listing.stdout


def _sync_proc(spec: str, log: Path, docs: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WORKER), "sync", spec, str(log), str(docs), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.parametrize("point", ["render:3", "embed:1", "replace:1"])
def test_kill_9_during_sync_then_rerun(store_spec, open_store, tmp_path, point):
    """``render:3``: while the changed file's new version is being rendered (the added
    file's two pages came first); ``embed:1``: vectors computed, not stored; ``replace:1``:
    the new version published and the old one hidden, the old not removed yet."""
    docs = _folder(tmp_path)
    store = open_store()
    Indexer(store, FakeEmbedder(), settings=SMALL).add([docs])
    store.close()
    _four_changes(docs)
    log = tmp_path / "log.jsonl"
    proc = _sync_proc(store_spec, log, docs, "--prune", "--pause-at", point)
    try:
        line = proc.stdout.readline()
        if line.startswith("STARTED"):
            line = proc.stdout.readline()
        assert line.startswith("PAUSED"), (line, proc.stderr.read() if proc.poll() else "")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    midway = open_store()
    visible = [d for d in midway.documents() if not d.hidden]
    # Never two visible versions of one path, never none of a file that was there before.
    assert len({d.path for d in visible}) == len(visible)
    assert str((docs / "change.pdf").resolve()) in {d.path for d in visible}
    midway.close()

    rerun = _sync_proc(store_spec, log, docs, "--prune")
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err[-3000:]
    final = open_store()
    _mirror(final, docs)
    assert {Path(d.path).name for d in final.documents()} == {
        "keep.pdf",
        "change.pdf",
        "renamed.pdf",
        "new.pdf",
    }
    changed = final.document("change.pdf").id
    hits = final.search_text("changev20", 10)
    assert [final.page(pid).document_id for pid, _ in hits] == [changed]
    assert final.search_text("change0", 10) == []  # the old version is gone


def test_kill_9_of_the_cli_then_rerun(
    store_spec, open_store, tmp_path, monkeypatch, tiny_model_dir, reuse_loaded_models
):
    """A real ``pagelens sync`` process (the tiny GME checkpoint) SIGKILLed once the first
    file's pages are stored (the changed file's new version not yet), then the same command
    again: the collection equals the folder, without duplicates."""
    from app.cli import cli

    monkeypatch.setenv("PAGELENS_COLLECTION", store_spec)
    monkeypatch.setenv("PAGELENS_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("PAGELENS_IMAGE_TOKENS", "16")
    docs = _folder(tmp_path)
    runner = CliRunner()
    assert runner.invoke(cli, ["sync", str(docs)]).exit_code == 0
    _four_changes(docs)
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "sync", str(docs), "--prune"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if line.startswith("stored "):
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert seen and seen[-1].startswith("stored   new.pdf"), seen
    again = runner.invoke(cli, ["sync", str(docs), "--prune", "--json"])
    assert again.exit_code == 0, again.output
    result = json.loads(again.stdout)
    assert result["changed"] == [str((docs / "change.pdf").resolve())]
    assert result["removed"] == [str((docs / "delete.pdf").resolve())]
    _mirror(open_store(), docs)
