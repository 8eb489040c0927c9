"""Request bodies of the API (pydantic models; FastAPI validates and documents them)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class InputItem(BaseModel):
    """One multimodal input: a text, an image (data URL or URL), or both (fused)."""

    model_config = ConfigDict(extra="forbid")
    text: str | None = None
    image: str | None = None


class EmbeddingRequest(BaseModel):
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


class SearchRequest(BaseModel):
    query: str | None = None
    image: str | None = Field(default=None, description="data URL (or http(s) URL if allowed)")
    k: int = 5
    collection: str | None = Field(default=None, description="A collection name.")
    documents: list[str | int] | None = None
    mode: Literal["visual", "text", "hybrid"] | None = None
    pages: str | None = Field(default=None, description="A page range, e.g. 3-7.")
