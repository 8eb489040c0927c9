"""Qwen3-VL-Reranker run in this process: :class:`Qwen3VLReranker` (see :mod:`.recipe`).

Each (query, page) pair becomes one prompt; pairs are sorted by length, batched, right-padded
and run through ``Qwen3VLModel``'s own forward; the score is read at each sequence's last real
token. Scores come back in input order and equal one-pair-at-a-time calls up to float
rounding. The query's image is resized and processed once per call, not once per page.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from indexer.model.rerank import recipe
from indexer.model.rerank.base import RerankPage, RerankQuery

log = logging.getLogger(__name__)

#: Pairs per forward by default (a page at the full budget is ~1.9k tokens).
DEFAULT_BATCH_SIZE = 4


@dataclass
class _Vision:
    """One processed image: its patches, grid and number of merged visual tokens."""

    pixel_values: torch.Tensor
    grid_thw: torch.Tensor
    tokens: int


@dataclass
class _Pair:
    ids: list[int]
    images: list[_Vision]


class Qwen3VLReranker:
    """Qwen3-VL-Reranker behind :class:`~indexer.model.rerank.base.Reranker`.

    ``model``: a ``Qwen3VLForConditionalGeneration`` (its ``lm_head`` gives the yes/no rows);
    ``processor``: the checkpoint's ``Qwen3VLProcessor`` (tokenizer and image processor).
    ``instruction``: the task instruction (default: the reference's). ``min_image_tokens`` /
    ``max_image_tokens``: the visual-token budget per image (reference: 4..1800).
    ``max_length``: a longer pair has its page's text layer cut to fit (its beginning kept,
    see :meth:`_trimmed`); one still longer without that text raises ``ValueError``, as the
    reference refuses it.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        model_id: str,
        device: str | torch.device = "cpu",
        fingerprint: str | None = None,
        revision: str | None = None,
        instruction: str | None = None,
        min_image_tokens: int = recipe.MIN_IMAGE_TOKENS,
        max_image_tokens: int = recipe.MAX_IMAGE_TOKENS,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_length: int = recipe.MAX_LENGTH,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.model = model
        self.tokenizer = processor.tokenizer
        self.image_processor = processor.image_processor
        self.model_id = model_id
        self.device = torch.device(device)
        self.fingerprint = fingerprint
        self.revision = revision
        self.instruction = instruction or recipe.DEFAULT_INSTRUCTION
        self.min_pixels, self.max_pixels = recipe.pixel_budget(min_image_tokens, max_image_tokens)
        self.max_image_tokens = max_image_tokens
        self.batch_size = batch_size
        self.max_length = max_length
        config = model.config
        self.image_token_id = int(config.image_token_id)
        self.pad_id = int(self.tokenizer.pad_token_id)
        self.merge = int(self.image_processor.merge_size) ** 2
        vocab = self.tokenizer.get_vocab()
        weight = model.get_output_embeddings().weight
        # sigmoid(logit_yes - logit_no) = sigmoid(h . (w_yes - w_no)), kept in float32
        self.direction = (weight[vocab[recipe.YES]] - weight[vocab[recipe.NO]]).detach().float()

    # ---------------------------------------------------------------- inputs

    def _vision(self, image: Image.Image) -> _Vision:
        fetched = recipe.prepare_image(
            image, min_pixels=self.min_pixels, max_pixels=self.max_pixels
        )
        out = self.image_processor(images=[fetched], do_resize=False, return_tensors="pt")
        grid = out["image_grid_thw"]
        return _Vision(out["pixel_values"], grid, int(grid.prod()) // self.merge)

    def _pair(self, query: RerankQuery, query_vision: _Vision | None, page: RerankPage) -> _Pair:
        page_vision = self._vision(page.image) if page.image is not None else None
        ids = self._ids(query, query_vision, page_vision, page.text)
        if len(ids) > self.max_length and page.text:
            ids = self._trimmed(query, query_vision, page_vision, page.text, len(ids))
        if len(ids) > self.max_length:
            raise ValueError(
                f"a (query, page) pair is {len(ids)} tokens without the page's text, over the "
                f"reranker's limit of {self.max_length}; shorten the query or lower "
                "max_image_tokens"
            )
        images = [v for v in (query_vision, page_vision) if v is not None]
        return _Pair(ids, images)

    def _ids(
        self,
        query: RerankQuery,
        query_vision: _Vision | None,
        page_vision: _Vision | None,
        text: str | None,
    ) -> list[int]:
        prompt = recipe.build_prompt(
            query_text=query.text,
            query_image_tokens=query_vision.tokens if query_vision else None,
            doc_text=text,
            doc_image_tokens=page_vision.tokens if page_vision else None,
            instruction=self.instruction,
        )
        return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def _trimmed(
        self,
        query: RerankQuery,
        query_vision: _Vision | None,
        page_vision: _Vision | None,
        text: str,
        length: int,
    ) -> list[int]:
        """The pair's ids with the page's text layer cut to fit :attr:`max_length`: its
        beginning is kept (reading order: titles, headings and first paragraphs), at a token
        boundary; the query and both images are never cut. A very long text layer (a dense
        table, an OCR'd spreadsheet) would otherwise make the reference refuse the pair and
        the page drop out of the rerank; cut, it is still judged on its image and the text
        that fits. Empty when not even its first token fits (then the caller refuses)."""
        words = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        keep = len(words) - (length - self.max_length)
        ids = self._ids(query, query_vision, page_vision, "")
        while keep > 0:
            cut = self.tokenizer.decode(words[:keep], skip_special_tokens=False)
            ids = self._ids(query, query_vision, page_vision, cut)
            if len(ids) <= self.max_length:
                log.debug("page text cut from %d to %d tokens to fit", len(words), keep)
                return ids
            keep -= len(ids) - self.max_length  # a merge across the cut: try a bit shorter
        return ids

    def _batch(self, pairs: Sequence[_Pair]) -> dict[str, torch.Tensor]:
        """Right-padded tensors of one batch, images in order of appearance."""
        width = max(len(p.ids) for p in pairs)
        ids = torch.full((len(pairs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(pairs), width), dtype=torch.long)
        for row, pair in enumerate(pairs):
            ids[row, : len(pair.ids)] = torch.tensor(pair.ids)
            mask[row, : len(pair.ids)] = 1
        inputs = {
            "input_ids": ids,
            "attention_mask": mask,
            "mm_token_type_ids": (ids == self.image_token_id).long(),
        }
        visions = [v for p in pairs for v in p.images]
        if visions:
            inputs["pixel_values"] = torch.cat([v.pixel_values for v in visions])
            inputs["image_grid_thw"] = torch.cat([v.grid_thw for v in visions])
        return inputs

    # ---------------------------------------------------------------- forward

    @torch.inference_mode()
    def _forward(self, pairs: Sequence[_Pair]) -> np.ndarray:
        inputs = self._batch(pairs)
        dtype = next(self.model.parameters()).dtype
        moved = {
            k: v.to(self.device, dtype=dtype) if k == "pixel_values" else v.to(self.device)
            for k, v in inputs.items()
        }
        hidden = self.model.model(**moved).last_hidden_state
        last = moved["attention_mask"].sum(dim=1) - 1
        rows = hidden[torch.arange(hidden.shape[0], device=hidden.device), last].float()
        logits = rows @ self.direction.to(rows.device)
        return torch.sigmoid(logits).cpu().numpy().astype(np.float32)

    def score(self, query: RerankQuery, pages: Sequence[RerankPage]) -> np.ndarray:
        """Float32 relevance scores in [0, 1], one per page, in input order."""
        if not isinstance(query, RerankQuery):
            raise TypeError(f"expected a RerankQuery, got {type(query).__name__}")
        pages = list(pages)
        if not pages:
            return np.zeros((0,), dtype=np.float32)
        query_vision = self._vision(query.image) if query.image is not None else None
        pairs = [self._pair(query, query_vision, page) for page in pages]
        order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i].ids))
        scores = np.empty(len(pairs), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            scores[chunk] = self._forward([pairs[i] for i in chunk])
        return scores

    def count_tokens(self, query: RerankQuery, page: RerankPage) -> int:
        """Length of the sequence the model runs for this pair (the cost driver)."""
        query_vision = self._vision(query.image) if query.image is not None else None
        return len(self._pair(query, query_vision, page).ids)


__all__ = ["DEFAULT_BATCH_SIZE", "Qwen3VLReranker"]
