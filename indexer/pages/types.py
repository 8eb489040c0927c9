"""The values pages are made of: render settings, document facts, rendered pages, and the
error for one page that cannot be rendered. Imports nothing of PageLens but indexer.errors."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from indexer.errors import DocumentError
from indexer.pages.words import Word

#: Pixel side Qwen2-VL works in (patch 14 x merge 2).
PATCH = 28


@dataclass(frozen=True)
class RenderSettings:
    """How pages become pixels; stored with a collection so that re-renders match.

    ``max_pixels`` is the model processor's ``max_pixels`` (visual tokens x 28 x 28); every
    rendered page has at least that many pixels when the page has enough detail to offer
    (vector PDF pages always do; bitmaps are never upscaled) and never more than about 10%
    over it.
    """

    #: Target pixel count per page (GME's default: 1280 visual tokens).
    max_pixels: int = 1280 * PATCH * PATCH
    #: Files bigger than this are refused ("too-large").
    max_file_bytes: int = 2 * 1024**3
    #: Bitmaps (image files, TIFF frames) declaring more pixels are refused ("too-large");
    #: also the decompression-bomb limit handed to Pillow. 20,000 x 20,000 fits.
    max_image_pixels: int = 500_000_000
    #: Longest / shortest side beyond which pages are padded with white (Qwen refuses > 200).
    max_aspect_ratio: float = 200.0
    #: No side of a rendered page is shorter than this (Qwen needs >= one 28 px patch).
    min_side: int = PATCH
    #: Upper bound on PDF zoom (16 = 1152 dpi), so a stamp-sized page is not blown up to the
    #: full budget; the zoom still goes as high as needed to reach ``min_side``.
    max_zoom: float = 16.0
    #: OCR pages without a text layer (scans, image files) with Tesseract; off by default.
    ocr: bool = False
    #: Tesseract language(s) for OCR, e.g. "eng" or "eng+deu".
    ocr_language: str = "eng"
    #: Resolution PDF pages are rendered at for OCR (separately from the model's image).
    ocr_dpi: int = 300

    def __post_init__(self) -> None:
        if self.max_pixels < self.min_side * self.min_side:
            raise ValueError(f"max_pixels must be at least {self.min_side**2}")
        if self.max_aspect_ratio < 1:
            raise ValueError("max_aspect_ratio must be >= 1")
        if self.max_file_bytes <= 0 or self.max_image_pixels <= 0 or self.max_zoom <= 0:
            raise ValueError("limits must be positive")

    @classmethod
    def for_tokens(cls, max_image_tokens: int, **overrides: object) -> RenderSettings:
        """Settings whose pixel budget matches a model's visual-token budget."""
        return cls(max_pixels=int(max_image_tokens) * PATCH * PATCH, **overrides)  # type: ignore[arg-type]

    def as_dict(self) -> dict:
        """Plain JSON-able dict, for a collection's meta."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DocumentInfo:
    """What we know about an input file before rendering any page."""

    path: Path
    kind: str  # "pdf" | "image" | an office format ("docx"...) | "html", "epub"... (by suffix)
    page_count: int
    sha256: str
    title: str | None
    encrypted: bool


@dataclass
class PageImage:
    """One rendered page: RGB pixels upright as a reader sees them, its text layer, and
    its words with their boxes in 0..1 of ``image`` (see :mod:`indexer.pages.words`)."""

    number: int  # 1-based
    image: Image.Image
    text: str  # "" for scans and image files
    width_pt: float
    height_pt: float
    words: list[Word] = dataclasses.field(default_factory=list)


class PageRenderError(DocumentError):
    """A single page of an otherwise readable document could not be rendered."""

    def __init__(self, path: str | os.PathLike[str], page: int, message: str) -> None:
        super().__init__(str(path), "damaged", message)
        self.page = page


def check_numbers(path: Path, wanted: Iterable[int] | None, count: int) -> Iterator[int]:
    """The 1-based page numbers asked for (all by default), each checked against ``count``."""
    if wanted is None:
        yield from range(1, count + 1)
        return
    for number in wanted:
        if not 1 <= int(number) <= count:
            raise ValueError(f"{path}: page {number} out of range 1..{count}")
        yield int(number)


def check_number(path: Path, number: int, count: int) -> None:
    """Raise ``ValueError`` now if page ``number`` is not in 1..``count``."""
    for _ in check_numbers(path, [number], count):
        pass
