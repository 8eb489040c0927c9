"""The evidence a result shows: the query's words outlined on the thumbnails and in the page
dialog (with a "Show matches" toggle to hide them), the quoted passages outlined when a
citation is opened, and "Where on this page?": the heat map of the visual evidence.

The boxes come with each hit (:attr:`retriever.search.Hit.highlights`, a citation's
``highlights``) and are drawn by :func:`retriever.evidence.draw.draw_highlights`; the heat
map is :meth:`retriever.search.Retriever.where_on_page`'s, drawn by
:func:`retriever.evidence.visual.heatmap_image`. Nothing is decided here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import streamlit as st
from PIL import Image

from app.web import widgets as ui
from app.web.session import current_workspace, get_model, model_key, thumb
from indexer.errors import PageLensError
from retriever.evidence.cache import EvidenceCache
from retriever.evidence.draw import Boxed, draw_highlights
from retriever.evidence.highlights import Highlight
from retriever.evidence.visual import DEFAULT_GRIDS, DEFAULT_TOKENS, heatmap_image
from retriever.search import Hit, Retriever

#: session_state keys: the grid's toggle, the dialog's, and the heat maps computed so far.
SHOW_KEY = "show_matches"
PAGE_SHOW_KEY = "show_matches_page"
HEATMAPS_KEY = "where_on_page"
#: Quoted passages are outlined in blue, apart from the query's words (orange).
QUOTE_COLOR = (0, 110, 255)
DIALOG_SIDE = 1600
KEEP_HEATMAPS = 6


@st.cache_resource(show_spinner=False)
def evidence_cache() -> EvidenceCache:
    """One cache of region scores per process: asking again for a page is free."""
    return EvidenceCache()


@st.cache_data(show_spinner=False, max_entries=2000)
def _drawn(
    path: str,
    mtime: float,
    max_side: int,
    boxes: tuple[tuple[tuple[float, float, float, float], str, float], ...],
    color: tuple[int, int, int] | None,
) -> bytes:
    marks = [Highlight(box, "", source, score) for box, source, score in boxes]
    return ui.drawn_bytes(path, max_side, marks, color=color)


def drawn(
    path: str | Path,
    max_side: int,
    highlights: Sequence[Boxed],
    *,
    color: tuple[int, int, int] | None = None,
) -> bytes | None:
    """The page with its boxes drawn, cached per page and boxes (None: the image is gone)."""
    p = Path(path)
    boxes = tuple((tuple(h.box), h.source, float(h.score)) for h in highlights)
    try:
        return _drawn(str(p), p.stat().st_mtime, max_side, boxes, color)  # type: ignore[arg-type]
    except OSError:
        return None


def show_matches() -> bool:
    """The results' "Show matches" toggle (on by default)."""
    return st.toggle(
        "Show matches",
        value=True,
        key=SHOW_KEY,
        help="Outline the question's words on the page images.",
    )


def thumbnail(hit: Hit, max_side: int) -> bytes | None:
    """A result's thumbnail, with the query's words outlined unless the toggle is off."""
    if st.session_state.get(SHOW_KEY, True) and hit.highlights:
        return drawn(hit.image, max_side, hit.highlights)
    return thumb(hit.image, max_side)


def dialog_page(hit: Hit, quotes: Sequence[Highlight] = ()) -> None:
    """The page image in the dialog: the query's words (orange) and the quoted passages of
    an opened citation (blue) outlined, with its own toggle and a line counting them."""
    show = st.toggle("Show matches", value=st.session_state.get(SHOW_KEY, True), key=PAGE_SHOW_KEY)
    image = None
    if show and quotes:
        image = _two_colours(hit, quotes)
    elif show and hit.highlights:
        image = drawn(hit.image, DIALOG_SIDE, hit.highlights)
    image = image or thumb(hit.image, DIALOG_SIDE)
    if image:
        st.image(image, width="stretch")
    words = len([h for h in hit.highlights if h.source != "visual"])
    if not show:
        st.caption("Matches hidden.", help="Turn on “Show matches” to outline them.")
        return
    parts = [f"{words} match(es) of the question outlined"]
    if quotes:
        parts.append(f"{len(quotes)} quoted passage(s) outlined in blue")
    st.caption(" · ".join(parts))


def _two_colours(hit: Hit, quotes: Sequence[Boxed]) -> bytes | None:
    """The query's words in orange, then the quoted passages in blue on top (drawn when a
    citation opens, so not cached)."""
    try:
        with Image.open(hit.image) as im:
            page = im.convert("RGB")
    except OSError:
        return None
    page.thumbnail((DIALOG_SIDE, DIALOG_SIDE), Image.Resampling.LANCZOS)
    page = draw_highlights(draw_highlights(page, hit.highlights), quotes, color=QUOTE_COLOR)
    return ui.image_bytes(page)


def where_on_page(hit: Hit, query: str) -> None:
    """The "Where on this page?" button and, once computed, the heat map with the best
    region outlined and the note that it is an approximation."""
    maps: dict = st.session_state.setdefault(HEATMAPS_KEY, {})
    key = (hit.page_id, query)
    model = get_model(model_key())
    if not query:
        st.caption("“Where on this page?” needs a question (this search was by image only).")
    elif model.state == "failed":
        st.caption("“Where on this page?” needs the model, which did not load.")
    elif key not in maps and (slot := st.empty()).button(
        "Where on this page?",
        key=f"where-{hit.page_id}",
        icon=":material/travel_explore:",
        help="Score overlapping regions of the page against the question with the model and "
        "show where it matches (an approximation).",
    ):
        slot.empty()  # the heat map takes the button's place
        found = _locate(hit, query, model)
        if found is not None:
            while len(maps) >= KEEP_HEATMAPS:
                maps.pop(next(iter(maps)))
            maps[key] = found
    shown = maps.get(key)
    if shown:
        st.image(shown["image"], width="stretch", caption=shown["caption"])
        note = shown["note"]
        st.caption(f"{note[:1].upper()}{note[1:]}.")


def _locate(hit: Hit, query: str, model) -> dict | None:
    regions = sum(c * r for c, r in DEFAULT_GRIDS)
    grids = " + ".join(f"{c}x{r}" for c, r in DEFAULT_GRIDS)
    started = time.perf_counter()
    with st.status("Where on this page?", expanded=True) as status:
        try:
            if model.state != "ready":
                st.write("Loading the model (first use only)…")
            embedder = model.wait(timeout=1800)
            st.write(
                f"Embedding the question and {regions} overlapping regions of the page "
                f"({grids} grids, {DEFAULT_TOKENS} visual tokens each)…"
            )
            store = current_workspace().store
            retriever = Retriever(embedder, store, evidence_cache=evidence_cache())
            evidence = retriever.where_on_page(hit, query)
            st.write("Drawing the heat map…")
            with Image.open(hit.image) as im:
                picture = heatmap_image(im, evidence)
        except (PageLensError, OSError, ValueError) as exc:
            status.update(label=f"Where on this page? failed: {exc}", state="error")
            return None
        seconds = time.perf_counter() - started
        status.update(
            label=f"Located in {seconds:.1f} s" + (" (from the cache)" if evidence.cached else ""),
            state="complete",
            expanded=False,
        )
    best = evidence.best
    return {
        "image": ui.image_bytes(picture),
        "caption": f"Heat map: red = strong match; best region outlined in yellow "
        f"({best.text}, score {best.score:.3f})",
        "note": evidence.note,
    }
