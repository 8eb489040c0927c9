"""GME (``Alibaba-NLP/gme-Qwen2-VL-2B-Instruct``) on transformers' own Qwen2-VL classes.

GME ships a ``gme_inference.py`` that stopped working with transformers >= 4.52 (the Qwen2-VL
modules were reorganised). This module re-implements its recipe on
``Qwen2VLForConditionalGeneration`` without ``trust_remote_code``; the numbers it produces
are the official ones. The recipe, step by step:

1. **Prompt** (a string, tokenised with ``add_special_tokens=False``; nothing else is added)::

       <|im_start|>system\\n{instruction}<|im_end|>\\n<|im_start|>user\\n{user}<|im_end|>\\n<|im_start|>assistant\\n<|endoftext|>

   ``{user}`` is the text for a text input, ``<|vision_start|><|image_pad|><|vision_end|>``
   for an image, and the image block followed directly by the text (no separator) for a
   fused input. ``instruction=None`` means :data:`~indexer.embedder.DEFAULT_INSTRUCTION`
   ("You are a helpful assistant."); the retriever passes
   :data:`~indexer.embedder.QUERY_INSTRUCTION` for queries. The single ``<|image_pad|>`` is
   expanded to one pad per visual token, ``grid_t * grid_h * grid_w / merge_size**2``.
2. **Images**: ``image.convert("RGB")`` (as GME's own copy of ``fetch_image`` does; note
   that qwen-vl-utils >= 0.0.9 would composite RGBA onto white instead, so we convert
   first), then ``qwen_vl_utils.fetch_image({"image": img})`` resizes them (PIL bicubic) to
   multiples of 28 px holding 4..16384 visual tokens (identical to GME's copy); then the
   Qwen2-VL image processor (the PIL one, ``Qwen2VLImageProcessorPil``, as the original
   used PIL) resizes again, bicubic, to ``min_image_tokens..max_image_tokens`` visual tokens
   (default 256..1280, i.e. ``min_pixels=256*28*28``, ``max_pixels=1280*28*28``, passed as
   ``size={"shortest_edge": ..., "longest_edge": ...}`` in transformers 5), rescales by 1/255
   and normalises with the CLIP mean/std; patch 14, temporal patch 2 (the frame is
   repeated), merge 2.
3. **Forward**: ``inputs_embeds = embed_tokens(input_ids)``; the vision tower runs on
   ``pixel_values``/``image_grid_thw`` and its merged output replaces the ``<|image_pad|>``
   rows; then the text decoder (``Qwen2VLTextModel``, ``model.model.language_model`` in
   transformers 5) runs on ``inputs_embeds`` with the attention mask and **plain 1-D
   positions 0..len-1 repeated on all three M-RoPE axes** (that is what the original got by
   calling the decoder with ``position_ids=None``; the 3-D image positions that
   ``Qwen2VLModel.forward`` would compute are *not* used). Sequences are right-truncated to
   1800 tokens; a truncation that would cut into the image pads is refused with a
   ``ValueError`` (impossible with budgets up to 1280 tokens and ordinary instructions).
4. **Pooling**: the final hidden state (after the last RMSNorm) of the last real token -
   ``<|endoftext|>`` unless truncated - L2-normalised, returned as float32 numpy.

Batches are right-padded and sorted by length (results are returned in input order); a
batch gives the same vectors as one-at-a-time calls, up to float rounding.

The one deviation concerns images with an aspect ratio above 200 (or so close to it that
the processor's rounding to multiples of 28 pushes it over): qwen-vl-utils and the
transformers processor raise for those, and GME's bundled ``fetch_image`` squeezes them to
200:1 with a warning (and can then still crash in the processor). We instead pad them with
white around the centre, along the short side, just enough to be accepted, so they neither
crash nor get distorted. Every other image is processed exactly as the original does.

Loading: the hub checkpoint was saved with transformers 4.4x key names (``model.layers.*``,
``visual.*``, ``lm_head``); transformers 5 renames them on load through the
``Qwen2VLForConditionalGeneration`` entry of ``transformers/conversion_mapping.py``
(``^visual`` -> ``model.visual``, ``^model`` -> ``model.language_model``), and
``save_pretrained`` writes the legacy names back. Its flat ``config.json`` (with
``rope_scaling: {"type": "mrope", ...}``) is still accepted by ``Qwen2VLConfig``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from indexer import cpu_heap, page_kernels, quant
from indexer.config import DEFAULT_MODEL_ID, default_model
from indexer.embedder import DEFAULT_INSTRUCTION, QUERY_INSTRUCTION, EmbedderBase, require_pairs
from indexer.errors import ModelNotAvailableError
from indexer.identity import identify
from indexer.query_choice_cache import DecisionCache, decision_key, memory_shortfall

_log = logging.getLogger(__name__)

#: Token budget of the original recipe: sequences are right-truncated to this many tokens.
MAX_LENGTH = 1800
#: Default visual-token budget per image (GME's ``min_image_tokens``/``max_image_tokens``).
MIN_IMAGE_TOKENS = 256
MAX_IMAGE_TOKENS = 1280
#: qwen-vl-utils' ``fetch_image`` pre-resize: 28-px grid, 4..16384 visual tokens.
_FETCH_FACTOR = 28
_FETCH_MIN_PIXELS = 4 * 28 * 28
_FETCH_MAX_PIXELS = 16384 * 28 * 28
_MAX_RATIO = 200

IMAGE_PAD = "<|image_pad|>"
IMAGE_BLOCK = "<|vision_start|><|image_pad|><|vision_end|>"

_HELP = (
    "PageLens needs the GME-Qwen2-VL-2B weights (about 4.5 GB) on this computer. Download them "
    "once with `huggingface-cli download Alibaba-NLP/gme-Qwen2-VL-2B-Instruct --local-dir "
    "~/models/gme-2b` (or `hf download ...` with newer huggingface_hub), then point PageLens at "
    "that folder with `PAGELENS_MODEL=~/models/gme-2b` (or pass the folder as the model)."
)


def _help() -> str:
    """The how-to-get-the-weights advice; names HF_HUB_OFFLINE only when it is really set."""
    if _offline_env():
        return (
            f"{_HELP} On a computer that is online, unsetting HF_HUB_OFFLINE also lets "
            f"PageLens download {DEFAULT_MODEL_ID} by itself."
        )
    return f"{_HELP} Online, PageLens downloads {DEFAULT_MODEL_ID} by itself on first use."


def build_prompt(
    text: str | None = None,
    *,
    image: bool = False,
    instruction: str | None = None,
    image_tokens: int = 1,
) -> str:
    """GME's prompt for a text, an image (``image=True``) or both (fused).

    With the default ``image_tokens=1`` this is the string the original builds before its
    processor expands ``<|image_pad|>``; pass the visual-token count to get the expanded one.
    """
    if instruction is None:
        instruction = DEFAULT_INSTRUCTION
    user = ""
    if image:
        user += "<|vision_start|>" + IMAGE_PAD * image_tokens + "<|vision_end|>"
    if text is not None:
        user += text
    return (
        f"<|im_start|>system\n{instruction}<|im_end|>\n"
        f"<|im_start|>user\n{user}<|im_end|>\n"
        f"<|im_start|>assistant\n<|endoftext|>"
    )


# --------------------------------------------------------------------------- device / dtype


def resolve_device(device: str | torch.device | None = None) -> str:
    """``device`` as a string, or the best available one: CUDA, then MPS, then CPU."""
    if device is not None and str(device) not in ("", "auto"):
        return str(device)
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX-BF16 or AVX512-BF16, read on Linux)."""
    return quant.has_native_bf16(quant.cpu_flags())


