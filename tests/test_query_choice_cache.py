"""The text-query weights decision across processes: kept on disk per key, never paid by a
one-shot query, made at start-up by the long-lived processes, and refused when the memory
for the copy is not there. Tiny model; an AVX2-only CPU is injected."""

from __future__ import annotations

import json
import logging
import threading

import numpy as np
import pytest
import torch

from indexer.model.gme import query_weights
from indexer.model.gme.query_weights_cache import CACHE_FOLDER, DecisionCache, memory_shortfall
from indexer.model.runtime import cpu_features, lowp

AVX2_ONLY = frozenset({"fpu", "sse4_2", "avx", "avx2", "fma", "f16c"})


@pytest.fixture
def avx2(monkeypatch):
    """A CPU without native bf16 for the plan, and the size gate lowered for the tiny model."""
    from indexer.model.runtime import device as runtime_device

    monkeypatch.setattr(runtime_device, "CPU_BF16_MIN_HIDDEN", 0)
    monkeypatch.setattr(cpu_features.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(cpu_features, "_read_cpu_flags", lambda: AVX2_ONLY)
    monkeypatch.setattr(lowp, "MIN_QUERY_COSINE", 0.98)  # the tiny model's rough weights


@pytest.fixture
def spies(monkeypatch):
    """Counts calibrations (``query_weights.choose``), exact calibration runs and copies built."""
    from indexer.model.gme import embedder as gme_embedder

    counts = {"choose": 0, "copies": 0, "exact_runs": 0}
    real_choose, real_weights = query_weights.choose, lowp.QueryWeights
    real_now = gme_embedder.GmeEmbedder._embed_texts_now

    def choose(*args, **kw):
        counts["choose"] += 1
        return real_choose(*args, **kw)

    class Weights(real_weights):
        def __init__(self, *args, **kw):
            counts["copies"] += 1
            super().__init__(*args, **kw)

    def now(self, texts):
        counts["exact_runs"] += 1
        return real_now(self, texts)

    monkeypatch.setattr(query_weights, "choose", choose)
    monkeypatch.setattr(lowp, "QueryWeights", Weights)
    monkeypatch.setattr(gme_embedder.GmeEmbedder, "_embed_texts_now", now)
    return counts


def load(model_dir, **kw):
    from indexer import load_embedder

    return load_embedder(model_dir, device="cpu", dtype="float32", **kw)


def cache_files(tmp_path):
    folder = tmp_path / "pagelens-cache" / CACHE_FOLDER  # conftest's PAGELENS_CACHE
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def test_a_second_process_reads_the_decision(tiny_model_dir, avx2, spies, tmp_path, caplog):
    first = load(tiny_model_dir).prepare_queries()
    assert first.source == "measured" and first.candidates and "calibration_s" in first.timings
    assert spies["choose"] == 1 and spies["exact_runs"] > 0
    [path] = cache_files(tmp_path)
    assert first.cache_file == str(path)
    saved = json.loads(path.read_text())
    assert saved["choice"]["mode"] == first.mode and saved["key"]["cpu_flags"] == sorted(AVX2_ONLY)
    assert saved["key"]["candidates"] == list(query_weights.AUTO_ORDER)

    spies.update(choose=0, exact_runs=0, copies=0)
    again = load(tiny_model_dir)  # a new embedder over the same weights: what a process loads
    with caplog.at_level(logging.INFO, logger="indexer.model.gme.query_weights"):
        second = again.prepare_queries()
    assert f"decided by an earlier process, from {path}" in caplog.text  # what -v shows
    assert spies["choose"] == 0 and spies["exact_runs"] == 0  # no calibration at all
    assert second.source == "cache" and second.cache_file == str(path)
    assert (second.mode, second.exact_s) == (first.mode, first.exact_s)
    assert second.candidates == first.candidates
    assert "cached_decision_s" in second.timings
    assert spies["copies"] == (0 if first.mode == "exact" else 1)


def test_a_cached_copy_is_built_and_used(tiny_model_dir, avx2, spies):
    """An explicit candidate is cached too (its own key): the next process builds the copy
    without measuring and its queries are those of the copy."""
    first = load(tiny_model_dir, query_weights="fp16")
    assert first.prepare_queries().mode == "fp16" and spies["choose"] == 1
    want = first.embed_queries(["what is camlidl", "x"])
    spies.update(choose=0, exact_runs=0, copies=0)
    second = load(tiny_model_dir, query_weights="fp16")
    choice = second.prepare_queries()
    assert (choice.mode, choice.source, spies["choose"], spies["copies"]) == ("fp16", "cache", 0, 1)
    assert choice.timings["prepare_s"] >= 0
    np.testing.assert_allclose(second.embed_queries(["what is camlidl", "x"]), want, atol=1e-6)


def test_a_changed_key_measures_again(tiny_model_dir, avx2, spies, monkeypatch, tmp_path):
    load(tiny_model_dir).prepare_queries()
    assert spies["choose"] == 1
    emb = load(tiny_model_dir)
    emb.cpu_flags = AVX2_ONLY | {"avx512f"}  # another CPU (still no native bf16)
    assert emb.prepare_queries().source == "measured" and spies["choose"] == 2
    monkeypatch.setattr(lowp, "MIN_QUERY_COSINE", 0.97)  # another agreement bar
    assert load(tiny_model_dir).prepare_queries().source == "measured"
    monkeypatch.setattr(
        query_weights, "AUTO_ORDER", tuple(reversed(query_weights.AUTO_ORDER))
    )  # other order
    assert load(tiny_model_dir).prepare_queries().source == "measured"
    assert spies["choose"] == 4 and len(cache_files(tmp_path)) == 4
    # and the first key is still answered from its file
    monkeypatch.setattr(lowp, "MIN_QUERY_COSINE", 0.98)
    monkeypatch.setattr(query_weights, "AUTO_ORDER", tuple(reversed(query_weights.AUTO_ORDER)))
    assert load(tiny_model_dir).prepare_queries().source == "cache"


@pytest.mark.parametrize("garbage", ["{not json", '{"key": 1}', "[]", ""])
def test_a_corrupt_cache_file_is_measured_again_and_rewritten(
    tiny_model_dir, avx2, spies, tmp_path, garbage
):
    load(tiny_model_dir).prepare_queries()
    [path] = cache_files(tmp_path)
    good = json.loads(path.read_text())
    path.write_text(garbage)
    choice = load(tiny_model_dir).prepare_queries()
    assert choice.source == "measured" and spies["choose"] == 2
    assert json.loads(path.read_text())["key"] == good["key"]  # rewritten whole
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left
    # a file naming a mode this version does not know is not trusted either
    bad = json.loads(path.read_text())
    bad["choice"]["mode"] = "int3-magic"
    path.write_text(json.dumps(bad))
    assert load(tiny_model_dir).prepare_queries().source == "measured"


def test_an_unwritable_cache_only_skips_saving(tiny_model_dir, avx2, spies, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("PAGELENS_CACHE", str(blocker))
    choice = load(tiny_model_dir).prepare_queries()
    assert choice.source == "measured" and choice.cache_file is None
    assert load(tiny_model_dir).prepare_queries().source == "measured"  # nothing was kept
    assert spies["choose"] == 2


def test_one_text_query_never_decides(tiny_model_dir, avx2, spies):
    """auto: a process's first text query runs exact without deciding (a one-shot `pagelens
    search` never calibrates or builds a copy); its second decides."""
    emb = load(tiny_model_dir)
    plan = query_weights.plan_query_weights(
        "auto", dtype=emb.dtype, hidden=emb.dim, min_hidden=0, flags=cpu_features.cpu_flags()
    )
    assert plan.candidates  # there would be something to measure
    ref = load(tiny_model_dir, query_weights="exact").embed_queries(["churn in 2023"])
    spies.update(choose=0, exact_runs=0, copies=0)
    first = emb.embed_queries(["churn in 2023"])
    assert emb.query_choice is None and spies == {"choose": 0, "copies": 0, "exact_runs": 0}
    np.testing.assert_allclose(first, ref, atol=1e-6)
    emb.embed_queries(["revenue by region"])
    assert emb.query_choice is not None and spies["choose"] == 1
    # with nothing to try (native bf16 here) the first query decides at once: it costs nothing
    bf16 = load(tiny_model_dir)
    bf16.cpu_flags = AVX2_ONLY | {"avx512f", "avx512_bf16"}
    bf16.embed_queries(["churn in 2023"])
    assert bf16.query_choice is not None and bf16.query_choice.source == "plan"
    # an explicit setting decides at once, as before
    eager = load(tiny_model_dir, query_weights="fp16")
    eager.embed_queries(["churn in 2023"])
    assert eager.query_choice is not None and eager.query_choice.mode == "fp16"


def test_pagelens_search_stays_exact(tiny_model_dir, avx2, spies, make_pdf, tmp_path, monkeypatch):
    """The CLI's one-shot search: no calibration, no copy, even with a cached decision."""
    from typer.testing import CliRunner

    from app.cli import cli

    monkeypatch.setenv("PAGELENS_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("PAGELENS_DEVICE", "cpu")
    pdf = make_pdf("a.pdf", ["churn rose in 2023", "revenue by region"])
    runner = CliRunner()
    assert runner.invoke(cli, ["index", str(pdf)], catch_exceptions=False).exit_code == 0
    load(tiny_model_dir).prepare_queries()  # a cached decision exists
    import indexer

    loaded, real_load = [], indexer.load_embedder
    monkeypatch.setattr(
        indexer, "load_embedder", lambda *a, **k: loaded.append(real_load(*a, **k)) or loaded[-1]
    )
    spies.update(choose=0, exact_runs=0, copies=0)
    for command in (["search", "churn", "--json"], ["search", "revenue", "-k", "1"]):
        result = runner.invoke(cli, command, catch_exceptions=False)
        assert result.exit_code == 0, result.output
    assert spies == {"choose": 0, "copies": 0, "exact_runs": 0}
    assert len(loaded) == 2  # one model per command, each of which had candidates to try
    for emb in loaded:
        plan = query_weights.plan_query_weights(
            emb.query_weights, dtype=emb.dtype, hidden=emb.dim, min_hidden=0, flags=emb.cpu_flags
        )
        assert plan.candidates and emb.query_choice is None


def test_no_copy_without_the_memory_for_it(tiny_model_dir, avx2, spies, monkeypatch, tmp_path):
    from indexer.model.runtime import memory

    emb = load(tiny_model_dir)
    n = sum(m.weight.numel() for m in emb.text_model.modules() if isinstance(m, torch.nn.Linear))
    assert memory_shortfall("fp16", 1_300_000_000, available=2 << 30)  # GME-2B, 2 GiB free
    assert memory_shortfall("fp16", 1_300_000_000, available=8 << 30) is None
    free = {"bytes": 1 << 20}  # 1 MiB
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": free["bytes"])
    choice = emb.prepare_queries()
    assert (choice.mode, choice.source) == ("exact", "memory") and n > 0
    assert "not enough free memory" in choice.reason and "GiB" in choice.reason
    assert spies == {"choose": 0, "copies": 0, "exact_runs": 0}
    assert cache_files(tmp_path) == []  # a passing shortage is not the key's answer
    # a cached copy is not built either when memory is short now
    free["bytes"] = 1 << 40
    assert load(tiny_model_dir, query_weights="fp16").prepare_queries().mode == "fp16"
    free["bytes"] = 1 << 20
    spies.update(copies=0)
    short = load(tiny_model_dir, query_weights="fp16").prepare_queries()
    assert (short.mode, short.source, spies["copies"]) == ("exact", "cache", 0)
    assert "not enough free memory" in short.reason


def test_a_copy_is_active_only_in_the_thread_that_asked():
    """While a query (or the start-up calibration) runs with the copy, a page batch in
    another thread keeps the exact weights."""
    torch.manual_seed(0)
    root = torch.nn.Sequential(torch.nn.Linear(64, 64))
    x = torch.randn(3, 64)
    exact = root(x)
    weights = lowp.QueryWeights(root, "int8-bf16")
    seen = {}
    with weights.active():
        mine = root(x)
        worker = threading.Thread(target=lambda: seen.update(other=root(x)))
        worker.start()
        worker.join()
    assert not torch.equal(mine, exact)
    assert torch.equal(seen["other"], exact)
    weights.remove()


def test_decision_cache_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PAGELENS_CACHE", str(tmp_path / "elsewhere"))
    assert DecisionCache().root == tmp_path / "elsewhere" / CACHE_FOLDER
    assert DecisionCache(tmp_path / "x").root == tmp_path / "x"


# --------------------------------------------------------------------------- start-up


class _Preparing:
    """An embedder stand-in that records prepare_queries() (optionally failing)."""

    model_id, dim, max_image_tokens, fingerprint, revision = "spy", 8, 64, None, None

    def __init__(self, fail: bool = False) -> None:
        self.calls = 0
        self.fail = fail
        self.done = threading.Event()

    def prepare_queries(self):
        self.calls += 1
        self.done.set()
        if self.fail:
            raise RuntimeError("no fbgemm here")
        return lowp.QueryChoice(reason="spy")


def test_pagelens_serve_decides_at_start_up(tiny_model_dir, avx2, monkeypatch):
    """The API server decides in the background once it starts, before any request; a
    model with nothing to decide, or a failing decision, does not stop it."""
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    import app.cli.common
    from app.cli import cli
    from app.server import create_app
    from indexer.model import FakeEmbedder

    emb = load(tiny_model_dir)
    served = create_app(emb)
    assert emb.query_choice is None
    with TestClient(served) as client:
        served.state.query_warmup.join(120)
        assert emb.query_choice is not None and emb.query_choice.candidates  # measured
        assert emb._text_calls == 0  # before any query
        assert client.get("/health").status_code == 200
    with TestClient(create_app(FakeEmbedder())) as client:  # nothing to prepare
        assert client.app.state.query_warmup is None
        assert client.get("/health").status_code == 200
    failing = _Preparing(fail=True)
    with TestClient(create_app(failing)) as client:  # logged, not raised
        client.app.state.query_warmup.join(30)
        assert failing.calls == 1 and client.get("/health").status_code == 200
    # `pagelens serve` builds its app with the start-up decision on
    spy, calls = _Preparing(), {}
    monkeypatch.setattr(app.cli.common.Options, "embedder", lambda self: spy)
    monkeypatch.setattr(
        "app.server.create_app", lambda e, **kw: calls.update(kw) or create_app(e, **kw)
    )
    monkeypatch.setattr("uvicorn.run", lambda a, **kw: calls.update(app=a))
    result = CliRunner().invoke(cli, ["serve", "--port", "8124"])
    assert result.exit_code == 0, result.output
    assert calls.get("prepare_queries", True) is True
    with TestClient(calls["app"]):
        assert spy.done.wait(30) and spy.calls == 1


def test_pagelens_mcp_loads_and_decides_at_start_up(monkeypatch, tmp_path):
    pytest.importorskip("mcp", reason="the mcp extra is part of dev installs")
    from typer.testing import CliRunner

    import app.cli.common
    from app.cli import cli
    from app.mcp_server import build_server
    from indexer.store import Collection

    store = Collection(tmp_path / "c")
    spy, loads = _Preparing(), []
    build_server(store, lambda: loads.append(1) or spy, preload=True)
    assert spy.done.wait(30) and loads == [1] and spy.calls == 1
    lazy = _Preparing()
    build_server(store, lambda: lazy)  # the library default stays lazy
    assert not lazy.done.wait(0.2) and lazy.calls == 0
    # `pagelens mcp` preloads
    seen = {}

    class _Server:
        def run(self, transport):
            seen["transport"] = transport

    def fake_build(store, loader, **kw):
        seen.update(kw)
        return _Server()

    monkeypatch.setattr("app.mcp_server.build_server", fake_build)
    monkeypatch.setattr(app.cli.common.Options, "store", lambda self, create=True: store)
    result = CliRunner().invoke(cli, ["mcp"])
    assert result.exit_code == 0, result.output
    assert seen["preload"] is True and seen["transport"] == "stdio"
    store.close()


def test_the_app_model_loader_decides_after_loading():
    from app.web.services import ModelLoader

    spy = _Preparing()
    loader = ModelLoader("spy", loader=lambda *a, **k: spy).start()
    assert loader.wait(30) is spy
    assert spy.done.wait(30) and spy.calls == 1


def test_the_bench_measures_deciding_without_the_users_cache(tiny_model_dir, avx2, tmp_path):
    """`pagelens bench` reports calibration, cached-decision and copy-building times; it
    always measures (a temporary cache) and leaves the user's decisions alone."""
    from bench.query_phase import auto_decision_phase

    load(tiny_model_dir).prepare_queries()  # the user's own cached decision
    before = {p: p.read_bytes() for p in cache_files(tmp_path)}
    emb = load(tiny_model_dir)
    own = emb.decision_cache
    got = auto_decision_phase(emb)
    assert got["auto_choice"]["source"] == "measured" and got["calibration_s"] > 0
    assert got["auto_choice_from_cache"]["source"] == "cache"
    assert got["auto_choice_from_cache"]["mode"] == got["auto_choice"]["mode"]
    assert got["cached_decision_s"] >= 0
    assert got["auto_choice"]["cache_file"] != str(next(iter(before)))
    assert {p: p.read_bytes() for p in cache_files(tmp_path)} == before
    assert emb.decision_cache is own


def test_a_cached_copy_is_built_only_once_exact_queries_have_cost_as_much(
    tiny_model_dir, avx2, spies, tmp_path
):
    """With a decision for a copy on disk, a process builds the copy only once its exact
    queries have taken as long as building it took the process that measured it: a few
    queries never pay for a copy they would not use up; a long run pays it once, early."""
    load(tiny_model_dir).prepare_queries()
    [path] = cache_files(tmp_path)
    saved = json.loads(path.read_text())
    saved["choice"]["mode"] = "fp16"  # an earlier process found that the copy holds

    def run(prepare_s: float, queries: int):
        saved["prepare_s"] = prepare_s
        path.write_text(json.dumps(saved))
        spies.update(choose=0, exact_runs=0, copies=0)
        emb = load(tiny_model_dir)
        for i in range(queries):
            emb.embed_queries([f"question {i}"])
        return emb

    slow = run(prepare_s=3600.0, queries=4)  # the copy would cost an hour: never worth it
    assert slow.query_choice is None and spies == {"choose": 0, "copies": 0, "exact_runs": 0}
    cheap = run(prepare_s=0.0, queries=2)  # costs nothing: built at the second query
    assert spies == {"choose": 0, "copies": 1, "exact_runs": 0}
    assert cheap.query_choice is not None
    assert (cheap.query_choice.mode, cheap.query_choice.source) == ("fp16", "cache")
    assert cheap.query_choice.timings["prepare_s_when_measured"] == 0.0
