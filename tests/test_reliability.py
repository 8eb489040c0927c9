"""Messy and hostile inputs, full disks and read-only folders, end to end through the
indexer and the CLI: one bad file never stops a batch, every refusal names the file and
its reason, nothing half-done is left behind, and no traceback reaches the user.

What is real and what is simulated: the input files are real files (made here, plus a real
Debian manual in tests/data). A full disk is a real small tmpfs and a read-only folder a
real read-only bind mount when this process may mount (root with CAP_SYS_ADMIN, as in CI);
otherwise those two tests are skipped and the simulated versions still run: writes that
raise ``OSError(ENOSPC)``, SQLite's own SQLITE_FULL through ``PRAGMA max_page_count``, and
``os.access`` reporting the folder as not writable (as root, chmod does not stop writes).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from app.cli import cli
from indexer.errors import CollectionError
from indexer.maintenance.check import check
from indexer.model import FakeEmbedder
from indexer.pages import RenderSettings
from indexer.pipeline import Indexer
from indexer.store import PAGES_DIR, Collection
from indexer.stores.local import catalog
from indexer.stores.local import collection as store_mod
from tests.support.pdfs import (
    TOPICS,
    make_broken_xref_pdf,
    make_encrypted_pdf,
    make_huge_image_pdf,
    make_image_only_pdf,
    make_jpeg,
    make_no_pages_pdf,
    make_owner_only_pdf,
    make_png_bomb,
    make_poster_pdf,
    make_strip_pdf,
    make_text_pdf,
    make_tiny_page_pdf,
    make_truncated_image,
    make_truncated_pdf,
)

DATA = Path(__file__).with_name("data")
WORKER = Path(__file__).parent / "support" / "crash_worker.py"
SMALL = RenderSettings(max_pixels=64 * 28 * 28)  # fast pages for tests that count pages
runner = CliRunner()


def _names(report) -> dict[str, object]:
    return {Path(f.path).name: f for f in report.files}


def _snapshot(coll: Path) -> tuple:
    """Everything a user could see change: rows, vectors, image files."""
    store = Collection(coll)
    try:
        docs = [(d.name, d.status, d.page_count) for d in store.documents()]
        pages = [(p.document_id, p.number, p.image_sha256, p.embedded) for p in store.pages()]
        ids = sorted(store.index().ids().tolist())
    finally:
        store.close()
    files = sorted(
        p.relative_to(coll).as_posix() for p in (coll / PAGES_DIR).rglob("*") if p.is_file()
    )
    return docs, pages, ids, files


# --------------------------------------------------------------------------------------
# Inputs


@pytest.fixture
def zoo(tmp_path: Path) -> tuple[Path, dict[str, int], dict[str, str]]:
    """A folder of good files (name -> pages) and bad ones (name -> reason)."""
    d = tmp_path / "zoo"
    d.mkdir()
    good = {
        "text.pdf": make_text_pdf(d / "text.pdf", TOPICS[:3]),
        "repaired-xref.pdf": make_broken_xref_pdf(d / "repaired-xref.pdf", TOPICS[3:7]),
        "owner-only.pdf": make_owner_only_pdf(d / "owner-only.pdf"),
        "scan.pdf": make_image_only_pdf(d / "scan.pdf", n=2),
        "photo.jpg": make_jpeg(d / "photo.jpg", exif_orientation=6),
        "camlidl-manual.pdf": shutil.copy(DATA / "camlidl-manual.pdf", d),
    }
    pages = {
        "text.pdf": 3,
        "repaired-xref.pdf": 4,
        "owner-only.pdf": 2,
        "scan.pdf": 2,
        "photo.jpg": 1,
        "camlidl-manual.pdf": 26,
    }
    assert set(good) == set(pages)
    (d / "empty.pdf").write_bytes(b"")
    (d / "download.pdf").write_text("<!DOCTYPE html><html><body>Please log in</body></html>")
    make_truncated_pdf(d / "cut-off.pdf")
    make_encrypted_pdf(d / "secret.pdf")
    make_no_pages_pdf(d / "no-pages.pdf")
    make_png_bomb(d / "bomb.png")
    make_truncated_image(d / "half.png")
    make_truncated_image(d / "half.jpg", "JPEG")
    (d / "fake.jpg").write_bytes(b"GIF? no, just text")
    bad = {
        "empty.pdf": "empty",
        "download.pdf": "not-a-pdf",
        "cut-off.pdf": "damaged",
        "secret.pdf": "needs-password",
        "no-pages.pdf": "no-pages",
        "bomb.png": "too-large",
        "half.png": "bad-image",
        "half.jpg": "bad-image",
        "fake.jpg": "bad-image",
    }
    return d, pages, bad


def test_one_bad_file_never_stops_a_batch(zoo, tmp_path):
    folder, pages, bad = zoo
    store = Collection(tmp_path / "coll")
    report = Indexer(store, FakeEmbedder(), settings=SMALL).add([folder])
    by_name = _names(report)
    assert set(by_name) == set(pages) | set(bad)
    for name, count in pages.items():
        assert by_name[name].status == "added", by_name[name]
        assert by_name[name].pages == count
    for name, reason in bad.items():
        result = by_name[name]
        assert (result.status, result.reason) == ("refused", reason), result
        assert name in result.message  # every refusal names its file
    docs = {d.name: d for d in store.documents()}
    assert {n: d.page_count for n, d in docs.items()} == pages
    assert store.stats().pages == sum(pages.values()) == store.stats().embedded
    assert check(store).ok
    # Scanned pages: indexed visually, and their text is empty rather than garbage.
    scan = store.pages(docs["scan.pdf"].id)
    assert [p.text for p in scan] == ["", ""] and all(p.embedded for p in scan)
    assert "Caml" in store.pages(docs["camlidl-manual.pdf"].id)[0].text


def test_encrypted_pdfs(tmp_path):
    secret = make_encrypted_pdf(tmp_path / "secret.pdf", user_pw="u-pw", owner_pw="o-pw")
    owner = make_owner_only_pdf(tmp_path / "owner.pdf")
    plain = make_text_pdf(tmp_path / "plain.pdf", TOPICS[5:6])
    store = Collection(tmp_path / "coll")
    indexer = Indexer(store, FakeEmbedder(), settings=SMALL)
    first = _names(indexer.add([secret, owner]))
    assert first["secret.pdf"].reason == "needs-password"
    assert "password" in first["secret.pdf"].message
    assert first["owner.pdf"].status == "added" and first["owner.pdf"].pages == 2
    wrong = _names(indexer.add([secret], password="nope"))["secret.pdf"]
    assert wrong.reason == "wrong-password" and "password" in wrong.message
    assert wrong.message != first["secret.pdf"].message
    # the password given applies to encrypted files; plain ones ignore it
    right = _names(indexer.add([secret, plain], password="u-pw"))
    assert right["secret.pdf"].status == "added" and right["secret.pdf"].pages == 2
    assert right["plain.pdf"].status == "added"
    doc = store.document("secret.pdf")
    assert TOPICS[0].split()[0] in store.pages(doc.id)[0].text


def test_extreme_pages_stay_within_the_pixel_budget(tmp_path):
    d = tmp_path / "extreme"
    files = [
        make_poster_pdf(d / "poster.pdf"),  # 250 x 500 inches
        make_huge_image_pdf(d / "huge-image.pdf"),  # one 20,000 x 20,000 px image
        make_tiny_page_pdf(d / "tiny.pdf"),  # 1 x 1 pt
        make_strip_pdf(d / "strip.pdf"),  # 1440:1
    ]
    big = Image.radial_gradient("L").resize((6000, 4500)).convert("RGB")
    big.save(d / "big-photo.jpg", quality=80)
    files.append(d / "big-photo.jpg")
    settings = RenderSettings()  # GME's real budget, 1280 tokens
    store = Collection(tmp_path / "coll")
    report = Indexer(store, FakeEmbedder(), settings=settings).add(files)
    assert [f.status for f in report.files] == ["added"] * 5, report.as_dict()
    for page in store.pages():
        w, h = page.width, page.height
        assert w * h <= settings.max_pixels * 1.1, (page.image, w, h)
        assert min(w, h) >= settings.min_side
        assert max(w, h) / min(w, h) <= settings.max_aspect_ratio + 1e-6  # padded, not refused
    assert check(store).ok


def _fast_many_pages_pdf(path: Path, n: int) -> Path:
    """An ``n``-page PDF written directly (seconds faster than PyMuPDF for thousands)."""
    out = bytearray(b"%PDF-1.4\n")
    offsets: list[int] = []

    def obj(body: bytes) -> None:
        offsets.append(len(out))
        out.extend(b"%d 0 obj\n" % (len(offsets)) + body + b"\nendobj\n")

    obj(b"<< /Type /Catalog /Pages 2 0 R >>")
    kids = b" ".join(b"%d 0 R" % (4 + 2 * i) for i in range(n))
    obj(b"<< /Type /Pages /Kids [" + kids + b"] /Count %d >>" % n)
    obj(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for i in range(n):
        stream = b"BT /F1 18 Tf 72 700 Td (Page %d) Tj ET" % (i + 1)
        obj(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % (5 + 2 * i)
        )
        obj(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    xref = len(out)
    out.extend(b"xref\n0 %d\n0000000000 65535 f \n" % (len(offsets) + 1))
    out.extend(b"".join(b"%010d 00000 n \n" % o for o in offsets))
    out.extend(
        b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(offsets) + 1, xref)
    )
    path.write_bytes(bytes(out))
    return path


def _index_in_subprocess(tmp_path: Path, name: str, pdf: Path) -> dict:
    proc = subprocess.run(
        [
            sys.executable,
            str(WORKER),
            "index",
            str(tmp_path / name),
            str(tmp_path / f"{name}.log"),
            str(pdf),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=WORKER.parents[2],
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_thousands_of_pages_in_bounded_memory(tmp_path):
    """Memory does not grow with the page count: 2,000 pages cost about what 20 do."""
    small = _index_in_subprocess(tmp_path, "small", _fast_many_pages_pdf(tmp_path / "20.pdf", 20))
    large = _index_in_subprocess(
        tmp_path, "large", _fast_many_pages_pdf(tmp_path / "2000.pdf", 2000)
    )
    assert large["report"]["files"][0]["pages"] == 2000
    assert large["report"]["pages_embedded"] + large["report"]["pages_reused"] == 2000
    assert large["maxrss_mb"] - small["maxrss_mb"] < 120, (small["maxrss_mb"], large["maxrss_mb"])
    store = Collection(tmp_path / "large")
    try:
        assert [p.number for p in store.pages()] == list(range(1, 2001))
        assert store.search_text("Page 1999", 1)
    finally:
        store.close()


# --------------------------------------------------------------------------------------
# CLI: exit code 3, names and reasons, no traceback


def test_cli_names_every_refused_file_and_exits_3(zoo, monkeypatch):
    folder, pages, bad = zoo
    _fake_model(monkeypatch)
    result = runner.invoke(cli, ["index", str(folder), "--json"], catch_exceptions=False)
    assert result.exit_code == 3, result.output
    assert "Traceback" not in result.output
    data = json.loads(result.stdout)
    refused = {Path(f["path"]).name: f["reason"] for f in data["files"] if f["status"] == "refused"}
    assert refused == bad
    added = {Path(f["path"]).name: f["pages"] for f in data["files"] if f["status"] == "added"}
    assert added == pages
    for name in bad:
        assert f"refused  {folder / name}:" in result.stderr
    # a wrong --password is refused by name; the right one opens the encrypted file
    result = runner.invoke(
        cli, ["index", str(folder / "secret.pdf"), "--password", "x"], catch_exceptions=False
    )
    assert result.exit_code == 3 and "password given does not open" in result.output
    result = runner.invoke(
        cli,
        ["index", str(folder / "secret.pdf"), "--password", "user-secret"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    # the same bytes again are already stored: nothing to open, whatever the password
    result = runner.invoke(
        cli, ["index", str(folder / "secret.pdf"), "--password", "x"], catch_exceptions=False
    )
    assert result.exit_code == 0 and "already in the collection" in result.output


def _fake_model(monkeypatch) -> None:
    """The CLI's model loader gives the fake embedder (the real GME path is tested in
    test_cli.py; here only the handling of files matters)."""
    from app.cli import common as cli_common

    monkeypatch.setattr(cli_common.Options, "embedder", lambda self: FakeEmbedder())


# --------------------------------------------------------------------------------------
# Full disk


@pytest.fixture
def indexed(tmp_path) -> Path:
    coll = tmp_path / "coll"
    store = Collection(coll)
    Indexer(store, FakeEmbedder(), settings=SMALL).add(
        [make_text_pdf(tmp_path / "first.pdf", TOPICS[:3])]
    )
    store.close()
    return coll


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(args[0]) if args else None)


def test_disk_full_while_writing_pages_leaves_the_collection_unchanged(
    indexed, tmp_path, monkeypatch
):
    before = _snapshot(indexed)
    real = store_mod.atomic_write_bytes
    calls = {"n": 0}

    def full_after_two(path, data):
        calls["n"] += 1
        if calls["n"] > 2:
            _enospc(path)
        real(path, data)

    monkeypatch.setattr(store_mod, "atomic_write_bytes", full_after_two)
    second = make_text_pdf(tmp_path / "second.pdf", TOPICS[3:9])
    store = Collection(indexed)
    with pytest.raises(CollectionError) as exc:
        Indexer(store, FakeEmbedder(), settings=SMALL, commit_every=2).add([second])
    store.close()
    assert "No space left on device" in str(exc.value) and str(indexed) in str(exc.value)
    monkeypatch.undo()
    assert _snapshot(indexed) == before
    assert check(Collection(indexed)).ok
    # space is back: the same command finishes
    store = Collection(indexed)
    report = Indexer(store, FakeEmbedder(), settings=SMALL).add([second])
    assert report.files[0].status == "added" and store.stats().pages == 9


def test_disk_full_in_sqlite_is_a_clear_error(indexed, tmp_path, monkeypatch):
    before = _snapshot(indexed)
    connect = catalog.connect

    def small_disk(path, **kwargs):
        conn = connect(path, **kwargs)
        used = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {used + 2}")  # real SQLITE_FULL soon
        return conn

    monkeypatch.setattr(catalog, "connect", small_disk)
    store = Collection(indexed)
    many = make_text_pdf(tmp_path / "long.pdf", [t * 40 for t in TOPICS] * 3)
    with pytest.raises(CollectionError) as exc:
        Indexer(store, FakeEmbedder(), settings=SMALL).add([many])
    store.close()
    assert "full" in str(exc.value)
    assert _snapshot(indexed) == before


def test_disk_full_while_saving_vectors_loses_nothing(indexed, tmp_path, monkeypatch):
    from indexer.stores.local import vector_index as vectors

    monkeypatch.setattr(vectors.faiss, "write_index", _enospc)
    store = Collection(indexed)
    with pytest.raises(CollectionError, match="No space left"):
        Indexer(store, FakeEmbedder(), settings=SMALL).add(
            [make_text_pdf(tmp_path / "b.pdf", TOPICS[4:6])]
        )
    store.close()
    monkeypatch.undo()
    store = Collection(indexed)
    # the catalog committed every vector; the cache catches up on open
    assert store.stats().embedded == 5 and len(store.index()) == 5
    assert not list(indexed.glob("*.tmp"))
    assert check(store).kinds() <= {"faiss-missing-ids"}
    with store.writing():
        pass  # the next writer saves the cache
    assert check(store).ok


def test_disk_full_through_the_cli_is_one_clean_line(indexed, tmp_path, monkeypatch):
    before = _snapshot(indexed)
    monkeypatch.setattr(store_mod, "atomic_write_bytes", _enospc)
    _fake_model(monkeypatch)
    pdf = make_text_pdf(tmp_path / "new.pdf", TOPICS[6:8])
    result = runner.invoke(
        cli, ["--collection", str(indexed), "index", str(pdf)], catch_exceptions=False
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "error: Cannot write to collection" in result.output
    assert "No space left on device" in result.output and "resume" in result.output
    monkeypatch.undo()
    assert _snapshot(indexed) == before


def _try_mount(*args: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


def test_real_full_disk(tmp_path):
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    if not _try_mount("-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(mnt)):
        pytest.skip("cannot mount a small tmpfs here (needs root with CAP_SYS_ADMIN)")
    try:
        coll = mnt / "coll"
        store = Collection(coll)
        Indexer(store, FakeEmbedder(), settings=SMALL).add(
            [make_text_pdf(tmp_path / "a.pdf", TOPICS[:2])]
        )
        before = _snapshot(coll)
        noisy = tmp_path / "noisy.pdf"
        _noise_pdf(noisy, pages=12)
        with pytest.raises(CollectionError) as exc:
            Indexer(store, FakeEmbedder(), settings=RenderSettings()).add([noisy])  # big pages
        assert "No space left" in str(exc.value) or "full" in str(exc.value)
        store.close()
        after = _snapshot(coll)
        assert after == before, "the failed document was rolled back"
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _noise_pdf(path: Path, pages: int) -> None:
    import io
    import random

    import pymupdf

    rnd = random.Random(7)
    doc = pymupdf.open()
    for _ in range(pages):
        page = doc.new_page()
        img = Image.frombytes("L", (300, 300), rnd.randbytes(300 * 300))
        buf = io.BytesIO()
        img.save(buf, "PNG")
        page.insert_image(page.rect, stream=buf.getvalue())
    doc.save(path)


# --------------------------------------------------------------------------------------
# Read-only collection


def _read_only_cases(coll: Path, monkeypatch) -> None:
    """Searching works; indexing and removing are refused with a clear error."""
    store = Collection(coll)
    assert store.read_only
    assert store.search_text("honeybees", 1)
    assert store.search(store.vector(store.page_ids()[0]), 1)
    with pytest.raises(CollectionError, match="read-only"):
        Indexer(store, FakeEmbedder(), settings=SMALL).add([coll.parent / "first.pdf"])
    store.close()
    _fake_model(monkeypatch)
    monkeypatch.setenv("PAGELENS_COLLECTION", str(coll))
    for args in (["index", str(coll.parent / "first.pdf")], ["remove", "first.pdf"]):
        result = runner.invoke(cli, args, catch_exceptions=False)
        assert result.exit_code == 1 and "read-only" in result.output, result.output
        assert "Traceback" not in result.output
    result = runner.invoke(
        cli, ["search", "honeybees", "--mode", "text", "--json"], catch_exceptions=False
    )
    assert result.exit_code == 0 and json.loads(result.stdout)["hits"]


def test_read_only_collection_simulated(indexed, monkeypatch):
    before = _snapshot(indexed)
    real_access = os.access

    def access(path, mode, *args, **kwargs):
        if Path(path) == indexed and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    _read_only_cases(indexed, monkeypatch)
    monkeypatch.undo()
    assert _snapshot(indexed) == before


def test_read_only_collection_real_mount(indexed, tmp_path, monkeypatch):
    view = tmp_path / "ro-view"
    view.mkdir()
    if not _try_mount("--bind", str(indexed), str(view)):
        pytest.skip("cannot bind-mount here (needs root with CAP_SYS_ADMIN)")
    try:
        if not _try_mount("-o", "remount,ro,bind", str(view)):
            pytest.skip("cannot remount read-only here")
        before = _snapshot(indexed)
        _read_only_cases(view, monkeypatch)
        assert _snapshot(indexed) == before
    finally:
        subprocess.run(["umount", "-l", str(view)], check=False)


_PEAK_WORKER = """
import json, sys
from indexer.model import FakeEmbedder
from indexer.pipeline import Indexer
from indexer.store import Collection

