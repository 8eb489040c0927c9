"""The benchmark in a tiny configuration (report keys and shape, no timing assertions), the
query prompt-prefix KV cache (same vectors as the plain path) and the opt-in int8 path."""

from __future__ import annotations

import json

import numpy as np
import pytest

from indexer.model import QUERY_INSTRUCTION

QUERIES = [
    "what is camlidl",
    "  leading spaces",
    "\nnewline first",
    "a much longer query about interface definitions and COM components in OCaml " * 3,
    "x",
]


@pytest.mark.parametrize("instruction", [None, QUERY_INSTRUCTION])
def test_prefix_cache_gives_the_plain_vectors(tiny_embedder, instruction):
    tiny_embedder.prefix_cache = False
    plain = tiny_embedder.embed_texts(QUERIES, instruction=instruction)
    tiny_embedder.prefix_cache = True
    try:
        batched = tiny_embedder.embed_texts(QUERIES, instruction=instruction)
        single = np.stack(
            [tiny_embedder.embed_texts([q], instruction=instruction)[0] for q in QUERIES]
        )
    finally:
        tiny_embedder.prefix_cache = True
    assert np.sum(plain * batched, axis=1).min() >= 0.9999
    assert np.sum(plain * single, axis=1).min() >= 0.9999
    key = instruction or "You are a helpful assistant."
    assert key in tiny_embedder.cached_prefixes


def test_int8_quantize_agrees_roughly(tiny_model_dir, make_pdf):
    from indexer import load_embedder

    exact = load_embedder(tiny_model_dir, device="cpu", dtype="float32")
    fast = load_embedder(tiny_model_dir, device="cpu", quantize="int8")
    assert fast.dtype == "int8"
    a = exact.embed_texts(QUERIES[:3])
    b = fast.embed_texts(QUERIES[:3])
    assert b.shape == a.shape
    assert np.allclose(np.linalg.norm(b, axis=1), 1, atol=1e-4)
    assert np.sum(a * b, axis=1).min() > 0.5
    with pytest.raises(ValueError):
        load_embedder(tiny_model_dir, device="cpu", quantize="int4")


