"""Adding documents: the upload area, indexing the uploaded files with a live log, and
the per-file results (with a password form for locked PDFs)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app.web import widgets as ui
from app.web.services import Workspace
from app.web.session import current_workspace
from app.web.uploads import discard_upload, max_upload_mb, save_upload
from indexer.errors import PageLensError
from indexer.pages import SUPPORTED_SUFFIXES
from retriever.escaping import for_markdown

MB = 1024 * 1024


def _raise_server_upload_cap(limit_mb: int) -> None:
    """Let Streamlit's server accept files up to PageLens's limit (it reads the option per
    request); ``pagelens app`` also sets it at start-up."""
    try:
        from streamlit import config as st_config

        if int(st_config.get_option("server.maxUploadSize")) < limit_mb:
            st_config.set_option("server.maxUploadSize", limit_mb)
    except Exception:  # an internal API: without it the configured cap simply stays
        pass


def upload_section(ws: Workspace) -> None:
    limit = max_upload_mb()
    _raise_server_upload_cap(limit)
    types = sorted(s.lstrip(".") for s in SUPPORTED_SUFFIXES)
    files = st.file_uploader(
        "Add documents: drop PDFs or images here",
        type=types,
        accept_multiple_files=True,
        max_upload_size=limit,
        key=f"uploader-{st.session_state.uploader_n}",
        help=f"Up to {limit} MB per file (PAGELENS_MAX_UPLOAD_MB). Files are stored in the "
        "collection folder.",
    )
    if files:
        index_uploads(ws, files, limit)
        st.session_state.uploader_n += 1  # a fresh, empty uploader
        st.rerun()
    upload_log(ws)


def index_uploads(ws: Workspace, files: list, limit_mb: int) -> None:
    log: list[dict] = []
    saved: list[Path] = []
    names: dict[str, str] = {}
    for f in files:
        try:
            path = save_upload(ws.path, f.name, f, max_bytes=limit_mb * MB)
        except PageLensError as exc:
            log.append(
                {
                    "name": f.name,
                    "path": None,
                    "status": "refused",
                    "reason": getattr(exc, "reason", None),
                    "message": str(exc),
                }
            )
            continue
        if str(path) in names:
            log.append(
                {
                    "name": f.name,
                    "path": str(path),
                    "status": "skipped",
                    "message": "",
                    "existing": names[str(path)],
                }
            )
            continue
        saved.append(path)
        names[str(path)] = f.name
    if saved:
        st.session_state.upload_log = log
        _run_indexing(ws, saved, names, {}, log)
    st.session_state.upload_log = log


def _run_indexing(
    ws: Workspace,
    paths: list[Path],
    names: dict[str, str],
    passwords: dict[str, str],
    log: list[dict],
) -> None:
    with st.status(f"Adding {len(paths)} file(s)…", expanded=True) as status:
        bar = st.progress(0.0, text="Reading files…")
        lines = st.container()

        def on_progress(p) -> None:
            bar.progress(ui.progress_value(p), text=ui.progress_text(p, "Storing pages"))

        def on_file(result) -> None:
            entry = ui.file_entry(result, names)
            log.append(entry)
            with lines:
                show_entry(entry, interactive=False)

        try:
            report = ws.add_files(
                paths,
                names=names,
                passwords=passwords,
                progress=on_progress,
                on_file=on_file,
                on_wait=lambda m: _say(lines, m),
            )
        except PageLensError as exc:
            status.update(label=str(exc), state="error")
            log.append({"name": "", "status": "refused", "message": str(exc)})
            return
        n_ok = sum(1 for r in report.files if r.status in ("added", "resumed"))
        status.update(
            label=f"{n_ok} file(s) added, {report.pages_stored} pages stored in "
            f"{report.seconds:.1f}s; embedding continues in the background.",
            state="error" if report.refused and not n_ok else "complete",
        )


def show_entry(entry: dict, *, interactive: bool = True, index: int = 0) -> None:
    name, status = for_markdown(entry.get("name") or "file"), entry["status"]
    message = for_markdown(entry.get("message") or "")
    if status in ("added", "resumed"):
        verb = "added" if status == "added" else "completed"
        st.success(
            f"**{name}**: {entry.get('pages', 0)} pages {verb}. Text search works now; "
            "visual search as pages get embedded.",
            icon=":material/check_circle:",
        )
    elif status == "partial":
        st.warning(f"**{name}**: {message}", icon=":material/warning:")
    elif status == "skipped":
        same = entry.get("existing")
        st.info(
            f"**{name}** is already in the collection"
            + (f" (same content as '{for_markdown(same)}')." if same else "."),
            icon=":material/info:",
        )
    elif entry.get("reason") in ("needs-password", "wrong-password"):
        st.warning(f"**{name}**: {message}", icon=":material/lock:")
        if interactive and entry.get("path"):
            password_retry(entry, index)
    else:
        st.error(f"**{name}**: {message}", icon=":material/error:")


def password_retry(entry: dict, index: int) -> None:
    ws = current_workspace()
    with st.form(f"unlock-{index}", border=False):
        col_pw, col_go, col_drop = st.columns([3, 1, 1], vertical_alignment="bottom")
        password = col_pw.text_input("Password", type="password", key=f"pw-{index}")
        unlock = col_go.form_submit_button("Unlock and add", type="primary")
        drop = col_drop.form_submit_button("Forget file")
    if unlock:
        log = [e for e in st.session_state.upload_log if e is not entry]
        path = Path(entry["path"])
        _run_indexing(ws, [path], {str(path): entry["name"]}, {str(path): password}, log)
        st.session_state.upload_log = log
        st.rerun()
    if drop:
        discard_upload(ws.path, entry["path"])
        st.session_state.upload_log = [e for e in st.session_state.upload_log if e is not entry]
        st.rerun()


def upload_log(ws: Workspace) -> None:
    log = st.session_state.upload_log
    if not log:
        return
    for i, entry in enumerate(log):
        show_entry(entry, index=i)
    if st.button("Clear messages", key="clear-log"):
        st.session_state.upload_log = []
        st.rerun()


def _say(where, message: str) -> None:
    """Show a note (e.g. "waiting for another process") in a Streamlit container."""
    where.info(message)
