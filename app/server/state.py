"""What the routes share: one :class:`ServerState` per app, reached with :func:`get_state`.

A route declares ``state: State`` (``Annotated[ServerState, Depends(get_state)]``) instead
of closing over variables of ``create_app``, so each route module stands alone and new routes (a new
endpoint goes in its own ``routes_*.py`` module) see the same batcher, images and collections.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from app.server.batching import BatchedEmbedder, DynamicBatcher
from app.server.errors import ApiError
from app.server.images import ImageLoader
from app.server.limits import MAX_ITEMS, MAX_REQUEST_PIXELS
from app.server.named_collections import CollectionCache
from indexer.config import DEFAULT_MODEL_ID
from indexer.model import Embedder
from indexer.model.rerank import Reranker
from retriever.ask import LLMSettings
from retriever.evidence.cache import EvidenceCache

#: Names every server answers to besides its model id and that id's last path part.
GENERIC_ALIASES = ("pagelens", "gme", "default")
GME_2B_ALIASES = (DEFAULT_MODEL_ID, "gme-Qwen2-VL-2B-Instruct", "gme-2b", "gme-qwen2-vl-2b")


def public_model_id(model_id: str) -> str:
    """The id clients see: the model id, or only the folder name of a local model."""
    return os.path.basename(model_id.rstrip("/\\")) if os.path.isabs(model_id) else model_id


def model_names(model_id: str, extra: tuple[str, ...] = ()) -> set[str]:
    """Lower-cased names a request's ``model`` may use for the served model."""
    base = os.path.basename(model_id.rstrip("/\\"))
    names = {model_id, base, public_model_id(model_id), *GENERIC_ALIASES, *extra}
    gme_2b = {a.lower() for a in GME_2B_ALIASES}
    # GME-2B's names also mean the served model unless it is another GME variant.
    if base.lower() in gme_2b or not base.lower().startswith("gme-"):
        names |= set(GME_2B_ALIASES)
    return {n.lower() for n in names}


@dataclass
class ServerState:
    """The model (behind its batcher), image loader, open collections and limits of one app."""

    embedder: Embedder
    batcher: DynamicBatcher
    #: The batcher as an Embedder, for library code (the retriever) run in worker threads.
    shared: BatchedEmbedder
    images: ImageLoader
    collections: CollectionCache
    served_id: str
    accepted: set[str]
    max_items: int = MAX_ITEMS
    #: Where ``/v1/ask`` sends pages; None: read ``PAGELENS_LLM_*`` per request.
    llm: LLMSettings | None = None
    max_request_pixels: int = MAX_REQUEST_PIXELS
    #: The reranker ``/v1/rerank`` runs (None: the endpoint answers 404), its public id, the
    #: names a request may use for it, and the lock that lets one rerank use it at a time.
    reranker: Reranker | None = None
    reranker_id: str = ""
    reranker_accepted: set[str] = field(default_factory=set)
    rerank_lock: threading.Lock = field(default_factory=threading.Lock)
    #: Region scores of visual evidence (``"evidence": "visual"``), kept for the process.
    evidence_cache: EvidenceCache = field(default_factory=EvidenceCache)

    def require_reranker(self) -> Reranker:
        """The reranker, or 404: a server started without ``--reranker`` has none."""
        if self.reranker is None:
            raise ApiError(
                404,
                "This server has no reranker; start it with `pagelens serve --reranker MODEL`.",
                code="reranker_not_configured",
            )
        return self.reranker

    def check_reranker_model(self, name: str) -> None:
        """404 unless ``name`` is one of the served reranker's names."""
        if name.strip().lower() not in self.reranker_accepted:
            raise ApiError(
                404,
                f"The model '{name}' is not a reranker on this server; it reranks with "
                f"'{self.reranker_id}'.",
                param="model",
                code="model_not_found",
            )

    def reranker_card(self) -> dict:
        """The reranker's model object: marked ``"task": "rerank"`` so that a client can tell
        it from the embedder in ``/v1/models``, with the weights' identity when known."""
        card = {
            "id": self.reranker_id,
            "object": "model",
            "created": 0,
            "owned_by": "pagelens",
            "task": "rerank",
        }
        for key in ("fingerprint", "revision"):
            value = getattr(self.reranker, key, None)
            if value:
                card[key] = str(value)
        return card

    def check_model(self, name: str) -> None:
        """404 unless ``name`` is one of the served model's names."""
        if name.strip().lower() not in self.accepted:
            raise ApiError(
                404,
                f"The model '{name}' does not exist on this server; it serves '{self.served_id}'.",
                param="model",
                code="model_not_found",
            )

    def model_card(self) -> dict:
        """OpenAI's model object, plus what a remote PageLens client needs to produce vectors
        identical to local ones and the same identity: dimension, visual-token budget, and
        the weights' fingerprint and revision when known."""
        card = {"id": self.served_id, "object": "model", "created": 0, "owned_by": "pagelens"}
        card["dim"] = self.embedder.dim
        if self.embedder.max_image_tokens:
            card["max_image_tokens"] = int(self.embedder.max_image_tokens)
        # The weights' identity (indexer.identity), so that a collection embedded through
        # this server and one embedded in-process by the same weights are the same model.
        if self.embedder.fingerprint:
            card["fingerprint"] = str(self.embedder.fingerprint)
        if self.embedder.revision:
            card["revision"] = str(self.embedder.revision)
        return card


def reranker_names(model_id: str) -> set[str]:
    """Lower-cased names a rerank request's ``model`` may use for the served reranker."""
    base = os.path.basename(model_id.rstrip("/\\"))
    return {n.lower() for n in (model_id, base, public_model_id(model_id), "reranker", "default")}


def get_state(request: Request) -> ServerState:
    """FastAPI dependency: the state of the app serving this request."""
    return request.app.state.pagelens


#: The parameter type routes declare to receive the app's state: ``state: State``.
State = Annotated[ServerState, Depends(get_state)]
