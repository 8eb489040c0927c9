"""Where a model runs and in which float type: device and dtype resolution.

Auto means CUDA, then MPS, then CPU; and bf16 on CUDA, fp16 on MPS, and on a CPU bf16 only
where it computes bf16 natively (:mod:`indexer.model.runtime.cpu_features`) and the model is
big enough for it to pay off, else float32.
"""

from __future__ import annotations

from typing import Any

import torch

from indexer.model.runtime import cpu_features


def resolve_device(device: str | torch.device | None = None) -> str:
    """``device`` as a string, or the best available one: CUDA, then MPS, then CPU."""
    if device is not None and str(device) not in ("", "auto"):
        return str(device)
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX-BF16 or AVX512-BF16, read on Linux)."""
    return cpu_features.has_native_bf16(cpu_features.cpu_flags())


_DTYPE_NAMES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
}


def resolve_dtype(dtype: Any = None, device: str = "cpu") -> torch.dtype:
    """A torch dtype from a dtype, a name ("bfloat16", "float16", "float32") or None/"auto".

    Auto: bf16 on CUDA (fp16 where bf16 is unsupported), fp16 on MPS, and on CPU bf16 only
    when the CPU has native bf16, else fp32.
    """
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point type, not {dtype}")
        return dtype
    if dtype is None or str(dtype).lower() == "auto":
        kind = torch.device(device).type
        if kind == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if kind == "mps":
            return torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    name = str(dtype).lower().removeprefix("torch.")
    if name not in _DTYPE_NAMES:
        raise ValueError(f"unknown dtype {dtype!r}; use bfloat16, float16 or float32")
    return _DTYPE_NAMES[name]


#: Below this text hidden size a model is too small for bf16 to pay off on a CPU.
CPU_BF16_MIN_HIDDEN = 1024


def cpu_auto_dtype(config: Any) -> torch.dtype:
    """The automatic CPU dtype for a model: bf16 on native-bf16 CPUs for GME-sized models.

    bf16 on AMX/AVX512-BF16 CPUs is 1.7-4x faster for GME-2B (see README, Performance) with
    vectors within cosine 0.9995 of float32. For small models (the random-weight test
    checkpoints) the matrices are too small for that speed-up and bf16 only costs accuracy,
    so they stay in float32.
    """
    text = getattr(config, "text_config", None) or config
    hidden = int(getattr(text, "hidden_size", 0) or 0)
    if hidden < CPU_BF16_MIN_HIDDEN:
        return torch.float32
    return resolve_dtype(None, "cpu")


__all__ = [
    "CPU_BF16_MIN_HIDDEN",
    "cpu_auto_dtype",
    "cpu_has_native_bf16",
    "resolve_device",
    "resolve_dtype",
]
