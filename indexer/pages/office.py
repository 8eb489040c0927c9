"""Office and OpenDocument files (docx, doc, pptx, ppt, xlsx, xls, odt, odp, ods, rtf): made
into a PDF by LibreOffice headless, then rendered by :mod:`indexer.pages.pdf` like any PDF.

The document stays the original file: its SHA-256, name and kind (``"docx"``...) are those of
the file the user gave; the PDF is a private intermediate, kept in a small per-process cache
(keyed by that SHA-256) so that inspecting and then rendering a file converts it once.

Each conversion runs LibreOffice in a folder of its own (a fresh profile, a copy of the input,
the output), so nothing is written beside the user's file and no two conversions share
state. The profile turns macros off and blocks linked content (images, templates, OLE links
pointing elsewhere); where the system allows it the process also runs in an empty network
namespace (``unshare --net``), so nothing can reach the network at all. A conversion has a
time limit and an address-space limit (its whole process group is killed past them), and at
most :attr:`ConversionLimits.parallel` run at once in a process.

Before LibreOffice ever sees a file, the checks that are cheap happen here: the format is
recognised by content, a password-protected OOXML file (an encrypted OLE container) and a zip
that does not open are refused by name, and a zip whose members would unpack past
:attr:`ConversionLimits.max_unpacked_bytes` (or at a ratio past ``max_ratio``) is refused as
a zip bomb. Imported by pages.files (which it imports back lazily); imports pages.pdf,
pages.mupdf, pages.types and indexer.errors.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import mmap
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from indexer.errors import DocumentError
from indexer.pages.mupdf import pymupdf, quiet_mupdf
from indexer.pages.pdf import open_pdf, pdf_info, pdf_page_text
from indexer.pages.types import RenderSettings

logger = logging.getLogger(__name__)

#: Formats converted by LibreOffice (also the ``kind`` a document of that format gets).
OFFICE_KINDS = frozenset({"docx", "doc", "pptx", "ppt", "xlsx", "xls", "odt", "odp", "ods", "rtf"})
OFFICE_SUFFIXES = frozenset(f".{kind}" for kind in OFFICE_KINDS)

#: What to install, said whenever an office file meets a machine without LibreOffice.
INSTALL_HINT = (
    "install LibreOffice to index it (Debian/Ubuntu: apt-get install "
    "libreoffice-writer-nogui libreoffice-calc-nogui libreoffice-impress-nogui; "
    "macOS: brew install --cask libreoffice; or run scripts/install.sh --dev)"
)


@dataclass(frozen=True)
class ConversionLimits:
    """What one LibreOffice conversion may take."""

    #: Wall-clock seconds before the conversion's process group is killed.
    seconds: float = 180.0
    #: Address space (RLIMIT_AS) of LibreOffice's processes; LibreOffice maps ~0.4 GiB idle.
    memory_bytes: int = 4 * 1024**3
    #: A zip (docx, pptx, xlsx, odt...) unpacking to more than this is refused before conversion.
    max_unpacked_bytes: int = 1024**3
    #: ...and so is one whose members unpack to more than this many times the file's size
    #: (once they unpack past ``ratio_floor_bytes``: small files may compress very well).
    max_ratio: float = 200.0
    ratio_floor_bytes: int = 64 * 1024**2
    #: Members of such a zip (a real document has dozens to a few thousand).
    max_members: int = 20_000
    #: Conversions at once in this process (LibreOffice is heavy: ~1 core, 0.3-1 GiB each).
    parallel: int = 2
    #: Converted PDFs kept for re-use in this process (inspect, then render).
    cached: int = 8


#: The limits in force; tests and programs may replace it (``office.LIMITS = ...``).
LIMITS = ConversionLimits()

_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ODF_TYPES = {
    "application/vnd.oasis.opendocument.text": "odt",
    "application/vnd.oasis.opendocument.text-template": "odt",
    "application/vnd.oasis.opendocument.presentation": "odp",
    "application/vnd.oasis.opendocument.presentation-template": "odp",
    "application/vnd.oasis.opendocument.spreadsheet": "ods",
    "application/vnd.oasis.opendocument.spreadsheet-template": "ods",
}
_OOXML_PARTS = {
    "word/document.xml": "docx",
    "ppt/presentation.xml": "pptx",
    "xl/workbook.xml": "xlsx",
}
_OLE_STREAMS = (("WordDocument", "doc"), ("PowerPoint Document", "ppt"), ("Workbook", "xls"))


# -- recognising ---------------------------------------------------------------------------


def sniff_office(path: Path, head: bytes) -> str | None:
    """The office format of a file from its content (``"docx"``...), or None if it is none.

    Raises :class:`DocumentError` for an office file that must not reach LibreOffice: a zip
    that does not open (``damaged``), a zip bomb (``too-large``), a password-protected
    OOXML file (``needs-password``).
    """
    suffix = path.suffix.lower()
    if head.startswith(b"{\\rtf"):
        return "rtf"
    if head.startswith(b"PK\x03\x04") or (head.startswith(b"PK") and suffix in OFFICE_SUFFIXES):
        return _zip_kind(path, suffix)
    if head.startswith(_OLE_MAGIC):
        return _ole_kind(path, suffix)
    return None


def _zip_kind(path: Path, suffix: str) -> str | None:
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            names = {m.filename for m in members}
            kind = None
            if "mimetype" in names:
                with archive.open("mimetype") as fh:
                    kind = _ODF_TYPES.get(fh.read(100).decode("ascii", "replace").strip())
            elif "[Content_Types].xml" in names:
                kind = next((k for part, k in _OOXML_PARTS.items() if part in names), None)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        if suffix not in OFFICE_SUFFIXES:
            return None  # some other zip (an EPUB?): not ours to judge
        raise DocumentError(
            path, "damaged", f"{path}: damaged {suffix[1:]} file, not a readable zip ({exc})"
        ) from None
    if kind is None:
        if suffix in OFFICE_SUFFIXES:
            raise DocumentError(
                path, "damaged", f"{path}: named {suffix} but its zip holds no such document"
            )
        return None
    _check_unpacked_size(path, members, kind)
    return kind


def _check_unpacked_size(path: Path, members: list[zipfile.ZipInfo], kind: str) -> None:
    """Refuse a zip bomb by what its members declare, before anything unpacks them."""
    limits = LIMITS
    unpacked = sum(max(0, m.file_size) for m in members)
    packed = max(1, path.stat().st_size)
    why = None
    if len(members) > limits.max_members:
        why = f"{len(members):,} members (the limit is {limits.max_members:,})"
    elif unpacked > limits.max_unpacked_bytes:
        why = f"unpacks to {unpacked:,} bytes (the limit is {limits.max_unpacked_bytes:,})"
    elif unpacked > limits.ratio_floor_bytes and unpacked / packed > limits.max_ratio:
        why = (
            f"unpacks to {unpacked:,} bytes, {unpacked / packed:,.0f} times its size "
            f"(the limit is {limits.max_ratio:,.0f} times)"
        )
    if why:
        raise DocumentError(path, "too-large", f"{path}: refused as a zip bomb: this {kind} {why}")


def _ole_kind(path: Path, suffix: str) -> str | None:
    """doc / ppt / xls by their main stream's name; an OOXML file encrypted with a password
    is an OLE container holding ``EncryptionInfo`` and ``EncryptedPackage``."""
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:

            def has(name: str) -> bool:
                return data.find(name.encode("utf-16-le") + b"\x00\x00") >= 0

            if has("EncryptedPackage") and has("EncryptionInfo"):
                raise DocumentError(
                    path,
                    "needs-password",
                    f"{path}: the {suffix[1:] or 'office'} file is protected by a password",
                )
            if suffix in {".doc", ".ppt", ".xls"}:
                return suffix[1:]
            return next((kind for stream, kind in _OLE_STREAMS if has(stream)), None)
    except (OSError, ValueError):
        return None


# -- LibreOffice ---------------------------------------------------------------------------


def find_soffice() -> str | None:
    """LibreOffice's ``soffice`` on PATH (or in its macOS application), or None."""
    found = shutil.which("soffice") or shutil.which("libreoffice")
    mac = Path("/Applications/LibreOffice.app/Contents/MacOS/soffice")
    if found is None and sys.platform == "darwin" and mac.is_file():
        found = str(mac)
    return found


