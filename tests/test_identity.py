"""Model identity follows the weights: the same weights match from any path or hub id,
different weights never do, and old collections keep opening."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from indexer import identity
from indexer.errors import ModelMismatchError
from indexer.identity import ModelIdentity, identify, weights_fingerprint
from indexer.store import Collection


@pytest.fixture(scope="module")
def two_models(tmp_path_factory) -> tuple[Path, Path]:
    """Two different random checkpoints, each in a folder called ``model``."""
    from indexer.model.gme.random import build_random_gme

    root = tmp_path_factory.mktemp("two")
    return (
        build_random_gme(root / "a" / "model", size="tiny", seed=1),
        build_random_gme(root / "b" / "model", size="tiny", seed=2),
    )


def _fake_hub_cache(cache: Path, repo_id: str, source: Path, commit: str) -> Path:
    """Lay out ``source`` the way huggingface_hub caches a download (blobs named by hash)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for f in source.iterdir():
        if not f.is_file():
            continue
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / f.name).symlink_to(blob)
    return snap


def test_same_weights_same_fingerprint_from_any_path(tiny_model_dir, tiny_embedder, tmp_path):
    copy = shutil.copytree(tiny_model_dir, tmp_path / "models" / "gme-2b")
    assert tiny_embedder.fingerprint and tiny_embedder.fingerprint.startswith("w1:")
    assert weights_fingerprint(copy) == tiny_embedder.fingerprint
    # A collection embedded with the model in one folder opens with the copy in another:
    # the README's own "download it, point PAGELENS_MODEL at it" must not be a mismatch.
    store = Collection(tmp_path / "c")
    store.bind_embedder(tiny_embedder)
    ident = identify(copy)
    store.bind_model(ident.name, tiny_embedder.dim, fingerprint=ident.fingerprint)
    assert store.model_fingerprint == tiny_embedder.fingerprint


def test_hub_cache_and_local_dir_download_match(tiny_model_dir, tmp_path, monkeypatch):
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    _fake_hub_cache(tmp_path / "hub", "Alibaba-NLP/gme-test", tiny_model_dir, commit)
    hashed: list[Path] = []
    real = identity._sha256_file
    monkeypatch.setattr(identity, "_sha256_file", lambda p: hashed.append(p) or real(p))
    hub = identify("Alibaba-NLP/gme-test")
    assert hub.revision == commit and hub.display == "Alibaba-NLP/gme-test@0123456789ab"
    assert hashed == []  # the hub cache names its blobs by SHA-256: nothing was read
    local = shutil.copytree(tiny_model_dir, tmp_path / "gme-2b")
    meta = local / ".cache" / "huggingface" / "download"
    meta.mkdir(parents=True)
    for f in local.glob("*.safetensors"):
        sha = hashlib.sha256(f.read_bytes()).hexdigest()
        (meta / f"{f.name}.metadata").write_text(f"{commit}\n{sha}\n{f.stat().st_mtime + 5}\n")
    (meta / "config.json.metadata").write_text(f"{commit}\nabc\n{1e12}\n")
    down = identify(local)
    assert hashed == []  # --local-dir downloads record the SHA-256 too
    assert down.fingerprint == hub.fingerprint == weights_fingerprint(tiny_model_dir)
    assert down.revision == commit


