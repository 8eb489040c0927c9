"""Calm offline: no network means one clear paragraph within seconds, and ``pagelens index``
still stores pages and text, to be embedded once the model is there.

"No network" is simulated on loopback: the hub endpoint points at a closed local port, so
the test never contacts another machine.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from app.cli import cli
from indexer.store import Collection

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import json, sys, time
import indexer.model.gme.loading as gme  # torch and transformers imported before the clock starts
from indexer.errors import ModelNotAvailableError
t = time.monotonic()
try:
    gme.load_embedder("Alibaba-NLP/gme-Qwen2-VL-2B-Instruct", device="cpu")
    out = {"error": None}
except ModelNotAvailableError as exc:
    out = {"error": str(exc)}
out["seconds"] = time.monotonic() - t
print(json.dumps(out))
"""


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load_offline(tmp_path: Path, **extra: str) -> tuple[dict, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    }
    env.update(
        HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}",
        HF_HOME=str(tmp_path / "hf"),  # an empty cache
        PYTHONPATH=str(ROOT),
        **extra,
    )
    r = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stderr


def test_offline_model_error_is_fast_and_said_once(tmp_path):
    out, stderr = _load_offline(tmp_path)
    message = out["error"]
    assert message and out["seconds"] < 10, out
    assert "offline" in message and "huggingface-cli download" in message
    assert not re.search(r"[^.]\.\.(?!\.)", message)  # no double period ("..." is fine)
    assert "\n" not in message  # one paragraph
    assert "HF_HUB_OFFLINE" not in message  # not set, so not blamed
    assert "Retrying" not in stderr and "WARNING" not in stderr  # no retry noise


def test_declared_offline_names_the_variable(tmp_path):
    out, _ = _load_offline(tmp_path, HF_HUB_OFFLINE="1")
    assert "HF_HUB_OFFLINE is set" in out["error"]
    assert not re.search(r"[^.]\.\.(?!\.)", out["error"])


def test_index_without_weights_stores_text_then_embeds(tmp_path, make_pdf, tiny_model_dir):
    pdf = make_pdf("report.pdf", ["churn rose in 2023", "revenue by region"])
    coll = str(tmp_path / "c")
    run = CliRunner().invoke
    missing = ["-c", coll, "-m", str(tmp_path / "no-weights-here")]
    r = run(cli, [*missing, "index", str(pdf)])
    assert r.exit_code == 0, r.output
    assert "visual search fills in once the model is available" in r.output
    assert r.output.count("Cannot load the GME model") == 1
    stats = Collection(coll).stats()
    assert stats.pages == 2 and stats.pending == 2
    r = run(cli, [*missing, "search", "churn", "--mode", "text", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["hits"][0]["page"] == 1

    model = ["-c", coll, "-m", str(tiny_model_dir), "--device", "cpu"]
    r = run(cli, [*model, "index", str(pdf)])  # stored, not embedded: says it embeds it
    assert r.exit_code == 0, r.output
    assert "embedding its 2 page(s)" in r.output and "already in the collection" not in r.output
    assert Collection(coll).stats().pending == 0


def test_index_without_paths_embeds_pending_pages(tmp_path, make_pdf, tiny_model_dir):
    pdf = make_pdf("a.pdf", ["alpha"])
    coll = str(tmp_path / "c")
    run = CliRunner().invoke
    assert run(cli, ["-c", coll, "index", "--text-only", str(pdf)]).exit_code == 0
    assert Collection(coll).stats().pending == 1
    r = run(cli, ["-c", coll, "-m", str(tiny_model_dir), "--device", "cpu", "index"])
    assert r.exit_code == 0, r.output
    assert Collection(coll).stats().pending == 0


def test_visual_and_hybrid_search_cover_pending_pages_by_their_text(tmp_path, make_pdf):
    from app.web.widgets import score_text
    from indexer.model import FakeEmbedder
    from indexer.pipeline import Indexer
    from retriever.search import Retriever

    embedder = FakeEmbedder()
    store = Collection(tmp_path / "c")
    Indexer(store, embedder).add([make_pdf("embedded.pdf", ["quarterly revenue grew"])])
    Indexer(store, None).add(
        [make_pdf("fresh.pdf", ["zeppelin maintenance log", "nothing here"])], embed=False
    )
    assert store.stats().pending == 2
    retriever = Retriever(embedder, store)
    for mode in ("visual", "hybrid"):
        hits = retriever.search("zeppelin maintenance", 5, mode=mode)
        fresh = [h for h in hits if h.document == "fresh.pdf"]
        assert fresh and fresh[0].page == 1 and fresh[0].pending, mode
        assert fresh[0].as_dict()["pending"] is True
        assert "not embedded yet" in score_text(fresh[0], mode)
        assert all(not h.pending for h in hits if h.document == "embedded.pdf")
    # only pending pages come in through text: embedded ones rank by the model alone
    only_text = retriever.search("quarterly revenue", 5, mode="visual")
    assert {h.document for h in only_text if h.pending} <= {"fresh.pdf"}