from tests.support.peak_rss import own_peak_mb as peak_mb

before = peak_mb()
if sys.argv[2] == "--control":  # a known 300 MB, written so that it is resident
    ballast = b"x" * (300 * 2**20)
    pages = 0
else:
    pages = Indexer(Collection(sys.argv[1]), FakeEmbedder()).add([sys.argv[2]]).pages_stored
print(json.dumps({"pages": pages, "grown_mb": peak_mb() - before}))
"""


def test_memory_stays_bounded_for_a_20000px_image(tmp_path):
    """The 20,000 x 20,000 px page image is decoded subsampled, not at 400 M pixels.

    Measured in a fresh process by its own peak (``VmHWM``): the test process's peak only
    grows, so it could not fail once any earlier test had peaked higher.
    """
    pdf = make_huge_image_pdf(tmp_path / "huge.pdf")

    def peak(arg: str) -> dict:
        proc = subprocess.run(
            [sys.executable, "-c", _PEAK_WORKER, str(tmp_path / "coll"), arg],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=WORKER.parents[2],
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    assert peak("--control")["grown_mb"] > 250  # the measurement does see 300 MB
    result = peak(str(pdf))
    assert result["pages"] == 1
    assert result["grown_mb"] < 400, result  # a full RGB decode alone would be 1,200 MB


# --------------------------------------------------------------------------------------
# Acceptance


def test_acceptance_mixed_real_world_folder_through_the_cli(tmp_path, tiny_model_dir, monkeypatch):
    """A run over a folder of mixed good and bad real-world PDFs indexes every good page and
    names every refused file (the real CLI, the real GME code path on the tiny model)."""
    import re

    manual = (DATA / "camlidl-manual.pdf").read_bytes()
    d = tmp_path / "inbox"
    d.mkdir()
    (d / "camlidl-manual.pdf").write_bytes(manual)
    (d / "manual-bad-startxref.pdf").write_bytes(
        re.sub(rb"startxref\s+\d+", b"startxref\n999", manual)
    )
    make_text_pdf(d / "reports" / "q3-report.pdf", TOPICS[:3])
    make_image_only_pdf(d / "reports" / "scanned-letter.pdf", n=2)
    (d / "manual-partial-download.pdf").write_bytes(manual[: len(manual) // 3])
    (d / "login-page.pdf").write_text("<!DOCTYPE html><html><title>Sign in</title></html>")
    (d / "zero-bytes.pdf").write_bytes(b"")
    make_encrypted_pdf(d / "reports" / "salaries.pdf")
    make_no_pages_pdf(d / "blank-tree.pdf")
    good = {
        "camlidl-manual.pdf": 26,
        "manual-bad-startxref.pdf": 26,
        "q3-report.pdf": 3,
        "scanned-letter.pdf": 2,
    }
    bad = {
        "manual-partial-download.pdf": "damaged",
        "login-page.pdf": "not-a-pdf",
        "zero-bytes.pdf": "empty",
        "salaries.pdf": "needs-password",
        "blank-tree.pdf": "no-pages",
    }
    monkeypatch.setenv("PAGELENS_MODEL", str(tiny_model_dir))
    result = runner.invoke(
        cli, ["--image-tokens", "256", "index", str(d), "--json"], catch_exceptions=False
    )
    assert result.exit_code == 3, result.output
    assert "Traceback" not in result.output
    report = json.loads(result.stdout)
    refused = {Path(f["path"]).name: f for f in report["files"] if f["status"] == "refused"}
    assert {n: f["reason"] for n, f in refused.items()} == bad
    for name, entry in refused.items():
        assert name in entry["message"]
        assert re.search(rf"refused  \S*{re.escape(name)}: ", result.stderr), name
    assert report["pending"] == 0 and report["refused"] == len(bad)

    docs = json.loads(runner.invoke(cli, ["docs", "--json"]).stdout)["documents"]
    assert {x["name"]: x["pages"] for x in docs} == good
    assert all(x["pages_embedded"] == x["pages"] for x in docs)  # every good page, embedded
    hits = json.loads(
        runner.invoke(cli, ["search", "stub code", "--mode", "text", "--json"]).stdout
    )
    assert hits["hits"] and hits["hits"][0]["document"] in (
        "camlidl-manual.pdf",
        "manual-bad-startxref.pdf",
    )
    assert runner.invoke(cli, ["check"], catch_exceptions=False).exit_code == 0
