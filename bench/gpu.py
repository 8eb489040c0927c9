"""The GPU benchmark: one run that fits a short GPU window (``bash bench/gpu.sh``).

GPU time comes in short windows on machines that fetch nothing and hold only Python, PyTorch,
transformers, Pillow and numpy. So this module imports nothing else (no PyMuPDF, FAISS or
server packages: the suite's dry run checks that with those imports blocked), builds the
full-size GME-2B architecture with random weights on the card (same FLOPs and memory as the
real model), and measures on that one card:

* pages/s at 1,280 / 512 / 256 visual tokens for the recipe (float32, one page at a time,
  transformers' own vision forward) and for PageLens's default (bf16, SDPA, batched,
  PageLens's page kernels), with the cosine between the two paths' vectors;
* text-query latency (p50/p95) on the default path;
* reranking cost per page: the full-size Qwen3-VL-Reranker-2B architecture, random weights,
  bf16, on the kit's pages and their text layers (bench/gpu_rerank.py; ``"absent"`` with the
  reason where qwen_vl_utils is neither installed nor carried by the kit);
* visual evidence ("where on this page?") per page on the default path: PageLens's own
  regions, crop budget and one call per page (bench/gpu_evidence.py).

Each phase has a time cap (``--phase-seconds``) and the whole run a budget
(``--budget-seconds``): a slow phase ends early with the pages it measured, marked
``"capped"``, instead of eating the window. Progress (done/total, rate, ETA) goes to stderr;
the JSON report (card, driver, torch, every figure) to ``--out``.

Page images come from a kit prepared on a CPU machine (``--prepare DIR``: real pages of the
test PDF rendered at PageLens's default settings and their text layers, the Qwen2 and Qwen3
tokenizers, a copy of qwen_vl_utils), carried to the GPU machine with
the repository; without a kit, synthetic text-like pages and the fallback tokenizer are used.
``--dry-run`` runs every phase with the tiny model on the CPU in seconds (the test suite does).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

BUDGETS = (1280, 512, 256)
QUERIES = (
    "how do I declare an interface in IDL",
    "mapping of C pointers to OCaml types",
    "what does the unique attribute mean",
    "error handling with exceptions",
    "how to compile the generated stubs",
    "arrays with a length given by another parameter",
    "memory allocation and freeing of out parameters",
    "the license of this software",
)
GOAL_PAGES_PER_S = 40.0
GOAL_SPEEDUP = 3.0


def log(message: str) -> None:
    print(f"[gpu-bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Clock:
    """The run's budget and each phase's cap, in seconds of wall time."""

    budget_s: float
    phase_s: float
    start: float = 0.0

    def __post_init__(self) -> None:
        self.start = time.perf_counter()

    def phase_deadline(self) -> float:
        left = self.budget_s - (time.perf_counter() - self.start)
        return time.perf_counter() + max(0.0, min(self.phase_s, left))


def progress(label: str, done: int, total: int, started: float) -> None:
    spent = time.perf_counter() - started
    rate = done / spent if spent > 0 else 0.0
    eta = (total - done) / rate if rate > 0 else float("nan")
    log(f"{label}: {done}/{total} pages, {rate:.2f} pages/s, ETA {eta:.0f} s")


# -- machine --------------------------------------------------------------------------------


def _driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout else None


def machine(device: str) -> dict[str, Any]:
    """Card, driver and software versions: the figures mean nothing without them."""
    import torch
    import transformers

    info: dict[str, Any] = {
        "device": device,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu": platform.processor() or platform.machine(),
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        info.update(
            card=props.name,
            memory_gib=round(props.total_memory / 2**30, 1),
            multiprocessors=props.multi_processor_count,
            capability=f"{props.major}.{props.minor}",
            cuda=torch.version.cuda,
            driver=_driver(),
            bf16=bool(torch.cuda.is_bf16_supported()),
        )
    return info


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


# -- pages ------------------------------------------------------------------------------------


def synthetic_pages(n: int, size: tuple[int, int] = (1240, 1754)) -> list[Image.Image]:
    """Text-like pages (lines of words, a table, a figure box): document-shaped images of
    the size a rendered A4 page has, different from each other."""
    rng = np.random.default_rng(7)
    words = "the page model vector index query search table figure result value".split()
    pages = []
    for i in range(n):
        img = Image.new("RGB", size, "white")
        draw = ImageDraw.Draw(img)
        y = 80
        while y < size[1] - 120:
            line = " ".join(rng.choice(words, size=int(rng.integers(6, 14))))
            draw.text((90, y), f"{i}.{y} {line}", fill="black")
            y += int(rng.integers(22, 40))
        draw.rectangle((700, 300 + 40 * (i % 5), 1100, 600), outline="black", width=3)
        pages.append(img)
    return pages


def kit_pages(kit: Path | None, n: int, size: tuple[int, int] = (1240, 1754)) -> list[Image.Image]:
    """The kit's rendered pages (cycled to ``n``), else synthetic ones of ``size``."""
    files = sorted((kit / "pages").glob("*.png")) if kit else []
    if not files:
        return synthetic_pages(n, size)
    images = []
    for i in range(n):
        with Image.open(files[i % len(files)]) as img:
            images.append(img.convert("RGB"))
    return images