_DTYPE_NAMES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
}


def resolve_dtype(dtype: Any = None, device: str = "cpu") -> torch.dtype:
    """A torch dtype from a dtype, a name ("bfloat16", "float16", "float32") or None/"auto".

    Auto: bf16 on CUDA (fp16 where bf16 is unsupported), fp16 on MPS, and on CPU bf16 only
    when the CPU has native bf16, else fp32.
    """
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point type, not {dtype}")
        return dtype
    if dtype is None or str(dtype).lower() == "auto":
        kind = torch.device(device).type
        if kind == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if kind == "mps":
            return torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    name = str(dtype).lower().removeprefix("torch.")
    if name not in _DTYPE_NAMES:
        raise ValueError(f"unknown dtype {dtype!r}; use bfloat16, float16 or float32")
    return _DTYPE_NAMES[name]


#: Below this text hidden size a model is too small for bf16 to pay off on a CPU.
CPU_BF16_MIN_HIDDEN = 1024


def _auto(dtype: Any) -> bool:
    return dtype is None or (isinstance(dtype, str) and dtype.lower() == "auto")


def cpu_auto_dtype(config: Any) -> torch.dtype:
    """The automatic CPU dtype for a model: bf16 on native-bf16 CPUs for GME-sized models.

    bf16 on AMX/AVX512-BF16 CPUs is 1.7-4x faster for GME-2B (see README, Performance) with
    vectors within cosine 0.9995 of float32. For small models (the random-weight test
    checkpoints) the matrices are too small for that speed-up and bf16 only costs accuracy,
    so they stay in float32.
    """
    text = getattr(config, "text_config", None) or config
    hidden = int(getattr(text, "hidden_size", 0) or 0)
    if hidden < CPU_BF16_MIN_HIDDEN:
        return torch.float32
    return resolve_dtype(None, "cpu")


