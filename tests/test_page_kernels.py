"""The leaner vision forwards (indexer/page_kernels.py) and the maskless right-padded decoder
compute what transformers' own code computes, on the tiny checkpoint in float32."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from indexer import load_embedder
from indexer.model.gme import page_kernels
from indexer.model.gme.embedder import _decoder_mask


def _image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def fp32(tiny_model_dir):
    emb = load_embedder(tiny_model_dir, device="cpu", dtype="float32")
    yield emb
    page_kernels.install(emb.vision_model)


def test_installed_by_default_on_every_block(fp32):
    assert fp32.page_kernels == ["attention", "mlp"]
    for block in fp32.vision_model.blocks:
        assert block.attn.forward.__func__ is page_kernels.attention_forward
        assert block.mlp.forward.__func__ is page_kernels.mlp_forward


def test_vision_tower_equals_transformers(fp32):
    """Several images of different sizes in one call (per-image attention), both ways."""
    images = [_image(300, 200, 1), _image(90, 140, 2), _image(500, 380, 3)]
    batch = fp32.encode([None] * len(images), images)
    visual = fp32.vision_model

    def run() -> torch.Tensor:
        with torch.inference_mode():
            out = visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"])
        return out.pooler_output

    page_kernels.install(visual)
    fast = run()
    page_kernels.uninstall(visual)
    try:
        ref = run()
    finally:
        page_kernels.install(visual)
    assert fast.shape == ref.shape
    err = float((fast - ref).abs().max() / ref.abs().max())
    assert err < 1e-5, err  # float32 rounding only (different summation order)
    # the images really differ, so agreement is not a constant
    assert (ref[:10] - ref[-10:]).abs().max() > 1e-2


def test_page_vectors_equal_transformers(fp32):
    images = [_image(640, 900, 4), _image(220, 300, 5)]
    fast = fp32.embed_images(images)
    page_kernels.uninstall(fp32.vision_model)
    try:
        ref = fp32.embed_images(images)
    finally:
        page_kernels.install(fp32.vision_model)
    assert (fast * ref).sum(1).min() >= 0.99999
    assert float(ref[0] @ ref[1]) < 0.999


def test_rotary_matches_transformers():
    """Same float32 maths (addcmul may fuse a multiply-add: last-bit differences only)."""
    from transformers.models.qwen2_vl.modeling_qwen2_vl import apply_rotary_pos_emb_vision

    torch.manual_seed(0)
    s, h, d = 37, 3, 16
    for dtype in (torch.float32, torch.bfloat16):
        qkv = torch.randn(s, 3, h, d).to(dtype)
        angles = torch.randn(s, d // 2)
        emb = torch.cat([angles, angles], -1)
        cos, sin = emb.cos(), emb.sin()
        q, k = apply_rotary_pos_emb_vision(qkv[:, 0], qkv[:, 1], cos, sin)
        out = page_kernels._rotary_qk(qkv, cos, sin)
        assert out.is_contiguous() and out.shape == (2, h, s, d) and out.dtype == dtype
        tol = 1e-6 if dtype == torch.float32 else 1e-2  # bf16: at most the last bit
        assert torch.allclose(out[0].float(), q.transpose(0, 1).float(), rtol=tol, atol=tol)
        assert torch.allclose(out[1].float(), k.transpose(0, 1).float(), rtol=tol, atol=tol)
        assert not torch.allclose(out[0].float(), qkv[:, 0].transpose(0, 1).float(), atol=0.1)


def test_int8_keeps_the_attention_forward_only(tiny_model_dir):
    from indexer.model.gme.speedups import quantize_embedder

    emb = load_embedder(tiny_model_dir, device="cpu", dtype="float32")
    img = _image(300, 200)
    quantize_embedder(emb)
    assert emb.page_kernels == ["attention"]
    assert "forward" not in emb.vision_model.blocks[0].mlp.__dict__
    got = emb.embed_images([img])
    page_kernels.uninstall(emb.vision_model)  # transformers' attention on the int8 linears
    ref = emb.embed_images([img])
    assert float(got[0] @ ref[0]) > 0.999  # dynamic int8 turns float rounding into steps


def test_decoder_mask_is_dropped_only_for_right_padding():
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    holes = torch.tensor([[1, 0, 1, 1]])
    assert _decoder_mask(right) is None
    assert _decoder_mask(torch.ones(2, 5, dtype=torch.long)) is None
    assert _decoder_mask(left) is left
    assert _decoder_mask(holes) is holes


def test_right_padded_batch_equals_masked_decoder(fp32):
    """Unequal pages in one right-padded batch: the maskless causal decoder gives the vectors
    of the explicitly masked one."""
    images = [_image(700, 500, 6), _image(120, 90, 7), _image(300, 420, 8)]
    batch = fp32.encode([None] * 3, images)
    assert (batch["attention_mask"] == 0).any()  # really padded
    fast = fp32.forward(**batch)
    import indexer.model.gme.embedder as gme

    original = gme._decoder_mask
    gme._decoder_mask = lambda m: m  # force the padding mask through
    try:
        ref = fp32.forward(**batch)
    finally:
        gme._decoder_mask = original
    assert torch.allclose(fast, ref, atol=1e-5), (fast - ref).abs().max()
