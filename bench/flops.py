"""FLOP counts of one GME input (vision tower + decoder) from the model config: what the
page phases divide by their time to give achieved GFLOP/s and the fraction of peak."""

from __future__ import annotations

from typing import Any


def flops_per_input(config: Any, *, grid_hw: tuple[int, int] | None, seq_len: int) -> dict:
    """Multiply-add FLOPs (2*m*n*k per matmul, plus attention scores and mixing) of one input.

    Vision tower: patch embedding, ``depth`` blocks (qkv, proj, fc1, fc2, full attention over
    the image's patches) and the patch merger. Decoder: q/k/v/o (grouped KV), gated MLP and
    causal attention over the whole sequence (the L(L+1)/2 scores a causal kernel needs; the
    page path runs SDPA's causal kernel, which skips the masked half). Element-wise ops, norms
    and the unused LM head are not counted.
    """
    v = config.vision_config
    t = config.text_config
    vision = 0.0
    if grid_hw is not None:
        p = grid_hw[0] * grid_hw[1]  # patches (temporal grid 1 for images)
        d = int(v.embed_dim)
        mlp = int(d * float(v.mlp_ratio))
        inp = int(v.in_channels) * int(v.temporal_patch_size) * int(v.patch_size) ** 2
        merge = int(v.spatial_merge_size) ** 2
        merged = p // merge
        vision += 2 * p * inp * d
        per_block = 2 * p * d * 3 * d + 2 * p * d * d + 2 * 2 * p * d * mlp + 2 * 2 * p * p * d
        vision += int(v.depth) * per_block
        vision += 2 * merged * (d * merge) ** 2 + 2 * merged * (d * merge) * int(t.hidden_size)
    h = int(t.hidden_size)
    heads = int(t.num_attention_heads)
    kv = int(t.num_key_value_heads)
    hd = h // heads
    inter = int(t.intermediate_size)
    L = seq_len
    per_layer = (
        2 * L * h * h * 2 + 2 * L * h * kv * hd * 2 + 3 * 2 * L * h * inter + 2 * L * (L + 1) * h
    )
    decoder = int(t.num_hidden_layers) * per_layer
    return {"vision": float(vision), "decoder": float(decoder), "total": float(vision + decoder)}


def page_flops(emb: Any, images: list) -> float:
    total = 0.0
    for img in images:
        n = emb.count_tokens(None, img)
        total += flops_per_input(emb.model.config, grid_hw=emb.patch_grid(img), seq_len=n)["total"]
    return total
