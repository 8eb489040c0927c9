"""The boxes of a query's words (or of a quoted passage) on one page.

A page's words (:class:`indexer.pages.words.Word`: text, box in 0..1 of the stored page
image, line, source ``text`` or ``ocr``) are stemmed with text search's own tokenizer
(:func:`indexer.stores.text_terms.word_terms`), so a word is boxed exactly when text search
would match it: ``churned`` on the page for the query ``churn``, never ``form`` inside
``information``. A word broken by a hyphen at the end of a line is read as one word, boxed
on both lines.

Scores (documented in ``docs/API.md``): a query highlight's score is the share of the
query's distinct terms its words cover (``1.0``: the whole query on one line, in one box);
a quote's boxes score ``1.0``.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from indexer.stores.text_terms import word_terms

#: What ``evidence=`` accepts: ``text`` (the default: the query's words on each page),
#: ``none`` (skip, no highlights), ``visual`` (adds heat-map regions; needs the visual helper).
EVIDENCE = ("text", "none", "visual")
#: The ``source`` of a highlight: a word of the text layer, of OCR, or a visual region.
SOURCES = ("text", "ocr", "visual")
_HYPHENS = ("-", "\u00ad", "\u2010")


class PageWord(Protocol):
    """What a page word offers (:class:`indexer.pages.words.Word` has it)."""

    @property
    def text(self) -> str: ...
    @property
    def box(self) -> tuple[float, float, float, float]: ...
    @property
    def line(self) -> int: ...
    @property
    def source(self) -> str: ...


@dataclass(frozen=True)
class Highlight:
    """One box on a page image: ``box`` is ``(x0, y0, x1, y1)`` in 0..1 of the stored image
    (so it fits any scaled copy), ``text`` the page's words inside it, ``source`` where the
    box comes from (``text``, ``ocr`` or ``visual``), ``score`` how much of the query it holds."""

    box: tuple[float, float, float, float]
    text: str
    source: str
    score: float

    def as_dict(self) -> dict:
        """``{"box": [x0, y0, x1, y1], "text", "source", "score"}`` (4 decimals)."""
        return {
            "box": [round(float(v), 4) for v in self.box],
            "text": self.text,
            "source": self.source,
            "score": round(float(self.score), 4),
        }


@dataclass(frozen=True)
class _Token:
    """A word as text search reads it: one page word, or the two halves of a word
    hyphenated across a line break (``indices`` of both)."""

    text: str
    indices: tuple[int, ...]


def _tokens(words: Sequence[PageWord]) -> list[_Token]:
    """The page's words as text search reads them: a word ending in a hyphen at the end of
    a line, followed by one starting in lower case on the next, is one word (``reten-`` +
    ``tion``), as in the indexed text layer (MuPDF dehyphenates it: ``TEXT_DEHYPHENATE``)."""
    out: list[_Token] = []
    i = 0
    while i < len(words):
        word = words[i]
        nxt = words[i + 1] if i + 1 < len(words) else None
        stem = word.text.rstrip("".join(_HYPHENS))
        if (
            nxt is not None
            and stem
            and stem != word.text
            and nxt.line != word.line
            and stem[-1].isalpha()
            and nxt.text[:1].islower()
        ):
            out.append(_Token(stem + nxt.text, (i, i + 1)))
            i += 2
            continue
        out.append(_Token(word.text, (i,)))
        i += 1
    return out


class Stemmer:
    """Text search's terms of word strings, each distinct string stemmed once and kept: the
    words of 50 hits' pages (or one page read for several quotes) cost one FTS5 round trip
    (:meth:`prime`), not one per page. NFKC first, as the indexed text layer is
    (:func:`indexer.pages.normalize_text`): a page's ``ﬁ`` ligature is the ``fi`` people type.
    """

    def __init__(self) -> None:
        self._terms: dict[str, list[str]] = {}

    def prime(self, texts: Iterable[str]) -> None:
        """Stem every string of ``texts`` not seen yet, in one call."""
        new = [t for t in dict.fromkeys(texts) if t not in self._terms]
        if new:
            folded = [unicodedata.normalize("NFKC", text) for text in new]
            self._terms.update(zip(new, word_terms(folded), strict=True))

    def terms(self, text: str) -> list[str]:
        if text not in self._terms:
            self.prime([text])
        return self._terms[text]


def _terms_by_token(tokens: Sequence[_Token], stemmer: Stemmer | None) -> list[list[str]]:
    """Each token's terms (through ``stemmer``'s cache when given)."""
    stemmer = stemmer or Stemmer()
    stemmer.prime(t.text for t in tokens)
    return [stemmer.terms(t.text) for t in tokens]


def _boxes_by_line(
    words: Sequence[PageWord], indices: Sequence[int], score: float
) -> list[Highlight]:
    """One highlight per line for a run of words: the union of their boxes, their text."""
    out: list[Highlight] = []
    run: list[PageWord] = []
    for i in [*indices, -1]:
        word = words[i] if i >= 0 else None
        if run and (word is None or word.line != run[-1].line):
            box = (
                min(w.box[0] for w in run),
                min(w.box[1] for w in run),
                max(w.box[2] for w in run),
                max(w.box[3] for w in run),
            )
            source = "ocr" if any(w.source == "ocr" for w in run) else run[0].source
            text = " ".join(w.text for w in run)
            out.append(Highlight(box, text, source, score))
            run = []
        if word is not None:
            run.append(word)
    return out


def text_highlights(
    words: Sequence[PageWord] | None, query: str, *, stemmer: Stemmer | None = None
) -> list[Highlight]:
    """The boxes of ``query``'s words on a page whose words are ``words``, in page order.

    Every occurrence is boxed; consecutive words matching different query terms are one run
    (a phrase), boxed once per line it spans (a word repeated, ``SHALL, SHALL``, is boxed
    once per occurrence), each box scored by the share of the query's terms the whole run
    covers; words of the query absent from the page give nothing, and so does a page with
    no words (``None``: not known, e.g. a page stored before words were kept).
    ``stemmer``: a :class:`Stemmer` shared by the pages of one search.
    """
    wanted = set(word_terms([unicodedata.normalize("NFKC", query or "")])[0])
    if not words or not wanted:
        return []
    tokens = _tokens(words)
    out: list[Highlight] = []
    run: list[int] = []
    covered: set[str] = set()
    for token, terms in [*zip(tokens, _terms_by_token(tokens, stemmer), strict=True), (None, [])]:
        hit = wanted.intersection(terms)
        if run and (not hit or hit <= covered):  # a repeated word starts its own box
            out += _boxes_by_line(words, run, len(covered) / len(wanted))
            run, covered = [], set()
        if token is not None and hit:
            run.extend(token.indices)
            covered |= hit
    return out


def quote_highlights(
    words: Sequence[PageWord] | None, quote: str, *, stemmer: Stemmer | None = None
) -> list[Highlight]:
    """The boxes of a quoted passage on a page: every place where the quote's terms appear
    on the page in the same order, nothing between them (line breaks and words hyphenated
    across lines are read through); one box per line of each place, score ``1.0``."""
    wanted = word_terms([unicodedata.normalize("NFKC", quote or "")])[0]
    if not words or not wanted:
        return []
    tokens = _tokens(words)
    seq: list[tuple[str, int]] = []  # the page's terms in order, each with its token
    for n, terms in enumerate(_terms_by_token(tokens, stemmer)):
        seq.extend((term, n) for term in terms)
    out: list[Highlight] = []
    size, start = len(wanted), 0
    while start + size <= len(seq):
        if [term for term, _ in seq[start : start + size]] != wanted:
            start += 1
            continue
        first, last = seq[start][1], seq[start + size - 1][1]
        indices = [i for token in tokens[first : last + 1] for i in token.indices]
        out += _boxes_by_line(words, indices, 1.0)
        start += size
    return out
