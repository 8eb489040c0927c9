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
  the full-size random-weight model its query vectors reach cosine ~0.998 to float32
  (top-10 overlap 0.98): the weight rounding alone (~0.75% of a weight's spread) is too
  coarse for the 0.999 bar.
* ``int8x2-bf16``: two int8 levels (the second quantises the first's error; ~15-bit
  weights), the same kernel in one pass over stacked rows. 2 bytes per weight; cosine
  ~0.9997, same top-10.
* ``bf16``: bf16 weights and activations. 2 bytes per weight; cosine ~0.9998.
* ``int8-fp32``: int8 weights, float32 activations; the kernel's float32 path is not
  vectorised (10-20x slower than a float32 matmul on AVX2 and AVX-512), kept for the record.

Only text inputs take this path (queries); pages keep the exact weights, so a copy is extra
memory (1.3-2.6 GB for GME-2B), made on the first text query by
:meth:`indexer.gme.GmeEmbedder.prepare_queries`, which keeps a candidate only if, measured
there on whole queries, it agrees with the exact path (cosine >= :data:`MIN_QUERY_COSINE`)
and is faster. CPU features are read at run time (:func:`cpu_flags`, injectable): ``auto``
tries candidates only on x86 CPUs with AVX2/AVX-512 and **without** native bf16 (those run
the whole model in bf16 already).
"""

from __future__ import annotations

import contextlib
import logging
import platform
import time
from collections.abc import Callable, Iterable, Iterator
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
CANDIDATES = ("int8-bf16", "int8-fp32", "int8x2-bf16", "bf16")
QUERY_WEIGHTS = ("auto", "exact", "int8", *CANDIDATES)
#: What ``auto`` tries, fewest bytes first; the first that agrees and is faster is kept
#: (trying them all would hold two extra weight copies at once).
AUTO_ORDER = ("int8-bf16", "int8x2-bf16", "bf16")
_ACT_DTYPES = {
    "int8-bf16": torch.bfloat16,
    "int8-fp32": torch.float32,
    "int8x2-bf16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


# --------------------------------------------------------------------------- CPU features


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


def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags (``/proc/cpuinfo``; empty where unreadable, e.g. macOS).

    Callers take it as a default argument so tests can inject another machine's flags.
    """
    return _read_cpu_flags()


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
        return QueryPlan(("int8-bf16",) if setting == "int8" else (setting,), "asked for")
    if dtype != "float32":
        return QueryPlan((), f"model runs in {dtype}, not float32")
    if hidden < min_hidden:
        return QueryPlan((), f"model too small (hidden {hidden} < {min_hidden})")
    if has_native_bf16(flags):
        return QueryPlan((), "CPU has native bf16 (the model's auto dtype covers it)")
    if not int8_weight_kernel_vectorised(flags, machine):
        return QueryPlan((), "no AVX2/AVX-512: the int8 kernel is not vectorised here")
    return QueryPlan(AUTO_ORDER, "x86 CPU without native bf16")


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
        self.mode = mode
        self.act_dtype = act_dtype(mode)
        self.on = False
        self.linears: list[torch.nn.Linear] = []
        self.bytes = 0
        for module in root.modules():
            if isinstance(module, torch.nn.Linear) and module.weight.dtype.is_floating_point:
                if mode == "bf16":
                    packed: tuple[torch.Tensor, ...] = (
                        module.weight.detach().to(torch.bfloat16).contiguous(),
                    )
                elif mode.startswith("int8x2"):
                    q, scale = quantize_weight_2level(module.weight)
                    packed = (q, scale.to(self.act_dtype))
                else:
                    q, scale = quantize_weight(module.weight)
                    packed = (q, scale.to(self.act_dtype))
                # an instance attribute shadows the class's forward; state_dict is untouched
                setattr(module, "forward", _lowp_forward(module, self, packed))  # noqa: B010
                self.linears.append(module)
                self.bytes += sum(t.numel() * t.element_size() for t in packed)

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


def _lowp_forward(
    module: torch.nn.Linear, owner: QueryWeights, packed: tuple[torch.Tensor, ...]
) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(x: torch.Tensor) -> torch.Tensor:
        if not owner.on:
            return F.linear(x, module.weight, module.bias)
        rows = x.reshape(-1, x.shape[-1]).to(owner.act_dtype).contiguous()
        n = module.out_features
        if owner.mode == "bf16":
            out = F.linear(rows, packed[0]).to(x.dtype)
        elif owner.mode.startswith("int8x2"):
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
    """What the self-check decided: the mode in use and the measurements behind it."""

    mode: str = "exact"
    reason: str = ""
    candidates: dict[str, dict[str, float | bool]] = field(default_factory=dict)
    exact_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "reason": self.reason,
            "exact_s": self.exact_s,
            "candidates": self.candidates,
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
        choice.candidates[name] = {"cosine_min": round(cos, 6), "s": round(secs, 4), "holds": holds}
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
    "cpu_flags",
    "has_native_bf16",
    "int8_weight_kernel_vectorised",
    "plan_query_weights",
    "quantize_weight",
]
