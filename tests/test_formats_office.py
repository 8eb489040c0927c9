"""Office and OpenDocument files through LibreOffice (indexer/pages/office.py).

Real files from office-format libraries' own test data (tests/data/office/README.md), true
page counts checked against LibreOffice's own PDF, searchable text, refusals before any
conversion (password, corrupt zip, zip bomb), no outbound connection for a docx whose image
links to a URL, and a batch that goes on where LibreOffice is missing. LibreOffice is part of
the dev install (scripts/install.sh --dev), so nothing here is skipped.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from indexer.errors import DocumentError
from indexer.model import FakeEmbedder
from indexer.pages import inspect_document, office
from indexer.pages.mupdf import pymupdf
from indexer.pipeline import Indexer
from indexer.stores import open_collection
from retriever import Retriever

DATA = Path(__file__).parent / "data" / "office"
CONVERTED = [
    "example.docx",
    "txt-text.pptx",
    "example.xlsx",
    "serious_poem.odt",
    "cols.odp",
    "pythagoras.ods",
]
#: The legacy binary formats and RTF, saved by LibreOffice from real documents.
LEGACY = ["letter.doc", "agenda.rtf", "debian.ppt", "pythagoras.xls"]


# -- a record of this process's outbound connections (PEP 578 audit hook, toggled) ----------

_CONTACTS: list[tuple] | None = None


def _audit(event: str, args: tuple) -> None:
    if _CONTACTS is not None and event in ("socket.connect", "socket.getaddrinfo"):
        _CONTACTS.append((event, args[1:]))


sys.addaudithook(_audit)


class _Recording:
    def __enter__(self) -> list[tuple]:
        global _CONTACTS
        _CONTACTS = []
        return _CONTACTS

    def __exit__(self, *exc: object) -> None:
        global _CONTACTS
        _CONTACTS = None


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def office_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("office") / "docs"
    folder.mkdir()
    for name in CONVERTED:
        shutil.copy(DATA / name, folder / name)
    return folder


def _libreoffice_own_pages(folder: Path, names: list[str], work: Path) -> dict[str, int]:
    """Page counts of the PDFs LibreOffice itself writes, run by hand (not by PageLens)."""
    soffice = shutil.which("soffice")
    assert soffice, "LibreOffice is part of the dev install: bash scripts/install.sh --dev"
    outputs = {}
    for name in names:  # one folder each: example.docx and example.xlsx share a stem
        out = work / name
        subprocess.run(
            [soffice, f"-env:UserInstallation={(work / 'profile').as_uri()}", "--headless",
             "--convert-to", "pdf", "--outdir", str(out), str(folder / name)],
            check=True, capture_output=True, timeout=180,
        )  # fmt: skip
        (pdf,) = out.glob("*.pdf")
        with pymupdf.open(pdf) as doc:
            outputs[name] = doc.page_count
    return outputs


@pytest.fixture(scope="session")
def libreoffice_pages(office_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _libreoffice_own_pages(office_folder, CONVERTED, tmp_path_factory.mktemp("lo-own"))


@pytest.fixture(scope="session")
def indexed(office_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    store = open_collection(str(tmp_path_factory.mktemp("office-collection") / "c"))
    embedder = FakeEmbedder()
    with _Recording() as contacts:
        report = Indexer(store, embedder).add([office_folder])
    yield store, embedder, report, list(contacts)
    store.close()


def _remote_linked_docx(source: Path, target: Path, url: str) -> Path:
    """``source`` (a real docx) with one more picture, whose image is linked to ``url``
    (``r:link``, TargetMode External), as Word writes "Insert picture > Link to file"."""
    rel = (
        '<Relationship Id="rIdRemote1" Type="http://schemas.openxmlformats.org/officeDocument/'
        f'2006/relationships/image" Target="{url}" TargetMode="External"/></Relationships>'
    )
    a = "http://schemas.openxmlformats.org/drawingml/2006"
    picture = (
        '<w:p><w:r><w:drawing><wp:inline><wp:extent cx="952500" cy="952500"/>'
        f'<wp:docPr id="99" name="Remote"/><a:graphic xmlns:a="{a}/main">'
        f'<a:graphicData uri="{a}/picture"><pic:pic xmlns:pic="{a}/picture">'
        '<pic:nvPicPr><pic:cNvPr id="99" name="remote.png"/><pic:cNvPicPr/></pic:nvPicPr>'
        '<pic:blipFill><a:blip r:link="rIdRemote1"/><a:stretch><a:fillRect/></a:stretch>'
        '</pic:blipFill><pic:spPr><a:xfrm><a:off x="0" y="0"/><a:ext cx="952500" cy="952500"/>'
        '</a:xfrm><a:prstGeom prst="rect"><a:avLst/></a:prstGeom></pic:spPr></pic:pic>'
        "</a:graphicData></a:graphic></wp:inline></w:drawing></w:r></w:p>"
    )
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "word/_rels/document.xml.rels":
                data = data.replace(b"</Relationships>", rel.encode())
            elif info.filename == "word/document.xml":
                data = data.replace(b"<w:body>", b"<w:body>" + picture.encode(), 1)
            zout.writestr(info, data)
    return target


@pytest.fixture
def image_server():
    """A web server on loopback standing in for the remote host; records every request."""
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            requests.append(f"GET {self.path}")
            self.send_error(404)

        def do_OPTIONS(self) -> None:  # noqa: N802
            requests.append(f"OPTIONS {self.path}")
            self.send_error(501)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/remote.png", requests
    server.shutdown()
    server.server_close()


# -- tests --------------------------------------------------------------------------------------


def test_real_office_files_index_with_true_page_counts(indexed, libreoffice_pages, office_folder):
    store, _embedder, report, _contacts = indexed
    assert [(Path(f.path).name, f.status) for f in report.files] == sorted(
        (name, "added") for name in CONVERTED
    )
    docs = {d.name: d for d in store.documents()}
    assert set(docs) == set(CONVERTED)
    for name in CONVERTED:
        doc = docs[name]
        original = (office_folder / name).read_bytes()
        assert doc.sha256 == hashlib.sha256(original).hexdigest()  # the original, not the PDF
        assert doc.kind == Path(name).suffix[1:]  # its own type
        assert doc.page_count == libreoffice_pages[name] and doc.ready
    assert docs["txt-text.pptx"].page_count == 2
    assert report.pages_embedded == sum(libreoffice_pages.values())


def test_legacy_office_and_rtf_files_index_with_true_page_counts(tmp_path):
    """.doc, .rtf, .ppt and .xls: LibreOffice's own templates and odfpy's spreadsheet saved
    in those formats by LibreOffice (tests/data/README.md), through the whole pipeline."""
    folder = tmp_path / "legacy"
    folder.mkdir()
    for name in LEGACY:
        shutil.copy(DATA / name, folder / name)
    own = _libreoffice_own_pages(folder, LEGACY, tmp_path / "lo-own")
    store = open_collection(str(tmp_path / "c"))
    try:
        embedder = FakeEmbedder()
        report = Indexer(store, embedder).add([folder])
        assert sorted(f.status for f in report.files) == ["added"] * len(LEGACY)
        docs = {d.name: d for d in store.documents()}
        for name in LEGACY:
            doc = docs[name]
            assert doc.kind == Path(name).suffix[1:] and doc.ready
            assert doc.sha256 == hashlib.sha256((folder / name).read_bytes()).hexdigest()
            assert doc.page_count == own[name], name
        assert (own["debian.ppt"], own["agenda.rtf"]) == (3, 2)  # not one page per file
        retriever = Retriever(embedder, store)
        for query, name, page in [
            ("Hertzog Put Your Title Here", "debian.ppt", 1),
            ("minutes location discussion conclusion", "agenda.rtf", 2),
            ("Sender's name Company Name", "letter.doc", 1),
            ("Sheet1", "pythagoras.xls", 1),
        ]:
            hits = retriever.search(query, 3, mode="text")
            assert (hits[0].document, hits[0].page) == (name, page), (query, hits)
    finally:
        store.close()


def test_office_text_is_searchable(indexed):
    store, embedder, _report, _contacts = indexed
    retriever = Retriever(embedder, store)
    for query, name, page in [
        ("burning deck", "serious_poem.odt", 1),
        ("yahoo", "txt-text.pptx", 1),
        ("Text run in table cell", "txt-text.pptx", 2),
        ("Lorem ipsum", "example.docx", 1),
        ("pythagoras Sheet1", "pythagoras.ods", 1),
    ]:
        hits = retriever.search(query, 3, mode="text")
        assert (hits[0].document, hits[0].page) == (name, page), (query, hits)


def test_adding_the_same_office_bytes_again_is_a_no_op(indexed, office_folder, tmp_path):
    store, embedder, _report, _contacts = indexed
    copy = tmp_path / "renamed-copy.odt"
    shutil.copy(office_folder / "serious_poem.odt", copy)
    before = store.stats().pages
    report = Indexer(store, embedder).add([copy])
    assert [f.status for f in report.files] == ["skipped"] and store.stats().pages == before


def test_stored_office_bytes_are_not_converted_again(indexed, office_folder, monkeypatch, tmp_path):
    """A later run (a fresh process: an empty PDF cache) adding the same docx under another
    name hashes it and stops there: LibreOffice is not run."""
    store, embedder, _report, _contacts = indexed
    conversions: list[Path] = []
    real_convert = office.convert

    def counting(path: Path, kind: str, target: Path) -> None:
        conversions.append(path)
        real_convert(path, kind, target)

    monkeypatch.setattr(office, "convert", counting)
    monkeypatch.setattr(office, "_CACHE", office._PdfCache())
    copy = tmp_path / "renamed.docx"
    shutil.copy(office_folder / "example.docx", copy)
    report = Indexer(store, embedder).add([copy])
    (result,) = report.files
    assert result.status == "skipped" and result.name == "example.docx", result
    assert conversions == []
    # the counter does count: inspecting the copy outside the indexer converts it once
    assert inspect_document(copy).page_count == store.document("example.docx").page_count
    assert conversions == [copy]


def test_ray_inspect_task_does_not_convert_stored_bytes(monkeypatch, tmp_path):
    """The Ray path's inspect task (run in workers, here called directly) hashes first: bytes
    the collection holds ready come back as ``stored`` without a conversion; others convert."""
    from indexer.pages import RenderSettings
    from indexer.ray.tasks import inspect_task

    conversions: list[Path] = []
    real_convert = office.convert
    monkeypatch.setattr(
        office, "convert", lambda p, k, t: (conversions.append(p), real_convert(p, k, t))
    )
    monkeypatch.setattr(office, "_CACHE", office._PdfCache())
    path = shutil.copy(DATA / "cols.odp", tmp_path / "cols.odp")
    sha = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    assert inspect_task(str(path), None, RenderSettings(), frozenset({sha})) == ("stored", sha)
    assert conversions == []
    status, info = inspect_task(str(path), None, RenderSettings(), frozenset({"0" * 64}))
    assert status == "ok" and info.sha256 == sha and info.kind == "odp"
    assert conversions == [Path(path)]


def test_password_corrupt_and_zip_bomb_are_refused_before_conversion(monkeypatch, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    shutil.copy(DATA / "example_password.docx", folder / "locked.docx")
    real = (DATA / "txt-text.pptx").read_bytes()
    (folder / "corrupt.pptx").write_bytes(real[: len(real) // 2])  # a truncated download
    bomb = folder / "bomb.docx"
    shutil.copy(DATA / "example.docx", bomb)
    with zipfile.ZipFile(bomb, "a", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("word/media/filler.bin", "w") as member:
            block = bytes(1 << 20)
            for _ in range(100):  # 100 MiB of zeros: ~100 KiB packed
                member.write(block)
    assert bomb.stat().st_size < 1 << 20
    started: list = []
    monkeypatch.setattr(office, "_run", lambda *a: started.append(a) or "")
    store = open_collection(str(tmp_path / "c"))
    report = Indexer(store, FakeEmbedder()).add([folder])
    store.close()
    refused = {Path(f.path).name: f for f in report.refused}
    assert set(refused) == {"locked.docx", "corrupt.pptx", "bomb.docx"}
    assert refused["locked.docx"].reason == "needs-password"
    assert "password" in refused["locked.docx"].message
    assert refused["corrupt.pptx"].reason == "damaged"
    assert "not a readable zip" in refused["corrupt.pptx"].message
    assert refused["bomb.docx"].reason == "too-large" and "zip bomb" in refused["bomb.docx"].message
    for name, result in refused.items():
        assert name in result.message  # refused by name
    assert started == []  # LibreOffice never saw them


def test_zip_bomb_by_total_size(monkeypatch, tmp_path):
    monkeypatch.setattr(office, "LIMITS", office.ConversionLimits(max_unpacked_bytes=10_000))
    with pytest.raises(DocumentError) as caught:
        office.sniff_office(DATA / "cols.odp", (DATA / "cols.odp").read_bytes()[:1024])
    assert caught.value.reason == "too-large" and "the limit is 10,000" in str(caught.value)


def test_remote_linked_image_makes_no_outbound_connection(image_server, tmp_path):
    url, requests = image_server
    folder = tmp_path / "linked"
    folder.mkdir()
    docx = _remote_linked_docx(DATA / "example.docx", folder / "linked.docx", url)
    store = open_collection(str(tmp_path / "c"))
    with _Recording() as contacts:
        report = Indexer(store, FakeEmbedder()).add([docx])
    store.close()
    assert [f.status for f in report.files] == ["added"] and report.files[0].pages == 1
    assert requests == [] and contacts == []


def test_the_profile_alone_blocks_linked_images(image_server, monkeypatch, tmp_path):
    """Without a network namespace (not every system allows one) the profile still keeps
    LibreOffice from fetching; and without the profile's setting it does fetch, so the test
    can fail."""
    url, requests = image_server
    docx = _remote_linked_docx(DATA / "example.docx", tmp_path / "linked.docx", url)
    monkeypatch.setattr(office, "netless_prefix", lambda: ())
    office.convert(docx, "docx", tmp_path / "blocked.pdf")
    assert (tmp_path / "blocked.pdf").is_file() and requests == []
    settings = [s for s in office._PROFILE_SETTINGS if s[1] != "BlockUntrustedRefererLinks"]
    monkeypatch.setattr(office, "_PROFILE_SETTINGS", tuple(settings))
    office.convert(docx, "docx", tmp_path / "fetched.pdf")
    assert any("/remote.png" in r for r in requests)


def test_conversion_command_is_isolated(tmp_path):
    profile = office.write_profile(tmp_path / "profile")
    xcu = (profile / "user" / "registrymodifications.xcu").read_text()
    for name in ("DisableMacrosExecution", "BlockUntrustedRefererLinks", "MacroSecurityLevel"):
        assert name in xcu
    command = office.conversion_command("soffice", profile, tmp_path / "a.docx", tmp_path)
    assert f"-env:UserInstallation={profile.as_uri()}" in command and "--headless" in command
    if shutil.which("unshare") and subprocess.run(["unshare", "--net", "true"]).returncode == 0:
        assert command[:2] == [shutil.which("unshare"), "--net"]


def test_without_libreoffice_one_line_and_the_batch_goes_on(monkeypatch, tmp_path, make_pdf):
    pdf = make_pdf("notes.pdf", ["Plain PDF pages still index."], folder=tmp_path / "mixed")
    shutil.copy(DATA / "example.docx", pdf.parent / "report.docx")
    shutil.copy(DATA / "cols.odp", pdf.parent / "deck.odp")
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(office, "_CACHE", office._PdfCache())  # nothing converted before
    store = open_collection(str(tmp_path / "c"))
    report = Indexer(store, FakeEmbedder()).add([pdf.parent])
    store.close()
    status = {Path(f.path).name: f for f in report.files}
    assert status["notes.pdf"].status == "added"
    for name in ("report.docx", "deck.odp"):
        assert status[name].status == "refused" and status[name].reason == "needs-libreoffice"
        message = status[name].message
        assert "\n" not in message and name in message
        assert "libreoffice-writer-nogui" in message and "LibreOffice" in message


def test_time_limit_kills_the_conversion(monkeypatch, tmp_path):
    monkeypatch.setattr(office, "LIMITS", office.ConversionLimits(seconds=0.3))
    started = time.monotonic()
    with pytest.raises(DocumentError) as caught:
        office.convert(DATA / "cols.odp", "odp", tmp_path / "out.pdf")
    assert caught.value.reason == "conversion-failed" and "longer than 0.3 s" in str(caught.value)
    assert time.monotonic() - started < 30
    time.sleep(0.5)
    left = [p for p in Path("/proc").glob("[0-9]*") if _is_conversion(p)]
    assert left == [], "LibreOffice's process group outlived its time limit"


def _is_conversion(proc: Path) -> bool:
    try:
        return b"pagelens-convert-" in (proc / "cmdline").read_bytes()
    except OSError:
        return False


def test_memory_limit_refuses_instead_of_hanging(monkeypatch, tmp_path):
    monkeypatch.setattr(office, "LIMITS", office.ConversionLimits(memory_bytes=64 * 1024**2))
    with pytest.raises(DocumentError) as caught:
        office.convert(DATA / "cols.odp", "odp", tmp_path / "out.pdf")
    assert caught.value.reason in {"conversion-failed", "damaged"}


def test_conversions_at_once_are_bounded(monkeypatch, tmp_path):
    monkeypatch.setattr(office, "LIMITS", office.ConversionLimits(parallel=2))
    running, peak, lock = [0], [0], threading.Lock()

    def fake_run(path, command, work, limits):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.2)
        out = Path(command[command.index("--outdir") + 1])
        out.mkdir()
        (out / "document.pdf").write_bytes(b"%PDF-1.4\n")
        with lock:
            running[0] -= 1
        return ""

    monkeypatch.setattr(office, "_run", fake_run)
    threads = [
        threading.Thread(target=office.convert, args=(DATA / "cols.odp", "odp", tmp_path / f"{i}"))
        for i in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] == 2 and all((tmp_path / f"{i}").is_file() for i in range(6))


def test_office_files_are_recognised_by_content(tmp_path):
    nameless = tmp_path / "download"
    shutil.copy(DATA / "serious_poem.odt", nameless)
    assert office.sniff_office(nameless, nameless.read_bytes()[:1024]) == "odt"
    fake = tmp_path / "page.docx"
    fake.write_text("<html>not found</html>")

    with pytest.raises(DocumentError) as caught:
        inspect_document(fake)
    assert caught.value.reason == "damaged" and "page.docx" in str(caught.value)
    owner = tmp_path / "~$report.docx"  # Word's lock file beside an open document
    owner.write_bytes(b"x" * 162)
    from indexer.pages import iter_input_files

    assert list(iter_input_files([tmp_path])) == [nameless.parent / "page.docx"]
    assert os.path.exists(owner)
