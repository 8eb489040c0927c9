"""CPU features and the low-precision text-query path.

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
* ``int8s-fp32``: int8 weights (one scale per output channel, fbgemm's int8 GEMM) with
  **split** float32 activations: each token row becomes :data:`SPLIT_LEVELS` 7-bit levels
  (one scale per row, each level the rounding of the previous ones' error), stacked as rows
  of one int8 GEMM call with float32 output, recombined in float32. Unlike dynamic int8
  (one 7-bit level per tensor) the activations keep ~14 bits per row; the weight rounding
  stays, so the first :data:`SPLIT_FP16_LAYERS` decoder layers use ``fp16``. ~1.1 bytes per
  weight, at twice the int8 rows: on AVX2 (int8 at ~2x the float32 FMA rate, no VNNI) that
  spends what int8 saves, so it is measured but not in :data:`AUTO_ORDER`.
* ``int8-fp32``: int8 weights, float32 activations; the kernel's float32 path is not
  vectorised (10-20x slower than a float32 matmul on AVX2 and AVX-512), kept for the record.

A query multiplies ~15 token rows by every weight. At that width the ATen weight-only
kernels are compute-bound on AVX2 (they widen each weight once per row block), so fewer
bytes do not by themselves mean faster: which candidate wins is measured
(:data:`AUTO_ORDER` holds the order measured on AVX2).

Only text inputs take this path (queries); pages keep the exact weights, so a copy is extra
memory (1.3-2.6 GB for GME-2B), made by :meth:`indexer.gme.GmeEmbedder.prepare_queries`
(at a server's start-up or a process's second text query; the decision is kept on disk,
:mod:`indexer.query_choice_cache`), which keeps a candidate only if, measured
there on whole queries, it agrees with the exact path (cosine >= :data:`MIN_QUERY_COSINE`)
and is faster. CPU features are read at run time (:func:`cpu_flags`, injectable): ``auto``
tries candidates only on x86 CPUs with AVX2/AVX-512 and **without** native bf16 (those run
the whole model in bf16 already). An instruction-set cap in the environment
(``ATEN_CPU_CAPABILITY=avx2``, ``ONEDNN_MAX_CPU_ISA``, ``MKL_ENABLE_INSTRUCTIONS``,
``FBGEMM_ENABLE_INSTRUCTIONS``; :func:`isa_cap`) counts: the kernels cannot use what is
capped, so neither do the decisions (``pagelens bench --isa avx2`` uses this to emulate an
AVX2-only CPU).
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

#: Agreement a non-exact query path must keep with the exact float32 vectors.
MIN_QUERY_COSINE = 0.999
#: ``query_weights`` settings: "auto" (decide from the CPU and a self-check), "exact", or an
#: explicit int8 candidate (weights int8, activations in the named dtype).
#: Candidates: weights int8 (one scale per output channel), two-level int8 (~15-bit), or
#: bf16; activations in the named dtype.
CANDIDATES = (
    "int8-bf16",
    "int8-fp32",
    "int8x2-bf16",
    "bf16",
    "int8+int4-bf16",
    "int8mix-bf16",
    "fp16",
    "int8s-fp32",
)
#: ``int8mix-bf16``: the first decoder layers keep two int8 levels, the rest one. Measured on
#: the full-size random-weight decoder (int8 rounding of one group at a time, 8 queries):
#: layer 0 alone causes 58% of the whole model's cosine loss (1 - cos 1.1e-3 of 2.0e-3),
#: layer 1 11%, layer 2 6%, layer 3 4%; by type the loss follows the parameter
#: count (v and o ~4-7x more per weight, still small in all). int8 everywhere but the first
#: 2 / 3 / 4 layers: 1 - cos 5.2e-4 / 4.1e-4 / 3.1e-4 (float32 activations; bf16 ones add
#: ~2e-4). Four keep a margin under the 1e-3 bar for 4/28 of the weights at 2 bytes.
MIX_PRECISE_LAYERS = 4
QUERY_WEIGHTS = ("auto", "exact", "int8", *CANDIDATES)
#: What ``auto`` tries, fastest first as measured on an AVX2 CPU without native bf16 at a
#: query's ~15 tokens (see README, Performance); the first that agrees and beats the exact
#: path there is kept (trying them all would hold two extra weight copies at once).
#: Not tried: ``int8-bf16`` (cosine ~0.998 on the full-size model) and ``int8mix-bf16``
#: (cosine 0.9995 but one top-10 swap in 80 on the bench's check), ``int8s-fp32`` (no faster
#: than ``fp16`` at a query's ~15 rows under AVX2: both kernels are compute-bound there and
#: its two activation levels double the int8 rows; README, Performance).
AUTO_ORDER = ("fp16", "int8+int4-bf16", "int8x2-bf16", "bf16")
_ACT_DTYPES = {
    "int8-bf16": torch.bfloat16,
    "int8-fp32": torch.float32,
    "int8x2-bf16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "int8+int4-bf16": torch.bfloat16,
    "int8mix-bf16": torch.bfloat16,
    "fp16": torch.float32,
    "int8s-fp32": torch.float32,
}
#: ``int8s-fp32``: a float32 activation row is split into this many 7-bit integer levels,
#: ``x ~= r * (q1 + q2 / 126 + ...)`` with one scale ``r`` per token row, each level the
#: rounding of what the previous ones missed: two levels bound the error by ``max|x| / 2**14``
#: per row (three by ``2**-21``), so activations stay precise with outlier channels too.
SPLIT_LEVELS = 2
#: Largest magnitude of one level. fbgemm's AVX2 int8 kernel (no VNNI) sums pairs of
#: uint8 x int8 products in int16 with saturation: activations stored as ``q + 64`` in
#: [1, 127] against int8 weights in [-127, 127] keep ``2 * 127 * 127 < 2**15``.
SPLIT_STEP = 63
#: ``int8s-fp32``: the first decoder layers keep fp16 weights (layer 0 alone causes over half
#: of int8's loss; see :data:`MIX_PRECISE_LAYERS`), the rest int8 per output channel.
SPLIT_FP16_LAYERS = 4
#: Group size (along the input dimension) of the int4 level, largest that divides K.
INT4_GROUPS = (128, 64, 32)


# --------------------------------------------------------------------------- CPU features


#: ISA levels, lowest first: what an instruction-set cap allows (see :func:`isa_cap`).
ISA_LEVELS = (
    "sse",
    "avx2",
    "avx2_vnni",
    "avx512",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx",
)
#: The environment variables that cap the instructions the kernels PageLens relies on may
#: use, with the level each documented value allows (values compared case-insensitively;
#: a value not listed caps nothing). ATen's own kernels (``_weight_int8pack_mm``, the
#: non-oneDNN bf16 paths), oneDNN (bf16/fp32 matmuls, SDPA), MKL (float32 GEMM) and
#: fbgemm (dynamic int8).
ISA_CAP_ENV: dict[str, dict[str, str]] = {
    "ATEN_CPU_CAPABILITY": {"default": "sse", "avx2": "avx2"},
    "ONEDNN_MAX_CPU_ISA": {
        "sse41": "sse",
        "avx": "sse",
        "avx2": "avx2",
        "avx2_vnni": "avx2_vnni",
        "avx2_vnni_2": "avx2_vnni",
        "avx512_core": "avx512",
        "avx512_core_vnni": "avx512_vnni",
        "avx512_core_bf16": "avx512_bf16",
        "avx10_1_512": "avx512_fp16",
        "avx512_core_fp16": "avx512_fp16",
    },
    "DNNL_MAX_CPU_ISA": {},  # oneDNN's older name: same values (filled in below)
    "MKL_ENABLE_INSTRUCTIONS": {
        "sse4_2": "sse",
        "avx": "sse",
        "avx2": "avx2",
        "avx512": "avx512",
        "avx512_e1": "avx512_vnni",
    },
    "FBGEMM_ENABLE_INSTRUCTIONS": {
        "avx2": "avx2",
        "avx512": "avx512",
        "avx512_256": "avx512",
        "avx512_e1": "avx512_vnni",
        "avx512_e1_256": "avx512_vnni",
    },
}
ISA_CAP_ENV["DNNL_MAX_CPU_ISA"] = ISA_CAP_ENV["ONEDNN_MAX_CPU_ISA"]


def _flag_level(flag: str) -> str:
    """The lowest ISA level at which a ``/proc/cpuinfo`` flag may be used."""
    if flag.startswith("amx"):
        return "amx"
    if flag in ("avx512_fp16", "avx512_bf16", "avx512_vnni"):
        return flag
    if flag.startswith("avx512"):
        return "avx512"
    if flag == "avx_vnni":
        return "avx2_vnni"
    if flag in ("avx", "avx2", "fma", "f16c"):
        return "avx2"
    return "sse"


def isa_cap(env: Mapping[str, str] | None = None) -> tuple[str | None, dict[str, str]]:
    """The instruction-set cap set in the environment: (lowest level allowed or None, the
    capping variables that are set).

    Why: ``ATEN_CPU_CAPABILITY=avx2`` (and oneDNN's, MKL's and fbgemm's equivalents) forbid
    the kernels instructions the CPU has; a plan that still assumed them (native bf16, say)
    would pick a path the kernels cannot run fast. The lowest cap of all those set wins,
    so the decisions are those of a CPU that has only what every library may use.
    """
    env = os.environ if env is None else env
    found: dict[str, str] = {}
    level: str | None = None
    for var, values in ISA_CAP_ENV.items():
        raw = env.get(var)
        if not raw:
            continue
        allowed = values.get(raw.strip().lower())
        if allowed is None:
            continue
        found[var] = raw
        if level is None or ISA_LEVELS.index(allowed) < ISA_LEVELS.index(level):
            level = allowed
    return level, found


def cap_flags(flags: Iterable[str], level: str | None) -> frozenset[str]:
    """``flags`` without those above ``level`` (all of them when ``level`` is None)."""
    if level is None:
        return frozenset(flags)
    top = ISA_LEVELS.index(level)
    return frozenset(f for f in flags if ISA_LEVELS.index(_flag_level(f)) <= top)


@lru_cache(maxsize=1)
def _read_cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):  # x86 / arm64
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_flags(env: Mapping[str, str] | None = None) -> frozenset[str]:
    """This CPU's feature flags (``/proc/cpuinfo``; empty where unreadable, e.g. macOS),
    less those an instruction-set cap in the environment forbids (:func:`isa_cap`).

    Callers take it as a default argument so tests can inject another machine's flags.
    """
    return cap_flags(_read_cpu_flags(), isa_cap(env)[0])


def has_native_bf16(flags: Iterable[str] | None = None) -> bool:
    """Whether the CPU computes bf16 natively (AMX-BF16 or AVX512-BF16)."""
    flags = set(cpu_flags() if flags is None else flags)
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def int8_weight_kernel_vectorised(
    flags: Iterable[str] | None = None, machine: str | None = None
) -> bool:
    """Whether ``_weight_int8pack_mm``'s bf16 path is vectorised here (x86 with AVX2/AVX-512).

    Elsewhere (ARM, unknown CPUs) it is not assumed: the int8 query path then stays off
    unless asked for.
    """
    flags = set(cpu_flags() if flags is None else flags)
    machine = (machine or platform.machine()).lower()
    x86 = machine in {"x86_64", "amd64", "i686", "x86"}
    return x86 and bool(flags & {"avx2", "avx512f"})


def kernel_available(mode: str) -> bool:
    """Whether this torch build has the kernel of candidate ``mode`` (fp16 needs fbgemm,
    x86 builds only)."""
    if mode == "fp16":
        return "fbgemm" in torch.backends.quantized.supported_engines
    if mode == "int8s-fp32":
        return "fbgemm" in torch.backends.quantized.supported_engines and hasattr(
            torch.ops.quantized, "linear_with_input_q_dq_qweight_dq_output_fp32"
        )
    return True


@dataclass(frozen=True)
class QueryPlan:
    """Which query-path candidates to try, most promising first, and why."""

    candidates: tuple[str, ...]
    reason: str


def plan_query_weights(
    setting: str = "auto",
    *,
    device: str = "cpu",
    dtype: str = "float32",
    hidden: int = 0,
    min_hidden: int = 1024,
    flags: Iterable[str] | None = None,
    machine: str | None = None,
) -> QueryPlan:
    """The int8 query candidates for a model, from the setting and the CPU's features.

    ``auto`` tries ``int8-bf16`` only on a CPU device, for a float32 model of GME size
    (``hidden >= min_hidden``: small matrices are not bandwidth-bound), on an x86 CPU whose
    kernel is vectorised and which has **no** native bf16 (those run the whole model in bf16
    already). The caller keeps a candidate only if it passes the agreement self-check and
    beats the exact path's measured time.
    """
    if setting not in QUERY_WEIGHTS:
        raise ValueError(f"unknown query_weights {setting!r}; expected one of {QUERY_WEIGHTS}")
    if setting == "exact":
        return QueryPlan((), "query_weights='exact'")
    if torch.device(device).type != "cpu":
        if setting != "auto":
            raise ValueError("int8 query weights are for CPU inference (use bf16 on GPUs)")
        return QueryPlan((), f"device {device}: not a CPU")
    if setting != "auto":
        mode = "int8-bf16" if setting == "int8" else setting
        if not kernel_available(mode):
            raise ValueError(
                f"query_weights {mode!r} needs fbgemm, which this torch build lacks "
                "(x86 builds only); use 'auto' or 'exact'"
            )
        return QueryPlan((mode,), "asked for")
    if dtype != "float32":
        return QueryPlan((), f"model runs in {dtype}, not float32")
    if hidden < min_hidden:
        return QueryPlan((), f"model too small (hidden {hidden} < {min_hidden})")
    if has_native_bf16(flags):
        return QueryPlan((), "CPU has native bf16 (the model's auto dtype covers it)")
    if not int8_weight_kernel_vectorised(flags, machine):
        return QueryPlan((), "no AVX2/AVX-512: the int8 kernel is not vectorised here")
    return QueryPlan(
        tuple(c for c in AUTO_ORDER if kernel_available(c)), "x86 CPU without native bf16"
    )


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


def split_rows(x: torch.Tensor, levels: int = SPLIT_LEVELS) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``x`` (m, k) as ``levels`` stacked integer-valued levels (levels * m, k) in
    [-SPLIT_STEP, SPLIT_STEP] and one scale per row (m, 1), so that
    :func:`merge_levels` of their products gives ``x @ W.T`` to ~``2**(-7 * levels)`` of
    each row's largest element.

    Why per row and residual levels: one 7-bit level per tensor (dynamic int8) loses the
    small channels of every row next to an outlier; here each level re-quantises what the
    previous one missed, magnified ``2 * SPLIT_STEP`` times, so the GEMM stays int8 and
    the activations precise.
    """
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    x = x.float()
    scale = x.abs().amax(dim=1, keepdim=True).clamp(min=1e-30) / SPLIT_STEP
    u = x / scale
    parts = []
    for _ in range(levels):
        q = torch.round(u)
        parts.append(q)
        u = (u - q) * (2 * SPLIT_STEP)
    return torch.cat(parts), scale


def merge_levels(y: torch.Tensor, levels: int, scale: torch.Tensor) -> torch.Tensor:
    """Recombine the GEMM outputs of :func:`split_rows`' stacked levels (levels * m, n)."""
    m = y.shape[0] // levels
    out = y[(levels - 1) * m :]
    for i in range(levels - 2, -1, -1):
        out = y[i * m : (i + 1) * m] + out / (2 * SPLIT_STEP)
    return out * scale


def pack_int8_fbgemm(weight: torch.Tensor) -> Any:
    """fbgemm's prepacked int8 weight (per output channel, symmetric, no bias: the bias is
    added once after the levels are merged) for
    ``quantized.linear_with_input_q_dq_qweight_dq_output_fp32``."""
    q, scale = quantize_weight(weight)
    with warnings.catch_warnings():
        # quantized tensors are deprecated as a user type; fbgemm's prepack still takes them
        warnings.simplefilter("ignore")
        qw = torch._make_per_channel_quantized_tensor(
            q, scale.double(), torch.zeros(q.shape[0], dtype=torch.long), 0
        )
        with _quantized_engine("fbgemm"):
            return torch.ops.quantized.linear_prepack(qw, None)


@contextlib.contextmanager
def _quantized_engine(name: str) -> Iterator[None]:
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


def int8s_linear(rows: torch.Tensor, packed: Any, levels: int = SPLIT_LEVELS) -> torch.Tensor:
    """``rows @ W.T`` (float32) with ``W`` from :func:`pack_int8_fbgemm`, activations split."""
    stacked, scale = split_rows(rows, levels)
    # integer-valued input, scale 1 and zero point 64: fbgemm stores q + 64 exactly
    y = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
        stacked, 1.0, SPLIT_STEP + 1, packed
    )
    return merge_levels(y, levels, scale)


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
        elif mode == "int8s-fp32":
            precise = _first_layers(root, SPLIT_FP16_LAYERS)
        kinds: list[tuple[torch.nn.Linear, str]] = []
        for module in root.modules():
            if isinstance(module, torch.nn.Linear) and module.weight.dtype.is_floating_point:
                kind = mode
                if mode == "int8mix-bf16":
                    kind = "int8x2-bf16" if id(module) in precise else "int8-bf16"
                elif mode == "int8s-fp32" and id(module) in precise:
                    kind = "fp16"
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
            elif kind == "int8s-fp32":
                packed = (pack_int8_fbgemm(module.weight),)
                nbytes = module.weight.numel() + module.out_features * 12
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
        if kind == "int8s-fp32":
            out = int8s_linear(rows, packed[0]).to(x.dtype)
        elif kind == "int8+int4-bf16":
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


