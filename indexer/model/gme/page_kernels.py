"""A leaner forward for Qwen2-VL's vision blocks: the same maths, fewer passes over memory.

Why: on CPU a page at 1,280 tokens is ~4,900 vision patches through 32 blocks, and
transformers' block spends much of its time outside the matrix multiplications:

* the rotary embedding upcasts q and k separately, builds ``rotate_half`` with a negation
  and a concatenation, and multiplies/adds in five more full-size passes per tensor;
* the attention gets q, k and v as strided views of the fused qkv output (rows 3,840
  elements apart), which makes the fused CPU attention kernel's small GEMMs read scattered
  rows (measured ~1.3-3x slower than contiguous inputs, bf16, 4,872 patches);
* quick-GELU, ``x * sigmoid(1.702 x)``, is three passes over the 4x-wide MLP activation.

:func:`install` replaces, per module instance (the classes are untouched), the forward of
each ``VisionAttention`` and ``VisionMlp`` of one vision tower with versions that

* apply the rotary embedding to q and k together, in float32 exactly as transformers does
  (``q * cos + rotate_half(q) * sin``, the same roundings: the half-rotation is written as
  two ``addcmul`` on the halves instead of a ``cat``), straight into one contiguous
  ``(2, heads, patches, head_dim)`` buffer, and give v the same layout;
* run torch's fused SDPA kernel (``_scaled_dot_product_flash_attention_for_cpu`` on CPU)
  per image on those contiguous slices, so no attention crosses pages, as before;
* compute quick-GELU as ``silu(1.702 x) / 1.702`` with the two scalings folded into the
  GEMMs (``addmm``'s ``alpha``/``beta``) and the SiLU in place: one pass instead of three.

In float32 the vectors equal transformers' to rounding (tests/test_page_kernels.py checks
the blocks and whole pages against the untouched model). GME's recipe is unchanged: this
is how the vision tower is evaluated, not what it computes.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F

#: quick-GELU's constant (transformers.activations.QuickGELUActivation).
_QUICK_GELU = 1.702


def _rotary_qk(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary-embedded q and k of ``qkv`` (patches, 3, heads, head_dim) as one contiguous
    (2, heads, patches, head_dim) tensor in qkv's dtype; float32 maths as transformers'
    ``apply_rotary_pos_emb_vision``: ``x * cos + rotate_half(x) * sin``, rounded the same."""
    s, _, h, d = qkv.shape
    half = d // 2
    x = qkv[:, :2].float()  # (S, 2, H, D); a view when the model is float32
    cos = cos.float()[:, None, None, :]
    sin = sin.float()[:, None, None, :]
    out = torch.empty((2, h, s, d), dtype=torch.float32, device=qkv.device)
    view = out.permute(2, 0, 1, 3)  # (S, 2, H, D) view of the contiguous buffer
    torch.mul(x, cos, out=view)
    # rotate_half(x) = cat(-x2, x1): first half += (-x2) * sin1, second half += x1 * sin2
    view[..., :half].addcmul_(x[..., half:], sin[..., :half], value=-1)
    view[..., half:].addcmul_(x[..., :half], sin[..., half:])
    return out if qkv.dtype == torch.float32 else out.to(qkv.dtype)


def attention_forward(
    self: Any,
    hidden_states: torch.Tensor,
    cu_seqlens: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
    **_: Any,
) -> torch.Tensor:
    """``VisionAttention.forward`` (SDPA path) with contiguous q/k/v and fused rotary."""
    if position_embeddings is None:
        raise ValueError("the vision attention needs its rotary position embeddings")
    s = hidden_states.shape[0]
    h = self.num_heads
    qkv = self.qkv(hidden_states).view(s, 3, h, -1)
    cos, sin = position_embeddings
    qk = _rotary_qk(qkv, cos, sin)
    v = qkv[:, 2].transpose(0, 1).contiguous()  # (H, S, D)
    out = torch.empty((s, h, qkv.shape[-1]), dtype=v.dtype, device=v.device)
    start = 0
    for n in (cu_seqlens[1:] - cu_seqlens[:-1]).tolist():  # one image at a time
        end = start + int(n)
        o = F.scaled_dot_product_attention(
            qk[0:1, :, start:end],
            qk[1:2, :, start:end],
            v[None, :, start:end],
            scale=self.scaling,
        )
        out[start:end] = o[0].transpose(0, 1)
        start = end
    return self.proj(out.view(s, -1))


def mlp_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    """``VisionMlp.forward`` for quick-GELU: ``fc2(silu(1.702 fc1(x)) / 1.702)``, the
    scalings inside the GEMMs and the SiLU in place."""
    fc1, fc2 = self.fc1, self.fc2
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    y = torch.addmm(fc1.bias, x2, fc1.weight.t(), beta=_QUICK_GELU, alpha=_QUICK_GELU)
    F.silu(y, inplace=True)
    z = torch.addmm(fc2.bias, y, fc2.weight.t(), alpha=1.0 / _QUICK_GELU)
    return z.view(*shape[:-1], z.shape[-1])


def _plain_linear(module: Any) -> bool:
    return (
        type(module) is torch.nn.Linear
        and module.bias is not None
        and module.weight.dtype in (torch.float32, torch.bfloat16, torch.float16)
    )


def install(visual: Any) -> list[str]:
    """Give the attention and MLP modules of a Qwen2-VL vision tower the forwards above
    (instance attributes; call :func:`uninstall` to restore). Only where they apply: the
    SDPA attention implementation, and quick-GELU MLPs whose linears are plain float ones
    (not int8-quantised). Returns what was installed ("attention", "mlp")."""
    from transformers.activations import QuickGELUActivation

    done: list[str] = []
    config = getattr(visual, "config", None)
    sdpa = getattr(config, "_attn_implementation", None) == "sdpa"
    for block in getattr(visual, "blocks", []):
        attn, mlp = block.attn, block.mlp
        if sdpa and hasattr(attn, "qkv") and hasattr(attn, "num_heads"):
            attn.forward = types.MethodType(attention_forward, attn)
            if "attention" not in done:
                done.append("attention")
        if (
            isinstance(getattr(mlp, "act", None), QuickGELUActivation)
            and _plain_linear(mlp.fc1)
            and _plain_linear(mlp.fc2)
        ):
            mlp.forward = types.MethodType(mlp_forward, mlp)
            if "mlp" not in done:
                done.append("mlp")
    return done


def uninstall(visual: Any) -> None:
    """Back to the classes' own forwards (e.g. before int8 quantisation swaps the linears)."""
    for block in getattr(visual, "blocks", []):
        for mod in (block.attn, block.mlp):
            mod.__dict__.pop("forward", None)
