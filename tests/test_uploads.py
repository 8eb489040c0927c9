"""Uploaded files are stored only in ``<collection>/uploads/``, under safe names."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from app.web.uploads import (
    discard_upload,
    is_upload,
    max_upload_bytes,
    max_upload_mb,
    safe_filename,
    save_upload,
)
from indexer.errors import DocumentError, PageLensError


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("/etc/passwd", "passwd"),
        ("..\\..\\windows\\system32\\cmd.exe", "cmd.exe"),
        ("C:\\Users\\me\\report.pdf", "report.pdf"),
        ("Résumé café.pdf", "Résumé café.pdf"),
        ("日本語の資料.pdf", "日本語の資料.pdf"),
        ("", "upload"),
        (None, "upload"),
        ("..", "upload"),
        ("...", "upload"),
        ("/", "upload"),
        ("CON", "_CON"),
        ("nul.pdf", "_nul.pdf"),
        ("com1.tar.gz", "_com1.tar.gz"),
        ("LPT9.PDF", "_LPT9.PDF"),
        ("a\x00b\nc\x1b.pdf", "abc.pdf"),
        (".hidden.pdf", "hidden.pdf"),
        ('what?<is>:"this"|*.pdf', "what_is_this_.pdf"),
        ("report.pdf. ", "report.pdf"),
        ("  many   spaces .pdf", "many spaces .pdf"),
    ],
)
def test_safe_filename(raw: str | None, expected: str) -> None:
    assert safe_filename(raw) == expected


def test_safe_filename_is_short_and_keeps_the_extension() -> None:
    for raw in ("x" * 400 + ".pdf", "é" * 300 + ".pdf"):
        name = safe_filename(raw)
        assert len(name.encode("utf-8")) <= 150
        assert name.endswith(".pdf")
        name.encode("utf-8").decode("utf-8")  # no split multi-byte character


@pytest.mark.parametrize(
    "raw", ["../../etc/passwd", "/abs/path/x.pdf", "..", "sub/dir/../../x.pdf", "a/../../b.png"]
)
def test_saved_files_stay_in_the_uploads_folder(tmp_path: Path, raw: str) -> None:
    collection = tmp_path / "c"
    path = save_upload(collection, raw, b"%PDF-1.7 data")
    uploads = (collection / "uploads").resolve()
    assert path.resolve().parent == uploads
    assert path.read_bytes() == b"%PDF-1.7 data"
    assert is_upload(collection, path)
    # nothing else was created anywhere in the collection's parent
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]
    assert [p.name for p in collection.iterdir()] == ["uploads"]


def test_file_objects_are_streamed(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 7)
    path = save_upload(tmp_path, "big.bin", io.BytesIO(data))
    assert path.read_bytes() == data


def test_size_limit(tmp_path: Path) -> None:
    with pytest.raises(DocumentError) as err:
        save_upload(tmp_path, "big.pdf", io.BytesIO(b"x" * 2048), max_bytes=1024)
    assert err.value.reason == "too-large"
    assert "big.pdf" in str(err.value) and "limit" in str(err.value)
    assert list((tmp_path / "uploads").iterdir()) == []  # no partial file left
    # exactly at the limit is fine
    assert save_upload(tmp_path, "ok.pdf", b"x" * 1024, max_bytes=1024).stat().st_size == 1024


def test_size_limit_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PAGELENS_MAX_UPLOAD_MB", raising=False)
    assert max_upload_mb() == 200
    monkeypatch.setenv("PAGELENS_MAX_UPLOAD_MB", "1")
    assert max_upload_bytes() == 1024 * 1024
    with pytest.raises(DocumentError, match="1 MB"):
        save_upload(tmp_path, "a.pdf", b"x" * (1024 * 1024 + 1))
    monkeypatch.setenv("PAGELENS_MAX_UPLOAD_MB", "lots")
    with pytest.raises(PageLensError, match="PAGELENS_MAX_UPLOAD_MB"):
        max_upload_mb()


def test_empty_upload_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DocumentError) as err:
        save_upload(tmp_path, "empty.pdf", b"")
    assert err.value.reason == "empty"
    assert list((tmp_path / "uploads").iterdir()) == []


def test_same_name_twice_never_overwrites(tmp_path: Path) -> None:
    first = save_upload(tmp_path, "report.pdf", b"first version")
    second = save_upload(tmp_path, "report.pdf", b"second version")
    third = save_upload(tmp_path, "../report.pdf", b"third version")
    assert len({first, second, third}) == 3
    assert first.name == "report.pdf" and second.name == "report-2.pdf"
    assert third.name == "report-3.pdf"
    assert first.read_bytes() == b"first version"
    assert second.read_bytes() == b"second version"
    # the same content under the same name is the same file
    assert save_upload(tmp_path, "report.pdf", b"second version") == second
    assert len(list((tmp_path / "uploads").iterdir())) == 3


def test_discard_only_touches_uploads(tmp_path: Path) -> None:
    collection = tmp_path / "c"
    saved = save_upload(collection, "x.pdf", b"data")
    outside = tmp_path / "keep.pdf"
    outside.write_bytes(b"mine")
    assert not discard_upload(collection, outside)
    assert not discard_upload(collection, collection / "uploads" / ".." / ".." / "keep.pdf")
    assert outside.exists()
    assert discard_upload(collection, saved)
    assert not saved.exists()


def test_symlinked_uploads_folder_is_refused(tmp_path: Path) -> None:
    collection = tmp_path / "c"
    collection.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (collection / "uploads").symlink_to(elsewhere)
    with pytest.raises(PageLensError, match="symbolic link"):
        save_upload(collection, "x.pdf", b"data")
    assert list(elsewhere.iterdir()) == []


def test_uploaded_file_indexes_under_its_original_name(tmp_path: Path) -> None:
    from indexer.pipeline import Indexer
    from indexer.store import Collection
    from tests.support.pdfs import TOPICS, make_text_pdf

    pdf = make_text_pdf(tmp_path / "src.pdf", TOPICS[:2])
    store = Collection(tmp_path / "c")
    saved = save_upload(store.path, "../Quarterly report (final).pdf", pdf.read_bytes())
    report = Indexer(store, None).add(
        [saved], names={str(saved): "Quarterly report (final).pdf"}, embed=False
    )
    assert report.files[0].status == "added"
    assert [d.name for d in store.documents()] == ["Quarterly report (final).pdf"]