@functools.cache
def _netless_prefix(unshare: str | None) -> tuple[str, ...]:
    """A command prefix that runs a program with no network at all, where one works here:
    ``unshare --net`` (root) or ``unshare --user --map-root-user --net`` (a user namespace)."""
    if unshare is None:
        return ()
    for prefix in ((unshare, "--net"), (unshare, "--user", "--map-root-user", "--net")):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=10)
            if probe.returncode == 0:
                return prefix
    logger.info("no network namespace here: LibreOffice runs with its links blocked only")
    return ()


def netless_prefix() -> tuple[str, ...]:
    return _netless_prefix(shutil.which("unshare")) if sys.platform.startswith("linux") else ()


# Macros off (and never asked about), linked content blocked, links never updated, no update
# check. Written as the profile's registrymodifications.xcu before LibreOffice first starts.
_SCRIPTING = "/org.openoffice.Office.Common/Security/Scripting"
_PROFILE_SETTINGS = (
    (_SCRIPTING, "MacroSecurityLevel", "int", "3"),
    (_SCRIPTING, "DisableMacrosExecution", "boolean", "true"),
    (_SCRIPTING, "BlockUntrustedRefererLinks", "boolean", "true"),
    ("/org.openoffice.Office.Common/Misc", "UseLocking", "boolean", "false"),
    ("/org.openoffice.Office.Writer/Content/Update", "Link", "int", "2"),
    ("/org.openoffice.Office.Calc/Content/Update", "Link", "int", "2"),
    ("/org.openoffice.Office.Common/Save/Document", "LoadPrinter", "boolean", "false"),
    (
        "/org.openoffice.Office.Jobs/Jobs/org.openoffice.Office.Jobs:Job['UpdateCheck']/Arguments",
        "AutoCheckEnabled",
        "boolean",
        "false",
    ),
)  # fmt: skip


