"""How many pages fit in one model batch: the memory a page needs vs the memory that is free.

Why: a fixed batch size is wrong both ways. On a 64 GB workstation 4 pages leave the
CPU's matmuls on small matrices; on an 8 GB laptop a batch of 1280-token pages in float32
can push the machine into swap or the OOM killer, which on Linux kills the process without
an exception to catch. So the indexer estimates a page's peak activation memory from the
model's shape and budget (:func:`page_bytes`), reads what is available now
(:func:`available_bytes`: ``MemAvailable`` and the cgroup limit on Linux, psutil elsewhere,
``torch.cuda.mem_get_info`` on CUDA) and takes the largest batch that fits with a margin
(:func:`auto_batch_size`). Both figures can be injected, which is how the tests drive it.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Batches never exceed this: past it the matmuls are already large and a batch only delays
#: progress reports and commits.
MAX_AUTO_BATCH = 16
#: Of the available memory, the share a batch may use (the rest: allocator slack, the next
#: batch's images decoding in parallel, other programs).
USABLE_FRACTION = 0.6
#: Safety factor on the activation estimate (oneDNN scratch buffers, fragmentation).
ESTIMATE_FACTOR = 2.0


def _meminfo_available(path: str = "/proc/meminfo") -> int | None:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_headroom(root: str = "/sys/fs/cgroup") -> int | None:
    """Bytes left under a cgroup v2 memory limit (containers), None when unlimited."""
    try:
        limit = Path(root, "memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int(Path(root, "memory.current").read_text().strip())
        return max(0, int(limit) - used)
    except (OSError, ValueError):
        return None


def available_bytes(device: str = "cpu") -> int:
    """Memory a batch may use now on ``device``: free GPU memory on CUDA; on CPU the
    kernel's ``MemAvailable`` (page cache it can drop included), capped by any cgroup limit;
    psutil where ``/proc`` is missing (macOS, Windows)."""
    if str(device).split(":")[0] == "cuda":  # torch only where it is in use already
        import torch

        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    avail = _meminfo_available()
    if avail is None:
        try:
            import psutil

            avail = int(psutil.virtual_memory().available)
        except Exception:  # pragma: no cover - no /proc and no psutil
            avail = 4 * 2**30
    headroom = _cgroup_headroom()
    return min(avail, headroom) if headroom is not None else avail


def page_bytes(config: Any, tokens: int, dtype_bytes: int = 4) -> int:
    """Peak activation bytes one page adds to a batch at a ``tokens`` visual-token budget.

    The larger of the vision tower's (``4*tokens`` patches: hidden, residual and two MLP
    intermediates live at once; attention is fused, so no patches x patches scores) and the
    decoder's (``tokens`` + ~40 prompt tokens: hidden, residual, gate/up/product of the MLP,
    and the attention scores), plus the page's pixels, times :data:`ESTIMATE_FACTOR`.
    """
    v, t = config.vision_config, config.text_config
    patches = 4 * int(tokens)
    d = int(v.embed_dim)
    mlp = int(d * float(v.mlp_ratio))
    vision = patches * (3 * d + 2 * mlp)
    length = int(tokens) + 40
    h, inter = int(t.hidden_size), int(t.intermediate_size)
    decoder = length * (3 * h + 3 * inter) + int(t.num_attention_heads) * length * length
    pixels = patches * int(v.in_channels) * int(v.temporal_patch_size) * int(v.patch_size) ** 2
    return int(ESTIMATE_FACTOR * (max(vision, decoder) * dtype_bytes + pixels * 4))


@dataclass(frozen=True)
class BatchChoice:
    """The batch size and the figures it came from (for ``-v`` and reports)."""

    size: int
    page_bytes: int
    available_bytes: int
    reason: str

    def describe(self) -> str:
        mib = 2**20
        return (
            f"batch size {self.size}: ~{self.page_bytes / mib:.0f} MiB per page, "
            f"{self.available_bytes / mib:.0f} MiB available ({self.reason})"
        )


def auto_batch_size(
    embedder: Any,
    *,
    available: int | None = None,
    max_batch: int = MAX_AUTO_BATCH,
) -> BatchChoice:
    """The largest batch (1..``max_batch``) whose pages fit :data:`USABLE_FRACTION` of the
    available memory; ``available`` (bytes) is read from the device unless given.

    Embedders without a model config (fakes, remote ones) get ``max_batch`` capped by their
    own ``batch_size`` if they have one.
    """
    device = str(getattr(embedder, "device", "cpu") or "cpu")
    if available is None:
        available = available_bytes(device)
    model = getattr(embedder, "model", None)
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "vision_config"):
        size = max(1, min(max_batch, int(getattr(embedder, "batch_size", max_batch))))
        return BatchChoice(size, 0, int(available), "no model shape to estimate from")
    tokens = int(getattr(embedder, "max_image_tokens", 1280))
    dtype = str(getattr(embedder, "dtype", "float32"))
    per_page = page_bytes(config, tokens, 2 if dtype in ("bfloat16", "float16") else 4)
    fits = int(available * USABLE_FRACTION) // max(per_page, 1)
    size = max(1, min(max_batch, fits))
    if fits < 1:
        reason = "not even one page fits the estimate: one at a time"
    elif fits > max_batch:
        reason = f"capped at {max_batch}"
    else:
        reason = f"{USABLE_FRACTION:.0%} of available memory"
    return BatchChoice(size, per_page, int(available), f"{tokens} tokens, {dtype}; {reason}")


def release_free_heap() -> bool:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim(0)``); False
    where there is no glibc (macOS, Windows, musl), whose allocators do this themselves.

    Why: glibc keeps what a process frees. Once a large buffer (a 4 MiB decoded page) is
    freed it raises its mmap threshold and serves later ones from the heap, and freed heap
    pages are reused only where they fit; so between batches the heap holds leftovers of
    the last batch (and of rendering) beside the next one, by chance more or less. Trimming
    after each batch makes the peak one batch plus what is in use (120 pages of 843x1192,
    three runs each: +20.1-20.3 MiB with it, +20.8-22.0 MiB without). What it costs is
    touching freed pages again in the next batch (a fraction of a second for a GME batch
    that takes seconds to minutes).
    """
    from indexer.model.runtime.cpu_heap import glibc

    libc = glibc()
    if libc is None:
        return False
    libc.malloc_trim(ctypes.c_size_t(0))
    return True


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure a smaller batch could avoid."""
    import torch

    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "can't allocate memory" in text
        or "out of memory" in text
        or "failed to allocate" in text
        or "defaultcpuallocator" in text
    )


__all__ = [
    "MAX_AUTO_BATCH",
    "BatchChoice",
    "auto_batch_size",
    "available_bytes",
    "is_out_of_memory",
    "page_bytes",
    "release_free_heap",
]
