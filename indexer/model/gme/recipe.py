"""The GME recipe (``Alibaba-NLP/gme-Qwen2-VL-2B-Instruct``) on transformers' own Qwen2-VL classes.

GME ships a ``gme_inference.py`` that stopped working with transformers >= 4.52 (the Qwen2-VL
modules were reorganised). This package re-implements its recipe on
``Qwen2VLForConditionalGeneration`` without ``trust_remote_code``; the numbers it produces
are the official ones. This module holds the recipe's constants, prompt and image sizing;
:mod:`indexer.model.gme.embedder` runs it. The recipe, step by step:

1. **Prompt** (a string, tokenised with ``add_special_tokens=False``; nothing else is added)::

       <|im_start|>system\\n{instruction}<|im_end|>\\n<|im_start|>user\\n{user}<|im_end|>\\n<|im_start|>assistant\\n<|endoftext|>

   ``{user}`` is the text for a text input, ``<|vision_start|><|image_pad|><|vision_end|>``
   for an image, and the image block followed directly by the text (no separator) for a
   fused input. ``instruction=None`` means :data:`~indexer.model.base.DEFAULT_INSTRUCTION`
   ("You are a helpful assistant."); the retriever passes
   :data:`~indexer.model.base.QUERY_INSTRUCTION` for queries. The single ``<|image_pad|>`` is
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

import math
from collections.abc import Callable

from PIL import Image

from indexer.model.base import DEFAULT_INSTRUCTION

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


def final_size(
    width: int, height: int, *, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """(height, width) the model will see for an image of this size; ValueError if refused."""
    fh, fw = _smart_resize_fetch(height, width)
    return _smart_resize_processor(
        fh, fw, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels
    )


def accepted_canvas(
    width: int, height: int, final: Callable[[int, int], tuple[int, int]]
) -> tuple[int, int]:
    """The smallest white-padded canvas (width, height) that ``final`` (a
    :func:`final_size` that raises ValueError for a refused size) accepts.

    A search against the processor's own acceptance, for any image a caller hands GME (a
    query photo, a page from elsewhere). :func:`indexer.pages.geometry.padded_size` is the
    closed form the renderer uses for its own settings, so rendered pages arrive already
    accepted and this returns them unchanged."""
    try:
        final(width, height)
        return width, height
    except ValueError:
        pass
    long_side = max(width, height)
    for ratio in range(_MAX_RATIO, 0, -1):
        short = max(min(width, height), math.ceil(long_side / ratio))
        w, h = (long_side, short) if width >= height else (short, long_side)
        try:
            final(w, h)
            return w, h
        except ValueError:
            continue
    raise ValueError(
        f"cannot make an image of size {width}x{height} acceptable"
    )  # pragma: no cover


def prepare_image(image: Image.Image, padded: Callable[[int, int], tuple[int, int]]) -> Image.Image:
    """RGB, padded (to ``padded(width, height)``) if its aspect ratio is refused, then
    qwen-vl-utils' ``fetch_image``."""
    from qwen_vl_utils import fetch_image

    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(image).__name__}")
    rgb = _to_rgb(image)
    w, h = padded(*rgb.size)
    if (w, h) != rgb.size:
        canvas = Image.new("RGB", (w, h), (255, 255, 255))
        canvas.paste(rgb, ((w - rgb.width) // 2, (h - rgb.height) // 2))
        rgb = canvas
    return fetch_image({"image": rgb})


__all__ = [
    "IMAGE_BLOCK",
    "IMAGE_PAD",
    "MAX_IMAGE_TOKENS",
    "MAX_LENGTH",
    "MIN_IMAGE_TOKENS",
    "build_prompt",
    "final_size",
    "accepted_canvas",
    "prepare_image",
]
