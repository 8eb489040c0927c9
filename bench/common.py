"""Small helpers every bench module shares: paths, percentiles and rounding for the report,
vector agreement, and progress lines on stderr. Imports only numpy and the standard library."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def rounded(x: float, n: int = 4) -> float:
    return float(round(float(x), n))


def log(msg: str) -> None:
    """Progress on stderr (the full-size phases take minutes)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
    cos = np.sum(a * b, axis=1)
    return {
        "cosine_min": rounded(float(cos.min()), 6),
        "cosine_mean": rounded(float(cos.mean()), 6),
    }


def topk_overlap(qa: np.ndarray, ca: np.ndarray, qb: np.ndarray, cb: np.ndarray, k: int) -> float:
    k = min(k, len(ca))
    ra = np.argsort(-(qa @ ca.T), axis=1)[:, :k]
    rb = np.argsort(-(qb @ cb.T), axis=1)[:, :k]
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(ra, rb, strict=True)]))
