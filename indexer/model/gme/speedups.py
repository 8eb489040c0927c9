"""Opt-in speed-ups applied to a loaded GME embedder, in place: int8 and ``torch.compile``.

Neither is a default: ``--quantize int8`` changes the vectors (close to, not equal to, the
float32 ones) and ``--compile`` pays tens of seconds of compilation up front.
"""

from __future__ import annotations

import torch

from indexer.model.gme import page_kernels
from indexer.model.gme.embedder import GmeEmbedder

QUANTIZE_MODES = ("int8",)


def quantize_embedder(embedder: GmeEmbedder, mode: str = "int8") -> GmeEmbedder:
    """Opt-in fast path: int8 dynamic quantisation of every ``nn.Linear`` (vision tower and
    decoder), in place, on CPU. Weights become int8 (per-channel scales), activations are
    quantised per batch; embeddings, norms and the patch convolution stay float32. Vectors
    are close to, not equal to, the float32 ones (``pagelens bench`` reports the agreement).
    Needs a float32 CPU model; returns ``embedder``.
    """
    if mode not in QUANTIZE_MODES:
        raise ValueError(f"unknown quantize mode {mode!r}; expected one of {QUANTIZE_MODES}")
    if torch.device(embedder.device).type != "cpu":
        raise ValueError("int8 quantisation is for CPU inference (use bf16/fp16 on GPUs)")
    # the leaner MLP forward calls the float linears' weights; int8 replaces those modules
    page_kernels.uninstall(embedder._visual)
    embedder.queries.reset("exact")  # dynamic int8 replaces the linears the copy patched
    if embedder.dtype != "float32":
        embedder.model.to(torch.float32)

    from torch.ao.quantization import quantize_dynamic

    engines = torch.backends.quantized.supported_engines
    for engine in ("x86", "fbgemm", "onednn"):
        if engine in engines:
            torch.backends.quantized.engine = engine
            break
    # torch.ao.quantization warns that it is deprecated; not silenced here, because
    # warnings.catch_warnings() is not thread-safe (the app loads models in a thread) and a
    # library must not change the process's filters. The CLI filters it (cli_common).
    quantize_dynamic(embedder.model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    embedder.page_kernels = page_kernels.install(embedder._visual)  # attention only now
    embedder.dtype = "int8"
    embedder._prefix_kv.clear()
    return embedder


def compile_embedder(embedder: GmeEmbedder) -> GmeEmbedder:
    """Opt-in: compile the vision blocks and decoder layers with ``torch.compile``, in place.

    Why: on CPU the vision tower spends about a third of its time in small elementwise ops
    (rotary embedding, quick-GELU, copies) that inductor fuses; a vision block ran ~1.5x
    faster compiled (bf16, 5,120 patches). The first batch pays the compilation (tens of
    seconds, needs a C++ compiler), so it only pays off for long indexing jobs. Vectors equal
    the eager ones up to float rounding. If compilation fails, PyTorch falls back to eager.
    """
    inner = embedder.model.model
    for block in [*inner.visual.blocks, *inner.language_model.layers]:
        block.compile(dynamic=True)
    embedder.compiled = True
    return embedder


__all__ = ["QUANTIZE_MODES", "compile_embedder", "quantize_embedder"]
