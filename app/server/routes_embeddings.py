"""``POST /v1/embeddings``: OpenAI's shapes, plus image and fused inputs and GME's query side.

The handler is four steps, each a function here: validate the request into (text, image
reference) pairs, decode the images (in a worker thread), submit every item to the shared
batcher and wait for all, then shape the vectors as OpenAI does.
"""

from __future__ import annotations

import asyncio
import base64
from concurrent.futures import Future
from typing import Any

import numpy as np
from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from PIL import Image

from app.server.batching import BatcherClosedError, Job, QueueFullError, WorkItem
from app.server.errors import ApiError, InputTooLongError, overloaded
from app.server.images import PixelBudget
from app.server.limits import MAX_INSTRUCTION_CHARS, MAX_TEXT_CHARS
from app.server.schemas import EmbeddingRequest
from app.server.state import ServerState, State
from indexer.model import QUERY_INSTRUCTION

router = APIRouter()

Parsed = list[tuple[str | None, str | None]]


@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, state: State) -> Any:
    state.check_model(body.model)
    single = isinstance(body.input, str)
    instruction = request_instruction(body)
    check_dimensions(body.dimensions, state.embedder.dim)
    parsed = parse_inputs(body, state.max_items)
    pictures: list[Image.Image | None] = [None] * len(parsed)
    if any(image for _text, image in parsed):
        pictures = await run_in_threadpool(decode_images, state, parsed, single)
    job = Job()
    items = [
        WorkItem(_kind(text, picture), text=text, image=picture, instruction=instruction, job=job)
        for (text, _ref), picture in zip(parsed, pictures, strict=True)
    ]
    results = await embed_items(state, items, single)
    data, tokens = [], 0
    for i, result in enumerate(results):
        tokens += result.tokens or 0
        value = encode_vector(result.vector, body.dimensions, body.encoding_format)
        data.append({"object": "embedding", "index": i, "embedding": value})
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "model": state.served_id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


def request_instruction(body: EmbeddingRequest) -> str | None:
    """The instruction to embed with: a custom one, GME's query one, or None (the default)."""
    if body.instruction is not None and body.input_type is not None:
        raise ApiError(400, "Give 'instruction' or 'input_type', not both.", param="instruction")
    instruction = body.instruction
    if instruction is not None and not (0 < len(instruction) <= MAX_INSTRUCTION_CHARS):
        raise ApiError(
            400,
            f"'instruction' must have 1 to {MAX_INSTRUCTION_CHARS} characters.",
            param="instruction",
        )
    return QUERY_INSTRUCTION if body.input_type == "query" else instruction


def check_dimensions(dims: int | None, dim: int) -> None:
    if dims is not None and not 1 <= dims <= dim:
        raise ApiError(
            400,
            f"'dimensions' must be between 1 and {dim} for this model, not {dims}.",
            param="dimensions",
        )


def parse_inputs(body: EmbeddingRequest, max_items: int) -> Parsed:
    """The request's inputs as (text, image reference) pairs, each checked for size."""
    single = isinstance(body.input, str)
    raw = [body.input] if isinstance(body.input, str) else list(body.input)
    if not raw:
        raise ApiError(400, "'input' must not be empty.", param="input", code="empty_input")
    if len(raw) > max_items:
        raise ApiError(
            400,
            f"Too many inputs: {len(raw)}; at most {max_items} per request.",
            param="input",
            code="too_many_inputs",
        )
    parsed: Parsed = []
    for i, entry in enumerate(raw):
        param = "input" if single else f"input[{i}]"
        text, image = (entry, None) if isinstance(entry, str) else (entry.text, entry.image)
        if text is None and image is None:
            raise ApiError(400, "An input object needs 'text', 'image' or both.", param=param)
        if text is not None:
            if not text.strip() and image is None:
                raise ApiError(
                    400, "An input text must not be empty.", param=param, code="empty_input"
                )
            if len(text) > MAX_TEXT_CHARS:
                raise ApiError(
                    400,
                    f"An input text has {len(text)} characters; at most {MAX_TEXT_CHARS}.",
                    param=param,
                    code="context_length_exceeded",
                )
        parsed.append((text, image))
    return parsed


def decode_images(state: ServerState, parsed: Parsed, single: bool) -> list[Image.Image | None]:
    """Every image reference decoded, within the request's pixel budget (blocking: runs in a
    worker thread; images are decoded one at a time, so at most one is ever at full size)."""
    budget = PixelBudget(state.max_request_pixels)
    out: list[Image.Image | None] = []
    for i, (_text, ref) in enumerate(parsed):
        if ref is None:
            out.append(None)
            continue
        param = "input.image" if single else f"input[{i}].image"
        image = state.images.load(ref, param)
        budget.spend(image, param)
        out.append(image)
    return out


async def embed_items(state: ServerState, items: list[WorkItem], single: bool) -> list:
    """Submit the items to the batcher and wait for all; a too-long input cancels the rest."""
    try:
        futures: list[Future] = state.batcher.submit(items)
    except (QueueFullError, BatcherClosedError) as exc:
        raise overloaded(exc) from exc
    results = []
    for i, future in enumerate(futures):
        try:
            results.append(await asyncio.wrap_future(future))
        except InputTooLongError as exc:
            for other in futures:
                other.cancel()
            culprit = getattr(exc, "work_item", None)  # set by the batcher when it knows
            at = next((n for n, it in enumerate(items) if it is culprit), i)
            raise ApiError(
                400, str(exc), param="input" if single else f"input[{at}]", code=exc.code
            ) from exc
    return results


def encode_vector(vector: np.ndarray, dims: int | None, encoding: str) -> Any:
    """Truncate to ``dims`` and re-normalise (as OpenAI's v3 models do); float list or base64."""
    if dims is not None and dims < vector.shape[0]:
        vector = vector[:dims]
        norm = float(np.linalg.norm(vector))
        vector = vector / norm if norm > 0 else vector
    vector = np.asarray(vector, dtype="<f4")
    if encoding == "base64":
        return base64.b64encode(vector.tobytes()).decode("ascii")
    return vector.tolist()


def _kind(text: str | None, picture: Image.Image | None) -> str:
    if text is not None and picture is not None:
        return "fused"
    return "image" if picture is not None else "text"