# --------------------------------------------------------------------------- images


def _smart_resize_fetch(height: int, width: int) -> tuple[int, int]:
    from qwen_vl_utils.vision_process import smart_resize

    return smart_resize(
        height,
        width,
        factor=_FETCH_FACTOR,
        min_pixels=_FETCH_MIN_PIXELS,
        max_pixels=_FETCH_MAX_PIXELS,
    )


def _smart_resize_processor(
    height: int, width: int, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    return smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB as GME's ``fetch_image`` does it: a plain ``convert("RGB")`` (alpha dropped)."""
    return image.convert("RGB")


# --------------------------------------------------------------------------- the embedder


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


def _nothing() -> Any:
    import contextlib

    return contextlib.nullcontext()


class GmeEmbedder(EmbedderBase):
    """GME behind PageLens' :class:`~indexer.embedder.Embedder` interface.

    Build it with :func:`load_embedder` (or ``indexer.random_model.random_embedder`` for a
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
        if query_weights not in quant.QUERY_WEIGHTS:
            raise ValueError(
                f"unknown query_weights {query_weights!r}; expected one of {quant.QUERY_WEIGHTS}"
            )
        #: Text-query decoder weights: "auto" (a smaller copy where it is faster and agrees,
        #: see :meth:`prepare_queries`), "exact", or a candidate of :mod:`indexer.quant`.
        self.query_weights = query_weights
        #: What :meth:`prepare_queries` decided (None until decided: in "auto", at the second
        #: text query of the process or an explicit :meth:`prepare_queries`).
        self.query_choice: quant.QueryChoice | None = None
        self._query_int8: quant.QueryWeights | None = None
        #: Where decisions are kept between processes (:mod:`indexer.query_choice_cache`);
        #: None: measure every time (the benchmark's choice).
        self.decision_cache: DecisionCache | None = DecisionCache()
        self._decide_lock = threading.Lock()
        self._text_calls = 0
        #: Seconds this process has spent on text queries with the exact weights while the
        #: decision waited, against what building a cached copy costs (:meth:`_maybe_decide`).
        self._exact_text_s = 0.0
        #: CPU flags the auto decision reads (None: this machine's); tests inject others.
        self.cpu_flags: frozenset[str] | None = None

        self._text_model = model.model.language_model  # Qwen2VLTextModel
        self._visual = model.model.visual
        #: Which of :mod:`indexer.page_kernels`' leaner vision forwards are in use (same maths,
        #: fewer passes over memory; "attention", "mlp"); the benchmark reports them.
        self.page_kernels: list[str] = page_kernels.install(self._visual)
        #: Whether freed activations stay in the process (:mod:`indexer.cpu_heap`: pages no
        #: longer fault in and zero ~1 GiB per forward on CPU; glibc only). A process-wide
        #: allocator setting, so the programs that own their process turn it on (the CLI,
        #: the app, Ray actors, the bench), not this constructor; library users may call
        #: :func:`indexer.cpu_heap.keep_freed_memory` themselves.
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
    def _min_pixels(self) -> int:
        return self.min_image_tokens * (self._patch_size * self._merge_size) ** 2

    @property
    def _max_pixels(self) -> int:
        return self.max_image_tokens * (self._patch_size * self._merge_size) ** 2

    def _final_size(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) the model will see for an image of this size; ValueError if refused."""
        fh, fw = _smart_resize_fetch(height, width)
        return _smart_resize_processor(
            fh,
            fw,
            factor=self._patch_size * self._merge_size,
            min_pixels=self._min_pixels,
            max_pixels=self._max_pixels,
        )

    def _padded_size(self, width: int, height: int) -> tuple[int, int]:
        """The smallest white-padded canvas (width, height) the recipe accepts."""
        try:
            self._final_size(width, height)
            return width, height
        except ValueError:
            pass
        long_side = max(width, height)
        for ratio in range(_MAX_RATIO, 0, -1):
            short = max(min(width, height), math.ceil(long_side / ratio))
            w, h = (long_side, short) if width >= height else (short, long_side)
            try:
                self._final_size(w, h)
                return w, h
            except ValueError:
                continue
        raise ValueError(
            f"cannot make an image of size {width}x{height} acceptable"
        )  # pragma: no cover

    def _prepare_image(self, image: Image.Image) -> Image.Image:
        """RGB, padded if its aspect ratio is refused, then qwen-vl-utils' ``fetch_image``."""
        from qwen_vl_utils import fetch_image

        if not isinstance(image, Image.Image):
            raise TypeError(f"expected a PIL image, got {type(image).__name__}")
        rgb = _to_rgb(image)
        w, h = self._padded_size(*rgb.size)
        if (w, h) != rgb.size:
            canvas = Image.new("RGB", (w, h), (255, 255, 255))
            canvas.paste(rgb, ((w - rgb.width) // 2, (h - rgb.height) // 2))
            rgb = canvas
        return fetch_image({"image": rgb})

    def image_token_count(self, image: Image.Image | tuple[int, int]) -> int:
        """Visual tokens (``<|image_pad|>`` count) an image costs; accepts an image or (w, h)."""
        rows, columns = self.patch_grid(image)
        return rows * columns // self._merge_size**2

    def patch_grid(self, image: Image.Image | tuple[int, int]) -> tuple[int, int]:
        """(rows, columns) of vision patches the model sees for an image (or a (w, h) size),
        after padding and resizing as the recipe does: what the vision tower's cost scales
        with (the benchmark counts FLOPs from it)."""
        width, height = image if isinstance(image, tuple) else image.size
        fh, fw = self._final_size(*self._padded_size(int(width), int(height)))
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
        self._text_calls += 1
        if self.query_choice is None:
            self._maybe_decide(len(texts))
        if self.query_choice is not None:
            return self._embed_texts_with(texts, instruction)
        t0 = time.perf_counter()
        try:
            return self._embed_texts_with(texts, instruction)
        finally:
            self._exact_text_s += time.perf_counter() - t0

    def _embed_texts_with(self, texts: list[str], instruction: str | None) -> np.ndarray:
        """:meth:`embed_texts` with whatever query weights are chosen (or exact)."""
        if not self.prefix_cache:
            with self._query_path():
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
        with self._query_path():
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
    CALIBRATION_QUERIES = (
        "how do I declare an interface",
        "quarterly revenue by region, compared with the previous year",
        "table of contents",
        "a diagram that shows the network topology of the data centre and its firewalls",
    )

    def _query_path(self) -> Any:
        """Context in which text inputs use the chosen query weights (a no-op when exact)."""
        weights = self._query_int8  # one read: another thread may swap it
        return weights.active() if weights is not None else _nothing()

    def prepare_queries(self) -> quant.QueryChoice:
        """Decide, once, which decoder weights text queries use; returns the decision.

        Why: a query is bound by reading the decoder's weights, so a smaller copy of them
        (fp16 weights with float32 activations today, see :mod:`indexer.quant`) makes it
        ~2x faster on CPUs without native bf16. A copy is used only when, measured on
        whole calibration queries, it agrees with the exact path (cosine >= 0.999 on each)
        and is faster, and when the memory available now holds it; else queries stay exact.

        Measuring takes tens of seconds on those CPUs and building the copy ~2.6 GB and
        several seconds for GME-2B, so: the decision is kept on disk per model, CPU and
        torch (:mod:`indexer.query_choice_cache`) and a later process only builds the copy;
        with ``query_weights="auto"`` the first text query of a process runs exact without
        deciding (a one-shot ``pagelens search`` never pays) and the second decides, except
        that a copy an earlier process chose is built only once this process's exact
        queries have taken as long as building it took there (a short run never pays it);
        long-lived processes (``pagelens serve``, ``pagelens mcp``, the app) call this at
        start-up so that their first query is fast already. Thread-safe: a text query in
        another thread meanwhile runs exact. Pages never use the copy.
        """
        choice = self.query_choice
        if choice is not None:
            return choice
        with self._decide_lock:
            if self.query_choice is None:
                self._decide()
            assert self.query_choice is not None
            return self.query_choice

    def _maybe_decide(self, n_texts: int) -> None:
        """Decide now if this process has shown it runs more than one text query (or the
        setting names a copy); never waits for a decision another thread is making."""
        if (
            self.query_weights == "auto"
            and self._text_calls <= 1
            and n_texts <= 1
            and self._plan().candidates  # else deciding costs nothing: do it now
        ):
            _log.info(
                "text queries: exact for this first query; the query-weights decision waits "
                "for a second one (or prepare_queries())"
            )
            return
        cost = self._cached_copy_cost if self.query_weights == "auto" else None
        if cost is not None and self._exact_text_s < cost:
            # An earlier process measured that a copy holds and what building it costs:
            # build it once the exact queries of this process have taken that long (at most
            # twice the best possible time, whatever the number of queries to come), so a
            # short run of a few queries never pays ~10 s for a copy it would not use up.
            _log.info(
                "text queries: exact until they have taken %.1f s (building the faster copy "
                "costs that; %.1f s so far)",
                cost,
                self._exact_text_s,
            )
            return
        if self._decide_lock.acquire(blocking=False):
            try:
                if self.query_choice is None:
                    self._decide()
            finally:
                self._decide_lock.release()

    def _plan(self) -> quant.QueryPlan:
        """The candidates this model, setting and CPU allow (no measuring)."""
        plan = quant.plan_query_weights(
            self.query_weights,
            device=self.device,
            dtype=self.dtype,
            hidden=self.dim,
            min_hidden=CPU_BF16_MIN_HIDDEN,
            flags=self.cpu_flags,
        )
        if plan.candidates and self.compiled and self.query_weights == "auto":
            plan = quant.QueryPlan((), "model is torch.compile'd")
        return plan

    def _decide(self) -> None:
        """The decision of :meth:`prepare_queries` (caller holds ``_decide_lock``)."""
        plan = self._plan()
        weights: quant.QueryWeights | None = None
        if not plan.candidates:
            choice = quant.QueryChoice(reason=plan.reason, source="plan")
        else:
            choice, weights = self._decide_among(plan)
        self._query_int8, self.query_choice = weights, choice
        _log.info(
            "text queries: %s (%s)%s%s",
            choice.mode,
            choice.reason,
            f"; measured {choice.candidates}, exact {choice.exact_s} s"
            if choice.candidates
            else "",
            f"; decided by an earlier process, from {choice.cache_file}"
            if choice.source == "cache"
            else "",
        )

    def _decision_key(self, plan: quant.QueryPlan) -> dict[str, Any]:
        """What the decision depends on (:func:`indexer.query_choice_cache.decision_key`)."""
        return decision_key(
            model_id=self.model_id,
            fingerprint=self.fingerprint,
            config=self.model.config.to_json_string(use_diff=False),
            flags=quant.cpu_flags() if self.cpu_flags is None else self.cpu_flags,
            device=self.device,
            dtype=self.dtype,
            candidates=plan.candidates,
            forced=self.query_weights != "auto",
            calibration=self.CALIBRATION_QUERIES,
        )

    @functools.cached_property
    def _cached_copy_cost(self) -> float | None:
        """Seconds building the copy took when an earlier process decided on one for this
        key (looked up once), or None: no such decision, or its cost was not recorded."""
        plan = self._plan()
        cache = self.decision_cache
        cached = cache.load(self._decision_key(plan)) if cache and plan.candidates else None
        if cached is None or cached.mode == "exact":
            return None
        cost = cached.timings.get("prepare_s_when_measured")
        return float(cost) if cost is not None else None

    def _decide_among(
        self, plan: quant.QueryPlan
    ) -> tuple[quant.QueryChoice, quant.QueryWeights | None]:
        """A cached decision for this key, else the calibration (saved for the next
        process); either way no copy that the free memory cannot hold."""
        forced = self.query_weights != "auto"
        t0 = time.perf_counter()
        key = self._decision_key(plan)
        cache = self.decision_cache
        cached = cache.load(key) if cache is not None else None
        n_weights = sum(
            m.weight.numel() for m in self._text_model.modules() if isinstance(m, torch.nn.Linear)
        )
        if cached is not None:
            cached.timings["cached_decision_s"] = round(time.perf_counter() - t0, 4)
            if cached.mode == "exact":
                return cached, None
            short = memory_shortfall(cached.mode, n_weights)
            if short:
                cached.mode, cached.reason = "exact", f"{cached.reason}; {short}"
                return cached, None
            t1 = time.perf_counter()
            copy = quant.QueryWeights(self._text_model, cached.mode)
            cached.timings["prepare_s"] = round(time.perf_counter() - t1, 3)
            return cached, copy
        fits = tuple(c for c in plan.candidates if not memory_shortfall(c, n_weights))
        if not fits:
            reason = memory_shortfall(plan.candidates[0], n_weights)
            return quant.QueryChoice(reason=f"{plan.reason}; {reason}", source="memory"), None
        calib = list(self.CALIBRATION_QUERIES)
        built: dict[str, float] = {}

        def run() -> torch.Tensor:
            return torch.from_numpy(self._embed_texts_now(calib))

        def run_with(weights: quant.QueryWeights) -> torch.Tensor:
            with weights.active():
                return run()

        def make(name: str) -> quant.QueryWeights:
            t = time.perf_counter()
            copy = quant.QueryWeights(self._text_model, name)
            built[name] = round(time.perf_counter() - t, 3)
            return copy

        t1 = time.perf_counter()
        choice, weights = quant.choose(
            quant.QueryPlan(fits, plan.reason),
            run_exact=run,
            make=make,
            run_with=run_with,
            forced=forced,
        )
        choice.timings["calibration_s"] = round(time.perf_counter() - t1, 3)
        if weights is not None:
            choice.timings["prepare_s"] = built[choice.mode]
        # a decision over fewer candidates (memory was short) is not the key's answer
        if cache is not None and fits == plan.candidates:
            saved = cache.store(key, choice)
            choice.cache_file = str(saved) if saved else None
        return choice, weights

    def _embed_texts_now(self, texts: list[str]) -> np.ndarray:
        """Query vectors of ``texts`` with whatever weights are active (no decision)."""
        prefix_ids, kv = self._prefix(QUERY_INSTRUCTION)
        ids = self._token_ids(texts, [0] * len(texts), QUERY_INSTRUCTION)
        p = len(prefix_ids)
        return self._forward_suffix([seq[p:] for seq in ids], kv).cpu().numpy()

    def set_query_weights(self, setting: str) -> quant.QueryChoice:
        """Change the query-weights setting and decide again now (drops any copy)."""
        if setting not in quant.QUERY_WEIGHTS:
            raise ValueError(
                f"unknown query_weights {setting!r}; expected one of {quant.QUERY_WEIGHTS}"
            )
        with self._decide_lock:
            if self._query_int8 is not None:
                self._query_int8.remove()
            self._query_int8 = None
            self.query_choice = None
            self.query_weights = setting
        return self.prepare_queries()

    def _prefix(self, instruction: str | None) -> tuple[list[int], list]:
        """Token ids and per-layer (key, value) of the constant prompt prefix (cached)."""
        if instruction is None:
            instruction = DEFAULT_INSTRUCTION
        hit = self._prefix_kv.get(instruction)
        if hit is not None:
            return hit
        text = f"<|im_start|>system\n{instruction}<|im_end|>\n<|im_start|>user\n"
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        from transformers import DynamicCache

        dev = torch.device(self.device)
        with torch.inference_mode():
            input_ids = torch.tensor([ids], device=dev)
            pos = torch.arange(len(ids), device=dev).view(1, 1, -1).expand(3, 1, -1)
            cache = DynamicCache(config=self._text_model.config)
            self._text_model(
                inputs_embeds=self._text_model.embed_tokens(input_ids),
                attention_mask=torch.ones_like(input_ids),
                position_ids=pos,
                cache=cache,
                use_cache=True,
            )
            layers: list[Any] = list(cache.layers)  # full-attention layers: keys and values
            kv = [(layer.keys.clone(), layer.values.clone()) for layer in layers]
        if len(self._prefix_kv) >= 8:
            self._prefix_kv.pop(next(iter(self._prefix_kv)))
        self._prefix_kv[instruction] = (ids, kv)
        return ids, kv

    @torch.inference_mode()
    def _forward_suffix(self, suffixes: list[list[int]], kv: list) -> torch.Tensor:
        """Like :meth:`forward` for text prompts whose prefix is already in ``kv``."""
        from transformers import DynamicCache

        dev = torch.device(self.device)
        b, p = len(suffixes), kv[0][0].shape[2]
        width = max(len(s) for s in suffixes)
        input_ids = torch.full((b, width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((b, p + width), dtype=torch.long)
        mask[:, :p] = 1
        for row, seq in enumerate(suffixes):  # right padding
            input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, p : p + len(seq)] = 1
        input_ids, mask = input_ids.to(dev), mask.to(dev)
        cache = DynamicCache(
            ddp_cache_data=[(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)) for k, v in kv],
            config=self._text_model.config,
        )
        positions = torch.arange(p, p + width, device=dev).view(1, -1).expand(b, -1)
        hidden = self._text_model(
            inputs_embeds=self._text_model.embed_tokens(input_ids),
            attention_mask=mask,
            position_ids=positions.unsqueeze(0).expand(3, -1, -1),
            cache=cache,
            use_cache=True,
        ).last_hidden_state
        last = torch.tensor([len(s) - 1 for s in suffixes], device=dev)
        pooled = hidden[torch.arange(b, device=dev), last]
        return F.normalize(pooled.float(), p=2, dim=-1)

    def embed_images(
        self, images: Sequence[Image.Image], *, instruction: str | None = None
    ) -> np.ndarray:
        """Embed images (no text); (n, dim) float32, unit rows, input order."""
        images = list(images)
        return self._embed([None] * len(images), images, instruction)

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


# --------------------------------------------------------------------------- int8


QUANTIZE_MODES = ("int8",)


def quantize_embedder(embedder: GmeEmbedder, mode: str = "int8") -> GmeEmbedder:
    """Opt-in fast path: int8 dynamic quantisation of every ``nn.Linear`` (vision tower and
    decoder), in place, on CPU. Weights become int8 (per-channel scales), activations are
    quantised per batch; embeddings, norms and the patch convolution stay float32. Vectors
    are close to, not equal to, the float32 ones (``pagelens bench`` reports the agreement).
    Needs a float32 CPU model; returns ``embedder``.
    """
    if mode not in QUANTIZE_MODES:
        raise ValueError(f"unknown quantize mode {mode!r}; expected one of {QUANTIZE_MODES}")
    if torch.device(embedder.device).type != "cpu":
        raise ValueError("int8 quantisation is for CPU inference (use bf16/fp16 on GPUs)")
    # the leaner MLP forward calls the float linears' weights; int8 replaces those modules
    page_kernels.uninstall(embedder._visual)
    if embedder._query_int8 is not None:  # dynamic int8 replaces the linears themselves
        embedder._query_int8.remove()
    embedder._query_int8 = None
    embedder.query_weights = "exact"
    embedder.query_choice = None
    if embedder.dtype != "float32":
        embedder.model.to(torch.float32)

    from torch.ao.quantization import quantize_dynamic

    engines = torch.backends.quantized.supported_engines
    for engine in ("x86", "fbgemm", "onednn"):
        if engine in engines:
            torch.backends.quantized.engine = engine
            break
    # torch.ao.quantization warns that it is deprecated; not silenced here, because
    # warnings.catch_warnings() is not thread-safe (the app loads models in a thread) and a
    # library must not change the process's filters. The CLI filters it (cli_common).
    quantize_dynamic(embedder.model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    embedder.page_kernels = page_kernels.install(embedder._visual)  # attention only now
    embedder.dtype = "int8"
    embedder._prefix_kv.clear()
    return embedder


def compile_embedder(embedder: GmeEmbedder) -> GmeEmbedder:
    """Opt-in: compile the vision blocks and decoder layers with ``torch.compile``, in place.

    Why: on CPU the vision tower spends about a third of its time in small elementwise ops
    (rotary embedding, quick-GELU, copies) that inductor fuses; a vision block ran ~1.5x
    faster compiled (bf16, 5,120 patches). The first batch pays the compilation (tens of
    seconds, needs a C++ compiler), so it only pays off for long indexing jobs. Vectors equal
    the eager ones up to float rounding. If compilation fails, PyTorch falls back to eager.
    """
    inner = embedder.model.model
    for block in [*inner.visual.blocks, *inner.language_model.layers]:
        block.compile(dynamic=True)
    embedder.compiled = True
    return embedder


# --------------------------------------------------------------------------- loading


def _not_available(source: str, reason: str) -> ModelNotAvailableError:
    reason = reason.strip().rstrip(".")  # library messages end with their own period
    return ModelNotAvailableError(f"Cannot load the GME model {source!r}: {reason}. {_help()}")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return first if len(first) <= 300 else first[:297] + "..."


def _offline_env() -> str | None:
    """The variable that declares offline mode (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE), if set."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return name
    return None


def _hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be reached (one TCP connection attempt, to the hub or the proxy),
    or None when it can. Detecting "offline" once, in seconds, replaces huggingface_hub's
    ~40 s of retries and their two dozen warning lines."""
    from urllib.parse import urlsplit

    try:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    except ImportError:  # pragma: no cover - a transformers dependency
        endpoint = "https://huggingface.co"
    proxy = next(
        (
            os.environ[k]
            for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
            if os.environ.get(k)
        ),
        None,
    )
    target = urlsplit(proxy or endpoint)
    host = target.hostname or ""
    port = target.port or (443 if target.scheme == "https" else 80)
    import socket

    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        via = f" (through the proxy {target.hostname}:{port})" if proxy else ""
        return f"cannot reach {endpoint}{via}: {exc.strerror or exc}"
    return None


def _cached_locally(source: str) -> bool:
    """Whether a hub model is completely in the local Hugging Face cache (config + weights)."""
    from indexer.identity import hub_snapshot, weight_files

    snapshot = hub_snapshot(source)
    return snapshot is not None and bool(weight_files(snapshot))


def _offline() -> bool:
    if _offline_env():
        return True
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover
        return False
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _locate(source: str) -> str:
    """A local folder (absolute path) or a hub id; ModelNotAvailableError if neither."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise _not_available(source, f"{path} is a file, not a model folder")
        if not (path / "config.json").is_file():
            raise _not_available(source, f"the folder {path} has no config.json")
        weights = list(path.glob("*.safetensors")) + list(path.glob("pytorch_model*.bin"))
        if not weights:
            raise _not_available(source, f"the folder {path} holds no weights (*.safetensors)")
        return str(path.resolve())
    looks_like_path = (
        source.startswith((".", "/", "~"))
        or "\\" in source
        or os.path.isabs(source)
        or source.count("/") != 1
    )
    if looks_like_path:
        raise _not_available(source, f"the folder {path} does not exist")
    return source


def _quiet_transformers() -> Any:
    """Silence transformers' logging and progress bars; returns a function that restores them."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    def restore() -> None:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()

    return restore


def load_embedder(
    model: str | os.PathLike[str] | None = None,
    *,
    device: str | None = None,
    dtype: Any = None,
    quantize: str | None = None,
    compile: bool = False,
    **options: Any,
) -> GmeEmbedder:
    """Load GME from a hub id or a local folder (default ``$PAGELENS_MODEL`` or GME-2B).

    ``quantize="int8"``: opt-in int8 dynamic quantisation of the linear layers on CPU
    (:func:`quantize_embedder`; loads in float32 first). Never the default.
    ``compile=True``: opt-in ``torch.compile`` of the transformer blocks
    (:func:`compile_embedder`), for long indexing jobs.

    ``device``: "cuda", "mps", "cpu"... (default: the best available). ``dtype``: a torch
    dtype or "bfloat16"/"float16"/"float32" (default: bf16 on CUDA and native-bf16 CPUs,
    fp16 on MPS, else fp32). ``options`` go to :class:`GmeEmbedder` (``max_image_tokens``,
    ``min_image_tokens``, ``batch_size``, ``max_length``). Raises
    :class:`~indexer.errors.ModelNotAvailableError` with instructions when the weights
    cannot be found or downloaded.

    Long because every way a load can fail (offline, not a GME checkpoint, a tokenizer that
    does not match, damaged weights, out of memory) is turned into its own message here, in
    the order transformers meets them.
    """
    source = os.fspath(model) if model is not None else default_model()
    where = _locate(source)
    from_hub = not Path(where).is_dir()  # a hub id, not a folder on this computer
    # Offline? Say so before the slow transformers imports and without hub retries.
    offline = _offline()
    if from_hub and not offline:
        if _cached_locally(source):
            offline = True  # everything is here: load it without asking the network
        else:
            unreachable = _hub_unreachable()
            if unreachable:
                raise _not_available(
                    source,
                    f"this computer seems to be offline ({unreachable}) and the model is not "
                    "in the local Hugging Face cache",
                )
    from transformers import AutoConfig, AutoTokenizer, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    if quantize:
        if quantize not in QUANTIZE_MODES:
            raise ValueError(
                f"unknown quantize mode {quantize!r}; expected one of {QUANTIZE_MODES}"
            )
        torch_dtype = torch.float32
    # huggingface_hub reads HF_HUB_OFFLINE once, at import; honour it when set later too.
    hub: dict[str, Any] = {"local_files_only": True} if offline else {}
    # transformers' per-load chatter (progress bars, load reports about the unused lm_head)
    # means nothing to a PageLens user; errors still surface as ModelNotAvailableError.
    quiet = _quiet_transformers()
    try:
        try:
            config = AutoConfig.from_pretrained(where, **hub)
        except OSError as exc:
            if offline and from_hub:
                declared = _offline_env()
                raise _not_available(
                    source,
                    (f"{declared} is set" if declared else "offline mode is on")
                    + " and it is not in the local Hugging Face cache",
                ) from exc
            raise
        if getattr(config, "model_type", None) != "qwen2_vl":
            raise _not_available(
                source,
                f"it is a {getattr(config, 'model_type', 'unknown')!r} model, "
                "not a GME (Qwen2-VL) checkpoint",
            )
        if _auto(dtype) and not quantize and torch.device(dev).type == "cpu":
            torch_dtype = cpu_auto_dtype(config)
        tokenizer = AutoTokenizer.from_pretrained(where, **hub)
        if tokenizer.convert_tokens_to_ids(IMAGE_PAD) != config.image_token_id:
            raise _not_available(source, f"its tokenizer has no {IMAGE_PAD} at the model's id")
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(where, **hub)
        net: Any = Qwen2VLForConditionalGeneration.from_pretrained(
            where, config=config, dtype=torch_dtype, attn_implementation="sdpa", **hub
        )
    except ModelNotAvailableError:
        raise
    except torch.OutOfMemoryError:
        raise
    except (OSError, ValueError, KeyError, TypeError, ImportError, RuntimeError) as exc:
        raise _not_available(source, _short(exc)) from exc
    except Exception as exc:
        if type(exc).__name__ != "SafetensorError":  # a damaged weights file
            raise
        raise _not_available(source, f"damaged weights file ({_short(exc)})") from exc
    finally:
        quiet()
    net = net.to(dev).eval()
    model_id = source if where == source else where
    identity = identify(where)  # local files only: the weights just loaded
    embedder = GmeEmbedder(
        net,
        tokenizer,
        image_processor,
        model_id=model_id,
        fingerprint=identity.fingerprint,
        revision=identity.revision,
        device=dev,
        **options,
    )
    if quantize:
        quantize_embedder(embedder, quantize)
    if compile:
        compile_embedder(embedder)
    return embedder


__all__ = [
    "IMAGE_BLOCK",
    "MAX_LENGTH",
    "GmeEmbedder",
    "build_prompt",
    "cpu_has_native_bf16",
    "load_embedder",
    "quantize_embedder",
    "compile_embedder",
    "resolve_device",
    "resolve_dtype",
]
