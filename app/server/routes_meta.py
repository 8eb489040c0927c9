"""``GET /health``, ``GET /v1/models`` and ``GET /v1/models/{id}``."""

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
        **state.batcher.stats(),
    }


@router.get("/v1/models")
async def list_models(state: State) -> dict:
    return {"object": "list", "data": [state.model_card()]}


@router.get("/v1/models/{model:path}")
async def get_model(model: str, state: State) -> dict:
    state.check_model(model)
    return state.model_card()
