"""Hits -> an answer: the export's ``messages`` sent to any OpenAI-compatible vision LLM.

The question and the retrieved pages go to a Chat Completions endpoint exactly as
:func:`retriever.export.to_openai_messages` builds them (pages as ``image_url`` parts, each
introduced by a numbered citation line ``[i] document, p. N``); the answer comes back
streamed or whole (the wire, settings and retries are in :mod:`retriever.llm`). Works with a
local Ollama or vLLM serving a vision model, or any hosted provider that speaks the same API.

Privacy: nothing is sent anywhere until a URL is configured (``PAGELENS_LLM_URL``); without
one every entry point stops with :class:`LLMNotConfiguredError` before it connects.

Citations: the model is asked to cite ``[document, p. N]`` (or the source number ``[i]``);
:func:`parse_citations` finds them and checks each against the pages that were sent. A page
that was not sent is kept but flagged (``sent=False``, no image), never trusted.

Limits: providers cap the images per request, the bytes per image and the request size. They
are settings (:class:`LLMSettings`) with safe defaults, checked before sending, so going over
is a clear :class:`AskLimitError` instead of a provider's 400.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from indexer.errors import QueryError
from retriever.evidence.highlights import Highlight, Stemmer, quote_highlights
from retriever.export import to_openai_messages
from retriever.llm import (
    DEFAULT_MODEL,
    MB,
    AskLimitError,
    ChatClient,
    LLMError,
    LLMNotConfiguredError,
    LLMSettings,
    request_body,
)
from retriever.search import Hit

__all__ = [
    "DEFAULT_MODEL",
    "Answer",
    "AnswerStream",
    "AskLimitError",
    "ChatClient",
    "Citation",
    "LLMError",
    "LLMNotConfiguredError",
    "LLMSettings",
    "ask",
    "ask_stream",
    "build_messages",
    "check_page_count",
    "parse_citations",
]


# --------------------------------------------------------------------------- messages


def build_messages(question: str, hits: Sequence[Hit], settings: LLMSettings) -> list[dict]:
    """The export's messages for these pages, after checking every limit (nothing is sent).

    Raises :class:`LLMNotConfiguredError` without a URL and :class:`AskLimitError` when the
    pages would exceed the provider's limits, before any network use.
    """
    if not settings.configured:
        raise LLMNotConfiguredError()
    question = (question or "").strip()
    if not question:
        raise QueryError("Ask a question to send with the pages.")
    if not hits:
        raise QueryError("No pages were found to ask about; search for something else.")
    check_page_count(len(hits), settings)
    messages = to_openai_messages(question, hits, settings=settings.image)
    for part in messages[-1]["content"]:
        if part.get("type") != "image_url":
            continue
        url = part["image_url"]["url"]
        size = len(url.partition(",")[2]) * 3 // 4
        if size > settings.max_image_bytes:
            index = messages[-1]["content"].index(part) // 2
            hit = hits[index - 1] if 0 < index <= len(hits) else hits[0]
            raise AskLimitError(
                f"The image of {hit.document}, p. {hit.page} is {size / MB:.1f} MB, more than "
                f"the {settings.max_image_bytes / MB:.1f} MB the LLM accepts per image "
                "(PAGELENS_LLM_MAX_IMAGE_MB); lower PAGELENS_LLM_MAX_SIDE or raise the limit.",
                code="image_too_large",
            )
    total = len(json.dumps(request_body(messages, settings, stream=True)).encode())
    if total > settings.max_request_bytes:
        raise AskLimitError(
            f"The request would be {total / MB:.1f} MB, more than the "
            f"{settings.max_request_bytes / MB:.1f} MB the LLM accepts "
            "(PAGELENS_LLM_MAX_REQUEST_MB); send fewer pages (-k) or smaller images "
            "(PAGELENS_LLM_MAX_SIDE).",
            code="request_too_large",
        )
    return messages


def check_page_count(n: int, settings: LLMSettings) -> None:
    """Raises :class:`AskLimitError` when ``n`` pages are more images than the LLM takes."""
    if n > settings.max_images:
        raise AskLimitError(
            f"{n} pages would be sent, but the LLM takes at most {settings.max_images} "
            f"images per request (PAGELENS_LLM_MAX_IMAGES); ask with -k {settings.max_images} "
            "or fewer, or raise the limit if your provider allows more.",
            code="too_many_images",
        )


# --------------------------------------------------------------------------- citations


@dataclass(frozen=True)
class Citation:
    """A page the answer cites. ``sent`` is False when that page was not among those sent:
    such a citation is reported, but it has no image and must not be trusted.

    ``highlights``: where the answer quotes that page, the boxes of the quoted words on its
    image (see :func:`quote_boxes`); empty when it quotes nothing of it."""

    document: str | None
    page: int | None
    image: str | None
    sent: bool
    text: str = ""
    highlights: tuple[Highlight, ...] = ()

    def as_dict(self) -> dict:
        return {
            "document": self.document,
            "page": self.page,
            "image": self.image,
            "sent": self.sent,
            "highlights": [h.as_dict() for h in self.highlights],
        }


_BRACKETS = re.compile(r"\[([^\[\]\n]{1,400})\]")
_DOC_PAGE = re.compile(r"^\s*(?P<doc>.+?)\s*,\s*(?:p\.|pp\.|page|pg\.)\s*(?P<page>\d+)\s*$", re.I)
_NUMBER = re.compile(r"^\s*(\d{1,4})\s*$")


def parse_citations(text: str, hits: Sequence[Hit]) -> list[Citation]:
    """Citations in ``text``, in order of first appearance, each checked against ``hits``.

    Recognised forms: ``[document, p. N]`` (the form the prompt asks for; several may share
    brackets, separated by ``;``) and ``[i]``, the number of a citation line that was sent.
    A citation of a page that was sent carries the boxes of what the answer quotes from it.
    """
    by_page = {(h.document, h.page): h for h in hits}
    by_lower = {(h.document.lower(), h.page): h for h in hits}
    out: list[Citation] = []
    seen: set[tuple[Any, Any]] = set()
    for match in _BRACKETS.finditer(text):
        for part in match.group(1).split(";"):
            cite = _one_citation(part, hits, by_page, by_lower)
            if cite is None:
                continue
            key = (cite.document, cite.page)
            if key in seen:
                continue
            seen.add(key)
            out.append(cite)
    by_key = {(h.document, h.page): h for h in hits}
    quotes = answer_quotes(text)
    for i, cite in enumerate(out):
        hit = by_key.get((cite.document or "", cite.page or 0)) if cite.sent else None
        if hit is not None and hit.words and quotes:
            out[i] = replace(cite, highlights=quote_boxes(hit, quotes))
    return out


_QUOTED = re.compile(r'"([^"\n]{3,600})"|“([^”\n]{3,600})”')
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
#: A sentence counts as copied from a page only with at least this many words (shorter
#: ones, "It grew.", match too much by chance); a quoted passage needs two.
MIN_SENTENCE_WORDS = 5
MIN_QUOTE_WORDS = 2


def answer_quotes(text: str) -> list[str]:
    """What an answer may have copied from a page: its quoted passages (``"..."`` or
    ``“...”``) and its sentences (citations removed), longest first."""
    quoted = [a or b for a, b in _QUOTED.findall(text)]
    plain = _BRACKETS.sub(" ", text)
    sentences = [s.strip() for s in _SENTENCE_END.split(plain) if s.strip()]
    found = [q for q in quoted if len(q.split()) >= MIN_QUOTE_WORDS]
    found += [s for s in sentences if len(s.split()) >= MIN_SENTENCE_WORDS]
    return sorted(dict.fromkeys(found), key=len, reverse=True)


def quote_boxes(hit: Hit, quotes: Sequence[str]) -> tuple[Highlight, ...]:
    """The boxes of every quote found on the hit's page (each box once)."""
    boxes: dict[tuple[float, ...], Highlight] = {}
    stemmer = Stemmer()  # the page's words stemmed once for every quote
    for quote in quotes:
        for hl in quote_highlights(hit.words, quote, stemmer=stemmer):
            boxes.setdefault(hl.box, hl)
    return tuple(boxes.values())


