"""GME behind PageLens' :class:`~indexer.model.base.Embedder`: batching, forward, KV prefix.

The recipe it follows (prompt, image sizes, positions, pooling) is described in
:mod:`indexer.model.gme.recipe`; loading is :mod:`indexer.model.gme.loading`, the opt-in
speed-ups :mod:`indexer.model.gme.speedups`, and which weights text queries use
:mod:`indexer.model.gme.query_weights` (a policy object this embedder holds).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from indexer.model.base import DEFAULT_INSTRUCTION, QUERY_INSTRUCTION, EmbedderBase, require_pairs
from indexer.model.gme import budget, page_kernels, prefix, recipe
from indexer.model.gme.query_weights import CALIBRATION_QUERIES, QueryWeightsPolicy
from indexer.model.gme.query_weights_cache import DecisionCache
from indexer.model.gme.recipe import (
    IMAGE_PAD,
    MAX_IMAGE_TOKENS,
    MAX_LENGTH,
    MIN_IMAGE_TOKENS,
    build_prompt,
)
from indexer.model.runtime import cpu_heap, lowp


def _decoder_mask(attention_mask: torch.Tensor) -> torch.Tensor | None:
    """The mask to hand the decoder: None when every row is right-padded (ones, then zeros).

    Why: with right padding, causal attention alone already keeps every real token from
    seeing the padding (it comes after all of them), so the real tokens' states - and the
    last real token we pool - are exactly those of the padded mask. Without a mask, SDPA
    runs its causal kernel (``is_causal=True``), which skips the upper triangle; with a
    padding mask it computes the full square and adds the mask to every score.
    """
    mask = attention_mask.long()
    if bool((mask.cummin(-1).values == mask).all()):
        return None
    return attention_mask


class GmeEmbedder(EmbedderBase):
    """GME behind PageLens' :class:`~indexer.model.base.Embedder` interface.

    Build it with :func:`load_embedder` (or ``indexer.model.gme.random.random_embedder`` for a
    random model); the constructor takes an already loaded ``Qwen2VLForConditionalGeneration``,
    its tokenizer and a Qwen2-VL image processor.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        image_processor: Any,
        *,
        model_id: str,
        fingerprint: str | None = None,
        revision: str | None = None,
        device: str | None = None,
        max_image_tokens: int = MAX_IMAGE_TOKENS,
        min_image_tokens: int | None = None,
        batch_size: int = 8,
        max_length: int = MAX_LENGTH,
        query_weights: str = "auto",
    ) -> None:
        if min_image_tokens is None:  # GME's 256, or less when the budget is below it
            min_image_tokens = min(MIN_IMAGE_TOKENS, int(max_image_tokens))
        if not 1 <= int(min_image_tokens) <= int(max_image_tokens):
            raise ValueError(
                f"need 1 <= min_image_tokens <= max_image_tokens, got "
                f"{min_image_tokens} and {max_image_tokens}"
            )
        if int(batch_size) < 1:
            raise ValueError("batch_size must be at least 1")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.model_id = str(model_id)
        #: Identity by weights (:mod:`indexer.identity`): what a collection matches on.
        self.fingerprint = fingerprint
        self.revision = revision
        self.device = str(device) if device is not None else str(next(model.parameters()).device)
        params = next(model.parameters())
        self.dtype = str(params.dtype).removeprefix("torch.")
        self.compiled = False
        config = model.config
        self.dim = int(config.text_config.hidden_size)
        self.max_image_tokens = int(max_image_tokens)
        self.min_image_tokens = int(min_image_tokens)
        self.batch_size = int(batch_size)
        self.max_length = int(max_length)
        #: "right" (the original's choice) or "left"; results do not depend on it.
        self.padding_side = "right"
        #: Reuse the constant prompt prefix (system instruction + template) of text inputs as a
        #: KV cache, so a query pays only for its own tokens (same vectors, see embed_texts).
        self.prefix_cache = True
        self._prefix_kv: dict[str, tuple[list[int], list[tuple[torch.Tensor, torch.Tensor]]]] = {}
        #: Which decoder weights text queries use, and when that is decided
        #: (:class:`~indexer.model.gme.query_weights.QueryWeightsPolicy`).
        self.queries = QueryWeightsPolicy(self, query_weights)

        self._text_model = model.model.language_model  # Qwen2VLTextModel
        self._visual = model.model.visual
        #: Which of :mod:`~indexer.model.gme.page_kernels`' leaner vision forwards are in use
        #: (same maths, fewer passes over memory; "attention", "mlp"); the bench reports them.
        self.page_kernels: list[str] = page_kernels.install(self._visual)
        #: Whether freed activations stay in the process (:mod:`~indexer.model.runtime.cpu_heap`:
        #: pages no longer fault in and zero ~1 GiB per forward on CPU; glibc only). A process-wide
        #: allocator setting, so the programs that own their process turn it on (the CLI,
        #: the app, Ray actors, the bench), not this constructor; library users may call
        #: :func:`indexer.model.runtime.cpu_heap.keep_freed_memory` themselves.
        self.heap_reuse = self.device == "cpu" and cpu_heap.in_effect()
        self._patch_size = int(config.vision_config.patch_size)
        self._merge_size = int(config.vision_config.spatial_merge_size)
        self._image_token_id = int(config.image_token_id)
        tok_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        if tok_id != self._image_token_id:
            raise ValueError(
                f"tokenizer maps {IMAGE_PAD} to {tok_id} but the model expects "
                f"{self._image_token_id}: tokenizer and weights do not belong together"
            )
        self._pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)

    # ----------------------------------------------------------------- sizes and tokens

    @property
    def _min_pixels(self) -> int:  # this call's budget (:mod:`~indexer.model.gme.budget`)
        return budget.tokens(self)[0] * (self._patch_size * self._merge_size) ** 2

    @property
    def _max_pixels(self) -> int:
        return budget.tokens(self)[1] * (self._patch_size * self._merge_size) ** 2

    def _final_size(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) the model will see for an image of this size; ValueError if refused."""
        factor = self._patch_size * self._merge_size
        return recipe.final_size(
            width, height, factor=factor, min_pixels=self._min_pixels, max_pixels=self._max_pixels
        )

    def _accepted_canvas(self, width: int, height: int) -> tuple[int, int]:
        """The smallest white-padded canvas (width, height) the recipe accepts."""
        return recipe.accepted_canvas(width, height, self._final_size)

    def _prepare_image(self, image: Image.Image) -> Image.Image:
        """RGB, padded if its aspect ratio is refused, then qwen-vl-utils' ``fetch_image``."""
        return recipe.prepare_image(image, self._accepted_canvas)

    def image_token_count(self, image: Image.Image | tuple[int, int]) -> int:
        """Visual tokens (``<|image_pad|>`` count) an image costs; accepts an image or (w, h)."""
        rows, columns = self.patch_grid(image)
        return rows * columns // self._merge_size**2

    def patch_grid(self, image: Image.Image | tuple[int, int]) -> tuple[int, int]:
        """(rows, columns) of vision patches the model sees for an image (or a (w, h) size),
        after padding and resizing as the recipe does: what the vision tower's cost scales
        with (the benchmark counts FLOPs from it)."""
        width, height = image if isinstance(image, tuple) else image.size
        fh, fw = self._final_size(*self._accepted_canvas(int(width), int(height)))
        return fh // self._patch_size, fw // self._patch_size

    # ----------------------------------------------------------------- for profilers

    @property
    def vision_model(self) -> torch.nn.Module:
        """The vision tower (Qwen2-VL's ViT); the benchmark times it apart from the decoder."""
        return self._visual

    @property
    def text_model(self) -> torch.nn.Module:
        """The decoder (``Qwen2VLTextModel``) whose last token is the embedding."""
        return self._text_model

    @property
    def cached_prefixes(self) -> list[str]:
        """Instructions whose prompt prefix is held as a key/value cache (see embed_texts)."""
        return list(self._prefix_kv)

    def _token_ids(
        self, texts: Sequence[str | None], image_tokens: Sequence[int], instruction: str | None
    ) -> list[list[int]]:
        """Token ids of each prompt, image pads expanded, right-truncated to ``max_length``."""
        prompts = [
            build_prompt(t, image=n > 0, instruction=instruction)
            for t, n in zip(texts, image_tokens, strict=True)
        ]
        encoded = self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        out = []
        for ids, n in zip(encoded, image_tokens, strict=True):
            ids = list(ids)
            if n > 0:
                pads = [i for i, t in enumerate(ids) if t == self._image_token_id]
                if len(pads) != 1:
                    raise ValueError("the text of an image input may not contain <|image_pad|>")
                at = pads[0]
                if at + n + 1 > self.max_length:
                    raise ValueError(
                        f"the instruction and image need {at + n + 1} tokens, more than the "
                        f"{self.max_length}-token limit; lower max_image_tokens or shorten the "
                        "instruction"
                    )
                ids[at : at + 1] = [self._image_token_id] * n
            out.append(ids[: self.max_length])
        return out

    def count_tokens(
        self,
        text: str | None = None,
        image: Image.Image | tuple[int, int] | None = None,
        *,
        instruction: str | None = None,
    ) -> int:
        """Length of the sequence the model runs for this input (after truncation)."""
        n = self.image_token_count(image) if image is not None else 0
        return len(self._token_ids([text], [n], instruction)[0])

    def count_text_tokens(self, text: str) -> int:
        """Tokens of ``text`` alone, untruncated: how far past ``max_length`` an input goes."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # ----------------------------------------------------------------- batching

    def encode(
        self,
        texts: Sequence[str | None],
        images: Sequence[Image.Image | None] | None = None,
        *,
        instruction: str | None = None,
    ) -> dict[str, torch.Tensor]:
        """Model inputs for one batch, in the given order and padded on ``padding_side``.

        Returns ``input_ids``, ``attention_mask`` and, if any image, ``pixel_values`` and
        ``image_grid_thw`` (CPU tensors), like the original's processor output.
        """
        images = list(images) if images is not None else [None] * len(texts)
        if len(images) != len(texts):
            raise ValueError("need as many texts as images (use None for a missing one)")
        prepared = [self._prepare_image(i) if i is not None else None for i in images]
        present = [p for p in prepared if p is not None]
        pixel_values: torch.Tensor | None = None
        grid: torch.Tensor | None = None
        counts = [0] * len(texts)
        if present:
            processed = self.image_processor(
                images=present,
                size={"shortest_edge": self._min_pixels, "longest_edge": self._max_pixels},
                return_tensors="pt",
            )
            pixel_values, grid = processed["pixel_values"], processed["image_grid_thw"]
            tokens = (grid.prod(-1) // self._merge_size**2).tolist()
            it = iter(tokens)
            counts = [next(it) if p is not None else 0 for p in prepared]
        ids = self._token_ids(list(texts), counts, instruction)
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, seq in enumerate(ids):
            start = width - len(seq) if self.padding_side == "left" else 0
            input_ids[row, start : start + len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, start : start + len(seq)] = 1
        batch = {"input_ids": input_ids, "attention_mask": mask}
        if pixel_values is not None and grid is not None:
            batch["pixel_values"] = pixel_values
            batch["image_grid_thw"] = grid
        return batch

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Unit-norm float32 embeddings (B, dim) of one encoded batch (see module docstring)."""
        dev = torch.device(self.device)
        input_ids = input_ids.to(dev)
        attention_mask = attention_mask.to(dev)
        inputs_embeds = self._text_model.embed_tokens(input_ids)
        if pixel_values is not None:
            if image_grid_thw is None:
                raise ValueError("pixel_values need their image_grid_thw")
            # patch_embed's dtype (get_dtype() reads a Linear weight, which int8 quantisation
            # turns into a method)
            pixel_values = pixel_values.to(dev, dtype=self._visual.patch_embed.proj.weight.dtype)
            out = self._visual(pixel_values, grid_thw=image_grid_thw.to(dev))
            feats = out if isinstance(out, torch.Tensor) else out.pooler_output
            image_mask = input_ids == self._image_token_id
            if int(image_mask.sum()) != feats.shape[0]:
                raise RuntimeError(
                    f"{int(image_mask.sum())} image pads but {feats.shape[0]} visual tokens"
                )
            inputs_embeds = inputs_embeds.masked_scatter(
                image_mask.unsqueeze(-1), feats.to(inputs_embeds.dtype)
            )
        # Plain positions 0..len-1 of each sequence, on all three M-RoPE axes.
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        position_ids = positions.unsqueeze(0).expand(3, -1, -1)
        hidden = self._text_model(
            inputs_embeds=inputs_embeds,
            attention_mask=_decoder_mask(attention_mask),
            position_ids=position_ids,
            use_cache=False,
        ).last_hidden_state
        seq = torch.arange(attention_mask.shape[1], device=dev)
        last = (attention_mask.long() * seq).argmax(-1)  # last real token, any padding side
        pooled = hidden[torch.arange(hidden.shape[0], device=dev), last]
        return F.normalize(pooled.float(), p=2, dim=-1)

    def _eager_fallback(self) -> contextlib.AbstractContextManager:
        """Around model calls of a compiled embedder: if compilation fails (no C++ compiler,
        an unsupported op), run eagerly instead of crashing. Dynamo's switch for that is
        process-wide, so it is set only while this embedder runs its model."""
        if not self.compiled:
            return contextlib.nullcontext()
        import torch._dynamo

        return torch._dynamo.config.patch(suppress_errors=True)

    def _embed(
        self,
        texts: Sequence[str | None],
        images: Sequence[Image.Image | None],
        instruction: str | None,
    ) -> np.ndarray:
        n = len(texts)
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        # Sequence lengths without touching pixels, to sort (length bucketing).
        counts = [self.image_token_count(i) if i is not None else 0 for i in images]
        lengths = [len(x) for x in self._token_ids(list(texts), counts, instruction)]
        order = sorted(range(n), key=lambda i: (-lengths[i], i))
        out = np.empty((n, self.dim), dtype=np.float32)
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            batch = self.encode(
                [texts[i] for i in idx], [images[i] for i in idx], instruction=instruction
            )
            with self._eager_fallback():
                out[idx] = self.forward(**batch).cpu().numpy()
        return out

    # ----------------------------------------------------------------- Embedder API

    def embed_texts(self, texts: Sequence[str], *, instruction: str | None = None) -> np.ndarray:
        """Embed texts; (n, dim) float32, unit rows, input order.

        With :attr:`prefix_cache` (default) the prompt prefix shared by all texts,
        ``<|im_start|>system\n{instruction}<|im_end|>\n<|im_start|>user\n``, runs through
        the decoder once per instruction and its keys/values are reused, so each text costs
        only its own tokens. Causal attention makes this exact (same vectors up to float
        rounding); a text whose tokenisation does not start with the prefix's tokens, or one
        that would be truncated, takes the plain path.
        """
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.queries.run(len(texts), lambda: self._embed_texts_with(texts, instruction))

    def _embed_texts_with(self, texts: list[str], instruction: str | None) -> np.ndarray:
        """:meth:`embed_texts` with whatever query weights are chosen (or exact)."""
        if not self.prefix_cache:
            with self.queries.active():
                return self._embed(texts, [None] * len(texts), instruction)
        with self._eager_fallback():
            prefix_ids, kv = self._prefix(instruction)  # exact weights, computed once
        ids = self._token_ids(texts, [0] * len(texts), instruction)
        p = len(prefix_ids)
        cached = [
            i
            for i, seq in enumerate(ids)
            if seq[:p] == prefix_ids and p < len(seq) < self.max_length
        ]
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        rest = sorted(set(range(len(texts))) - set(cached))
        with self.queries.active():
            if rest:
                out[rest] = self._embed([texts[i] for i in rest], [None] * len(rest), instruction)
            cached.sort(key=lambda i: (-len(ids[i]), i))  # length bucketing
            for start in range(0, len(cached), self.batch_size):
                idx = cached[start : start + self.batch_size]
                with self._eager_fallback():
                    out[idx] = self._forward_suffix([ids[i][p:] for i in idx], kv).cpu().numpy()
        return out

    # ----------------------------------------------------------------- query weights

    #: Fixed queries of a few lengths for the self-check of :meth:`prepare_queries`.
    CALIBRATION_QUERIES = CALIBRATION_QUERIES

    def prepare_queries(self) -> lowp.QueryChoice:
        """Decide, once, which decoder weights text queries use; returns the decision.

        A smaller copy of the decoder's weights makes a query ~2x faster on CPUs without
        native bf16; it is used only where it agrees with the exact path and is faster
        (see :meth:`QueryWeightsPolicy.prepare
        <indexer.model.gme.query_weights.QueryWeightsPolicy.prepare>` for when and how the
        decision is made and kept). Long-lived processes call this at start-up.
        """
        return self.queries.prepare()

    def set_query_weights(self, setting: str) -> lowp.QueryChoice:
        """Change the query-weights setting and decide again now (drops any copy)."""
        return self.queries.change(setting)

    @property
    def query_weights(self) -> str:
        """The setting: "auto", "exact" or a candidate (see :mod:`~.query_weights`)."""
        return self.queries.setting

    @property
    def query_choice(self) -> lowp.QueryChoice | None:
        """What :meth:`prepare_queries` decided (None until decided)."""
        return self.queries.choice

    @property
    def decision_cache(self) -> DecisionCache | None:
        """Where decisions are kept between processes; None: measure every time."""
        return self.queries.decision_cache

    @decision_cache.setter
    def decision_cache(self, cache: DecisionCache | None) -> None:
        self.queries.decision_cache = cache

    @property
    def cpu_flags(self) -> frozenset[str] | None:
        """CPU flags the auto decision reads (None: this machine's); tests inject others."""
        return self.queries.cpu_flags

    @cpu_flags.setter
    def cpu_flags(self, flags: frozenset[str] | None) -> None:
        self.queries.cpu_flags = flags

    @property
    def _text_calls(self) -> int:
        return self.queries.text_calls

    def _embed_texts_now(self, texts: list[str]) -> np.ndarray:
        """Query vectors of ``texts`` with whatever weights are active (no decision)."""
        prefix_ids, kv = self._prefix(QUERY_INSTRUCTION)
        ids = self._token_ids(texts, [0] * len(texts), QUERY_INSTRUCTION)
        p = len(prefix_ids)
        return self._forward_suffix([seq[p:] for seq in ids], kv).cpu().numpy()

    def _prefix(self, instruction: str | None) -> tuple[list[int], list]:
        """Token ids and per-layer (key, value) of the constant prompt prefix (cached)."""
        if instruction is None:
            instruction = DEFAULT_INSTRUCTION
        hit = self._prefix_kv.get(instruction)
        if hit is not None:
            return hit
        ids, kv = prefix.prefix_kv(self._text_model, self.tokenizer, instruction, self.device)
        if len(self._prefix_kv) >= 8:
            self._prefix_kv.pop(next(iter(self._prefix_kv)))
        self._prefix_kv[instruction] = (ids, kv)
        return ids, kv

    def _forward_suffix(self, suffixes: list[list[int]], kv: list) -> torch.Tensor:
        """Like :meth:`forward` for text prompts whose prefix is already in ``kv``."""
        return prefix.forward_suffix(self._text_model, suffixes, kv, self._pad_id, self.device)

    def embed_images(
        self,
        images: Sequence[Image.Image],
        *,
        instruction: str | None = None,
        max_image_tokens: int | None = None,
    ) -> np.ndarray:
        """Embed images (no text); (n, dim) float32, unit rows, input order.
        ``max_image_tokens``: this call's budget (crops of visual evidence), same model."""
        with budget.image_budget(self, max_image_tokens):
            return self._embed([None] * len(images), list(images), instruction)

    def embed_fused(
        self,
        texts: Sequence[str],
        images: Sequence[Image.Image],
        *,
        instruction: str | None = None,
    ) -> np.ndarray:
        """Embed (image, text) pairs as one input each: the image block then the text."""
        require_pairs(texts, images)
        return self._embed([str(t) for t in texts], list(images), instruction)

    def __repr__(self) -> str:
        return (
            f"GmeEmbedder(model_id={self.model_id!r}, dim={self.dim}, device={self.device!r}, "
            f"dtype={self.dtype!r}, max_image_tokens={self.max_image_tokens})"
        )


__all__ = ["GmeEmbedder"]
