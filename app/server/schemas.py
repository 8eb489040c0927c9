"""Request bodies of the API (pydantic models; FastAPI validates and documents them)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


def well_formed(value: Any) -> Any:
    """Refuse strings that cannot be UTF-8 (JSON's ``"\\ud800"`` escapes decode to lone
    surrogates, which the tokenizer and SQLite reject with a crash)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"the text holds a lone UTF-16 surrogate ({value[exc.start]!r} at character "
                f"{exc.start}); send well-formed Unicode"
            ) from None
    elif isinstance(value, list):
        for item in value:
            well_formed(item)
    return value


class CheckedBody(BaseModel):
    """Every string field of every request body is checked by :func:`well_formed`."""

    @field_validator("*", mode="after")
    @classmethod
    def _well_formed(cls, value: Any) -> Any:
        return well_formed(value)


class InputItem(CheckedBody):
    """One multimodal input: a text, an image (data URL or URL), or both (fused)."""

    model_config = ConfigDict(extra="forbid")
    text: str | None = None
    image: str | None = None


class EmbeddingRequest(CheckedBody):
    model: str = Field(description="The served model's id, its last path part, or an alias.")
    input: str | list[str | InputItem] = Field(
        description="A string, or a list of strings and {text, image} objects."
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, description="Truncate and re-normalise.")
    user: str | None = None
    input_type: Literal["query", "document"] | None = Field(
        default=None,
        description="query: GME's retrieval-query instruction; document (default): the "
        "model's default instruction.",
    )
    instruction: str | None = Field(default=None, description="A custom instruction.")


class SearchRequest(CheckedBody):
    query: str | None = None
    image: str | None = Field(default=None, description="data URL (or http(s) URL if allowed)")
    k: int = 5
    collection: str | None = Field(default=None, description="A collection name.")
    documents: list[str | int] | None = None
    mode: Literal["visual", "text", "hybrid"] | None = None
    pages: str | None = Field(default=None, description="A page range, e.g. 3-7.")
    rerank: int | None = Field(
        default=None,
        description="Rerank the top N first-stage pages with the server's reranker and "
        "return the best k of them (N >= k). Default: 20 (at least k) when the server has a "
        "reranker, else none; 0 turns it off.",
    )
    evidence: Literal["text", "none", "visual"] = Field(
        default="text",
        description="Highlights on each hit: text (the boxes of the query's words on the "
        "page), none, or visual (also overlapping regions of each page scored by the model, "
        "source 'visual'; an approximation).",
    )


class ImageUrl(CheckedBody):
    url: str


class ContentPart(CheckedBody):
    """One part of a multimodal rerank document (OpenAI's chat content shape, as vLLM's
    ``/v1/rerank`` takes it)."""

    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageUrl | None = None


class RerankContent(CheckedBody):
    """A multimodal query or document: ``{"content": [parts]}`` (at most one image)."""

    model_config = ConfigDict(extra="forbid")
    content: list[ContentPart]


RerankItem = str | RerankContent | InputItem


class RerankRequest(CheckedBody):
    model: str | None = Field(default=None, description="The served reranker's id or alias.")
    query: RerankItem = Field(description="A string, {content: [...]} or {text, image}.")
    documents: list[RerankItem] | RerankContent = Field(
        description="Strings, {content: [...]} or {text, image} objects; a single {content} "
        "object means one document per part (vLLM's older form)."
    )
    top_n: int | None = Field(default=None, description="Return the best n (default: all).")
    return_documents: bool = False