def _one_citation(
    part: str,
    hits: Sequence[Hit],
    by_page: dict[tuple[str, int], Hit],
    by_lower: dict[tuple[str, int], Hit],
) -> Citation | None:
    number = _NUMBER.match(part)
    if number:
        i = int(number.group(1))
        if 1 <= i <= len(hits):
            hit = hits[i - 1]
            return Citation(hit.document, hit.page, hit.image, True, part.strip())
        return Citation(None, None, None, False, part.strip())
    m = _DOC_PAGE.match(part)
    if not m:
        return None
    doc, page = m.group("doc").strip().strip("\"'“”"), int(m.group("page"))
    found = by_page.get((doc, page)) or by_lower.get((doc.lower(), page))
    if found is not None:
        return Citation(found.document, found.page, found.image, True, part.strip())
    return Citation(doc, page, None, False, part.strip())


# --------------------------------------------------------------------------- answers


@dataclass(frozen=True)
class Answer:
    """The LLM's answer to a question about the pages sent (``hits``)."""

    question: str
    text: str
    citations: list[Citation]
    hits: list[Hit]
    model: str

    @property
    def unverified(self) -> list[Citation]:
        """Citations of pages that were not sent."""
        return [c for c in self.citations if not c.sent]

    def as_dict(self) -> dict:
        """``{"answer", "citations": [{"document", "page", "image", "sent", "highlights"}],
        "hits", "model"}``."""
        return {
            "answer": self.text,
            "citations": [c.as_dict() for c in self.citations],
            "hits": [h.as_dict() for h in self.hits],
            "model": self.model,
        }


