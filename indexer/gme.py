"""Compatibility shim: GME lives in :mod:`indexer.model.gme` (recipe, embedder, loading...)."""

from indexer.model.gme.embedder import GmeEmbedder
from indexer.model.gme.loading import load_embedder
from indexer.model.gme.recipe import IMAGE_BLOCK, MAX_LENGTH, build_prompt
from indexer.model.gme.speedups import compile_embedder, quantize_embedder
from indexer.model.runtime.device import cpu_has_native_bf16, resolve_device, resolve_dtype

__all__ = [
    "IMAGE_BLOCK",
    "MAX_LENGTH",
    "GmeEmbedder",
    "build_prompt",
    "compile_embedder",
    "cpu_has_native_bf16",
    "load_embedder",
    "quantize_embedder",
    "resolve_device",
    "resolve_dtype",
]
