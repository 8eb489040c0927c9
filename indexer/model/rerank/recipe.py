"""The Qwen3-VL-Reranker recipe (``Qwen/Qwen3-VL-Reranker-2B``): prompt, image sizes, constants.

Re-implemented from the reference inference script of QwenLM/Qwen3-VL-Embedding
(``src/models/qwen3_vl_reranker.py``) on transformers' own Qwen3-VL classes, without
``trust_remote_code``. :mod:`indexer.model.rerank.qwen3vl` runs it. Step by step:

1. **Prompt** (tokenised with nothing added)::

       <|im_start|>system\\n{SYSTEM_PROMPT}<|im_end|>\\n
       <|im_start|>user\\n<Instruct>: {instruction}<Query>:{query}\\n<Document>:{document}
       <|im_end|>\\n<|im_start|>assistant\\n

   (one string, shown on three lines; no newline after `{document}`).

   This is what the reference gets from the checkpoint's chat template
   (``apply_chat_template(..., add_generation_prompt=True)``) for its messages: a system
   turn holding :data:`SYSTEM_PROMPT`, and one user turn whose text parts are joined with
   nothing between them. ``{query}`` and ``{document}`` are each the image block
   ``<|vision_start|><|image_pad|><|vision_end|>`` (if there is an image) followed by the text
   (if there is one), or ``NULL`` when the side has neither. The instruction defaults to
   :data:`DEFAULT_INSTRUCTION`. The single ``<|image_pad|>`` is expanded to one pad per
   merged visual token, ``grid_t * grid_h * grid_w / merge_size**2``. The loader checks that
   the checkpoint's own chat template renders exactly this string.
2. **Images**: qwen-vl-utils' ``fetch_image`` with ``image_patch_size=16``: RGB (RGBA
   composited on white), resized (PIL bicubic) to multiples of 32 px holding
   ``min_pixels..max_pixels`` (reference: 4..1800 visual tokens of 32x32 px); then the Qwen3-VL
   image processor with ``do_resize=False`` rescales by 1/255 and normalises with mean/std
   0.5; patch 16, temporal patch 2 (the frame repeated), merge 2.
3. **Forward**: ``Qwen3VLModel`` (``model.model``), the model's own forward: vision tower,
   deepstack features, 3-D M-RoPE positions from ``mm_token_type_ids``; the final hidden
   state (after the last RMSNorm) of the last real token.
4. **Score**: ``sigmoid(h . (w_yes - w_no))`` where ``w_yes``/``w_no`` are the ``lm_head``
   rows of the tokens "yes" and "no": the sigmoid of the difference of their logits, in
   [0, 1]. Computed in float32 (the reference applies it in the model's dtype).

Sequences longer than :data:`MAX_LENGTH` tokens are refused by the reference. PageLens's
trimming policy (:meth:`~indexer.model.rerank.qwen3vl.Qwen3VLReranker._trimmed`): such a
pair has its page's text layer cut at a token boundary, its beginning kept, until the pair
fits; the query and the images are never cut, and a pair over the limit without the page's
text is refused.
"""

from __future__ import annotations

from PIL import Image

DEFAULT_RERANKER_ID = "Qwen/Qwen3-VL-Reranker-2B"
#: The reference's system prompt, byte for byte.
SYSTEM_PROMPT = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".'
)
#: The reference's default instruction.
DEFAULT_INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."
#: Longest sequence (tokens) the reference accepts.
MAX_LENGTH = 10240
#: Pixels per merged visual token side: patch 16 x merge 2.
IMAGE_FACTOR = 32
#: The reference's image budget, in visual tokens (min_pixels = 4*32*32, max = 1800*32*32).
MIN_IMAGE_TOKENS = 4
MAX_IMAGE_TOKENS = 1800

IMAGE_PAD = "<|image_pad|>"
YES, NO = "yes", "no"
QUERY_PREFIX = "<Query>:"
DOCUMENT_PREFIX = "\n<Document>:"
EMPTY_SIDE = "NULL"


def _side(text: str | None, image_tokens: int | None) -> str:
    """One side (query or document): image block then text, or NULL when it has neither."""
    if text is None and image_tokens is None:
        return EMPTY_SIDE
    out = ""
    if image_tokens is not None:
        out += "<|vision_start|>" + IMAGE_PAD * image_tokens + "<|vision_end|>"
    if text is not None:
        out += text
    return out


def build_prompt(
    *,
    query_text: str | None = None,
    query_image_tokens: int | None = None,
    doc_text: str | None = None,
    doc_image_tokens: int | None = None,
    instruction: str | None = None,
) -> str:
    """The reranker's prompt for one (query, document) pair.

    ``*_image_tokens`` is None for a side without an image, else the number of
    ``<|image_pad|>`` tokens to write (1 gives the string before the processor expands it).
    """
    user = (
        f"<Instruct>: {instruction or DEFAULT_INSTRUCTION}"
        + QUERY_PREFIX
        + _side(query_text, query_image_tokens)
        + DOCUMENT_PREFIX
        + _side(doc_text, doc_image_tokens)
    )
    return (
        f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"
        f"<|im_start|>user\n{user}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def pixel_budget(min_image_tokens: int, max_image_tokens: int) -> tuple[int, int]:
    """(min_pixels, max_pixels) of a budget in visual tokens."""
    if not 1 <= min_image_tokens <= max_image_tokens:
        raise ValueError(
            f"need 1 <= min_image_tokens <= max_image_tokens, got {min_image_tokens}, "
            f"{max_image_tokens}"
        )
    area = IMAGE_FACTOR * IMAGE_FACTOR
    return min_image_tokens * area, max_image_tokens * area


def prepare_image(image: Image.Image, *, min_pixels: int, max_pixels: int) -> Image.Image:
    """qwen-vl-utils' ``fetch_image`` as the reference calls it (patch 16, its pixel budget)."""
    from qwen_vl_utils import fetch_image

    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(image).__name__}")
    return fetch_image(
        {"image": image, "min_pixels": min_pixels, "max_pixels": max_pixels},
        image_patch_size=IMAGE_FACTOR // 2,
    )


__all__ = [
    "DEFAULT_INSTRUCTION",
    "DEFAULT_RERANKER_ID",
    "IMAGE_PAD",
    "MAX_IMAGE_TOKENS",
    "MAX_LENGTH",
    "MIN_IMAGE_TOKENS",
    "NO",
    "SYSTEM_PROMPT",
    "YES",
    "build_prompt",
    "pixel_budget",
    "prepare_image",
]
