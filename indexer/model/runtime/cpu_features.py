"""What this CPU can run fast: its feature flags, less any instruction-set cap.

Read at run time (``/proc/cpuinfo``) and injectable, so the dtype choice
(:func:`indexer.model.runtime.device.cpu_auto_dtype`) and the query-weights plan
(:func:`indexer.model.gme.query_weights.plan_query_weights`) can be tested for another
machine. An instruction-set cap in the environment (``ATEN_CPU_CAPABILITY=avx2``,
``ONEDNN_MAX_CPU_ISA``, ``MKL_ENABLE_INSTRUCTIONS``, ``FBGEMM_ENABLE_INSTRUCTIONS``;
:func:`isa_cap`) counts: the kernels cannot use what is capped, so neither do the decisions
(``pagelens bench --isa avx2`` uses this to emulate an AVX2-only CPU).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable, Mapping
from functools import lru_cache

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


__all__ = [
    "ISA_CAP_ENV",
    "ISA_LEVELS",
    "cap_flags",
    "cpu_flags",
    "has_native_bf16",
    "int8_weight_kernel_vectorised",
    "isa_cap",
]