def test_bench_tiny_report(tmp_path):
    from bench.bench import BenchConfig, main
    from bench.query_phase import CANDIDATE_KERNELS

    out = tmp_path / "report.json"
    code = main(
        [
            "--size",
            "tiny",
            "--pages",
            "2",
            "--baseline-pages",
            "1",
            "--budgets",
            "128,64",
            "--vectors",
            "3000",
            "--queries",
            "3",
            "--corpus",
            "4",
            "--query-collection",
            "200",
            "--peak-n",
            "256",
            "--peak-around",
            "128",
            "--rss-pages",
            "6",
            "--ray-actors",
            "",  # the Ray phase has its own test (tests/test_ray.py)
            "--out",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    for key in (
        "machine",
        "matmul_peak",
        "rendering",
        "model",
        "vectors",
        "index_rss",
        "targets",
        "config",
    ):
        assert key in report, key
    assert {"cpu_model", "cpu_flags", "torch", "transformers", "faiss", "torch_threads"} <= set(
        report["machine"]
    )
    assert set(report["matmul_peak"]) >= {"float32"}
    words = report["word_boxes"]  # measured, on the corpus's real pages (at 128 tokens here:
    # small PNGs, so the ratio is not the 1280-token goal's)
    assert words["words_per_page"] > 50 and words["render_tokens"] == 128
    ratio = words["bytes_per_page"] / words["png_bytes_per_page"]
    assert words["ratio_to_png"] == pytest.approx(ratio, abs=1e-4)
    assert words["share_basis"] == "render+png+embed" and words["ms_per_page"] > 0
    assert report["targets"]["word_boxes_bytes<10%_png"]["met"] == (ratio < 0.1)
    phases = report["model"]["phases"]
    assert set(phases) == {"baseline_float32", "int8", "exact"}
    for phase in phases.values():
        assert set(phase["budgets"]) == {"128", "64"}
        for stats in phase["budgets"].values():
            for key in (
                "pages_per_s",
                "gflop_per_page",
                "achieved_gflops",
                "rss_peak_mib",
                "vision_s",
                "decoder_s",
            ):
                assert key in stats
        assert phase["query"]["p50_s"] > 0
    # the recipe runs transformers' own forward; the default the leaner one; each row says so
    # and has its fraction of a peak measured right around it
    for name, forward in (("baseline_float32", "transformers"), ("exact", "indexer.page_kernels")):
        for stats in phases[name]["budgets"].values():
            assert stats["kernels"]["vision_forward"].startswith(forward)
            assert "SDPA flash" in stats["kernels"]["vision_attention"]
            assert len(stats["peak_gflops_same_run"]) == 2
            assert min(stats["peak_gflops_same_run"]) > 0
            assert stats["fraction_of_peak"] > 0  # of max(peak_gflops_same_run)
    assert set(phases["exact"]["speedup_vs_baseline"]) == {"128", "64"}
    assert phases["exact"]["prefix_cache_agreement"]["cosine_min"] >= 0.9999
    assert "top10_overlap_vs_float32" in phases["int8"]
    # int8 weight-only text-query candidates, measured against fp32 in the same run
    assert report["memory_bandwidth"]["gb_per_s"] > 0
    qw = report["model"]["query_weights"]
    assert set(qw["candidates"]) == set(BenchConfig().query_candidates)
    assert {"int8-bf16", "int8mix-bf16", "int8+int4-bf16", "fp16"} <= set(qw["candidates"])
    assert qw["decoder_weight_bytes_exact"] > 0 and qw["floor_s_exact"] > 0
    for name, cand in qw["candidates"].items():
        assert cand["kernel"] == CANDIDATE_KERNELS[name] and cand["weights"]
        assert cand["decoder_weight_bytes"] < qw["decoder_weight_bytes_exact"] / 1.9
        assert -1 <= cand["agreement_vs_float32"]["cosine_min"] <= 1.0001
        assert 0 <= cand["top10_overlap_vs_float32"] <= 1
        assert cand["p50_s"] > 0 and cand["floor_s"] > 0
    assert qw["auto_choice"]["mode"] == "exact"  # the tiny model is below the size gate
    row = report["vectors"]["sizes"]["3000"]
    assert set(row) == {"flat", "hnsw", "ivf", "store"}
    assert row["flat"]["recall_at_10"] == 1.0
    # the store's index re-ranks candidates exactly: at least as good as plain IVF-SQ8
    assert row["store"]["recall_at_10"] >= row["ivf"]["recall_at_10"]
    for entry in row.values():
        assert 0 <= entry["recall_at_10"] <= 1 and entry["p50_ms"] > 0
    assert report["index_rss"]["pages"] == 6


def test_flops_count_full_model_is_plausible():
    from bench.flops import flops_per_input
    from indexer.model.gme.random import make_config

    # A 1024-visual-token page: 64x64 patches, ~1050-token sequence.
    f = flops_per_input(make_config("full"), grid_hw=(64, 64), seq_len=1050)
    assert 5e12 < f["vision"] < 1.2e13
    assert 2.5e12 < f["decoder"] < 4.5e12


def test_remote_overhead_section(tiny_model_dir):
    """Phase F runs a real server (model-free, then pagelens serve) and reports per-page
    overhead; vectors through the server equal in-process ones."""
    from bench.bench import BenchConfig, run_remote_section

    report: dict = {}
    cfg = BenchConfig(model=str(tiny_model_dir), remote_pages=2, remote_tokens=16)
    run_remote_section(cfg, report)
    r = report["remote"]
    assert r["pages"] == 2 and r["render_tokens"] == 16
    assert r["transport"]["cosine_min"] >= 0.9999
    assert r["tiny_gme"]["cosine_min"] >= 0.9999
    assert r["overhead_ms_per_page"] == r["transport"]["overhead_ms_per_page"]
    assert r["png_kib_per_page"] > 0 and r["transport"]["remote_ms_per_page"] > 0
    json.dumps(report)  # the report is JSON as written


def test_rerank_phase_reports_seconds_per_page(tmp_path):
    """Phase H (``--rerank-pages N``): the tiny random reranker here (full size in the real
    run) scores N pages of the test PDF at PageLens's default rendering with their text."""
    from bench.bench import BenchConfig, parse_args
    from bench.rerank_phase import run_rerank, summary_lines

    assert parse_args([]).rerank_pages == 0  # opt-in: existing runs unchanged
    assert parse_args(["--rerank-pages", "3"]).rerank_pages == 3
    report: dict = {}
    run_rerank(BenchConfig(size="tiny", rerank_pages=2), report, tmp_path)
    r = report["rerank"]
    assert r["pages"] == 2 and r["size"] == "tiny" and r["dtype"] == "float32"
    assert r["device"] == "cpu" and r["threads"] >= 1 and r["batch_size"] >= 1
    assert r["s_per_page"] > 0 and r["seconds"] == pytest.approx(2 * r["s_per_page"], rel=1e-2)
    assert r["rendering"]["render_tokens"] == 1280 and r["rendering"]["pages"] == 2
    assert r["image_budget_tokens"] == {"min": 4, "max": 1800, "token_px": 32}
    assert len(r["visual_tokens_per_page"]) == 2 and r["visual_tokens_mean"] > 500
    pairs = zip(r["sequence_tokens_per_page"], r["visual_tokens_per_page"], strict=True)
    assert all(seq > visual for seq, visual in pairs)
    assert len(r["load_avg_1m"]) in (0, 2) and all(0 <= x <= 1 for x in r["scores"])
    assert "rerank (tiny Qwen3-VL, float32, cpu)" in summary_lines(report)[0]
    json.dumps(report)


def test_evidence_phase_reports_seconds_per_page(tmp_path):
    """Phase I (``--evidence-pages N``): the tiny random GME here (full size in the real run)
    cuts N pages of the test PDF into the default regions, one call per page."""
    from bench.bench import BenchConfig, parse_args
    from bench.evidence_phase import run_evidence, summary_lines

    assert parse_args([]).evidence_pages == 0  # opt-in: existing runs unchanged
    assert parse_args(["--evidence-pages", "3"]).evidence_pages == 3
    report: dict = {}
    run_evidence(BenchConfig(size="tiny", evidence_pages=2, dtype="float32"), report, tmp_path)
    r = report["visual_evidence"]
    assert r["pages"] == 2 and r["size"] == "tiny" and r["dtype"] == "float32"
    assert r["s_per_page"] > 0 and r["cpu_s_per_page"] > 0 and r["status"] == "ok"
    assert r["seconds"] == pytest.approx(2 * r["s_per_page"], rel=1e-2)
    assert r["regions_per_page"] == 13 and r["grids"] == [[2, 2], [3, 3]]
    assert r["max_image_tokens"] == 256 and len(r["crop_tokens"]) == 13
    assert all(200 <= t <= 300 for t in r["crop_tokens"])  # the crop budget, not the page's
    assert r["rendering"]["render_tokens"] == 1280 and len(r["best_boxes"]) == 2
    assert "visual evidence (tiny GME, float32, cpu)" in summary_lines(report)[0]
    json.dumps(report)


def test_bench_device_argument(monkeypatch, capsys):
    """`--device cuda` is parsed and checked (no GPU in this test environment: the error
    path, and the accepted forms with CUDA availability injected)."""
    import torch

    from bench.bench import parse_args

    assert parse_args([]).device == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exc:
        parse_args(["--device", "cuda"])
    assert exc.value.code == 2
    assert "no CUDA GPU is usable here" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--device", "tpu"])
    assert "cpu or cuda" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    cfg = parse_args(["--device", "CUDA:1", "--budgets", "1280,512,256"])
    assert cfg.device == "cuda:1" and cfg.budgets == [1280, 512, 256]
    assert parse_args(["--device", "cuda"]).device == "cuda"
    with pytest.raises(SystemExit):
        parse_args(["--device", "cuda:2"])
    assert "2 CUDA device(s)" in capsys.readouterr().err


def test_pagelens_bench_passes_the_global_device(monkeypatch):
    """`pagelens --device cuda bench` and `pagelens bench --device cuda` reach the bench."""
    import torch
    from typer.testing import CliRunner

    import bench.bench as bench_mod
    from app.cli import cli

    seen = []
    monkeypatch.setattr(bench_mod, "main", lambda argv: seen.append(list(argv)) or 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    runner = CliRunner()
    assert runner.invoke(cli, ["--device", "cuda", "bench", "--size", "tiny"]).exit_code == 0
    assert seen[-1][-2:] == ["--device", "cuda"]
    assert runner.invoke(cli, ["bench", "--device", "cuda:0"]).exit_code == 0
    assert seen[-1].count("--device") == 1 and "cuda:0" in seen[-1]
    monkeypatch.undo()
    # without a GPU the real bench refuses clearly, with a usage error
    result = runner.invoke(cli, ["bench", "--device", "cuda", "--size", "tiny"])
    if not torch.cuda.is_available():
        assert result.exit_code == 2
        assert "no CUDA GPU" in result.output


def test_model_uses_torch_fused_attention_on_cpu(tiny_embedder):
    """Vision tower and decoder run torch's fused SDPA kernel (flash attention for CPU):
    no explicit softmax over materialised scores."""
    from PIL import Image
    from torch.profiler import profile

    page = Image.new("RGB", (224, 280), "white")
    with profile() as prof:
        tiny_embedder.embed_documents([page])
    ops = {e.key for e in prof.key_averages()}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in ops
    assert "aten::softmax" not in ops and "aten::_softmax" not in ops
    flash = [e for e in prof.key_averages() if "flash_attention" in e.key]
    assert flash[0].count >= 2 + 2  # tiny model: 2 vision blocks + 2 decoder layers


def test_bench_isa_emulation_reruns_under_the_caps(tmp_path):
    """``--isa avx2`` re-runs the bench with ATen, oneDNN, MKL and fbgemm capped at AVX2; the
    report names the real CPU and the cap, and PageLens's own plan follows it."""
    from bench.bench import ISA_EMULATION, isa_env, main
    from indexer.model.runtime import cpu_features

    env = isa_env("avx2", {"PATH": "/bin"})
    assert env is not None and all(env[k] == v for k, v in ISA_EMULATION["avx2"].items())
    assert isa_env("avx2", env) is None and isa_env("native") is None  # nothing to re-run
    out = tmp_path / "capped.json"
    code = main(
        [
            "--isa",
            "avx2",
            "--size",
            "tiny",
            "--queries-only",
            "--pages",
            "1",
            "--queries",
            "2",
            "--corpus",
            "4",
            "--query-collection",
            "50",
            "--query-candidates",
            "int8-bf16",
            "--peak-n",
            "128",
            "--skip-vectors",
            "--ray-actors",
            "",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    cap = report["machine"]["isa_cap"]
    assert cap["emulated"] == "avx2" and cap["env"] == ISA_EMULATION["avx2"]
    assert report["config"]["isa"] == "avx2"
    assert not cap["onednn_bf16"]  # oneDNN no longer offers its bf16 kernels
    assert not any(v for f, v in cap["cpu_flags_effective"].items() if f.startswith("avx512"))
    if "avx2" in cpu_features._read_cpu_flags():
        assert cap["torch_cpu_capability"] == "AVX2"
    qw = report["model"]["query_weights"]
    assert set(qw["candidates"]) == {"int8-bf16"} and qw["floor_s_exact"] > 0
    # what deciding costs (None here: the tiny model is below the size gate, nothing to try)
    assert {"calibration_s", "cached_decision_s", "prepare_s", "auto_choice_from_cache"} <= set(qw)
    assert qw["auto_choice"]["source"] == "plan"


def test_depth_cut_keeps_the_width(capsys):
    """--depth V,T: the random model at full width, V vision blocks and T decoder layers."""
    from bench.bench import parse_args
    from bench.flops import flops_per_input
    from bench.model_build import _build_cut

    cfg = parse_args(["--size", "tiny", "--depth", "1,1"])
    assert cfg.depth == (1, 1)
    emb = _build_cut(cfg, "float32")
    config = emb.model.config
    assert len(emb.vision_model.blocks) == 1 and len(emb.text_model.layers) == 1
    assert config.vision_config.embed_dim == 32 and config.text_config.hidden_size == 64
    assert "depth1+1" in emb.model_id
    from PIL import Image

    vec = emb.embed_images([Image.new("RGB", (120, 90), "white")])
    assert vec.shape == (1, 64) and abs(float((vec**2).sum()) - 1) < 1e-5
    # FLOPs follow the cut config: half the tiny model's 2 vision blocks and 2 layers
    from indexer.model.gme.random import make_config

    cut = flops_per_input(config, grid_hw=(8, 8), seq_len=40)
    whole = flops_per_input(make_config("tiny"), grid_hw=(8, 8), seq_len=40)
    assert cut["decoder"] == pytest.approx(whole["decoder"] / 2)
    assert whole["vision"] / 2 < cut["vision"] < whole["vision"]  # patch embed + merger stay
    for bad in (["--depth", "3"], ["--depth", "0,2"], ["--depth", "1,1", "--model", "x"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
    assert "--depth" in capsys.readouterr().err


def test_queries_only_runs_no_vector_or_ray_phase():
    """``--queries-only`` is what it says: without it the defaults build 1M-vector indexes and
    start Ray, which held a queries run for many minutes."""
    from bench.bench import parse_args

    cfg = parse_args(["--queries-only"])
    assert cfg.skip_vectors and cfg.ray_actors == []
    full = parse_args([])
    assert not full.skip_vectors and full.ray_actors == [1, 2]
