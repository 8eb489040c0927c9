"""PageLens benchmark: rendering, page embedding, queries and vector search, in one run.

``python -m bench.bench`` or ``pagelens bench``. Without ``--model`` it builds the full-size
GME-2B architecture with random weights in memory (same FLOPs and memory as the real model;
``--size tiny`` for smoke tests). Writes a JSON report to
``bench/results/<label>-<date>.json`` and prints a summary. See bench/README.md.

Phases (each model phase builds the model afresh, so at most one full model is in memory):

A. float32, one page at a time, no prefix cache: the straightforward recipe (baseline) and
   the reference vectors every other path is compared with.
B. int8 dynamic quantisation of the same float32 weights (opt-in fast path).
C. the exact path in the chosen dtype (``--dtype``, default: the app's auto choice),
   batched and length-bucketed, text queries with the prompt-prefix KV cache.
D. vector search on clustered synthetic unit vectors: flat (exact), HNSW, IVF-SQ8.
E. (optional) RSS while indexing a long PDF with a fake embedder.
F. (optional, ``--remote-pages N``) per-page overhead of embedding through ``pagelens serve``
   (a subprocess on loopback, RemoteEmbedder's defaults) over in-process, same weights (the
   tiny random model unless ``--model``): bench/remote_overhead.py.
G. ``index --ray`` throughput with 1 and 2 embedding actors on a local Ray instance, and the
   same pages in-process (bench/ray_bench.py; ``--ray-actors ''`` skips it).
H. (optional, ``--rerank-pages N``) seconds per reranked page: the full-size Qwen3-VL
   reranker, random weights, N real pages and their text layers (bench/rerank_phase.py).
I. (optional, ``--evidence-pages N``) s/page of visual evidence, N pages (evidence_phase.py).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.common import RESULTS, ROOT, rounded
from bench.corpus import default_pdf, make_text_pdf, render
from bench.machine import (
    check_device,
    device_info,
    machine_info,
    matmul_peak,
    memory_bandwidth,
    native_bf16,
)
from bench.model_phases import run_model
from bench.query_phase import run_queries_only
from bench.report import summary, targets
from bench.vectors import run_vectors
from bench.words import measure_word_boxes


@dataclass
class BenchConfig:
    model: str | None = None
    size: str = "full"
    pages: int = 4
    baseline_pages: int = 2
    budgets: list[int] = field(default_factory=lambda: [1280, 512, 256])
    vectors: list[int] = field(default_factory=lambda: [10_000, 100_000, 1_000_000])
    index_kinds: list[str] = field(default_factory=lambda: ["flat", "hnsw", "ivf", "store"])
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 128
    hnsw_max_n: int = 1_000_000
    ivf_nprobe: int = 16
    dtype: str | None = None
    device: str = "cpu"
    batch_size: int = 4
    skip_baseline: bool = False
    skip_int8: bool = False
    query_candidates: list[str] = field(
        default_factory=lambda: [
            "int8-bf16",
            "int8mix-bf16",
            "int8+int4-bf16",
            "fp16",
            "int8x2-bf16",
            "bf16",
        ]
    )
    query_reps: int = 1
    queries_only: bool = False
    isa: str = "native"
    compile: bool = False
    skip_model: bool = False
    skip_vectors: bool = False
    queries: int = 20
    corpus: int = 24
    query_collection: int = 10_000
    rss_pages: int = 0
    remote_pages: int = 0
    remote_tokens: int = 1280
    stores: int = 0
    store_queries: int = 100
    highlights: int = 0
    threads: int | None = None
    peak_n: int = 4096
    around: int = 0
    depth: tuple[int, int] | None = None
    label: str | None = None
    out: str | None = None
    pdf: str | None = None
    seed: int = 0
    ray_actors: list[int] = field(default_factory=lambda: [1, 2])
    ray_pages: int = 16
    ray_tokens: int = 256
    ray_size: str = "tiny"
    rerank_pages: int = 0
    evidence_pages: int = 0


def run_rss_index(cfg: BenchConfig, report: dict) -> None:
    """Peak RSS growth while indexing a ``cfg.rss_pages``-page PDF through the real pipeline
    (fake embedder), in a fresh subprocess after a warm-up, against the bound of issue #16:
    one batch of decoded page images plus the vectors, plus SQLite's fixed page cache and a
    small fixed allowance (see :mod:`bench.long_pdf`)."""
    import subprocess

    from bench.long_pdf import measure

    try:
        report["index_rss"] = measure(cfg.rss_pages, batch=4)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        report["index_rss"] = {"pages": cfg.rss_pages, "error": str(exc)[-2000:]}


def run_remote_section(cfg: BenchConfig, report: dict) -> None:
    """Phase F: the remote embedder's per-page overhead (see bench/remote_overhead.py)."""
    from bench.remote_overhead import run_remote

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = cfg.model
        if not model_dir:  # the overhead does not depend on the model: the tiny one is enough
            from indexer.model.gme.random import build_random_gme

            model_dir = str(build_random_gme(Path(tmp) / "tiny-gme", size="tiny"))
        pdf = Path(cfg.pdf) if cfg.pdf else default_pdf(cfg.remote_pages, Path(tmp))
        images, _texts, _info = render(pdf, cfg.remote_pages, cfg.remote_tokens)
        report["remote"] = run_remote(
            images, model_dir=model_dir, tokens=cfg.remote_tokens, threads=cfg.threads
        )


