"""Low-precision copies of a model's linear weights, for the text-query path.

Why: a text query runs ~20 tokens through GME's 28-layer decoder, so on a CPU it is bound by
memory bandwidth, not arithmetic: the ~1.3 B decoder weights are read once per query (5.2 GB
in float32; ~0.6 s at 9 GB/s). Only smaller weights go faster. Dynamic int8 (``--quantize
int8``) also rounds the *activations* to 8 bits, and its vectors drift enough to change
rankings. Here only the weights shrink, activations stay in 16- or 32-bit floats with
float32 accumulation, and the residual stream, norms, attention and pooling stay float32.

Candidates (:data:`CANDIDATES`), measured by ``pagelens bench`` (``model.query_weights``):

* ``int8-bf16``: int8 weights, one scale per output channel, bf16 activations, through
  ``aten._weight_int8pack_mm`` (torchao's int8 weight-only kernel). 1 byte per weight. On
  the full-size random-weight model its query vectors reach cosine ~0.998 to float32: the
  weight rounding alone (~0.75% of a weight's spread) is too coarse for the 0.999 bar, and
  per-group scales or clipping cannot help much (8 bits per Gaussian weight is near the
  rate-distortion limit).
* ``int8mix-bf16``: the same, but the first :data:`MIX_PRECISE_LAYERS` decoder layers get
  two int8 levels. Rounding one group of linears at a time showed layer 0 alone causing
  more than half of the loss; ~1.14 bytes per weight.
* ``int8+int4-bf16``: int8 per channel plus an int4 level (groups of 128 inputs) for the
  int8 level's error, ``_weight_int8pack_mm`` + ``_weight_int4pack_mm_for_cpu``; ~1.53
  bytes per weight, error ~15x below int8 alone.
* ``int8x2-bf16``: two int8 levels (the second quantises the first's error; ~15-bit
  weights), the same kernel in one pass over stacked rows. 2 bytes per weight.
* ``bf16``: bf16 weights and activations. 2 bytes per weight.
* ``fp16``: fp16 weights, **float32** activations and accumulation, fbgemm's FP16 GEMM
  (``quantized.linear_dynamic_fp16``, the kernel of torch's dynamic fp16 quantisation):
  2 bytes per weight, vectorised for AVX2 (F16C) and AVX-512, and the closest to exact.
* ``int8-fp32``: int8 weights, float32 activations; the kernel's float32 path is not
  vectorised (10-20x slower than a float32 matmul on AVX2 and AVX-512), kept for the record.

A query multiplies ~15 token rows by every weight. At that width the ATen weight-only
kernels are compute-bound on AVX2 (they widen each weight once per row block), so fewer
bytes do not by themselves mean faster: which candidate wins is measured
(:data:`indexer.model.gme.query_weights.AUTO_ORDER` holds the order measured on AVX2).

Only text inputs take this path (queries); pages keep the exact weights, so a copy is extra
memory (1.3-2.6 GB for GME-2B), made by the query-weights policy
(:class:`indexer.model.gme.query_weights.QueryWeightsPolicy`, at a server's start-up or a
process's second text query; the decision is kept on disk,
:mod:`indexer.model.gme.query_weights_cache`), which keeps a candidate only if, measured
there on whole queries, it agrees with the exact path (cosine >= :data:`MIN_QUERY_COSINE`)
and is faster. Which candidates a CPU tries is decided from its features
(:mod:`indexer.model.runtime.cpu_features`).

A decision (:class:`QueryChoice`) is defined here, beside the copies it names, because both
the policy and the decision cache below it read and write it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

#: Agreement a non-exact query path must keep with the exact float32 vectors.
MIN_QUERY_COSINE = 0.999
#: Candidates: weights int8 (one scale per output channel), two-level int8 (~15-bit), int8
#: plus int4, bf16 or fp16; activations in the named dtype.
CANDIDATES = (
    "int8-bf16",
    "int8-fp32",
    "int8x2-bf16",
    "bf16",
    "int8+int4-bf16",
    "int8mix-bf16",
    "fp16",
)
#: ``int8mix-bf16``: the first decoder layers keep two int8 levels, the rest one. Measured on
#: the full-size random-weight decoder (int8 rounding of one group at a time, 8 queries):
#: layer 0 alone causes 58% of the whole model's cosine loss (1 - cos 1.1e-3 of 2.0e-3),
#: layer 1 11%, layer 2 6%, layer 3 4%; by type the loss follows the parameter
#: count (v and o ~4-7x more per weight, still small in all). int8 everywhere but the first
#: 2 / 3 / 4 layers: 1 - cos 5.2e-4 / 4.1e-4 / 3.1e-4 (float32 activations; bf16 ones add
#: ~2e-4). Four keep a margin under the 1e-3 bar for 4/28 of the weights at 2 bytes.
MIX_PRECISE_LAYERS = 4
_ACT_DTYPES = {
    "int8-bf16": torch.bfloat16,
    "int8-fp32": torch.float32,
    "int8x2-bf16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "int8+int4-bf16": torch.bfloat16,
    "int8mix-bf16": torch.bfloat16,
    "fp16": torch.float32,
}
#: Group size (along the input dimension) of the int4 level, largest that divides K.
INT4_GROUPS = (128, 64, 32)


def act_dtype(mode: str) -> torch.dtype:
    """The activation dtype of an int8 candidate."""
    return _ACT_DTYPES[mode]


def kernel_available(mode: str) -> bool:
    """Whether this torch build has the kernel of candidate ``mode`` (fp16 needs fbgemm,
    x86 builds only)."""
    if mode == "fp16":
        return "fbgemm" in torch.backends.quantized.supported_engines
    return True


# --------------------------------------------------------------------------- int8 weights


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: ``weight ~= q * scale[:, None]``."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scale


def quantize_weight_2level(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two int8 levels, stacked: rows ``[q1; q2]`` and scales ``[s1; s2]`` with
    ``weight ~= q1 * s1 + q2 * s2`` (``q2`` quantises what ``q1`` missed), ~15-bit weights
    that the same int8 kernel multiplies in one pass."""
    w = weight.detach().float()
    q1, s1 = quantize_weight(w)
    q2, s2 = quantize_weight(w - q1.float() * s1[:, None])
    return torch.cat([q1, q2]).contiguous(), torch.cat([s1, s2])


