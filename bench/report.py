"""The report's verdicts and its text: the targets each phase is held to (met or not, with
the figures) and the summary printed after a run. Reads only the report dict."""

from __future__ import annotations

from typing import Any


def targets(report: dict) -> dict:
    out: dict[str, Any] = {}
    phases = (report.get("model") or {}).get("phases", {})
    exact, base, int8 = phases.get("exact"), phases.get("baseline_float32"), phases.get("int8")
    if exact:
        out.update(_exact_targets(report, exact, base))
    qw = (report.get("model") or {}).get("query_weights")
    if qw:
        out.update(_query_weight_targets(qw, phases))
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


def _exact_targets(report: dict, exact: dict, base: dict | None) -> dict[str, Any]:
    """The default (exact) path's targets: fraction of peak, speed-up, query and GPU rate."""
    out: dict[str, Any] = {}
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
    return out


def _query_weight_targets(qw: dict, phases: dict) -> dict[str, Any]:
    """The text-query candidates' targets: agreement with float32, and the query p50."""
    out: dict[str, Any] = {}
    held = {
        name: [
            c.get("p50_s"),
            c.get("agreement_vs_float32", {}).get("cosine_min"),
            c.get("top10_overlap_vs_float32"),
        ]
        for name, c in qw["candidates"].items()
    }
    ok = [n for n, (_, cos, top) in held.items() if cos is not None and cos >= 0.999 and top == 1.0]
    out["int8_query_cos>=0.999_same_top10"] = {"value": held, "met": bool(ok), "holds": ok}
    # the query target: p50 <= 0.35 s with a candidate that holds (or exact)
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
    return out


def summary(report: dict) -> str:
    from bench.evidence_phase import summary_lines as evidence_lines
    from bench.ray_bench import summary_lines
    from bench.rerank_phase import summary_lines as rerank_lines

    model = report.get("model")
    lines = _machine_lines(report)
    if model:
        lines += _model_lines(model)
    qw = (model or {}).get("query_weights")
    if qw:
        lines += _query_weight_lines(qw)
    vec = report.get("vectors")
    if vec:
        lines += _vector_lines(vec)
    lines += _index_rss_lines(report) + _remote_lines(report)
    lines.extend("  " + line for line in summary_lines(report))
    lines += rerank_lines(report) + evidence_lines(report)
    for name, t in report.get("targets", {}).items():
        lines.append(f"  target {name}: {'MET' if t['met'] else 'not met'} ({t['value']})")
    return "\n".join(lines)


def _machine_lines(report: dict) -> list[str]:
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
    return lines


def _model_lines(model: dict) -> list[str]:
    lines = [f"  model {model.get('model_id')} ({model.get('parameters', '?')} params)"]
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
            lines.append(f"  {name:17s} top-10 overlap vs fp32: {ph['top10_overlap_vs_float32']}")
    return lines


def _query_weight_lines(qw: dict) -> list[str]:
    lines = [
        f"  text-query weights (floor exact fp32: {qw.get('floor_s_exact')} s; "
        f"auto here: {qw.get('auto_choice', {}).get('mode')}; deciding: calibration "
        f"{qw.get('calibration_s')} s, cached decision {qw.get('cached_decision_s')} s, "
        f"building the copy {qw.get('prepare_s')} s)"
    ]
    for name, c in qw["candidates"].items():
        agree = c.get("agreement_vs_float32", {})
        lines.append(
            f"    {name:12s} p50 {c['p50_s']} s (exact {c['exact_p50_s_same_run']} s, "
            f"x{c['speedup_vs_exact']}), floor {c['floor_s']} s, cos min "
            f"{agree.get('cosine_min')}, top-10 {c.get('top10_overlap_vs_float32')}"
        )
    return lines


def _vector_lines(vec: dict) -> list[str]:
    lines = []
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
    return lines


def _index_rss_lines(report: dict) -> list[str]:
    if "index_rss" not in report:
        return []
    r = report["index_rss"]
    return [
        f"  indexing {r['pages']} pages: RSS +{r['rss_growth_mib']} MiB "
        f"(bound: one batch of images {r.get('one_batch_of_images_mib')} + vectors "
        f"{r.get('vectors_mib')} + SQLite cache {r.get('sqlite_cache_mib')} + read-ahead "
        f"{r.get('read_ahead_mib')} + fixed "
        f"{r.get('fixed_mib')} = {r.get('bound_mib')} MiB)"
    ]


def _remote_lines(report: dict) -> list[str]:
    if "remote" not in report:
        return []
    r = report["remote"]
    t, g = r["transport"], r["tiny_gme"]
    return [
        f"  remote embedder, {r['render_tokens']}-token pages ({r['page_sizes'][0]}): "
        f"+{r['overhead_ms_per_page']} ms/page over in-process "
        f"(PNG encode {r['png_encode_ms_per_page']} ms, {r['png_kib_per_page']} KiB/page; "
        f"transport {t['in_process_ms_per_page']} -> {t['remote_ms_per_page']} ms/page); "
        f"tiny GME via pagelens serve {g['in_process_s_per_page']} -> "
        f"{g['remote_s_per_page']} s/page, cos min {g['cosine_min']}"
    ]