def write_profile(folder: Path) -> Path:
    """A fresh LibreOffice profile in ``folder`` with :data:`_PROFILE_SETTINGS`."""
    user = folder / "user"
    user.mkdir(parents=True)
    items = "\n".join(
        f'<item oor:path="{where}"><prop oor:name="{name}" oor:op="fuse" oor:type="xs:{kind}">'
        f"<value>{value}</value></prop></item>"
        for where, name, kind, value in _PROFILE_SETTINGS
    )
    (user / "registrymodifications.xcu").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<oor:items xmlns:oor="http://openoffice.org/2001/registry" '
        'xmlns:xs="http://www.w3.org/2001/XMLSchema" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">\n'
        f"{items}\n</oor:items>\n",
        encoding="utf-8",
    )
    return folder


def _limit_memory(memory_bytes: int) -> Callable[[], None] | None:
    def apply() -> None:  # in the child, between fork and exec
        import resource

        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))

    return apply if os.name == "posix" else None


def _kill_group(proc: subprocess.Popen) -> None:
    if os.name == "posix":
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    else:
        proc.kill()


def conversion_command(soffice: str, profile: Path, source: Path, out: Path) -> list[str]:
    """The LibreOffice command line that turns ``source`` into ``out/<stem>.pdf``."""
    return [
        *netless_prefix(),
        soffice,
        f"-env:UserInstallation={profile.resolve().as_uri()}",
        "--headless",
        "--invisible",
        "--nologo",
        "--nodefault",
        "--norestore",
        "--nolockcheck",
        "--convert-to",
        "pdf",
        "--outdir",
        str(out),
        str(source),
    ]


_SLOTS_LOCK = threading.Lock()
_slots: tuple[int, threading.BoundedSemaphore] | None = None


def _conversion_slots() -> threading.BoundedSemaphore:
    global _slots
    with _SLOTS_LOCK:
        if _slots is None or _slots[0] != LIMITS.parallel:
            _slots = (LIMITS.parallel, threading.BoundedSemaphore(max(1, LIMITS.parallel)))
        return _slots[1]


def convert(path: Path, kind: str, target: Path) -> None:
    """Convert ``path`` (an office file of format ``kind``) to the PDF ``target``.

    Raises :class:`DocumentError`: ``needs-libreoffice`` where LibreOffice is missing,
    ``conversion-failed`` past the time or memory limit, ``damaged`` when LibreOffice cannot
    open the file (damaged, or protected by a password it was not given).
    """
    soffice = find_soffice()
    if soffice is None:
        raise DocumentError(
            path, "needs-libreoffice", f"{path}: {kind} files need LibreOffice: {INSTALL_HINT}"
        )
    limits = LIMITS
    with _conversion_slots(), tempfile.TemporaryDirectory(prefix="pagelens-convert-") as tmp:
        work = Path(tmp)
        source = work / "in" / f"document.{kind}"
        source.parent.mkdir()
        shutil.copyfile(path, source)  # LibreOffice writes beside its input: not in the user's
        out = work / "out"
        command = conversion_command(soffice, write_profile(work / "profile"), source, out)
        log = _run(path, command, work, limits)
        produced = out / "document.pdf"
        if not produced.is_file() or produced.stat().st_size == 0:
            said = " ".join(line for line in log.splitlines() if "javaldx" not in line).strip()
            raise DocumentError(
                path,
                "damaged",
                f"{path}: LibreOffice could not open this {kind} file (damaged, or protected "
                f"by a password){': ' + said[-200:] if said else ''}",
            )
        shutil.move(produced, target)