def int4_group(k: int) -> int:
    """The int4 group size for ``k`` input features (the kernel takes 32, 64 or 128)."""
    for group in INT4_GROUPS:
        if k % group == 0:
            return group
    raise ValueError(f"in_features {k} is not a multiple of {INT4_GROUPS[-1]} (int4 groups)")


def quantize_int4(weight: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric int4 per group of ``group`` inputs: ``w ~= (q - 8) * scale + zero``, in the
    layout of ``aten._weight_int4pack_mm_for_cpu``: q (N, K) int32 in [0, 15], and
    scales-and-zeros (K / group, N, 2) bf16 (the values q was rounded against)."""
    w = weight.detach().float()
    n, k = w.shape
    wg = w.reshape(n, k // group, group)
    lo, hi = wg.amin(-1), wg.amax(-1)
    scale = ((hi - lo) / 15).clamp(min=1e-12).to(torch.bfloat16).float()
    zero = (lo + 8 * scale).to(torch.bfloat16).float()
    q = torch.round((wg - zero[..., None]) / scale[..., None] + 8).clamp_(0, 15)
    sz = torch.stack([scale, zero], -1).transpose(0, 1).contiguous().to(torch.bfloat16)
    return q.to(torch.int32).reshape(n, k), sz


def quantize_int8_int4(
    weight: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """int8 per output channel plus an int4 level (groups of 32-128 inputs) for what the int8
    level missed: ~1.5 bytes per weight, error ~15x below int8 alone.

    The residual is taken against the bf16-rounded channel scales the kernel multiplies
    with, so the int4 level also corrects that rounding. Returns (q8, scale8 bf16, packed
    int4, scales-and-zeros, group).
    """
    w = weight.detach().float()
    q8, s8 = quantize_weight(w)
    s8 = s8.to(torch.bfloat16)
    residual = w - q8.float() * s8.float()[:, None]
    group = int4_group(w.shape[1])
    q4, sz = quantize_int4(residual, group)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q4, 2)
    return q8, s8, packed, sz, group


class QueryWeights:
    """Low-precision copies of the ``nn.Linear`` weights under ``root``, used while
    :meth:`active`; ``mode`` is one of :data:`CANDIDATES`.

    Each linear keeps its float weight (and ``state_dict``); its ``forward`` is replaced by
    one that, while active, multiplies with the copy (float32 accumulation) and returns the
    input's dtype; inactive, it is the plain ``F.linear``.
    """

    def __init__(self, root: torch.nn.Module, mode: str) -> None:
        if mode not in CANDIDATES:
            raise ValueError(f"unknown query weights {mode!r}; expected one of {CANDIDATES}")
        if not kernel_available(mode):
            raise RuntimeError(f"query weights {mode!r}: this torch build lacks its kernel")
        self.mode = mode
        self.act_dtype = act_dtype(mode)
        # per thread: a page batch in another thread (the app's background embedding, a
        # server's batcher, a start-up calibration) keeps the exact weights meanwhile
        self._on = threading.local()
        self.linears: list[torch.nn.Linear] = []
        self.bytes = 0
        precise: set[int] = set()
        if mode == "int8mix-bf16":
            precise = _first_layers(root, MIX_PRECISE_LAYERS)
        kinds: list[tuple[torch.nn.Linear, str]] = []
        for module in root.modules():
            if isinstance(module, torch.nn.Linear) and module.weight.dtype.is_floating_point:
                kind = mode
                if mode == "int8mix-bf16":
                    kind = "int8x2-bf16" if id(module) in precise else "int8-bf16"
                kinds.append((module, kind))
        fp16_packed = _prepack_fp16([m for m, kind in kinds if kind == "fp16"])
        for module, kind in kinds:
            nbytes = 0
            if kind == "bf16":
                packed: tuple[Any, ...] = (module.weight.detach().to(torch.bfloat16).contiguous(),)
            elif kind == "fp16":
                # fbgemm's FP16 GEMM: fp16 weights widened in registers, fp32 activations
                # and accumulation (the bias is packed with them)
                packed = (fp16_packed[id(module)],)
                nbytes = module.weight.numel() * 2
            elif kind == "int8+int4-bf16":
                q8, s8, q4, sz, group = quantize_int8_int4(module.weight)
                packed = (q8, s8, q4, sz, group)
            elif kind == "int8x2-bf16":
                q, scale = quantize_weight_2level(module.weight)
                packed = (q, scale.to(self.act_dtype))
            else:
                q, scale = quantize_weight(module.weight)
                packed = (q, scale.to(self.act_dtype))
            # an instance attribute shadows the class's forward; state_dict is untouched
            forward = _lowp_forward(module, self, kind, packed)
            setattr(module, "forward", forward)  # noqa: B010
            self.linears.append(module)
            self.bytes += nbytes or sum(
                t.numel() * t.element_size() for t in packed if isinstance(t, torch.Tensor)
            )

    @property
    def on(self) -> bool:
        """Whether the copy is in use in this thread (inside :meth:`active`)."""
        return bool(getattr(self._on, "value", False))

    @on.setter
    def on(self, value: bool) -> None:
        self._on.value = bool(value)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        previous, self.on = self.on, True
        try:
            yield
        finally:
            self.on = previous

    def remove(self) -> None:
        """Drop the copies; the linears are plain again."""
        for module in self.linears:
            del module.forward
        self.linears.clear()
        self.bytes = 0


#: Earlier name, kept for callers written against it.
Int8Weights = QueryWeights


def _prepack_fp16(linears: list[torch.nn.Linear]) -> dict[int, Any]:
    """fbgemm FP16 packings of ``linears`` (by module id), made on all of torch's threads.

    Why: ``linear_prepack_fp16`` converts and reorders one weight at a time on one thread
    (~10 ns a weight: 12-19 s for GME-2B's 1.3 B decoder weights on the 2-core EPYC, paid by
    every process that builds the copy); it releases the GIL, so packing the linears in a
    pool of torch's thread count divides that by about the core count. The result is the
    same packing, whatever the order.
    """

    def pack(module: torch.nn.Linear) -> Any:
        bias = None if module.bias is None else module.bias.detach().float()
        weight = module.weight.detach().float().contiguous()
        return torch.ops.quantized.linear_prepack_fp16(weight, bias)

    workers = max(1, min(torch.get_num_threads(), len(linears)))
    if workers == 1:
        return {id(m): pack(m) for m in linears}
    with ThreadPoolExecutor(workers, thread_name_prefix="pagelens-prepack") as pool:
        return {id(m): packed for m, packed in zip(linears, pool.map(pack, linears), strict=True)}


def _first_layers(root: torch.nn.Module, n: int) -> set[int]:
    """ids of the modules inside the first ``n`` decoder layers of ``root`` (``root.layers``)."""
    layers = getattr(root, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        return set()
    return {id(m) for layer in list(layers)[:n] for m in layer.modules()}


def _lowp_forward(
    module: torch.nn.Linear, owner: QueryWeights, kind: str, packed: tuple[Any, ...]
) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(x: torch.Tensor) -> torch.Tensor:
        if not owner.on:
            return F.linear(x, module.weight, module.bias)
        rows = x.reshape(-1, x.shape[-1]).to(owner.act_dtype).contiguous()
        n = module.out_features
        if kind == "fp16":  # bias already inside
            out = torch.ops.quantized.linear_dynamic_fp16(rows, packed[0]).to(x.dtype)
            return out.reshape(*x.shape[:-1], n)
        if kind == "int8+int4-bf16":
            q8, s8, q4, sz, group = packed
            hi = torch.ops.aten._weight_int8pack_mm(rows, q8, s8).float()
            lo = torch.ops.aten._weight_int4pack_mm_for_cpu(rows, q4, group, sz).float()
            out = (hi + lo).to(x.dtype)
        elif kind == "bf16":
            out = F.linear(rows, packed[0]).to(x.dtype)
        elif kind == "int8x2-bf16":
            both = torch.ops.aten._weight_int8pack_mm(rows, packed[0], packed[1])
            out = both[:, :n].to(x.dtype) + both[:, n:].to(x.dtype)
        else:
            out = torch.ops.aten._weight_int8pack_mm(rows, packed[0], packed[1]).to(x.dtype)
        if module.bias is not None:
            out = out + module.bias
        return out.reshape(*x.shape[:-1], n)

    return forward


# --------------------------------------------------------------------------- decisions


@dataclass
class QueryChoice:
    """What the self-check decided: the mode in use and the measurements behind it.

    ``source``: "measured" (calibrated in this process), "cache" (measured by an earlier
    process, :mod:`indexer.model.gme.query_weights_cache`; ``cache_file`` names the file), "plan"
    (nothing to try here) or "memory" (no room for a copy). ``timings``: seconds spent
    deciding (``calibration_s``, ``prepare_s`` to build the kept copy,
    ``cached_decision_s`` to read a cached decision).
    """

    mode: str = "exact"
    reason: str = ""
    candidates: dict[str, dict[str, float | bool]] = field(default_factory=dict)
    exact_s: float | None = None
    source: str = "measured"
    timings: dict[str, float] = field(default_factory=dict)
    cache_file: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "reason": self.reason,
            "exact_s": self.exact_s,
            "candidates": self.candidates,
            "source": self.source,
            "timings": self.timings,
            "cache_file": self.cache_file,
        }


__all__ = [
    "CANDIDATES",
    "INT4_GROUPS",
    "MIN_QUERY_COSINE",
    "MIX_PRECISE_LAYERS",
    "Int8Weights",
    "QueryChoice",
    "QueryWeights",
    "act_dtype",
    "int4_group",
    "kernel_available",
    "quantize_int4",
    "quantize_int8_int4",
    "quantize_weight",
    "quantize_weight_2level",
]
