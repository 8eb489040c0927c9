"""The sidebar's "Watched folders" panel: add a folder (a typed path), remove one, and per
folder its last sync, counts, the files still settling and any error. The watching itself
is :class:`app.web.watching.WatchedFolders`; this module only draws it."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import streamlit as st

from app.web.session import flash
from app.web.watching import WatchedFolders
from indexer.errors import PageLensError
from indexer.sync.watch import describe_counts
from retriever.escaping import for_markdown


def _folder_row(watched: WatchedFolders, n: int, row: dict) -> None:
    with st.container(border=True):
        st.markdown(f"**{for_markdown(Path(row['folder']).name)}**")
        st.caption(for_markdown(row["folder"]))
        if row["last_sync_at"]:
            at = datetime.fromtimestamp(row["last_sync_at"]).strftime("%Y-%m-%d %H:%M:%S")
            st.caption(f"last sync {at} · {describe_counts(row['counts'] or {})}")
        else:
            st.caption("syncing…" if row["syncing"] else "not synced yet")
        if row["settling"]:
            names = ", ".join(Path(p).name for p in row["settling"][:5])
            more = f" and {len(row['settling']) - 5} more" if len(row["settling"]) > 5 else ""
            st.caption(f"pending (settling): {for_markdown(names)}{more}")
        if row["error"]:
            st.error(row["error"])
        if st.button("Stop watching", key=f"unwatch-{n}", icon=":material/visibility_off:"):
            try:
                watched.remove(row["folder"])
                flash("success", f"Stopped watching {for_markdown(row['folder'])}.")
            except PageLensError as exc:
                flash("error", str(exc))
            st.rerun()


def watched_folders_panel(watched: WatchedFolders, seen: int) -> None:
    """Draw the panel (a fragment its caller refreshes every few seconds); once a sync
    has been applied since ``seen``, the whole page reruns (documents, counts)."""
    st.subheader("Watched folders")
    rows = watched.status()
    if not rows:
        st.caption("No folder is watched: add one to keep this collection in step with it.")
    for n, row in enumerate(rows):
        _folder_row(watched, n, row)
    with st.form("watch-folder", clear_on_submit=True, border=False):
        path = st.text_input("Folder to watch", placeholder="/path/to/documents")
        if st.form_submit_button("Watch"):
            try:
                added = watched.add(path)
                flash("success", f"Watching {for_markdown(added)}.")
                st.rerun()
            except PageLensError as exc:
                st.error(str(exc))
    prune = st.checkbox(
        "Prune: drop documents whose file is gone",
        value=watched.prune,
        key="watch-prune",
        help="Off: a deleted file's document stays searchable (listed as missing).",
    )
    if prune != watched.prune:
        watched.set_prune(prune)
    if watched.syncs != seen:
        st.rerun()