def prepare(kit: Path, pages: int) -> None:
    """Write a kit on a CPU machine: rendered pages of the test PDF + the Qwen2 tokenizer.

    Runs where PageLens is installed (PyMuPDF renders the pages); the result, a few MiB,
    travels with the repository to the GPU machine, which can fetch nothing.
    """
    from bench.gpu_rerank import prepare_kit
    from indexer.model.gme.random import build_tokenizer
    from indexer.pages import RenderSettings, render_pages

    pdf = Path(__file__).resolve().parent.parent / "tests" / "data" / "camlidl-manual.pdf"
    (kit / "pages").mkdir(parents=True, exist_ok=True)
    texts = {}
    for page in render_pages(pdf, settings=RenderSettings()):
        if page.number > pages:
            break
        page.image.save(kit / "pages" / f"{page.number:03d}.png")
        texts[page.number] = page.text or ""
    build_tokenizer().save_pretrained(kit / "tokenizer")
    prepare_kit(kit, texts)
    log(f"kit written to {kit}: {pages} pages, their text layers, the tokenizers, qwen_vl_utils")


# -- the model --------------------------------------------------------------------------------


def build(size: str, dtype: str, device: str, kit: Path | None, **options: Any) -> Any:
    """A random-weight GME of ``size`` on ``device`` behind PageLens's GmeEmbedder."""
    import torch

    from indexer.model.gme.random import random_embedder

    if kit and (kit / "tokenizer" / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        options["tokenizer"] = AutoTokenizer.from_pretrained(kit / "tokenizer")
    return random_embedder(size, device=device, dtype=getattr(torch, dtype), **options)


def as_recipe(emb: Any) -> Any:
    """The recipe: transformers' own vision forward, no prompt-prefix cache."""
    from indexer.model.gme import page_kernels

    page_kernels.uninstall(emb.vision_model)
    emb.page_kernels = []
    emb.prefix_cache = False
    return emb


def set_budget(emb: Any, tokens: int) -> None:
    from indexer.model.gme.recipe import MIN_IMAGE_TOKENS

    emb.max_image_tokens = int(tokens)
    emb.min_image_tokens = min(MIN_IMAGE_TOKENS, int(tokens))


def _batches(images: list[Image.Image], size: int) -> Iterator[list[Image.Image]]:
    for start in range(0, len(images), size):
        yield images[start : start + size]


def time_pages(
    emb: Any, images: list[Image.Image], tokens: int, batch: int, deadline: float, label: str
) -> tuple[np.ndarray, dict[str, Any]]:
    """Embed pages at a budget in batches of ``batch`` until done or the deadline."""
    set_budget(emb, tokens)
    emb.embed_images(images[:batch])  # warm-up: kernels chosen, buffers allocated
    device = str(emb.device)
    _sync(device)
    vectors, done, started = [], 0, time.perf_counter()
    capped = False
    for chunk in _batches(images, batch):
        if time.perf_counter() >= deadline and done:
            capped = True
            break
        vectors.append(emb.embed_images(chunk))
        _sync(device)
        done += len(chunk)
        progress(f"{label} {tokens}", done, len(images), started)
    seconds = time.perf_counter() - started
    stats = {
        "pages": done,
        "batch_size": batch,
        "seconds": round(seconds, 3),
        "pages_per_s": round(done / seconds, 3),
        "s_per_page": round(seconds / done, 4),
        "status": "capped" if capped else "ok",
    }
    return np.concatenate(vectors), stats


def pages_phase(
    emb: Any, images: list[Image.Image], batch: int, clock: Clock, label: str
) -> tuple[dict[str, Any], dict[int, np.ndarray]]:
    """Every budget within one phase's cap, shared evenly between the budgets."""
    out: dict[str, Any] = {"budgets": {}}
    vectors: dict[int, np.ndarray] = {}
    deadline = clock.phase_deadline()
    for i, tokens in enumerate(BUDGETS):
        share = (deadline - time.perf_counter()) / (len(BUDGETS) - i)
        vecs, stats = time_pages(
            emb, images, tokens, batch, time.perf_counter() + max(share, 0.0), label
        )
        vectors[tokens] = vecs
        out["budgets"][str(tokens)] = stats
        log(f"{label} {tokens} tokens: {stats['pages_per_s']} pages/s ({stats['status']})")
    return out, vectors


def query_phase(emb: Any, clock: Clock, queries: int) -> dict[str, Any]:
    """Text-query latency, one query at a time (what a user waits for)."""
    deadline = clock.phase_deadline()
    emb.embed_queries(["warm-up query"])
    device = str(emb.device)
    times: list[float] = []
    texts = [QUERIES[i % len(QUERIES)] for i in range(queries)]
    for text in texts:
        if time.perf_counter() >= deadline and times:
            break
        t = time.perf_counter()
        emb.embed_queries([text])
        _sync(device)
        times.append(time.perf_counter() - t)
    times.sort()
    return {
        "queries": len(times),
        "p50_s": round(statistics.median(times), 4),
        "p95_s": round(times[min(len(times) - 1, int(0.95 * len(times)))], 4),
        "status": "ok" if len(times) == len(texts) else "capped",
    }


def cosines(a: dict[int, np.ndarray], b: dict[int, np.ndarray]) -> dict[str, float]:
    """The lowest cosine between the two paths' vectors of the same pages, per budget."""
    out = {}
    for tokens in a.keys() & b.keys():
        n = min(len(a[tokens]), len(b[tokens]))
        if n:
            out[str(tokens)] = round(float(np.min(np.sum(a[tokens][:n] * b[tokens][:n], 1))), 6)
    return out


# -- the run ----------------------------------------------------------------------------------


def _phase(report: dict[str, Any], name: str, run: Callable[[], Any]) -> Any:
    """Run one phase; an error is recorded in the report and the run goes on."""
    started = time.perf_counter()
    log(f"phase {name}")
    try:
        return run()
    except Exception as exc:  # the window is short: keep what the other phases measure
        report["phases"][name] = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
        log(f"phase {name} failed: {exc}")
        return None
    finally:
        report.setdefault("phase_seconds", {})[name] = round(time.perf_counter() - started, 1)


def evidence_phase(
    report: dict[str, Any], emb: Any, images: list, clock: Clock, args: argparse.Namespace
) -> None:
    """Visual evidence's seconds per page on the default path (bench/gpu_evidence.py)."""
    from bench.gpu_evidence import time_evidence

    device = str(emb.device)
    stats = time_evidence(
        emb,
        images[: args.evidence_pages],
        deadline=clock.phase_deadline(),
        sync=lambda: _sync(device),
        progress=lambda done, total, started: progress("region evidence", done, total, started),
    )
    report["phases"]["region_evidence"] = {"dtype": str(emb.dtype), **stats}
    log(f"region evidence: {stats['s_per_page']} s/page ({stats['status']})")


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """Pages/s of the default path, its speed-up over the recipe, and the issue's goals."""
    recipe = report["phases"].get("pages_recipe_fp32", {}).get("budgets", {})
    default = report["phases"].get("pages_default", {}).get("budgets", {})
    speedup = {
        tokens: round(default[tokens]["pages_per_s"] / recipe[tokens]["pages_per_s"], 2)
        for tokens in default.keys() & recipe.keys()
    }
    top = default.get("1280", {}).get("pages_per_s")
    return {
        "pages_per_s_default": {t: s["pages_per_s"] for t, s in default.items()},
        "pages_per_s_recipe": {t: s["pages_per_s"] for t, s in recipe.items()},
        "speedup_vs_recipe": speedup,
        "goal_pages_per_s_1280": {"goal": GOAL_PAGES_PER_S, "value": top},
        "goal_speedup": {"goal": GOAL_SPEEDUP, "value": speedup.get("1280")},
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every phase on one device; returns the report (also written to ``args.out``)."""
    import torch

    from bench.gpu_rerank import qwen_vl_utils_source, run_rerank

    device = "cpu" if args.dry_run else args.device
    size = "tiny" if args.dry_run else "full"
    clock = Clock(args.budget_seconds, args.phase_seconds)
    report: dict[str, Any] = {
        "kind": "pagelens-gpu-bench",
        "version": 1,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "dry_run": bool(args.dry_run),
        "model": {"architecture": "gme-Qwen2-VL-2B (random weights)", "size": size},
        "machine": machine(device),
        "phases": {},
    }
    # GME's and the reranker's image resizing; the GPU machine has it only from the kit
    report["machine"]["qwen_vl_utils"] = source = qwen_vl_utils_source(args.kit)
    if source == "missing":
        log("qwen_vl_utils is neither installed nor in the kit: run `bash bench/gpu.sh prepare`")
    # The dry run's pages are small (about 256 visual tokens): it checks phases, not speed.
    images = kit_pages(args.kit, args.pages, (448, 448) if args.dry_run else (1240, 1754))
    low = "float32" if args.dry_run else "bfloat16"
    recipe_vecs: dict[int, np.ndarray] = {}
    default_vecs: dict[int, np.ndarray] = {}

    def recipe() -> None:
        emb = as_recipe(build(size, "float32", device, args.kit, batch_size=1))
        report["model"]["parameters"] = int(sum(p.numel() for p in emb.model.parameters()))
        phase, vecs = pages_phase(emb, images[: args.recipe_pages], 1, clock, "recipe fp32")
        report["phases"]["pages_recipe_fp32"] = {"dtype": "float32", **phase}
        recipe_vecs.update(vecs)
        del emb
        if device.startswith("cuda"):
            torch.cuda.empty_cache()

    def default() -> Any:
        emb = build(size, low, device, args.kit, batch_size=args.batch)
        phase, vecs = pages_phase(emb, images, args.batch, clock, f"default {low}")
        attention = getattr(emb.model.config, "_attn_implementation", None)
        report["phases"]["pages_default"] = {"dtype": low, "attention": attention, **phase}
        default_vecs.update(vecs)
        return emb

    _phase(report, "pages_recipe_fp32", recipe)
    emb = _phase(report, "pages_default", default)
    if emb is not None:
        _phase(
            report,
            "query_text",
            lambda: report["phases"].update(query_text=query_phase(emb, clock, args.queries)),
        )
        _phase(report, "region_evidence", lambda: evidence_phase(report, emb, images, clock, args))
    emb = None  # one full model on the card at a time
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    _phase(report, "rerank", lambda: run_rerank(report, args, size, low, device, images, clock))
    report["cosine_default_vs_recipe_min"] = cosines(recipe_vecs, default_vecs)
    report["summary"] = summary(report)
    report["total_seconds"] = round(time.perf_counter() - clock.start, 1)
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, help="the JSON report (default: stdout)")
    p.add_argument("--device", default="cuda", help="torch device (default cuda)")
    p.add_argument("--kit", type=Path, help="folder written by --prepare (pages, tokenizer)")
    p.add_argument("--prepare", type=Path, metavar="DIR", help="write a kit here and exit")
    p.add_argument("--pages", type=int, default=96, help="pages for the default path")
    p.add_argument("--recipe-pages", type=int, default=24, help="pages for the recipe")
    p.add_argument("--batch", type=int, default=16, help="default path's batch size")
    p.add_argument("--queries", type=int, default=40, help="text queries timed")
    p.add_argument("--rerank-pages", type=int, default=32, help="pages reranked")
    p.add_argument("--rerank-batch", type=int, default=8, help="pages per rerank call")
    p.add_argument("--evidence-pages", type=int, default=8, help="pages of visual evidence")
    p.add_argument("--phase-seconds", type=float, default=150.0, help="cap per phase")
    p.add_argument("--budget-seconds", type=float, default=390.0, help="cap for the run")
    p.add_argument("--dry-run", action="store_true", help="tiny model on the CPU, seconds")
    args = p.parse_args(argv)
    if args.dry_run:
        args.pages, args.recipe_pages = min(args.pages, 4), min(args.recipe_pages, 1)
        args.batch, args.queries = min(args.batch, 2), min(args.queries, 3)
        args.rerank_pages, args.rerank_batch = min(args.rerank_pages, 4), min(args.rerank_batch, 2)
        args.evidence_pages = min(args.evidence_pages, 2)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.prepare:
        prepare(args.prepare, args.pages)
        return 0
    if not args.dry_run and args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            log("no CUDA device here: use --dry-run on a CPU machine")
            return 2
    report = run(args)
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        log(f"report written to {args.out}")
    else:
        print(text)
    failed = [n for n, p in report["phases"].items() if p.get("status") == "error"]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
