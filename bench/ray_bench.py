"""Bench phase G: ``pagelens index --ray`` throughput with 1, 2, ... embedding actors.

Each run indexes the same generated PDF into a fresh collection through
:class:`indexer.ray.RayIndexer` on a local Ray instance (render tasks, actor pool,
single-writer driver), with the pool already started, so ``pages_per_s`` is the job's steady
throughput and ``pool_start_s`` (workers importing torch and loading the model) is reported
apart. The same pages indexed in-process (:class:`indexer.pipeline.Indexer`) give the
reference rate on the same machine.

The model is the ``--model`` folder if given, else a random-weight checkpoint of
``--ray-size`` written to a temporary folder (actors load from disk like real ones). With the
tiny checkpoint the model costs almost nothing, so the numbers measure what Ray itself adds
per page (render, transfer, write); with the full-size one (9 GB on disk, one copy in memory
per actor) they measure how the pool scales the model.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def run_ray(cfg: Any, report: dict, workdir: Path, make_pdf: Any) -> None:
    """Fill ``report["ray"]``; a note instead when Ray is not installed."""
    try:
        import ray
    except ImportError:
        report["ray"] = {"skipped": "ray is not installed (pip install 'pagelens[ray]')"}
        return
    from indexer import load_embedder
    from indexer.model.gme.random import build_random_gme
    from indexer.pages import RenderSettings
    from indexer.pipeline import Indexer
    from indexer.ray import EmbedPool, RayIndexer, RayOptions, connect
    from indexer.stores import open_collection

    tokens = int(cfg.ray_tokens)
    pages = int(cfg.ray_pages)
    if cfg.model:
        model, label = str(cfg.model), str(cfg.model)
    else:
        model = str(build_random_gme(workdir / "ray-model", size=cfg.ray_size, seed=cfg.seed))
        label = f"random-{cfg.ray_size}"
    pdf = make_pdf(workdir / "ray-bench.pdf", pages)
    settings = RenderSettings.for_tokens(tokens)
    load: dict[str, Any] = {"device": "cpu", "dtype": cfg.dtype, "max_image_tokens": tokens}
    started = connect("local", options=RayOptions(object_store_mb=256))
    section: dict[str, Any] = {
        "model": label,
        "pages": pages,
        "image_tokens": tokens,
        "batch_size": cfg.batch_size,
        "cluster": {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")},
        "runs": [],
    }
    report["ray"] = section
    try:
        for actors in cfg.ray_actors:
            pool = EmbedPool(model, load, RayOptions(actors=actors))
            t0 = time.perf_counter()
            pool.start()
            start_s = time.perf_counter() - t0
            res = pool.resources
            assert res is not None  # planned by start()
            try:
                store = open_collection(workdir / f"ray-{actors}")
                with RayIndexer(
                    store, pool=pool, settings=settings, batch_size=cfg.batch_size
                ) as job:
                    rep = job.add([pdf])
                store.close()
            finally:
                pool.close()
            section["runs"].append(
                {
                    "actors": actors,
                    "actor_cpus": res.actor_cpus,
                    "actor_gpus": res.actor_gpus,
                    "threads_per_actor": res.threads,
                    "pool_start_s": round(start_s, 2),
                    "seconds": round(rep.seconds, 3),
                    "pages_embedded": rep.pages_embedded,
                    "pages_per_s": round(pages / rep.seconds, 3),
                }
            )
            print(f"[bench] ray {actors} actor(s): {pages / rep.seconds:.2f} pages/s", flush=True)
        embedder = load_embedder(model, **load)
        store = open_collection(workdir / "ray-inprocess")
        rep = Indexer(store, embedder, settings=settings, batch_size=cfg.batch_size).add([pdf])
        store.close()
        section["in_process"] = {
            "seconds": round(rep.seconds, 3),
            "pages_per_s": round(pages / rep.seconds, 3),
        }
    finally:
        if started:
            ray.shutdown()


def summary_lines(report: dict) -> list[str]:
    r = report.get("ray")
    if not r:
        return []
    if "skipped" in r:
        return [f"ray: skipped ({r['skipped']})"]
    runs = ", ".join(f"{x['actors']} actor(s) {x['pages_per_s']} pages/s" for x in r["runs"])
    base = r.get("in_process", {}).get("pages_per_s")
    return [
        f"ray ({r['model']}, {r['pages']} pages at {r['image_tokens']} tokens): {runs}; "
        f"in-process {base} pages/s"
    ]