def run(cfg: BenchConfig) -> tuple[dict, Path]:
    import torch

    from indexer.model.runtime.cpu_heap import keep_freed_memory

    keep_freed_memory()  # as the CLI does: the bench measures the app's page path

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
        from indexer.stores.local.vector_index import set_threads

        set_threads(cfg.threads)
    started = time.time()
    report: dict[str, Any] = {
        "schema": 1,
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "config": asdict(cfg),
        "machine": machine_info(),
        "device": device_info(cfg.device),
    }
    with tempfile.TemporaryDirectory() as tmp:
        corpus_pdf = Path(cfg.pdf) if cfg.pdf else default_pdf(cfg.pages, Path(tmp))
        report["word_boxes"] = measure_word_boxes(corpus_pdf, cfg.pages, max(cfg.budgets))
        if not cfg.skip_model:
            dtypes = ["float32"]
            if cfg.device != "cpu" or native_bf16():
                dtypes.append("bfloat16")
            report["matmul_peak"] = matmul_peak(cfg.peak_n, dtypes, device=cfg.device)
            report["memory_bandwidth"] = memory_bandwidth(
                64 if cfg.size == "tiny" else 512, device=cfg.device
            )
            images, texts, rendering = render(corpus_pdf, cfg.pages, max(cfg.budgets))
            report["rendering"] = rendering
            if cfg.queries_only:
                run_queries_only(cfg, report, texts)
            else:
                run_model(cfg, report, report["matmul_peak"], images, texts)
        if cfg.ray_actors:
            from bench.ray_bench import run_ray

            run_ray(cfg, report, Path(tmp), make_text_pdf)
        if cfg.rerank_pages:
            from bench.rerank_phase import run_rerank

            run_rerank(cfg, report, Path(tmp))
        if cfg.evidence_pages:
            from bench.evidence_phase import run_evidence

            run_evidence(cfg, report, Path(tmp))
    if not cfg.skip_vectors and cfg.vectors:
        run_vectors(cfg, report)
    if cfg.rss_pages:
        run_rss_index(cfg, report)
    if cfg.remote_pages:
        run_remote_section(cfg, report)
    if cfg.stores:
        from bench.store_engines import run_stores

        report["stores"] = run_stores(cfg.stores, queries=cfg.store_queries)
    if cfg.highlights:
        from bench.highlights_phase import run_highlights

        report["highlights"] = run_highlights(cfg.highlights)
    report["targets"] = targets(report)
    report["wall_s"] = rounded(time.time() - started, 1)
    out = (
        Path(cfg.out)
        if cfg.out
        else RESULTS / (f"{cfg.label or socket.gethostname()}-{_dt.date.today().isoformat()}.json")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report, out


#: ``--isa`` emulations: the variables that cap each kernel library at that instruction set
#: (read when the library starts, hence the fresh process; :func:`indexer.quant.isa_cap`
#: makes PageLens's own decisions follow them).
ISA_EMULATION: dict[str, dict[str, str]] = {
    "avx2": {
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2",
    },
}


def isa_env(isa: str, env: dict[str, str] | None = None) -> dict[str, str] | None:
    """The environment to re-run the bench in for ``--isa`` (None: already in effect)."""
    env = dict(os.environ if env is None else env)
    if isa == "native":
        return None
    want = ISA_EMULATION[isa]
    if all(env.get(k) == v for k, v in want.items()):
        return None
    root = str(ROOT)
    env.update(want)
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return env


def _depth(text: str, error: Any, model: str | None) -> tuple[int, int]:
    if model:
        error("--depth cuts the random model; it cannot be used with --model")
    try:
        vision, text_layers = (int(x) for x in text.split(","))
    except ValueError:
        error(f"--depth needs two numbers V,T (vision blocks, decoder layers), not {text!r}")
    if vision < 1 or text_layers < 1:
        error("--depth needs at least one vision block and one decoder layer")
    return vision, text_layers


def _ints(text: str) -> list[int]:
    return [
        int(x.replace("_", "").replace("k", "000").replace("M", "000000"))
        for x in text.split(",")
        if x.strip()
    ]


#: ``parse_args``'s options, in ``--help`` order: (flag, argparse keywords).
OPTIONS: list[tuple[str, dict[str, Any]]] = [
    ("--model", {"help": "real GME weights (folder or hub id); default random full-size"}),
    ("--size", {"default": "full", "choices": ["full", "tiny"]}),
    ("--pages", {"type": int, "default": 4}),
    ("--baseline-pages", {"type": int, "default": 2}),
    ("--budgets", {"default": "1280,512,256"}),
    ("--vectors", {"default": "10000,100000,1000000"}),
    ("--index-kinds", {"default": "flat,hnsw,ivf,store"}),
    ("--hnsw-m", {"type": int, "default": 32}),
    ("--hnsw-ef-construction", {"type": int, "default": 80}),
    ("--hnsw-ef-search", {"type": int, "default": 128}),
    ("--hnsw-max-n", {"type": int, "default": 1_000_000}),
    ("--ivf-nprobe", {"type": int, "default": 16}),
    ("--dtype", {"default": None, "help": "exact path dtype (default: the app's auto)"}),
    (
        "--device",
        {
            "default": "cpu",
            "help": "cpu (default) or cuda[:N]: model phases on that GPU, bf16 + SDPA for the "
            "default path against the float32 recipe on the same card (int8 phases are "
            "CPU-only)",
        },
    ),
    ("--batch-size", {"type": int, "default": 4}),
    ("--skip-baseline", {"action": "store_true"}),
    ("--skip-int8", {"action": "store_true"}),
    (
        "--query-candidates",
        {
            "default": "int8-bf16,int8mix-bf16,int8+int4-bf16,fp16,int8x2-bf16,bf16",
            "help": "weight-only text-query candidates (indexer/quant.py) to measure against "
            "fp32 ('' for none; int8-fp32 is the unvectorised kernel, kept for the record)",
        },
    ),
    ("--query-reps", {"type": int, "default": 1, "help": "passes over the queries (A2)"}),
    (
        "--queries-only",
        {
            "action": "store_true",
            "help": "text queries only: exact fp32 vs the query-weight candidates, full-size "
            "decoder with a one-block vision tower (~6 GB); no page, vector-index or Ray phases",
        },
    ),
    (
        "--isa",
        {
            "default": "native",
            "choices": ["native", *ISA_EMULATION],
            "help": "emulate a CPU class on this one: re-run the bench with every kernel "
            "library (ATen, oneDNN, MKL, fbgemm) capped at that instruction set, e.g. avx2 for "
            "an AVX2-only CPU without native bf16 (memory bandwidth stays this machine's; the "
            "report's machine.isa_cap says so)",
        },
    ),
    ("--compile", {"action": "store_true", "help": "also measure the torch.compile'd exact path"}),
    ("--skip-model", {"action": "store_true"}),
    ("--skip-vectors", {"action": "store_true"}),
    ("--queries", {"type": int, "default": 20}),
    ("--corpus", {"type": int, "default": 24}),
    ("--query-collection", {"type": int, "default": 10_000}),
    ("--rss-pages", {"type": int, "default": 0, "help": "index an N-page PDF, sample RSS"}),
    (
        "--remote-pages",
        {
            "type": int,
            "default": 0,
            "help": "measure the per-page overhead of pagelens serve + --embedder over in-process",
        },
    ),
    ("--remote-tokens", {"type": int, "default": 1280, "help": "page budget for that"}),
    (
        "--stores",
        {
            "type": int,
            "default": 0,
            "help": "N pages into the local engine and Milvus (milvus-lite): insert/s, p50, "
            "recall@10",
        },
    ),
    ("--store-queries", {"type": int, "default": 100}),
    ("--highlights", {"type": int, "default": 0, "help": "K: what hits' highlights cost, k=K"}),
    ("--threads", {"type": int, "default": None}),
    ("--peak-n", {"type": int, "default": 4096}),
    (
        "--depth",
        {
            "default": None,
            "metavar": "V,T",
            "help": "random model only: full width but V vision blocks and T decoder layers "
            "(per-layer shapes unchanged; for shared machines; the report says so)",
        },
    ),
    (
        "--peak-around",
        {
            "type": int,
            "default": 0,
            "metavar": "N",
            "help": "also measure the N^3 matmul peak of the dtype in use right before and "
            "after each page phase (recipe and default) and give fraction_of_peak against it: "
            "for shared machines (0: only the start-of-run peak)",
        },
    ),
    ("--pdf", {"default": None}),
    ("--label", {"default": None}),
    (
        "--ray-actors",
        {"default": "1,2", "help": "index --ray runs with these actor counts ('' skips)"},
    ),
    ("--ray-pages", {"type": int, "default": 16}),
    ("--ray-tokens", {"type": int, "default": 256}),
    (
        "--ray-size",
        {
            "default": "tiny",
            "choices": ["full", "tiny"],
            "help": "random checkpoint the Ray actors load without --model (tiny: Ray's own cost)",
        },
    ),
    (
        "--rerank-pages",
        {
            "type": int,
            "default": 0,
            "help": "seconds per reranked page over N pages: Qwen3-VL reranker of --size, "
            "random weights, on --device (0: skipped)",
        },
    ),
    ("--evidence-pages", {"type": int, "default": 0, "help": "visual evidence s/page, N pages"}),
    ("--out", {"default": None}),
]


def parse_args(argv: list[str] | None = None) -> BenchConfig:
    p = argparse.ArgumentParser(
        prog="python -m bench.bench", description=(__doc__ or "").split("\n")[0]
    )
    for flag, options in OPTIONS:
        p.add_argument(flag, **options)
    a = p.parse_args(argv)
    device = check_device(a.device, p.error)
    depth = _depth(a.depth, p.error, a.model) if a.depth else None
    return _config(a, device=device, depth=depth)


def _config(a: argparse.Namespace, *, device: str, depth: tuple[int, int] | None) -> BenchConfig:
    """The parsed options as a :class:`BenchConfig` (lists split, ``--queries-only`` implied)."""
    return BenchConfig(
        model=a.model,
        size=a.size,
        pages=a.pages,
        baseline_pages=a.baseline_pages,
        budgets=_ints(a.budgets),
        vectors=_ints(a.vectors),
        index_kinds=[k.strip() for k in a.index_kinds.split(",") if k.strip()],
        hnsw_m=a.hnsw_m,
        hnsw_ef_construction=a.hnsw_ef_construction,
        hnsw_ef_search=a.hnsw_ef_search,
        hnsw_max_n=a.hnsw_max_n,
        ivf_nprobe=a.ivf_nprobe,
        dtype=a.dtype,
        device=device,
        batch_size=a.batch_size,
        skip_baseline=a.skip_baseline,
        skip_int8=a.skip_int8,
        query_candidates=[c.strip() for c in a.query_candidates.split(",") if c.strip()],
        query_reps=a.query_reps,
        queries_only=a.queries_only,
        isa=a.isa,
        compile=a.compile,
        skip_model=a.skip_model,
        skip_vectors=a.skip_vectors or a.queries_only,
        queries=a.queries,
        corpus=a.corpus,
        query_collection=a.query_collection,
        rss_pages=a.rss_pages,
        remote_pages=a.remote_pages,
        remote_tokens=a.remote_tokens,
        stores=a.stores,
        store_queries=a.store_queries,
        highlights=a.highlights,
        threads=a.threads,
        peak_n=a.peak_n,
        around=a.peak_around,
        depth=depth,
        pdf=a.pdf,
        ray_actors=[] if a.queries_only else _ints(a.ray_actors),
        ray_pages=a.ray_pages,
        ray_tokens=a.ray_tokens,
        ray_size=a.ray_size,
        rerank_pages=a.rerank_pages,
        evidence_pages=a.evidence_pages,
        label=a.label,
        out=a.out,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    cfg = parse_args(argv)
    env = isa_env(cfg.isa)
    if env is not None:  # the caps are read when the libraries load: a fresh process
        import subprocess

        cmd = [sys.executable, "-m", "bench.bench", *argv]
        return subprocess.run(cmd, env=env, cwd=ROOT).returncode
    report, out = run(cfg)
    print(summary(report))
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