def make_answer(question: str, text: str, hits: Sequence[Hit], model: str) -> Answer:
    return Answer(question, text, parse_citations(text, hits), list(hits), model)


class AnswerStream:
    """Iterate for the answer's text as it arrives; :attr:`answer` is set once it ends."""

    def __init__(self, question: str, hits: Sequence[Hit], pieces: Iterator[str], model: str):
        self.question = question
        self.hits = list(hits)
        self.model = model
        self.answer: Answer | None = None
        self._pieces = pieces
        self._parts: list[str] = []

    def __iter__(self) -> Iterator[str]:
        for piece in self._pieces:
            self._parts.append(piece)
            yield piece
        self.answer = make_answer(self.question, "".join(self._parts), self.hits, self.model)

    def result(self) -> Answer:
        """Reads the rest of the stream (if any) and returns the answer."""
        for _ in self:
            pass
        assert self.answer is not None
        return self.answer


# --------------------------------------------------------------------------- entry points


def ask(
    question: str,
    hits: Sequence[Hit],
    *,
    settings: LLMSettings | None = None,
    client: ChatClient | None = None,
) -> Answer:
    """Send the question and pages in one request and return the whole cited answer."""
    settings = settings or (client.settings if client else LLMSettings.from_env())
    messages = build_messages(question, hits, settings)
    client = client or ChatClient(settings)
    text = client.complete(messages)
    return make_answer(question.strip(), text, hits, settings.model)


def ask_stream(
    question: str,
    hits: Sequence[Hit],
    *,
    settings: LLMSettings | None = None,
    client: ChatClient | None = None,
) -> AnswerStream:
    """Like :func:`ask`, streamed. Every check (configuration, limits) happens here, before
    iteration starts; the request is sent when the stream is first iterated."""
    settings = settings or (client.settings if client else LLMSettings.from_env())
    messages = build_messages(question, hits, settings)
    client = client or ChatClient(settings)
    return AnswerStream(question.strip(), hits, client.stream(messages), settings.model)
