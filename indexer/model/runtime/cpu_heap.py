"""Keep freed large buffers inside the process (glibc), so a page batch does not pay the
kernel to map and zero its activations again in every layer.

Why: glibc serves every allocation above its mmap threshold (dynamic, at most 32 MiB) with a
fresh ``mmap`` and hands it back with ``munmap`` when freed. A vision block at 1,280 tokens
allocates and frees a dozen 12-200 MiB tensors (qkv, the float32 rotary buffer, the
5,120-wide MLP activation, ...), so each page faulted in and zeroed ~1 GiB again per
forward: 246k-263k minor page faults per page at batch 1 and 434k-443k at batch 4 (at
batch 4 the per-page 12 MiB tensors become 50 MiB ones, past the threshold), measured on
the 2-core EPYC with the full-width model cut to 4+4 layers, bf16. That was the cost of
batching at 1,280 tokens (batch 4 7.43 s/page vs batch 1 7.19, +3.3%). With
:func:`keep_freed_memory` both ran at 7.04 s/page with ~0 faults in the same lock-held
session (torch's ``THP_MEM_ALLOC_ENABLE=1`` huge pages, by comparison: 7.58 / 8.13).

What it changes: ``mallopt(M_MMAP_MAX, 0)`` (large buffers come from the heap, where freed
ones are reused) and a high ``M_TRIM_THRESHOLD`` (the heap's top is not given back after
each tensor). The memory stays available to the process, and
:func:`indexer.model.runtime.memory.release_free_heap` (``malloc_trim``) still returns it to
the system between batches, so the peak stays one batch. Nothing happens where there is no glibc
(macOS, Windows, musl) or where the user tunes glibc's allocator through the environment.

Limit: in threads other than the main one glibc allocates from per-thread arenas whose heaps
hold at most 64 MiB; a larger buffer there is still mapped afresh (glibc falls back to mmap
whatever ``M_MMAP_MAX`` says). ``pagelens index`` runs the model in the main thread; a
model driven from a worker thread (the server's batcher, the Streamlit app) keeps the reuse
for buffers under 64 MiB only, e.g. batch 1 at 1,280 tokens in bf16 (measured: 0 faults
below 64 MiB, every page faulted again for 100 and 300 MiB buffers in a thread).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

#: glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
#: Trim the heap's top only when this much is free at once (mallopt takes an int; the
#: pipeline trims explicitly between batches).
TRIM_THRESHOLD = 2**31 - 1

#: Environment variables through which a user tunes glibc's malloc; any of them set: hands off.
USER_TUNING = (
    "MALLOC_MMAP_MAX_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_ARENA_MAX",
)

_done: bool | None = None


def _user_tunes(env: dict[str, str] | os._Environ[str]) -> bool:
    if any(env.get(name) for name in USER_TUNING):
        return True
    return "glibc.malloc." in env.get("GLIBC_TUNABLES", "")


@functools.cache
def glibc() -> ctypes.CDLL | None:
    """This process's C library if it is glibc (the allocator these settings are for), else
    None: not Linux, or another libc (musl has neither ``mallopt`` nor ``malloc_trim``)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - glibc's own symbol, so not a look-alike
    except (OSError, AttributeError):
        return None
    return libc


def in_effect() -> bool:
    """Whether :func:`keep_freed_memory` has turned the setting on in this process."""
    return bool(_done)


def keep_freed_memory(env: dict[str, str] | None = None) -> bool:
    """Make glibc reuse freed large buffers instead of unmapping them (process-wide, once).

    Returns whether the setting is in effect: False without glibc or when the environment
    already tunes glibc's malloc (``GLIBC_TUNABLES=glibc.malloc.*``, ``MALLOC_*_``), which
    is left as the user set it.
    """
    global _done
    if _done is not None:
        return _done
    _done = False
    libc = glibc()
    if libc is None or _user_tunes(os.environ if env is None else env):
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _done = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _done
