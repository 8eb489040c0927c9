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
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"

QUERIES = [
    "how do I declare an interface in IDL",
    "mapping of C pointers to OCaml types",
    "what does the unique attribute mean",
    "COM components and reference counting",
    "error handling with exceptions",
    "how to compile the generated stubs",
    "arrays with a length given by another parameter",
    "strings and the string attribute",
    "installing camlidl on windows",
    "what is a dispatch interface",
    "union types and switch_is",
    "callbacks from C into OCaml",
    "table of contents",
    "memory allocation and freeing of out parameters",
    "bigarray support",
    "the license of this software",
    "naming conventions for generated functions",
    "custom types with ml2c and c2ml",
    "how are structs represented",
    "quotations in IDL files",
]


# --------------------------------------------------------------------------- small helpers


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def _r(x: float, n: int = 4) -> float:
    return float(round(float(x), n))


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


class RssSampler:
    """Peak resident memory of this process during a ``with`` block (sampled every 20 ms)."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.start = self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> RssSampler:
        gc.collect()
        self.start = self.peak = _rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    def as_dict(self) -> dict:
        mib = 1024 * 1024
        return {
            "rss_start_mib": round(self.start / mib, 1),
            "rss_peak_mib": round(self.peak / mib, 1),
            "rss_growth_mib": round((self.peak - self.start) / mib, 1),
        }


class ModuleTimer:
    """Wall time spent inside given modules (forward hooks), e.g. vision tower vs decoder."""

    def __init__(self, modules: dict[str, Any], device: str = "cpu") -> None:
        self.device = device
        self.seconds = {name: 0.0 for name in modules}
        self._handles = []
        for name, mod in modules.items():
            self._handles.append(mod.register_forward_pre_hook(self._pre(name)))
            self._handles.append(mod.register_forward_hook(self._post(name)))
        self._t0: dict[str, float] = {}

    def _pre(self, name: str):
        def hook(*_a: Any) -> None:
            _sync(self.device)
            self._t0[name] = time.perf_counter()

        return hook

    def _post(self, name: str):
        def hook(*_a: Any) -> None:
            _sync(self.device)
            self.seconds[name] += time.perf_counter() - self._t0.pop(name)

        return hook

    def close(self) -> None:
        for h in self._handles:
            h.remove()


# --------------------------------------------------------------------------- machine


def machine_info() -> dict:
    import faiss
    import torch
    import transformers

    flags: set[str] = set()
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = [
        "avx2",
        "fma",
        "avx512f",
        "avx512bw",
        "avx512_vnni",
        "avx512_bf16",
        "avx512_fp16",
        "amx_tile",
        "amx_bf16",
        "amx_int8",
        "avx_vnni",
    ]
    try:
        import psutil

        mem = psutil.virtual_memory().total
    except Exception:  # pragma: no cover
        mem = 0
    from indexer.model.runtime import cpu_features as quant

    level, caps = quant.isa_cap()
    effective = quant.cap_flags(flags, level)
    return {
        "host": socket.gethostname(),
        "cpu_model": model,
        "logical_cpus": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_flags": {f: f in flags for f in wanted},
        # what the kernels may use: the real flags less any instruction-set cap (--isa)
        "isa_cap": {
            "emulated": level,
            "env": caps,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "onednn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
            "cpu_flags_effective": {f: f in effective for f in wanted},
            "note": "the CPU is the one named above with its instruction set capped by these "
            "variables; its memory bandwidth, caches and clock are its own, not those of a "
            "CPU of the capped class"
            if level
            else "no cap: the CPU's own instruction set",
        },
        "memory_gib": round(mem / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "faiss": getattr(faiss, "__version__", "?"),
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "faiss_threads": faiss.omp_get_max_threads(),
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "quantized_engine": torch.backends.quantized.engine,
        "load_avg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def device_info(device: str) -> dict:
    """The accelerator the model phases run on (name, memory), or the CPU."""
    import torch

    if not device.startswith("cuda"):
        return {"device": device}
    props = torch.cuda.get_device_properties(torch.device(device))
    return {
        "device": device,
        "name": props.name,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "capability": f"{props.major}.{props.minor}",
        "cuda": torch.version.cuda,
        "bf16": bool(torch.cuda.is_bf16_supported()),
        "attention": "sdpa (torch fused kernels: flash / memory-efficient)",
    }


def _native_bf16() -> bool:
    """Whether this CPU (after any ISA cap, see ``--isa``) has bf16 matmul instructions.

    Why: without them torch's bf16 matmul falls back to a scalar loop; its "peak" is not a
    peak of anything the app runs (the auto dtype is float32 there), and at n=1024 it took
    over 20 minutes under the AVX2 caps.
    """
    import torch

    from indexer.model.runtime import cpu_features as quant

    return torch.backends.mkldnn.is_available() and quant.has_native_bf16(quant.cpu_flags())


def matmul_peak(n: int, dtypes: list[str], reps: int = 3, device: str = "cpu") -> dict:
    """Measured dense matmul GFLOP/s (n x n x n, median of ``reps``) per dtype."""
    import torch

    out = {}
    for name in dtypes:
        dt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]
        a = torch.randn(n, n).to(device=device, dtype=dt)
        b = torch.randn(n, n).to(device=device, dtype=dt)
        a @ b  # warm-up
        _sync(device)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            a @ b
            _sync(device)
            times.append(time.perf_counter() - t)
        out[name] = {
            "n": n,
            "gflops": _r(2 * n**3 / _median(times) / 1e9, 1),
            "gflops_best": _r(2 * n**3 / min(times) / 1e9, 1),
        }
        del a, b
    return out


def memory_bandwidth(mib: int = 512, reps: int = 5, device: str = "cpu") -> dict:
    """Measured read bandwidth (GB/s): summing a ``mib`` MiB float32 tensor, median of reps.

    A single text query reads every decoder weight once, so weight bytes / this figure is
    the floor of its latency (the "memory floor" the query rows report).
    """
    import torch

    x = torch.ones(mib * 2**20 // 4, device=device)
    x.sum()
    _sync(device)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        x.sum()
        _sync(device)
        times.append(time.perf_counter() - t)
    nbytes = x.numel() * 4
    del x
    return {
        "mib": mib,
        "gb_per_s": _r(nbytes / _median(times) / 1e9, 2),
        "gb_per_s_best": _r(nbytes / min(times) / 1e9, 2),
    }


def decoder_weight_bytes(emb: Any) -> int:
    """Bytes of the decoder's linear weights (what one query reads), in their current dtype."""
    import torch

    total = 0
    for mod in emb.text_model.modules():
        if isinstance(mod, torch.nn.Linear):
            total += mod.weight.numel() * mod.weight.element_size()
            if mod.bias is not None:
                total += mod.bias.numel() * mod.bias.element_size()
    return total


# --------------------------------------------------------------------------- FLOPs


def flops_per_input(config: Any, *, grid_hw: tuple[int, int] | None, seq_len: int) -> dict:
    """Multiply-add FLOPs (2*m*n*k per matmul, plus attention scores and mixing) of one input.

    Vision tower: patch embedding, ``depth`` blocks (qkv, proj, fc1, fc2, full attention over
    the image's patches) and the patch merger. Decoder: q/k/v/o (grouped KV), gated MLP and
    causal attention over the whole sequence (the L(L+1)/2 scores a causal kernel needs; the
    page path runs SDPA's causal kernel, which skips the masked half). Element-wise ops, norms
    and the unused LM head are not counted.
    """
    v = config.vision_config
    t = config.text_config
    vision = 0.0
    if grid_hw is not None:
        p = grid_hw[0] * grid_hw[1]  # patches (temporal grid 1 for images)
        d = int(v.embed_dim)
        mlp = int(d * float(v.mlp_ratio))
        inp = int(v.in_channels) * int(v.temporal_patch_size) * int(v.patch_size) ** 2
        merge = int(v.spatial_merge_size) ** 2
        merged = p // merge
        vision += 2 * p * inp * d
        per_block = 2 * p * d * 3 * d + 2 * p * d * d + 2 * 2 * p * d * mlp + 2 * 2 * p * p * d
        vision += int(v.depth) * per_block
        vision += 2 * merged * (d * merge) ** 2 + 2 * merged * (d * merge) * int(t.hidden_size)
    h = int(t.hidden_size)
    heads = int(t.num_attention_heads)
    kv = int(t.num_key_value_heads)
    hd = h // heads
    inter = int(t.intermediate_size)
    L = seq_len
    per_layer = (
        2 * L * h * h * 2 + 2 * L * h * kv * hd * 2 + 3 * 2 * L * h * inter + 2 * L * (L + 1) * h
    )
    decoder = int(t.num_hidden_layers) * per_layer
    return {"vision": float(vision), "decoder": float(decoder), "total": float(vision + decoder)}


