"""The constant prompt prefix of text inputs, run once and reused as a key/value cache.

Every text prompt starts with
``<|im_start|>system\\n{instruction}<|im_end|>\\n<|im_start|>user\\n``; causal attention
makes the prefix's keys and values the same for every text, so
:class:`~indexer.model.gme.embedder.GmeEmbedder` computes them once per instruction
(:func:`prefix_kv`) and runs only each text's own tokens (:func:`forward_suffix`): same
vectors up to float rounding.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def prefix_kv(
    text_model: Any, tokenizer: Any, instruction: str, device: str
) -> tuple[list[int], list]:
    """Token ids and per-layer (key, value) of the constant prompt prefix."""
    text = f"<|im_start|>system\n{instruction}<|im_end|>\n<|im_start|>user\n"
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    from transformers import DynamicCache

    dev = torch.device(device)
    with torch.inference_mode():
        input_ids = torch.tensor([ids], device=dev)
        pos = torch.arange(len(ids), device=dev).view(1, 1, -1).expand(3, 1, -1)
        cache = DynamicCache(config=text_model.config)
        text_model(
            inputs_embeds=text_model.embed_tokens(input_ids),
            attention_mask=torch.ones_like(input_ids),
            position_ids=pos,
            cache=cache,
            use_cache=True,
        )
        layers: list[Any] = list(cache.layers)  # full-attention layers: keys and values
        kv = [(layer.keys.clone(), layer.values.clone()) for layer in layers]
    return ids, kv


@torch.inference_mode()
def forward_suffix(
    text_model: Any, suffixes: list[list[int]], kv: list, pad_id: int, device: str
) -> torch.Tensor:
    """Like ``GmeEmbedder.forward`` for text prompts whose prefix is already in ``kv``."""
    from transformers import DynamicCache

    dev = torch.device(device)
    b, p = len(suffixes), kv[0][0].shape[2]
    width = max(len(s) for s in suffixes)
    input_ids = torch.full((b, width), pad_id, dtype=torch.long)
    mask = torch.zeros((b, p + width), dtype=torch.long)
    mask[:, :p] = 1
    for row, seq in enumerate(suffixes):  # right padding
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, p : p + len(seq)] = 1
    input_ids, mask = input_ids.to(dev), mask.to(dev)
    cache = DynamicCache(
        ddp_cache_data=[(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)) for k, v in kv],
        config=text_model.config,
    )
    positions = torch.arange(p, p + width, device=dev).view(1, -1).expand(b, -1)
    hidden = text_model(
        inputs_embeds=text_model.embed_tokens(input_ids),
        attention_mask=mask,
        position_ids=positions.unsqueeze(0).expand(3, -1, -1),
        cache=cache,
        use_cache=True,
    ).last_hidden_state
    last = torch.tensor([len(s) - 1 for s in suffixes], device=dev)
    pooled = hidden[torch.arange(b, device=dev), last]
    return F.normalize(pooled.float(), p=2, dim=-1)


__all__ = ["forward_suffix", "prefix_kv"]
