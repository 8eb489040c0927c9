"""The text-query weights decision, kept on disk so that it is measured once per machine.

Why: on CPUs without native bf16, the query-weights policy
(:mod:`indexer.model.gme.query_weights`, behind ``GmeEmbedder.prepare_queries``) decides
whether text queries use a lower-precision copy of the decoder weights (see
:mod:`indexer.model.runtime.lowp`) by embedding calibration queries exactly and with each
candidate. On
the CPUs that need it that takes tens of seconds, which every new process would pay again
for the same answer. So the decision (mode, reason, measured figures) is written to one
small JSON file per *key* under :func:`indexer.config.cache_dir` (``query-weights/``), and a
later process with the same key only reads it. Nothing leaves the machine.

The key holds everything that can change the answer: the model (id, weights fingerprint
of :mod:`indexer.identity`, config), the CPU as the kernels see it (model name, the effective
flags after instruction-set caps, :func:`indexer.model.runtime.cpu_features.cpu_flags`), the
torch version and thread count, the model's dtype and device, the candidates in the order
tried, whether the setting forces one, :data:`indexer.model.runtime.lowp.MIN_QUERY_COSINE`
and the calibration queries.
Any change gives another file, i.e. a new measurement.

The cache is best effort: an unreadable, corrupt or foreign file is ignored (the caller
measures again and rewrites it atomically), and a read-only cache folder only means the
decision is not saved. Deleting the folder clears it.

This module also says whether a copy fits in the memory available now
(:func:`memory_shortfall`): building one next to a float32 model that already fills most of
the machine's memory would push it into swap or the OOM killer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from indexer.model.runtime import cpu_features, lowp, memory

log = logging.getLogger(__name__)

#: Bumped when the file format or the key's meaning changes (old files then never match).
CACHE_VERSION = 1
#: The folder under :func:`indexer.config.cache_dir` that holds the decisions.
CACHE_FOLDER = "query-weights"
#: Bytes per weight of each candidate's copy (what :class:`~indexer.model.runtime.lowp.QueryWeights`
#: holds beside the float weights). A candidate not listed is assumed to take 2.
COPY_BYTES_PER_WEIGHT: dict[str, float] = {
    "fp16": 2.0,
    "bf16": 2.0,
    "int8x2-bf16": 2.0,
    "int8+int4-bf16": 1.53,
    "int8mix-bf16": 1.14,
    "int8-bf16": 1.0,
    "int8-fp32": 1.0,
}
#: Free memory kept beyond the copy itself (quantisation temporaries, the allocator's
#: slack, the query's own activations, other programs).
MEMORY_MARGIN = 1 << 30


# --------------------------------------------------------------------------- memory


def copy_bytes(mode: str, weights: int) -> int:
    """The bytes a ``mode`` copy of ``weights`` decoder weights takes."""
    return int(weights * COPY_BYTES_PER_WEIGHT.get(mode, 2.0))


def memory_shortfall(mode: str, weights: int, available: int | None = None) -> str | None:
    """Why a ``mode`` copy of ``weights`` weights should not be built now, or None if it fits.

    ``available`` defaults to :func:`indexer.model.runtime.memory.available_bytes`
    (``MemAvailable``, capped by a cgroup limit; psutil elsewhere); tests inject a figure.
    """
    need = copy_bytes(mode, weights) + MEMORY_MARGIN
    have = memory.available_bytes("cpu") if available is None else int(available)
    if have >= need:
        return None
    return (
        f"not enough free memory for the {mode} copy of the decoder weights "
        f"({need / 2**30:.1f} GiB needed with margin, {have / 2**30:.1f} GiB available): exact"
    )


# --------------------------------------------------------------------------- the key


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def decision_key(
    *,
    model_id: str,
    fingerprint: str | None,
    config: str,
    flags: Iterable[str],
    device: str,
    dtype: str,
    candidates: Sequence[str],
    forced: bool,
    calibration: Sequence[str],
    min_cosine: float | None = None,
) -> dict[str, Any]:
    """Everything the decision depends on, as a JSON-ready dict (see the module docstring).

    ``config`` is the model's config as JSON text: with the fingerprint it names the
    weights; without one (a model built in memory) it still separates different shapes.
    ``flags`` are the *effective* CPU flags (after instruction-set caps).
    """
    return {
        "version": CACHE_VERSION,
        "model_id": str(model_id),
        "fingerprint": fingerprint,
        "config_sha256": hashlib.sha256(config.encode()).hexdigest(),
        "cpu_model": cpu_model(),
        "machine": platform.machine(),
        "cpu_flags": sorted(flags),
        "isa_cap": cpu_features.isa_cap()[0],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "dtype": str(dtype),
        "candidates": list(candidates),
        "forced": bool(forced),
        "min_cosine": lowp.MIN_QUERY_COSINE if min_cosine is None else float(min_cosine),
        "calibration_sha256": hashlib.sha256("\n".join(calibration).encode()).hexdigest(),
    }


def _key_name(key: dict[str, Any]) -> str:
    canonical = json.dumps(key, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32] + ".json"


# --------------------------------------------------------------------------- the files


class DecisionCache:
    """One JSON file per decision key under ``root`` (default:
    ``cache_dir()/query-weights``, read when used so that ``$PAGELENS_CACHE`` set later
    still counts)."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self._root = Path(root) if root is not None else None

    @property
    def root(self) -> Path:
        if self._root is not None:
            return self._root
        from indexer.config import cache_dir

        return cache_dir() / CACHE_FOLDER

    def path(self, key: dict[str, Any]) -> Path:
        """The file that holds (or would hold) the decision for ``key``."""
        return self.root / _key_name(key)

    def load(self, key: dict[str, Any]) -> lowp.QueryChoice | None:
        """The decision stored for ``key`` (``source="cache"``), or None when there is none
        or the file cannot be trusted (unreadable, not JSON, another key, unknown mode)."""
        path = self.path(key)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.get("key") != key:
                raise ValueError("written for another key")
            saved = data["choice"]
            mode = str(saved["mode"])
            if mode != "exact" and mode not in lowp.CANDIDATES:
                raise ValueError(f"unknown mode {mode!r}")
            exact_s = saved.get("exact_s")
            measured = {
                str(name): {k: v for k, v in dict(fig).items() if isinstance(v, float | int)}
                for name, fig in dict(saved.get("candidates") or {}).items()
            }
            choice = lowp.QueryChoice(
                mode=mode,
                reason=str(saved.get("reason") or ""),
                candidates=measured,
                exact_s=float(exact_s) if exact_s is not None else None,
                source="cache",
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.info("ignoring the query-weights decision in %s (%s): measuring again", path, exc)
            return None
        for name in ("calibration_s", "prepare_s"):  # what measuring and the copy cost then
            figure = data.get(name)
            if isinstance(figure, float | int) and not isinstance(figure, bool):
                choice.timings[f"{name}_when_measured"] = float(figure)
        choice.cache_file = str(path)
        return choice

    def store(self, key: dict[str, Any], choice: lowp.QueryChoice) -> Path | None:
        """Write the decision for ``key`` atomically (a temporary file, then ``os.replace``,
        so a reader never sees half a file); None when the folder is not writable."""
        path = self.path(key)
        data = {
            "key": key,
            "choice": {
                "mode": choice.mode,
                "reason": choice.reason,
                "exact_s": choice.exact_s,
                "candidates": choice.candidates,
            },
            "calibration_s": choice.timings.get("calibration_s"),
            "prepare_s": choice.timings.get("prepare_s"),
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:
            log.info("query-weights decision not saved (%s): the next process measures again", exc)
            try:
                tmp.unlink()
            except OSError:
                pass
            return None
        return path


__all__ = [
    "CACHE_FOLDER",
    "CACHE_VERSION",
    "COPY_BYTES_PER_WEIGHT",
    "MEMORY_MARGIN",
    "DecisionCache",
    "copy_bytes",
    "cpu_model",
    "decision_key",
    "memory_shortfall",
]