def _run(path: Path, command: list[str], work: Path, limits: ConversionLimits) -> str:
    """Run one conversion within the limits; LibreOffice's output, or a refusal."""
    env = {**os.environ, "SAL_USE_VCLPLUGIN": "svp", "TMPDIR": str(work)}
    for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy"):
        env.pop(proxy, None)
    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=work,
        env=env,
        start_new_session=True,
        preexec_fn=_limit_memory(limits.memory_bytes),  # noqa: PLW1509 - only setrlimit
    )
    try:
        output, _ = proc.communicate(timeout=limits.seconds)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.communicate()
        raise DocumentError(
            path,
            "conversion-failed",
            f"{path}: LibreOffice took longer than {limits.seconds:g} s to convert it",
        ) from None
    finally:
        _kill_group(proc)  # whatever it left behind in its group
    text = output.decode("utf-8", "replace")
    if proc.returncode and proc.returncode < 0:
        raise DocumentError(
            path,
            "conversion-failed",
            f"{path}: LibreOffice stopped (signal {-proc.returncode}) converting it; the memory "
            f"limit is {limits.memory_bytes / 1024**3:g} GiB",
        )
    return text


# -- the converted PDF -----------------------------------------------------------------------


class _PdfCache:
    """Converted PDFs by the original file's SHA-256, in a private folder of this process
    (removed at exit), the oldest dropped past :attr:`ConversionLimits.cached`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, Path] = OrderedDict()
        self._folder: Path | None = None

    def folder(self) -> Path:
        with self._lock:
            if self._folder is None or not self._folder.is_dir():
                self._folder = Path(tempfile.mkdtemp(prefix="pagelens-office-"))
                atexit.register(shutil.rmtree, self._folder, ignore_errors=True)
            return self._folder

    def get(self, sha256: str) -> Path | None:
        with self._lock:
            found = self._entries.get(sha256)
            if found is not None and found.is_file():
                self._entries.move_to_end(sha256)
                return found
            self._entries.pop(sha256, None)
            return None

    def put(self, sha256: str, pdf: Path) -> None:
        with self._lock:
            self._entries[sha256] = pdf
            self._entries.move_to_end(sha256)
            while len(self._entries) > max(1, LIMITS.cached):
                _, old = self._entries.popitem(last=False)
                old.unlink(missing_ok=True)  # a reader holding it open keeps reading (POSIX)


_CACHE = _PdfCache()


def office_pdf(path: Path, kind: str) -> Path:
    """The PDF LibreOffice makes of ``path``: converted once, then taken from the cache."""
    from indexer.pages.files import file_sha256  # files imports this module

    sha256 = file_sha256(path)
    cached = _CACHE.get(sha256)
    if cached is not None:
        return cached
    target = _CACHE.folder() / f"{sha256}.pdf"
    partial = target.with_suffix(f".{threading.get_ident()}.part")
    try:
        convert(path, kind, partial)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    _CACHE.put(sha256, target)
    return target


def _as_original(path: Path, pdf: Path, exc: DocumentError) -> DocumentError:
    """A refusal about the converted PDF, told about the file the user gave."""
    return DocumentError(path, exc.reason, str(exc).replace(str(pdf), str(path)))


def office_info(path: Path, kind: str) -> tuple[int, str | None, bool]:
    """Page count, title and encryption (always False: a protected file is refused) of an
    office file, as LibreOffice lays it out."""
    pdf = office_pdf(path, kind)
    try:
        with quiet_mupdf():
            count, title, _ = pdf_info(pdf, None)
    except DocumentError as exc:
        raise _as_original(path, pdf, exc) from None
    return count, title, False


def open_office(path: Path, kind: str) -> pymupdf.Document:
    """The converted PDF of an office file, opened (a ``pymupdf.Document``)."""
    pdf = office_pdf(path, kind)
    try:
        return open_pdf(pdf, None)
    except DocumentError as exc:
        raise _as_original(path, pdf, exc) from None


def office_page_text(path: Path, kind: str, number: int, settings: RenderSettings) -> str:
    pdf = office_pdf(path, kind)
    try:
        with quiet_mupdf():
            return pdf_page_text(pdf, number, None, settings)
    except DocumentError as exc:
        raise _as_original(path, pdf, exc) from None
