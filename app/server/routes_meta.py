"""``GET /health``, ``GET /v1/models`` and ``GET /v1/models/{id}`` (the embedder's card, and
the reranker's, marked ``"task": "rerank"``, when the server has one)."""

from __future__ import annotations

from fastapi import APIRouter

from app.server.state import State

router = APIRouter()


@router.get("/health")
async def health(state: State) -> dict:
    """Liveness and batching statistics; never needs a key."""
    return {
        "status": "ok",
        "model": state.served_id,
        "dim": state.embedder.dim,
        "reranker": state.reranker_id or None,
        **state.batcher.stats(),
    }


@router.get("/v1/models")
async def list_models(state: State) -> dict:
    cards = [state.model_card()]
    if state.reranker is not None:
        cards.append(state.reranker_card())
    return {"object": "list", "data": cards}


@router.get("/v1/models/{model:path}")
async def get_model(model: str, state: State) -> dict:
    if state.reranker is not None and model.strip().lower() in (
        state.reranker_accepted - {"default"}
    ):
        return state.reranker_card()
    state.check_model(model)
    return state.model_card()