# --------------------------------------------------------------------------- selection


@dataclass
class QueryChoice:
    """What the self-check decided: the mode in use and the measurements behind it.

    ``source``: "measured" (calibrated in this process), "cache" (measured by an earlier
    process, :mod:`indexer.query_choice_cache`; ``cache_file`` names the file), "plan"
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


def choose(
    plan: QueryPlan,
    *,
    run_exact: Callable[[], torch.Tensor],
    make: Callable[[str], QueryWeights],
    run_with: Callable[[QueryWeights], torch.Tensor],
    forced: bool = False,
    min_cosine: float | None = None,
) -> tuple[QueryChoice, QueryWeights | None]:
    """Measure the candidates, in order, on whole queries against the exact path; keep the
    first that agrees (cosine >= ``min_cosine`` on every query) and, unless ``forced``, is
    faster. Candidates come fewest weight bytes first, so the first that holds is also the
    one that can go fastest; stopping there keeps at most one extra copy in memory.

    ``run_exact``/``run_with`` embed a fixed set of calibration queries (unit rows); each
    runs twice and the second run is timed (the first pays one-off allocations).
    """
    if min_cosine is None:
        min_cosine = MIN_QUERY_COSINE
    choice = QueryChoice(reason=plan.reason)
    if not plan.candidates:
        return choice, None

    def timed(fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float]:
        fn()
        t = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t

    exact, exact_s = timed(run_exact)
    choice.exact_s = round(exact_s, 4)
    best: tuple[float, str, QueryWeights] | None = None
    for name in plan.candidates:
        weights = make(name)

        def candidate(w: QueryWeights = weights) -> torch.Tensor:
            return run_with(w)

        vecs, secs = timed(candidate)
        cos = float((vecs * exact).sum(-1).min())
        holds = cos >= min_cosine
        faster = secs < exact_s
        choice.candidates[name] = {
            "cosine_min": round(cos, 6),
            "s": round(secs, 4),
            "holds": holds,
            "faster": faster,  # as measured: "s" and exact_s are rounded to 0.1 ms
        }
        if holds and (faster or forced):
            best = (secs, name, weights)
            break
        weights.remove()
    if best is None:
        choice.reason += "; no candidate held (agreement or speed): exact"
        return choice, None
    choice.mode = best[1]
    return choice, best[2]


def act_dtype(mode: str) -> torch.dtype:
    """The activation dtype of an int8 candidate."""
    return _ACT_DTYPES[mode]


__all__ = [
    "MIN_QUERY_COSINE",
    "QUERY_WEIGHTS",
    "AUTO_ORDER",
    "CANDIDATES",
    "Int8Weights",
    "QueryWeights",
    "QueryChoice",
    "QueryPlan",
    "act_dtype",
    "choose",
    "cap_flags",
    "cpu_flags",
    "has_native_bf16",
    "isa_cap",
    "int8_weight_kernel_vectorised",
    "kernel_available",
    "plan_query_weights",
    "quantize_int4",
    "quantize_int8_int4",
    "quantize_weight",
    "int8s_linear",
    "merge_levels",
    "pack_int8_fbgemm",
    "split_rows",
]