# --------------------------------------------------------------------------- pages


def _default_pdf(pages: int, workdir: Path) -> Path:
    """A real PDF from tests/data if present, else a generated text-heavy one."""
    real = ROOT / "tests" / "data" / "camlidl-manual.pdf"
    if real.is_file():
        import pymupdf

        with pymupdf.open(real) as doc:
            if doc.page_count >= pages:
                return real
    return make_text_pdf(workdir / "bench-text.pdf", pages)


def make_text_pdf(path: Path, pages: int) -> Path:
    """A text-heavy A4 PDF (dense paragraphs, headings) made with PyMuPDF."""
    import pymupdf

    rng = np.random.default_rng(7)
    words = (
        "index page vector model search query embedding token budget render layer "
        "matrix memory thread batch cache prefix latency recall cluster graph"
    ).split()
    doc = pymupdf.open()
    for n in range(pages):
        page = doc.new_page(width=595, height=842)
        page.insert_text(
            (50, 60), f"Chapter {n + 1}: on {' '.join(rng.choice(words, 3))}", fontsize=18
        )
        body = " ".join(rng.choice(words, 700))
        page.insert_textbox(pymupdf.Rect(50, 80, 545, 800), body, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc.save(path)
    doc.close()
    return path


def render(pdf: Path, pages: int, tokens: int) -> tuple[list, list[str], dict]:
    """Render the first ``pages`` pages at the app's settings for ``tokens``."""
    from indexer.pages import RenderSettings, render_pages

    settings = RenderSettings.for_tokens(tokens)
    images, texts = [], []
    t = time.perf_counter()
    import pymupdf

    with pymupdf.open(pdf) as doc:
        count = doc.page_count
    # Skip the cover/blank front matter when the PDF is long enough: text-heavy pages.
    first = 3 if count >= pages + 3 else 1
    for page in render_pages(pdf, settings=settings, pages=range(first, first + pages)):
        images.append(page.image)
        texts.append(page.text)
    dt = time.perf_counter() - t
    return (
        images,
        texts,
        {
            "pdf": str(pdf.relative_to(ROOT)) if pdf.is_relative_to(ROOT) else pdf.name,
            "pages": len(images),
            "first_page": first,
            "render_tokens": tokens,
            "sizes": sorted({f"{i.width}x{i.height}" for i in images}),
            "seconds": _r(dt),
            "pages_per_s": _r(len(images) / dt, 2),
        },
    )


# --------------------------------------------------------------------------- model phases


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


def _build(cfg: BenchConfig, dtype: str, **options: Any):
    """A fresh embedder: the given weights, or random ones of ``cfg.size``; it neither
    reads nor writes the user's query-weights decisions (the bench measures)."""
    if cfg.model:
        from indexer.model.gme.loading import load_embedder

        emb = load_embedder(cfg.model, device=cfg.device, dtype=dtype, **options)
    elif cfg.depth:
        emb = _build_cut(cfg, dtype, **options)
    else:
        from indexer.model.gme.random import random_embedder

        emb = random_embedder(cfg.size, seed=cfg.seed, device=cfg.device, dtype=dtype, **options)
    emb.decision_cache = None
    return emb


def _build_cut(cfg: BenchConfig, dtype: str, **options: Any) -> Any:
    """The random model at full width but only ``cfg.depth`` = (vision blocks, decoder layers)
    deep (``--depth``): every layer keeps its shapes, so per-layer speed, fraction of peak and
    the ratios between paths are those of the full model, in a fraction of its time and
    memory (for shared machines). The report's ``model.depth`` says it was cut."""
    import torch
    from transformers import Qwen2VLForConditionalGeneration
    from transformers.initialization import no_init_weights

    from indexer.model.gme import random as rm
    from indexer.model.gme.embedder import GmeEmbedder

    vision, text = cfg.depth
    config = rm.make_config(cfg.size)
    config.vision_config.depth = vision
    config.text_config.num_hidden_layers = text
    config.text_config.max_window_layers = text
    config.text_config.layer_types = config.text_config.layer_types[:text]
    with torch.device(cfg.device), no_init_weights():
        model = Qwen2VLForConditionalGeneration(config)
    rm.randomize_weights(model, std=rm.INIT_STD[cfg.size], seed=cfg.seed)
    model.tie_weights()
    model = model.to(getattr(torch, dtype)).eval()
    return GmeEmbedder(
        model,
        rm.build_tokenizer(),
        rm.make_image_processor(),
        model_id=f"pagelens/random-gme-{cfg.size}-depth{vision}+{text}-seed{cfg.seed}",
        device=cfg.device,
        **options,
    )


def _build_text_only(cfg: BenchConfig) -> Any:
    """The full-size decoder (random weights, float32) with a one-block vision tower: the
    text-query path at full size in ~6 GB instead of ~9 (``--queries-only``)."""
    import torch
    from transformers import Qwen2VLForConditionalGeneration
    from transformers.initialization import no_init_weights

    from indexer.model.gme import random as rm
    from indexer.model.gme.embedder import GmeEmbedder

    config = rm.make_config(cfg.size)
    config.vision_config.depth = 1
    with torch.device(cfg.device), no_init_weights():
        model = Qwen2VLForConditionalGeneration(config)
    rm.randomize_weights(model, std=rm.INIT_STD[cfg.size], seed=cfg.seed)
    model.tie_weights()
    emb = GmeEmbedder(
        model.eval(),
        rm.build_tokenizer(),
        rm.make_image_processor(),
        model_id=f"pagelens/random-gme-{cfg.size}-text-only-seed{cfg.seed}",
        device=cfg.device,
        query_weights="exact",
    )
    emb.decision_cache = None  # the bench measures; never the user's decisions
    return emb


def run_queries_only(cfg: BenchConfig, report: dict, texts: list[str]) -> None:
    """Text queries only (``--queries-only``): exact float32 latency (with and without the
    prompt-prefix cache) and the query-weight candidates against it, no pages."""
    queries = (QUERIES * (cfg.queries // len(QUERIES) + 1))[: cfg.queries]
    corpus = _corpus_texts(texts, cfg.corpus)
    rank_queries = QUERIES[:8]
    t = time.perf_counter()
    _log("queries only: building the full-size decoder (random weights, float32)")
    emb = _build_text_only(cfg)
    _log("exact float32 reference vectors and latency")
    section: dict[str, Any] = {
        "dtype": "float32",
        "model_id": emb.model_id,
        "text_only": "decoder at full size, vision tower cut to one block (unused by queries)",
        "build_s_float32": _r(time.perf_counter() - t, 1),
        "phases": {},
    }
    report["model"] = section
    emb.prefix_cache = False
    ref_text = {
        "corpus": emb.embed_documents(texts=corpus),
        "queries": emb.embed_queries(rank_queries),
    }
    emb.prefix_cache = True
    idx = _query_index(ref_text["corpus"], cfg.query_collection, cfg.seed + 1)
    gbs = (report.get("memory_bandwidth") or {}).get("gb_per_s_best")
    section["phases"]["exact_float32"] = {
        "dtype": "float32",
        "kernel": "F.linear float32 (MKL sgemm)",
        "budgets": {},
        "query_uncached": query_latency(emb, idx, queries, cached=False),
        "query": query_latency(emb, idx, queries, cached=True),
        # beside the figure: what reading the decoder's weights once costs at this bandwidth
        "floor_s": _r(decoder_weight_bytes(emb) / gbs / 1e9, 6) if gbs else None,
    }
    section["query_weights"] = query_weights_phase(
        emb,
        queries,
        rank_queries,
        ref_text,
        candidates=cfg.query_candidates,
        bandwidth=report.get("memory_bandwidth"),
        reps=cfg.query_reps,
    )
    section["corpus_passages"] = len(corpus)
    del emb, idx
    gc.collect()


def _log(msg: str) -> None:
    """Progress on stderr (the full-size phases take minutes)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _set_budget(emb: Any, tokens: int) -> None:
    from indexer.model.gme.recipe import MIN_IMAGE_TOKENS

    emb.max_image_tokens = int(tokens)
    emb.min_image_tokens = min(MIN_IMAGE_TOKENS, int(tokens))


def _page_flops(emb: Any, images: list) -> float:
    total = 0.0
    for img in images:
        n = emb.count_tokens(None, img)
        total += flops_per_input(emb.model.config, grid_hw=emb.patch_grid(img), seq_len=n)["total"]
    return total


def page_kernels(emb: Any) -> dict:
    """Which kernels a page goes through in this embedder (the README table's "kernel")."""
    import torch

    from indexer.model.runtime import cpu_features as quant

    dtype = str(emb.dtype)
    cuda = str(emb.device).startswith("cuda")
    flags = quant.cpu_flags()
    if cuda:
        gemm = f"cuBLAS {dtype}"
    elif dtype == "int8":
        gemm = f"dynamic int8 linears ({torch.backends.quantized.engine})"
    elif dtype == "bfloat16":
        isa = (
            "amx_bf16"
            if "amx_bf16" in flags
            else "avx512_bf16"
            if "avx512_bf16" in flags
            else "no native bf16"
        )
        gemm = f"oneDNN bf16 ({isa})"
    else:
        gemm = "MKL sgemm" if torch.backends.mkl.is_available() else "sgemm"
    flash = "SDPA flash" if cuda else "SDPA flash (_scaled_dot_product_flash_attention_for_cpu)"
    fast = list(getattr(emb, "page_kernels", []) or [])
    return {
        "gemm": gemm,
        "vision_attention": flash
        + (", contiguous q/k/v" if "attention" in fast else ", transformers' strided q/k/v")
        + ", per image",
        "vision_forward": "indexer.page_kernels " + "+".join(fast) if fast else "transformers",
        "decoder_attention": flash + ", causal",
        # process-wide: the recipe rows of a run share it (indexer.cpu_heap)
        "heap": "glibc, freed buffers reused (indexer.cpu_heap)"
        if getattr(emb, "heap_reuse", False)
        else "allocator default",
    }


def embed_pages(
    emb: Any, images: list, tokens: int, *, one_at_a_time: bool, peak: dict, around: int = 0
) -> tuple:
    """Embed ``images`` at a budget; returns (vectors, stats).

    ``around``: also measure the ``around``-cubed matmul peak of the embedder's dtype right
    before and after the pages, and give ``fraction_of_peak`` against the higher of the two:
    on a shared machine the start-of-run peak says little about the minutes that follow.
    """
    _set_budget(emb, min(64, tokens))
    emb.embed_images(images[:1])  # cheap warm-up at 64 tokens (first-call allocations)
    _set_budget(emb, tokens)
    key = _peak_key(emb.dtype)
    load = [os.getloadavg()[0]] if hasattr(os, "getloadavg") else []
    before = matmul_peak(around, [key], reps=2, device=str(emb.device)) if around and key else {}
    timer = ModuleTimer({"vision": emb.vision_model, "decoder": emb.text_model}, str(emb.device))
    timer.seconds = {k: 0.0 for k in timer.seconds}
    with RssSampler() as rss:
        t = time.perf_counter()
        if one_at_a_time:
            vecs = np.concatenate([emb.embed_images([img]) for img in images])
        else:
            vecs = emb.embed_images(images)
        dt = time.perf_counter() - t
    timer.close()
    after = matmul_peak(around, [key], reps=2, device=str(emb.device)) if before else {}
    if load:
        load.append(os.getloadavg()[0])
    flops = _page_flops(emb, images)
    visual_tokens = [emb.image_token_count(img) for img in images]
    if before:
        peak_gflops = max(before[key]["gflops"], after[key]["gflops"])
        around_stats = {
            "peak_gflops_same_run": [before[key]["gflops"], after[key]["gflops"]],
            "peak_dtype": key,
        }
    else:
        peak_gflops = (peak.get(key) or {}).get("gflops")
        around_stats = {}
    achieved = flops / dt / 1e9
    stats = {
        "budget": tokens,
        "pages": len(images),
        "visual_tokens_mean": _r(float(np.mean(visual_tokens)), 1),
        "seconds": _r(dt, 3),
        "pages_per_s": _r(len(images) / dt, 5),
        "s_per_page": _r(dt / len(images), 3),
        "vision_s": _r(timer.seconds["vision"], 3),
        "decoder_s": _r(timer.seconds["decoder"], 3),
        "gflop_per_page": _r(flops / len(images) / 1e9, 1),
        "achieved_gflops": _r(achieved, 1),
        "fraction_of_peak": _r(achieved / peak_gflops, 3) if peak_gflops else None,
        **around_stats,
        "load_avg_1m": [round(x, 2) for x in load],  # machine load before and after (shared?)
        "kernels": page_kernels(emb),
        **rss.as_dict(),
    }
    return vecs, stats


def _peak_key(dtype: str) -> str | None:
    return {"float32": "float32", "bfloat16": "bfloat16", "int8": "float32"}.get(dtype)


def query_latency(emb: Any, index: Any, queries: list[str], *, cached: bool) -> dict:
    emb.prefix_cache = cached
    emb.embed_queries(["warm-up query"])  # builds the prefix cache
    embed_s, total_s = [], []
    for q in queries:
        t0 = time.perf_counter()
        vec = emb.embed_queries([q])
        t1 = time.perf_counter()
        index.search(vec, 10)
        t2 = time.perf_counter()
        embed_s.append(t1 - t0)
        total_s.append(t2 - t0)
    emb.prefix_cache = True
    return {
        "prefix_cache": cached,
        "queries": len(queries),
        "p50_s": _r(_pct(total_s, 50)),
        "p95_s": _r(_pct(total_s, 95)),
        "embed_p50_s": _r(_pct(embed_s, 50)),
        "search_p50_ms": _r(1000 * (_pct(total_s, 50) - _pct(embed_s, 50)), 3),
        "collection": len(index),
    }


def _query_index(page_vecs: np.ndarray, n: int, seed: int):
    """A flat index: the benchmark's page vectors plus clustered synthetic filler up to n."""
    from indexer.vectors import VectorIndex

    dim = page_vecs.shape[1]
    idx = VectorIndex(dim, kind="flat")
    idx.add(range(len(page_vecs)), page_vecs)
    extra = max(0, n - len(page_vecs))
    if extra:
        data, _ = clustered_vectors(extra, 0, dim, seed=seed)
        idx.add(range(len(page_vecs), len(page_vecs) + extra), data)
    return idx


#: What each text-query candidate stores and which kernel multiplies with it (report rows).
CANDIDATE_WEIGHTS = {
    "int8-bf16": "int8, one scale per output channel",
    "int8-fp32": "int8, one scale per output channel",
    "int8x2-bf16": "two int8 levels (~15 bits), per-channel scales",
    "bf16": "bfloat16",
    "int8+int4-bf16": "int8 per output channel + int4 level for its error (groups of 128 "
    "inputs), ~1.5 bytes",
    "int8mix-bf16": "int8 per output channel; two int8 levels in the first decoder layers "
    "(indexer.quant.MIX_PRECISE_LAYERS), the most sensitive",
    "fp16": "float16",
    "int8s-fp32": "int8 per output channel; float16 in the first decoder layers "
    "(indexer.quant.SPLIT_FP16_LAYERS)",
}
CANDIDATE_KERNELS = {
    "int8-bf16": "aten._weight_int8pack_mm",
    "int8-fp32": "aten._weight_int8pack_mm",
    "int8x2-bf16": "aten._weight_int8pack_mm",
    "bf16": "F.linear (bf16)",
    "int8+int4-bf16": "aten._weight_int8pack_mm + aten._weight_int4pack_mm_for_cpu",
    "int8mix-bf16": "aten._weight_int8pack_mm",
    "fp16": "fbgemm FP16 GEMM (quantized.linear_dynamic_fp16)",
    "int8s-fp32": "fbgemm int8 GEMM, activations split into 7-bit levels per token row "
    "(quantized.linear_with_input_q_dq_qweight_dq_output_fp32); fp16 GEMM in the first layers",
}


def query_weights_phase(
    emb: Any,
    queries: list[str],
    rank_queries: list[str],
    ref_text: dict[str, np.ndarray],
    *,
    candidates: list[str],
    bandwidth: dict | None,
    reps: int,
) -> dict:
    """Text queries with int8 weight-only decoder candidates vs the exact path, alternating.

    Each query runs exact then with the candidate's int8 weights, in turn (ratios measured
    in one run on a shared machine); agreement is the cosine of the candidate's query vectors
    to the exact float32 ones and the top-10 overlap of their rankings of the exact corpus.
    """
    from indexer.model.runtime.lowp import QueryWeights, act_dtype

    emb.set_query_weights("exact")
    emb.prefix_cache = True
    emb.embed_queries(["warm-up query"])
    # the best repetition: a floor is what the memory system allows, not what a shared
    # machine happened to give
    gbs = (bandwidth or {}).get("gb_per_s_best")
    fp32_bytes = decoder_weight_bytes(emb)
    out: dict[str, Any] = {
        "method": "prefix-cached text queries, one at a time; exact and candidate alternate "
        "per query; floor = decoder weight bytes / best measured read bandwidth",
        "decoder_weight_bytes_exact": fp32_bytes,
        "floor_s_exact": _r(fp32_bytes / gbs / 1e9, 6) if gbs else None,
        "candidates": {},
    }
    for name in candidates:
        _log(f"text-query weights: {name}")
        t = time.perf_counter()
        w = QueryWeights(emb.text_model, name)
        quant_s = time.perf_counter() - t
        try:
            with w.active():
                emb.embed_queries(["warm-up query"])
            exact_s, cand_s = [], []
            for q in (queries * reps)[: max(1, len(queries) * reps)]:
                t0 = time.perf_counter()
                emb.embed_queries([q])
                t1 = time.perf_counter()
                with w.active():
                    emb.embed_queries([q])
                t2 = time.perf_counter()
                exact_s.append(t1 - t0)
                cand_s.append(t2 - t1)
            with w.active():
                qv = emb.embed_queries(rank_queries)
            entry: dict[str, Any] = {
                "weights": CANDIDATE_WEIGHTS[name],
                "activations": str(act_dtype(name)).removeprefix("torch."),
                "kernel": CANDIDATE_KERNELS[name],
                "quantise_s": _r(quant_s, 2),
                "queries_timed": len(cand_s),
                "p50_s": _r(_pct(cand_s, 50)),
                "p95_s": _r(_pct(cand_s, 95)),
                "exact_p50_s_same_run": _r(_pct(exact_s, 50)),
                "speedup_vs_exact": _r(_pct(exact_s, 50) / _pct(cand_s, 50), 2),
                "decoder_weight_bytes": w.bytes,
                "floor_s": _r(w.bytes / gbs / 1e9, 6) if gbs else None,
            }
            if ref_text:
                entry["agreement_vs_float32"] = _agreement(qv, ref_text["queries"])
                entry["top10_overlap_vs_float32"] = _r(
                    _topk_overlap(
                        qv, ref_text["corpus"], ref_text["queries"], ref_text["corpus"], 10
                    ),
                    3,
                )
            out["candidates"][name] = entry
        finally:
            w.remove()
    out.update(auto_decision_phase(emb))
    return out


def auto_decision_phase(emb: Any) -> dict[str, Any]:
    """What ``auto`` chooses here and what deciding costs: measured (``calibration_s``),
    then as a later process meets it, from the decision cache (``cached_decision_s`` to
    read it, ``prepare_s`` to build the kept copy). The cache is a temporary folder: the
    bench always measures, and never reads or writes the user's decisions."""
    from indexer.model.gme.query_weights_cache import DecisionCache

    _log("text-query weights: what auto chooses here (measured, then read back from a cache)")
    previous = emb.decision_cache
    try:
        with tempfile.TemporaryDirectory(prefix="pagelens-bench-decisions-") as tmp:
            emb.decision_cache = DecisionCache(tmp)
            measured = emb.set_query_weights("auto")
            cached = emb.set_query_weights("auto")  # the next process: same key, from the file
    finally:
        emb.decision_cache = previous
    return {
        "auto_choice": measured.as_dict(),
        "auto_choice_from_cache": cached.as_dict(),
        "calibration_s": measured.timings.get("calibration_s"),
        "cached_decision_s": cached.timings.get("cached_decision_s"),
        "prepare_s": cached.timings.get("prepare_s", measured.timings.get("prepare_s")),
        "decision_cache": "temporary folder: measured once, then read back (user cache untouched)",
    }


def _corpus_texts(texts: list[str], n: int) -> list[str]:
    """Short passages (about 40 words) cut from the PDF's text layer."""
    words = " ".join(texts).split()
    out = [" ".join(words[i : i + 40]) for i in range(0, len(words), 40)]
    out = [p for p in out if len(p) > 40]
    while len(out) < n:
        out.append(f"filler passage {len(out)} about pages and vectors")
    return out[:n]


def _agreement(a: np.ndarray, b: np.ndarray) -> dict:
    cos = np.sum(a * b, axis=1)
    return {"cosine_min": _r(float(cos.min()), 6), "cosine_mean": _r(float(cos.mean()), 6)}


def _topk_overlap(qa: np.ndarray, ca: np.ndarray, qb: np.ndarray, cb: np.ndarray, k: int) -> float:
    k = min(k, len(ca))
    ra = np.argsort(-(qa @ ca.T), axis=1)[:, :k]
    rb = np.argsort(-(qb @ cb.T), axis=1)[:, :k]
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(ra, rb, strict=True)]))


def run_model(cfg: BenchConfig, report: dict, peak: dict, images: list, texts: list[str]) -> None:
    import torch

    from indexer.model.gme.speedups import quantize_embedder
    from indexer.model.runtime.device import resolve_dtype

    dtype = str(resolve_dtype(cfg.dtype, cfg.device)).removeprefix("torch.")
    on_cpu = cfg.device == "cpu"
    queries = (QUERIES * (cfg.queries // len(QUERIES) + 1))[: cfg.queries]
    corpus = _corpus_texts(texts, cfg.corpus)
    rank_queries = QUERIES[:8]  # the retrieval check: 8 queries, whatever --queries is
    section: dict[str, Any] = {"dtype": dtype, "batch_size": cfg.batch_size, "phases": {}}
    if cfg.depth:
        section["depth"] = {
            "vision_blocks": cfg.depth[0],
            "decoder_layers": cfg.depth[1],
            "note": "cut from 32 vision blocks + 28 decoder layers at full width (--depth): "
            "per-layer shapes, speeds and ratios as the full model; absolute s/page are not",
        }
    report["model"] = section
    ref: dict[int, np.ndarray] = {}
    ref_text: dict[str, np.ndarray] = {}
    base_pages = images[: max(1, cfg.baseline_pages)]

    log = _log

    # A: float32 one page at a time (the recipe) + reference vectors.
    need_ref = not (cfg.skip_baseline and (cfg.skip_int8 or not on_cpu))
    if need_ref:
        log("phase A: float32 recipe, one page at a time")
        t = time.perf_counter()
        emb = _build(cfg, "float32", batch_size=1)
        # the recipe runs transformers' own vision forward, not indexer.page_kernels'
        from indexer.model.gme import page_kernels as fast_kernels

        fast_kernels.uninstall(emb.vision_model)
        emb.page_kernels = []
        section["build_s_float32"] = _r(time.perf_counter() - t, 1)
        section["model_id"] = emb.model_id
        section["parameters"] = int(sum(p.numel() for p in emb.model.parameters()))
        with RssSampler() as rss:
            pass
        section["model_rss_mib_float32"] = rss.as_dict()["rss_start_mib"]
        phase: dict[str, Any] = {
            "dtype": "float32",
            "batch_size": 1,
            "prefix_cache": False,
            "budgets": {},
        }
        for tokens in cfg.budgets:
            vecs, stats = embed_pages(
                emb, base_pages, tokens, one_at_a_time=True, peak=peak, around=cfg.around
            )
            ref[tokens] = vecs
            phase["budgets"][str(tokens)] = stats
            log(f"  A {tokens} tokens: {stats['s_per_page']} s/page")
        idx = _query_index(ref[cfg.budgets[0]], cfg.query_collection, cfg.seed + 1)
        phase["query"] = query_latency(emb, idx, queries, cached=False)
        log(f"  A query p50 {phase['query']['p50_s']} s")
        emb.prefix_cache = False
        emb.set_query_weights("exact")
        ref_text["corpus"] = emb.embed_documents(texts=corpus)
        ref_text["queries"] = emb.embed_queries(rank_queries)
        emb.prefix_cache = True
        section["phases"]["baseline_float32"] = phase

        # A2: text queries with int8 weight-only decoder candidates (activations precise).
        if cfg.query_candidates and on_cpu:
            log(f"phase A2: int8 weight-only text queries {cfg.query_candidates}")
            section["query_weights"] = query_weights_phase(
                emb,
                queries,
                rank_queries,
                ref_text,
                candidates=cfg.query_candidates,
                bandwidth=report.get("memory_bandwidth"),
                reps=cfg.query_reps,
            )
            for name, c in section["query_weights"]["candidates"].items():
                log(
                    f"  A2 {name}: p50 {c['p50_s']} s vs exact {c['exact_p50_s_same_run']} s, "
                    f"cos min {c.get('agreement_vs_float32', {}).get('cosine_min')}, "
                    f"top-10 {c.get('top10_overlap_vs_float32')}"
                )

        # B: int8 dynamic quantisation of the same weights.
        if not cfg.skip_int8 and on_cpu:
            log("phase B: int8 dynamic quantisation")
            quantize_embedder(emb, "int8")
            emb.batch_size = cfg.batch_size
            phase = {
                "dtype": "int8",
                "batch_size": cfg.batch_size,
                "prefix_cache": True,
                "budgets": {},
            }
            for tokens in cfg.budgets:
                vecs, stats = embed_pages(emb, base_pages, tokens, one_at_a_time=False, peak=peak)
                stats["agreement_vs_float32"] = _agreement(vecs, ref[tokens])
                phase["budgets"][str(tokens)] = stats
                log(f"  B {tokens} tokens: {stats['s_per_page']} s/page")
            phase["query"] = query_latency(emb, idx, queries, cached=True)
            c8 = emb.embed_documents(texts=corpus)
            q8 = emb.embed_queries(rank_queries)
            phase["text_agreement_vs_float32"] = _agreement(c8, ref_text["corpus"])
            phase["top10_overlap_vs_float32"] = _r(
                _topk_overlap(q8, c8, ref_text["queries"], ref_text["corpus"], 10), 3
            )
            phase["corpus_passages"] = len(corpus)
            section["phases"]["int8"] = phase
        del emb, idx
        gc.collect()

    # C: the exact path in the chosen dtype.
    log(f"phase C: exact path, {dtype}, batch {cfg.batch_size}")
    t = time.perf_counter()
    emb = _build(cfg, "float32", batch_size=cfg.batch_size)
    if dtype != "float32":  # same weights as phase A, rounded once
        emb.model.to(getattr(torch, dtype))
        emb.dtype = dtype
    section[f"build_s_{dtype}"] = _r(time.perf_counter() - t, 1)
    section.setdefault("model_id", emb.model_id)
    gc.collect()
    with RssSampler() as rss:
        pass
    section[f"model_rss_mib_{dtype}"] = rss.as_dict()["rss_start_mib"]
    phase = {"dtype": dtype, "batch_size": cfg.batch_size, "prefix_cache": True, "budgets": {}}
    page_vecs = None
    eager_vecs = {}
    for tokens in cfg.budgets:
        vecs, stats = embed_pages(
            emb, images, tokens, one_at_a_time=False, peak=peak, around=cfg.around
        )
        eager_vecs[tokens] = vecs
        if tokens in ref:
            stats["agreement_vs_float32"] = _agreement(vecs[: len(ref[tokens])], ref[tokens])
        phase["budgets"][str(tokens)] = stats
        page_vecs = vecs if page_vecs is None else page_vecs
        log(f"  C {tokens} tokens: {stats['s_per_page']} s/page")
    idx = _query_index(page_vecs, cfg.query_collection, cfg.seed + 1)
    phase["query_uncached"] = query_latency(emb, idx, queries, cached=False)
    phase["query"] = query_latency(emb, idx, queries, cached=True)
    if getattr(emb, "query_choice", None) is not None:
        phase["query_weights"] = emb.query_choice.as_dict()
    log(f"  C query p50 {phase['query']['p50_s']} s (uncached {phase['query_uncached']['p50_s']})")
    # Cached vs uncached prefix: the same vectors?
    emb.prefix_cache = False
    plain = emb.embed_queries(rank_queries)
    emb.prefix_cache = True
    cached = emb.embed_queries(rank_queries)
    phase["prefix_cache_agreement"] = _agreement(cached, plain)
    if ref_text:
        cd = emb.embed_documents(texts=corpus)
        phase["text_agreement_vs_float32"] = _agreement(cd, ref_text["corpus"])
        phase["top10_overlap_vs_float32"] = _r(
            _topk_overlap(cached, cd, ref_text["queries"], ref_text["corpus"], 10), 3
        )
    section["phases"]["exact"] = phase
    if cfg.compile:
        # D (opt-in): the same model with torch.compile'd blocks (pagelens --compile).
        from indexer.model.gme.speedups import compile_embedder

        log("phase D: exact path with torch.compile")
        compile_embedder(emb)
        emb.max_image_tokens = cfg.budgets[0]
        t = time.perf_counter()
        emb.embed_images(images[:1])
        cphase = {
            "dtype": dtype,
            "batch_size": cfg.batch_size,
            "compile_and_first_page_s": _r(time.perf_counter() - t, 1),
            "budgets": {},
        }
        for tokens in cfg.budgets:
            vecs, stats = embed_pages(emb, images, tokens, one_at_a_time=False, peak=peak)
            stats["agreement_vs_eager"] = _agreement(vecs, eager_vecs[tokens])
            stats["speedup_vs_eager"] = _r(
                phase["budgets"][str(tokens)]["s_per_page"] / stats["s_per_page"], 2
            )
            cphase["budgets"][str(tokens)] = stats
            log(f"  D {tokens} tokens: {stats['s_per_page']} s/page")
        section["phases"]["compiled"] = cphase
    del emb, idx
    gc.collect()

    # Ratios against the recipe (per page, same pages at the same budget).
    base = section["phases"].get("baseline_float32")
    if base:
        for name in ("exact", "int8", "compiled"):
            ph = section["phases"].get(name)
            if not ph:
                continue
            ph["speedup_vs_baseline"] = {
                b: _r(s["pages_per_s"] / base["budgets"][b]["pages_per_s"], 2)
                for b, s in ph["budgets"].items()
                if b in base["budgets"]
            }


# --------------------------------------------------------------------------- vectors


def clustered_vectors(
    n: int, nq: int, dim: int, *, seed: int = 0, centres: int = 1000, noise: float = 0.6
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` data and ``nq`` query unit vectors around ``centres`` random unit centres.

    Each point is a centre plus isotropic Gaussian noise of total norm ~``noise``
    (per-coordinate sigma ``noise/sqrt(dim)``), renormalised; queries are drawn the same way
    (from the same centres, fresh noise). Uniform random vectors in 1536-D are nearly
    equidistant, which makes any ANN index look broken; clustered ones behave like real
    embeddings (topics).
    """
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim), dtype=np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    sigma = np.float32(noise / np.sqrt(dim))

    def draw(count: int) -> np.ndarray:
        out = np.empty((count, dim), dtype=np.float32)
        for s in range(0, count, 65536):
            m = min(65536, count - s)
            x = rng.standard_normal((m, dim), dtype=np.float32)
            x *= sigma
            x += c[rng.integers(0, centres, m)]
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            out[s : s + m] = x
        return out

    return draw(n), draw(nq)


def _time_single(search, queries: np.ndarray, reps: int) -> list[float]:
    times = []
    for i in range(reps):
        q = queries[i % len(queries) : i % len(queries) + 1]
        t = time.perf_counter()
        search(q)
        times.append(time.perf_counter() - t)
    return times


def run_vectors(cfg: BenchConfig, report: dict) -> None:
    import faiss

    dim = 1536
    nq = 200
    section: dict[str, Any] = {
        "dim": dim,
        "method": "clustered: 1000 Gaussian centres on the unit sphere; point = centre + "
        "N(0, 0.6^2/dim) noise per coordinate, renormalised; 200 queries drawn the "
        "same way; recall@10 = |ANN top-10 & exact top-10| / 10, mean over queries; "
        "latency = one query per call, single process, FAISS threads as reported",
        "hnsw": {
            "M": cfg.hnsw_m,
            "efConstruction": cfg.hnsw_ef_construction,
            "efSearch": cfg.hnsw_ef_search,
        },
        "ivf": {"kind": "IVF-SQ8", "nprobe": cfg.ivf_nprobe},
        "sizes": {},
    }
    report["vectors"] = section
    for n in cfg.vectors:
        print(f"[bench {time.strftime('%H:%M:%S')}] vectors: {n}", file=sys.stderr, flush=True)
        data, queries = clustered_vectors(n, nq, dim, seed=cfg.seed + n)
        # Exact ground truth (batched flat search).
        flat = faiss.IndexFlatIP(dim)
        flat.add(data)
        _, truth = flat.search(queries, 10)
        row: dict[str, Any] = {}
        for kind in cfg.index_kinds:
            entry: dict[str, Any] = {}
            if kind == "flat":
                index, build = flat, 0.0
                bytes_per_vec = dim * 4
            elif kind == "hnsw":
                if n > cfg.hnsw_max_n:
                    row[kind] = {"skipped": f"n > --hnsw-max-n {cfg.hnsw_max_n} (build time)"}
                    continue
                index = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
                index.hnsw.efConstruction = cfg.hnsw_ef_construction
                t = time.perf_counter()
                index.add(data)
                build = time.perf_counter() - t
                bytes_per_vec = dim * 4 + cfg.hnsw_m * 2 * 4
            elif kind == "ivf":
                nlist = max(16, min(1024, int(4 * np.sqrt(n))))
                quant = faiss.IndexFlatIP(dim)
                index = faiss.IndexIVFScalarQuantizer(
                    quant, dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
                )
                t = time.perf_counter()
                train = data[np.random.default_rng(1).choice(n, min(n, 30 * nlist), replace=False)]
                index.train(train)
                index.add(data)
                build = time.perf_counter() - t
                entry["nlist"] = nlist
                bytes_per_vec = dim + 8
            elif kind == "store":
                # What a collection actually uses past APPROX_THRESHOLD: the store's own
                # VectorIndex("ivf") (IVF1024-SQ8, nprobe 24), then an exact re-rank of the
                # top max(4k, 50) candidates (the store reads those vectors from SQLite).
                from indexer.vectors import VectorIndex

                t = time.perf_counter()
                vindex = VectorIndex(dim, kind="ivf")
                rng = np.random.default_rng(1)
                vindex.train(data[np.sort(rng.choice(n, min(n, 100_000), replace=False))])
                for start in range(0, n, 65536):
                    vindex.add(range(start, min(n, start + 65536)), data[start : start + 65536])
                build = time.perf_counter() - t
                bytes_per_vec = dim + 8 + 8  # SQ8 codes + id + hash-table entry

                def store_search(q, vindex=vindex, data=data):
                    out = []
                    for row in q:
                        _, cand = vindex.search(row[None], 50)
                        cand = cand[0][cand[0] >= 0]
                        exact = data[cand] @ row
                        out.append(cand[np.argsort(-exact)[:10]])
                    return None, np.array(out)

                index, params = None, None
                entry["nlist"] = 1024
                entry["nprobe"] = 24
                entry["rerank_candidates"] = 50
            else:
                raise ValueError(f"unknown index kind {kind!r}")
            if kind == "hnsw":
                params = faiss.SearchParametersHNSW(efSearch=cfg.hnsw_ef_search)
            elif kind == "ivf":
                params = faiss.SearchParametersIVF(nprobe=cfg.ivf_nprobe)
            else:
                params = None

            def search(q, index=index, params=params):
                return index.search(q, 10, params=params) if params else index.search(q, 10)

            if kind == "store":
                search = store_search

            _, found = search(queries)
            recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)])
            reps = 20 if kind == "flat" and n >= 500_000 else 100
            times = _time_single(search, queries, reps)
            entry.update(
                {
                    "recall_at_10": _r(recall, 4),
                    "p50_ms": _r(1000 * _pct(times, 50), 3),
                    "p95_ms": _r(1000 * _pct(times, 95), 3),
                    "build_s": _r(build, 2),
                    "bytes_per_vector": bytes_per_vec,
                    "memory_mib": _r(n * bytes_per_vec / 2**20, 1),
                }
            )
            row[kind] = entry
            if kind != "flat":
                del index
                if kind == "store":
                    del vindex, store_search
            gc.collect()
        section["sizes"][str(n)] = row
        del flat, data
        gc.collect()


# --------------------------------------------------------------------------- long PDF RSS


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


# --------------------------------------------------------------------------- targets/summary


def targets(report: dict) -> dict:
    out: dict[str, Any] = {}
    phases = (report.get("model") or {}).get("phases", {})
    exact, base, int8 = phases.get("exact"), phases.get("baseline_float32"), phases.get("int8")
    if exact:
        fr = {b: s.get("fraction_of_peak") for b, s in exact["budgets"].items()}
        fr = {b: f for b, f in fr.items() if f is not None}
        out["exact_fraction_of_peak>=0.85_every_budget"] = {
            "value": fr,
            "met": bool(fr) and min(fr.values()) >= 0.85,
        }
        if base:
            sp = exact.get("speedup_vs_baseline", {})
            out["exact_faster_than_recipe_every_budget"] = {
                "value": sp,
                "met": bool(sp) and all(v > 1 for v in sp.values()),
            }
        q = exact.get("query", {}).get("p50_s")
        out["query_p50<=0.35s"] = {"value": q, "met": q is not None and q <= 0.35}
        if report.get("device", {}).get("device", "cpu").startswith("cuda"):
            pps = exact["budgets"].get("1280", {}).get("pages_per_s")
            out["gpu_pages_per_s>=40_at_1280"] = {
                "value": pps,
                "met": pps is not None and pps >= 40,
            }
    qw = (report.get("model") or {}).get("query_weights")
    if qw:
        held = {
            name: [
                c.get("p50_s"),
                c.get("agreement_vs_float32", {}).get("cosine_min"),
                c.get("top10_overlap_vs_float32"),
            ]
            for name, c in qw["candidates"].items()
        }
        ok = [
            n
            for n, (_, cos, top) in held.items()
            if cos is not None and cos >= 0.999 and top == 1.0
        ]
        out["int8_query_cos>=0.999_same_top10"] = {"value": held, "met": bool(ok), "holds": ok}
        # the issue's query target: p50 <= 0.35 s with a candidate that holds (or exact)
        p50 = {n: held[n][0] for n in ok if held[n][0] is not None}
        exact_q = ((phases.get("exact_float32") or {}).get("query") or {}).get("p50_s")
        if exact_q is not None:
            p50["exact float32"] = exact_q
        if p50:
            best = min(p50, key=lambda n: p50[n])
            floors = {n: c.get("floor_s") for n, c in qw["candidates"].items() if n in ok}
            out["query_p50<=0.35s_at_cos>=0.999_same_top10"] = {
                "value": p50,
                "fastest": best,
                "floor_s": floors,
                "floor_s_exact": qw.get("floor_s_exact"),
                "met": p50[best] <= 0.35,
            }
    if int8 and int8.get("speedup_vs_baseline"):
        sp = int8["speedup_vs_baseline"]
        out["int8>=2x_recipe"] = {"value": sp, "met": all(v >= 2 for v in sp.values())}
    vec = (report.get("vectors") or {}).get("sizes", {})
    big = vec.get("1000000")
    if big:
        ok = {k: v for k, v in big.items() if "recall_at_10" in v and k != "flat"}
        best = [k for k, v in ok.items() if v["recall_at_10"] >= 0.95 and v["p50_ms"] < 20]
        out["1M_p50<20ms_recall>=0.95"] = {
            "value": {k: [v["p50_ms"], v["recall_at_10"]] for k, v in ok.items()},
            "met": bool(best),
            "indexes": best,
        }
    rss = report.get("index_rss")
    if rss and "rss_growth_mib" in rss:
        growth = rss["rss_growth_mib"]
        out["long_pdf_rss_growth<=one_batch_of_images+vectors+fixed"] = {
            "value": growth,
            "bound_mib": rss["bound_mib"],
            "met": growth <= rss["bound_mib"],
        }
    return out


def summary(report: dict) -> str:
    lines = []
    m = report["machine"]
    lines.append(
        f"PageLens bench on {m['cpu_model']} ({m['affinity_cpus']} CPUs), torch "
        f"{m['torch']}, threads {m['torch_threads']}"
    )
    cap = m.get("isa_cap") or {}
    if cap.get("emulated"):
        lines.append(
            f"  EMULATED: instruction set capped at {cap['emulated']} ({cap['env']}; torch "
            f"{cap.get('torch_cpu_capability')}, oneDNN bf16 {cap.get('onednn_bf16')}); "
            "bandwidth, caches and clock are this CPU's"
        )
    bw = report.get("memory_bandwidth")
    if bw:
        lines.append(f"  memory read bandwidth: {bw['gb_per_s']} GB/s (best {bw['gb_per_s_best']})")
    for dt, p in report.get("matmul_peak", {}).items():
        lines.append(f"  matmul peak {dt}: {p['gflops']} GFLOP/s (n={p['n']})")
    if "rendering" in report:
        r = report["rendering"]
        lines.append(f"  rendering: {r['pages_per_s']} pages/s ({r['pdf']})")
    model = report.get("model")
    if model:
        lines.append(f"  model {model.get('model_id')} ({model.get('parameters', '?')} params)")
        for name, ph in model["phases"].items():
            for b, s in ph["budgets"].items():
                extra = ""
                if "agreement_vs_float32" in s:
                    extra = f", cos vs fp32 min {s['agreement_vs_float32']['cosine_min']}"
                sp = ph.get("speedup_vs_baseline", {}).get(b)
                sp = f", x{sp} vs recipe" if sp else ""
                lines.append(
                    f"  {name:17s} {b:>5} tok: {s['s_per_page']:8.2f} s/page "
                    f"({s['pages_per_s']:.4f} pages/s), {s['achieved_gflops']} GFLOP/s = "
                    f"{s['fraction_of_peak']} of peak, peak RSS {s['rss_peak_mib']} MiB{sp}{extra}"
                )
            if "query" in ph:
                q = ph["query"]
                floor = f", floor {ph['floor_s']} s" if ph.get("floor_s") else ""
                lines.append(
                    f"  {name:17s} query: p50 {q['p50_s']} s, p95 {q['p95_s']} s "
                    f"(prefix cache {q['prefix_cache']}){floor}"
                )
            if "query_uncached" in ph:
                q = ph["query_uncached"]
                lines.append(f"  {name:17s} query without prefix cache: p50 {q['p50_s']} s")
            if "top10_overlap_vs_float32" in ph:
                lines.append(
                    f"  {name:17s} top-10 overlap vs fp32: {ph['top10_overlap_vs_float32']}"
                )
    qw = (model or {}).get("query_weights")
    if qw:
        lines.append(
            f"  text-query weights (floor exact fp32: {qw.get('floor_s_exact')} s; "
            f"auto here: {qw.get('auto_choice', {}).get('mode')}; deciding: calibration "
            f"{qw.get('calibration_s')} s, cached decision {qw.get('cached_decision_s')} s, "
            f"building the copy {qw.get('prepare_s')} s)"
        )
        for name, c in qw["candidates"].items():
            agree = c.get("agreement_vs_float32", {})
            lines.append(
                f"    {name:12s} p50 {c['p50_s']} s (exact {c['exact_p50_s_same_run']} s, "
                f"x{c['speedup_vs_exact']}), floor {c['floor_s']} s, cos min "
                f"{agree.get('cosine_min')}, top-10 {c.get('top10_overlap_vs_float32')}"
            )
    vec = report.get("vectors")
    if vec:
        for n, row in vec["sizes"].items():
            for kind, e in row.items():
                if "recall_at_10" in e:
                    lines.append(
                        f"  {int(n):>8} vectors {kind:5s}: p50 {e['p50_ms']} ms, "
                        f"recall@10 {e['recall_at_10']}, build {e['build_s']} s, "
                        f"{e['bytes_per_vector']} B/vector"
                    )
                else:
                    lines.append(f"  {int(n):>8} vectors {kind:5s}: {e}")
    if "index_rss" in report:
        r = report["index_rss"]
        lines.append(
            f"  indexing {r['pages']} pages: RSS +{r['rss_growth_mib']} MiB "
            f"(bound: one batch of images {r.get('one_batch_of_images_mib')} + vectors "
            f"{r.get('vectors_mib')} + SQLite cache {r.get('sqlite_cache_mib')} + read-ahead "
            f"{r.get('read_ahead_mib')} + fixed "
            f"{r.get('fixed_mib')} = {r.get('bound_mib')} MiB)"
        )
    if "remote" in report:
        r = report["remote"]
        t, g = r["transport"], r["tiny_gme"]
        lines.append(
            f"  remote embedder, {r['render_tokens']}-token pages ({r['page_sizes'][0]}): "
            f"+{r['overhead_ms_per_page']} ms/page over in-process "
            f"(PNG encode {r['png_encode_ms_per_page']} ms, {r['png_kib_per_page']} KiB/page; "
            f"transport {t['in_process_ms_per_page']} -> {t['remote_ms_per_page']} ms/page); "
            f"tiny GME via pagelens serve {g['in_process_s_per_page']} -> "
            f"{g['remote_s_per_page']} s/page, cos min {g['cosine_min']}"
        )
    from bench.ray_bench import summary_lines

    lines.extend("  " + line for line in summary_lines(report))
    for name, t in report.get("targets", {}).items():
        lines.append(f"  target {name}: {'MET' if t['met'] else 'not met'} ({t['value']})")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def run_remote_section(cfg: BenchConfig, report: dict) -> None:
    """Phase F: the remote embedder's per-page overhead (see bench/remote_overhead.py)."""
    from bench.remote_overhead import run_remote

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = cfg.model
        if not model_dir:  # the overhead does not depend on the model: the tiny one is enough
            from indexer.model.gme.random import build_random_gme

            model_dir = str(build_random_gme(Path(tmp) / "tiny-gme", size="tiny"))
        pdf = Path(cfg.pdf) if cfg.pdf else _default_pdf(cfg.remote_pages, Path(tmp))
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
        from indexer.vectors import set_threads

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
        if not cfg.skip_model:
            dtypes = ["float32"]
            if cfg.device != "cpu" or _native_bf16():
                dtypes.append("bfloat16")
            report["matmul_peak"] = matmul_peak(cfg.peak_n, dtypes, device=cfg.device)
            report["memory_bandwidth"] = memory_bandwidth(
                64 if cfg.size == "tiny" else 512, device=cfg.device
            )
            pdf = Path(cfg.pdf) if cfg.pdf else _default_pdf(cfg.pages, Path(tmp))
            images, texts, rendering = render(pdf, cfg.pages, max(cfg.budgets))
            report["rendering"] = rendering
            if cfg.queries_only:
                run_queries_only(cfg, report, texts)
            else:
                run_model(cfg, report, report["matmul_peak"], images, texts)
        if cfg.ray_actors:
            from bench.ray_bench import run_ray

            run_ray(cfg, report, Path(tmp), make_text_pdf)
    if not cfg.skip_vectors and cfg.vectors:
        run_vectors(cfg, report)
    if cfg.rss_pages:
        run_rss_index(cfg, report)
    if cfg.remote_pages:
        run_remote_section(cfg, report)
    if cfg.stores:
        from bench.store_engines import run_stores

        report["stores"] = run_stores(cfg.stores, queries=cfg.store_queries)
    report["targets"] = targets(report)
    report["wall_s"] = _r(time.time() - started, 1)
    out = (
        Path(cfg.out)
        if cfg.out
        else RESULTS / (f"{cfg.label or socket.gethostname()}-{_dt.date.today().isoformat()}.json")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report, out


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


def check_device(device: str, error: Any) -> str:
    """``device`` normalised ("cpu", "cuda", "cuda:1"); ``error(message)`` if it is not
    usable here (argparse's ``error`` exits with status 2 and the message)."""
    import torch

    name = (device or "cpu").strip().lower()
    kind = name.split(":", 1)[0]
    if kind == "cpu" and name == "cpu":
        return "cpu"
    if kind != "cuda":
        error(f"--device must be cpu or cuda[:N], not {device!r}")
    if not torch.cuda.is_available():
        error(
            f"--device {device}: no CUDA GPU is usable here (torch.cuda.is_available() is "
            f"False; torch {torch.__version__}, built for CUDA {torch.version.cuda})"
        )
    if ":" in name:
        index = name.split(":", 1)[1]
        if not index.isdigit() or int(index) >= torch.cuda.device_count():
            error(f"--device {device}: there are {torch.cuda.device_count()} CUDA device(s)")
    return name


def parse_args(argv: list[str] | None = None) -> BenchConfig:
    p = argparse.ArgumentParser(prog="python -m bench.bench", description=__doc__.split("\n")[0])
    p.add_argument("--model", help="real GME weights (folder or hub id); default random full-size")
    p.add_argument("--size", default="full", choices=["full", "tiny"])
    p.add_argument("--pages", type=int, default=4)
    p.add_argument("--baseline-pages", type=int, default=2)
    p.add_argument("--budgets", default="1280,512,256")
    p.add_argument("--vectors", default="10000,100000,1000000")
    p.add_argument("--index-kinds", default="flat,hnsw,ivf,store")
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--hnsw-ef-construction", type=int, default=80)
    p.add_argument("--hnsw-ef-search", type=int, default=128)
    p.add_argument("--hnsw-max-n", type=int, default=1_000_000)
    p.add_argument("--ivf-nprobe", type=int, default=16)
    p.add_argument("--dtype", default=None, help="exact path dtype (default: the app's auto)")
    p.add_argument(
        "--device",
        default="cpu",
        help="cpu (default) or cuda[:N]: model phases on that GPU, bf16 + SDPA for the default "
        "path against the float32 recipe on the same card (int8 phases are CPU-only)",
    )
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument("--skip-int8", action="store_true")
    p.add_argument(
        "--query-candidates",
        default="int8-bf16,int8mix-bf16,int8+int4-bf16,fp16,int8x2-bf16,bf16",
        help="weight-only text-query candidates (indexer/quant.py) to measure against fp32 "
        "('' for none; int8-fp32 is the unvectorised kernel, kept for the record)",
    )
    p.add_argument("--query-reps", type=int, default=1, help="passes over the queries (A2)")
    p.add_argument(
        "--queries-only",
        action="store_true",
        help="text queries only: exact fp32 vs the query-weight candidates, full-size decoder "
        "with a one-block vision tower (~6 GB); no page, vector-index or Ray phases",
    )
    p.add_argument(
        "--isa",
        default="native",
        choices=["native", *ISA_EMULATION],
        help="emulate a CPU class on this one: re-run the bench with every kernel library "
        "(ATen, oneDNN, MKL, fbgemm) capped at that instruction set, e.g. avx2 for an "
        "AVX2-only CPU without native bf16 (memory bandwidth stays this machine's; the "
        "report's machine.isa_cap says so)",
    )
    p.add_argument(
        "--compile", action="store_true", help="also measure the torch.compile'd exact path"
    )
    p.add_argument("--skip-model", action="store_true")
    p.add_argument("--skip-vectors", action="store_true")
    p.add_argument("--queries", type=int, default=20)
    p.add_argument("--corpus", type=int, default=24)
    p.add_argument("--query-collection", type=int, default=10_000)
    p.add_argument("--rss-pages", type=int, default=0, help="index an N-page PDF, sample RSS")
    p.add_argument(
        "--remote-pages",
        type=int,
        default=0,
        help="measure the per-page overhead of pagelens serve + --embedder over in-process",
    )
    p.add_argument("--remote-tokens", type=int, default=1280, help="page budget for that")
    p.add_argument(
        "--stores",
        type=int,
        default=0,
        help="N pages into the local engine and Milvus (milvus-lite): insert/s, p50, recall@10",
    )
    p.add_argument("--store-queries", type=int, default=100)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--peak-n", type=int, default=4096)
    p.add_argument(
        "--depth",
        default=None,
        metavar="V,T",
        help="random model only: full width but V vision blocks and T decoder layers (per-layer "
        "shapes unchanged; for shared machines; the report says so)",
    )
    p.add_argument(
        "--peak-around",
        type=int,
        default=0,
        metavar="N",
        help="also measure the N^3 matmul peak of the dtype in use right before and after each "
        "page phase (recipe and default) and give fraction_of_peak against it: for shared "
        "machines (0: only the start-of-run peak)",
    )
    p.add_argument("--pdf", default=None)
    p.add_argument("--label", default=None)
    p.add_argument(
        "--ray-actors", default="1,2", help="index --ray runs with these actor counts ('' skips)"
    )
    p.add_argument("--ray-pages", type=int, default=16)
    p.add_argument("--ray-tokens", type=int, default=256)
    p.add_argument(
        "--ray-size",
        default="tiny",
        choices=["full", "tiny"],
        help="random checkpoint the Ray actors load without --model (tiny: Ray's own cost)",
    )
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    device = check_device(a.device, p.error)
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
        threads=a.threads,
        peak_n=a.peak_n,
        around=a.peak_around,
        depth=_depth(a.depth, p.error, a.model) if a.depth else None,
        pdf=a.pdf,
        ray_actors=[] if a.queries_only else _ints(a.ray_actors),
        ray_pages=a.ray_pages,
        ray_tokens=a.ray_tokens,
        ray_size=a.ray_size,
        label=a.label,
        out=a.out,
    )


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
    root = str(Path(__file__).resolve().parent.parent)
    env.update(want)
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return env


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    cfg = parse_args(argv)
    env = isa_env(cfg.isa)
    if env is not None:  # the caps are read when the libraries load: a fresh process
        import subprocess

        cmd = [sys.executable, "-m", "bench.bench", *argv]
        return subprocess.run(cmd, env=env, cwd=Path(__file__).resolve().parent.parent).returncode
    report, out = run(cfg)
    print(summary(report))
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