def test_hashes_are_cached_by_path_size_mtime(tiny_model_dir, tmp_path, monkeypatch):
    copy = shutil.copytree(tiny_model_dir, tmp_path / "m")
    hashed: list[Path] = []
    real = identity._sha256_file
    monkeypatch.setattr(identity, "_sha256_file", lambda p: hashed.append(p) or real(p))
    first = weights_fingerprint(copy)
    assert len(hashed) == 1
    assert weights_fingerprint(copy) == first and len(hashed) == 1  # cached
    weights = next(copy.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one byte of weights differs
    weights.write_bytes(bytes(data))
    assert weights_fingerprint(copy) != first and len(hashed) == 2


def test_different_weights_in_folders_with_the_same_name_mismatch(two_models, open_store):
    a, b = two_models
    assert a.name == b.name == "model"
    fa, fb = identify(a), identify(b)
    assert fa.fingerprint != fb.fingerprint
    store = open_store()
    store.bind_model(fa.name, 64, fingerprint=fa.fingerprint)
    assert store.same_model(fa.name, 64, fingerprint=fa.fingerprint)
    assert not store.same_model(fb.name, 64, fingerprint=fb.fingerprint)
    with pytest.raises(ModelMismatchError, match="weights"):
        store.bind_model(fb.name, 64, fingerprint=fb.fingerprint)


def test_config_noise_does_not_change_the_fingerprint_but_values_do(tiny_model_dir, tmp_path):
    copy = shutil.copytree(tiny_model_dir, tmp_path / "m")
    base = weights_fingerprint(copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["_name_or_path"] = "/somewhere/else"
    cfg["transformers_version"] = "0.0.1"
    (copy / "config.json").write_text(json.dumps(cfg, indent=4))
    assert weights_fingerprint(copy) == base
    cfg["rope_theta"] = 12345.0
    (copy / "config.json").write_text(json.dumps(cfg))
    assert weights_fingerprint(copy) != base


def test_old_collection_adopts_the_fingerprint_of_its_model(open_store):
    # A collection from before fingerprints records only a name.
    open_store(model_id="/models/gme", dim=8).close()
    store = open_store()
    assert store.model_fingerprint is None
    store.bind_model("/elsewhere/gme", 8, fingerprint="w1:aaaa")  # name rule, then adopt
    assert store.model_fingerprint == "w1:aaaa"
    with pytest.raises(ModelMismatchError):
        store.bind_model("/models/gme", 8, fingerprint="w1:bbbb")
    assert store.model_identity() == ModelIdentity("/models/gme", 8, "w1:aaaa", None)


def test_search_refuses_other_weights(two_models, tmp_path, make_pdf):
    from indexer import load_embedder
    from indexer.pipeline import Indexer
    from retriever import Retriever

    a, b = two_models
    store = Collection(tmp_path / "c")
    ea = load_embedder(a, device="cpu", max_image_tokens=16)
    Indexer(store, ea).add([make_pdf("x.pdf", ["hello"])])
    assert store.model_fingerprint == ea.fingerprint
    eb = load_embedder(b, device="cpu", max_image_tokens=16)
    with pytest.raises(ModelMismatchError):
        Retriever(eb, store)
    hits = Retriever(ea, store).search("hello", k=1)
    assert hits and np.isfinite(hits[0].score)


def test_check_flags_other_weights(two_models, open_store, store_spec):
    from typer.testing import CliRunner

    from app.cli import cli

    a, b = two_models
    store = open_store()
    ident = identify(a)
    store.bind_model(ident.name, 64, fingerprint=ident.fingerprint)
    store.close()
    run = CliRunner().invoke
    ok = run(cli, ["--collection", store_spec, "--model", str(a), "check", "--json"])
    assert ok.exit_code == 0, ok.output
    bad = run(cli, ["--collection", store_spec, "--model", str(b), "check", "--json"])
    assert bad.exit_code == 4
    kinds = [p["kind"] for p in json.loads(bad.stdout)["problems"]]
    assert kinds == ["model-mismatch"]


def test_app_flags_a_collection_of_other_weights(two_models, tmp_path):
    from app.web.services import ModelLoader, Workspace
    from indexer.model import FakeEmbedder

    a, b = two_models
    fa, fb = identify(a), identify(b)
    store = Collection(tmp_path / "c")
    store.bind_model(fa.name, 64, fingerprint=fa.fingerprint)
    store.close()

    def loader_for(ident):
        def load(*args, **kwargs):
            e = FakeEmbedder(dim=64, model_id=ident.name)
            e.fingerprint = ident.fingerprint
            return e

        return load

    same = Workspace(tmp_path / "c", ModelLoader("a", loader=loader_for(fa)))
    same.model.wait(30)
    assert same.model_mismatch() is None
    other = Workspace(tmp_path / "c", ModelLoader("b", loader=loader_for(fb)))
    other.model.wait(30)
    message = other.model_mismatch()
    assert message and "different weights" in message and "cannot be searched" in message
