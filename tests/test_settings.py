"""One typed settings object shapes a collection; ``--image-tokens`` reaches every entry
point (CLI index with and without the model, the app, the API server, check, bench)."""

from __future__ import annotations

import dataclasses

import pytest
from typer.testing import CliRunner

from app.cli import cli
from indexer.errors import UsageError
from indexer.pages import PATCH
from indexer.settings import ModelSettings
from indexer.store import Collection

TOKENS = 64


def _budget(path) -> int:
    return Collection(path).render_settings()["max_pixels"] // (PATCH * PATCH)


def _pixels(store: Collection) -> list[int]:
    out = []
    for page in store.pages():
        with store.load_image(page) as im:
            out.append(im.width * im.height)
    return out


def test_settings_round_trip_through_the_environment():
    s = ModelSettings(model="/m", device="cpu", image_tokens=256, quantize="int8", compile=True)
    assert ModelSettings.from_env(s.to_env()) == s
    assert ModelSettings.from_env({}) == ModelSettings()
    assert s.load_options() == {
        "device": "cpu",
        "max_image_tokens": 256,
        "quantize": "int8",
        "compile": True,
    }
    assert s.render_settings().max_pixels == 256 * PATCH * PATCH
    # every field is reachable from the CLI and the environment: one edit adds an option
    for f in dataclasses.fields(ModelSettings):
        assert f.metadata["flags"] and f.metadata["env"].startswith("PAGELENS_")
    with pytest.raises(UsageError):
        ModelSettings.from_env({"PAGELENS_IMAGE_TOKENS": "many"})
    with pytest.raises(UsageError):
        ModelSettings(image_tokens=0)


def test_index_text_only_honours_image_tokens(tmp_path, make_pdf):
    pdf = make_pdf("a.pdf", ["alpha", "beta"])
    coll = tmp_path / "c"
    r = CliRunner().invoke(
        cli, ["-c", str(coll), "--image-tokens", str(TOKENS), "index", "--text-only", str(pdf)]
    )
    assert r.exit_code == 0, r.output
    assert _budget(coll) == TOKENS
    assert max(_pixels(Collection(coll))) <= TOKENS * PATCH * PATCH * 1.1


def test_index_with_model_honours_image_tokens(tmp_path, make_pdf, tiny_model_dir):
    pdf = make_pdf("a.pdf", ["alpha"])
    coll = tmp_path / "c"
    args = ["-c", str(coll), "-m", str(tiny_model_dir), "--device", "cpu"]
    r = CliRunner().invoke(cli, [*args, "--image-tokens", "16", "index", str(pdf)])
    assert r.exit_code == 0, r.output
    assert _budget(coll) == 16 and Collection(coll).stats().pending == 0


def test_app_honours_image_tokens(tmp_path, make_pdf, monkeypatch):
    from app.web.services import AppSettings, ModelLoader, Workspace
    from indexer.model import FakeEmbedder

    monkeypatch.setenv("PAGELENS_IMAGE_TOKENS", str(TOKENS))
    settings = AppSettings.from_env()
    assert settings.model.image_tokens == TOKENS
    loader = ModelLoader(settings.model, loader=lambda *a, **k: FakeEmbedder())
    ws = Workspace(tmp_path / "c", loader)
    ws.add_files([make_pdf("a.pdf", ["alpha"])], embed=False)
    assert _budget(tmp_path / "c") == TOKENS


def test_pagelens_app_passes_every_setting_on(monkeypatch):
    seen = {}

    def fake_exec(file, argv, env):
        seen.update(env)
        raise SystemExit(0)

    monkeypatch.setattr("os.execvpe", fake_exec)
    r = CliRunner().invoke(cli, ["--image-tokens", "256", "--device", "cpu", "--compile", "app"])
    assert r.exit_code == 0, r.output
    assert seen["PAGELENS_IMAGE_TOKENS"] == "256" and seen["PAGELENS_DEVICE"] == "cpu"
    assert ModelSettings.from_env(seen) == ModelSettings(
        device="cpu", image_tokens=256, compile=True
    )


def test_serve_loads_the_model_with_image_tokens(tiny_model_dir, monkeypatch):
    import uvicorn

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    r = CliRunner().invoke(
        cli, ["-m", str(tiny_model_dir), "--device", "cpu", "--image-tokens", "16", "serve"]
    )
    assert r.exit_code == 0, r.output
    assert seen["host"] == "127.0.0.1"
    assert seen["app"].state.embedder.max_image_tokens == 16


def test_check_repair_rerenders_at_the_collection_budget(tmp_path, make_pdf):
    pdf = make_pdf("a.pdf", ["alpha"])
    coll = tmp_path / "c"
    run = CliRunner().invoke
    r = run(cli, ["-c", str(coll), "--image-tokens", str(TOKENS), "index", "--text-only", str(pdf)])
    assert r.exit_code == 0, r.output
    store = Collection(coll)
    store.image_path(store.pages()[0]).unlink()
    r = run(cli, ["-c", str(coll), "check", "--repair", "--json"])
    assert "missing" in r.output or r.exit_code in (0, 4), r.output
    assert store.image_path(store.pages()[0]).is_file()
    assert max(_pixels(store)) <= TOKENS * PATCH * PATCH * 1.1


def test_bench_gets_the_budget():
    from app.cli.bench import bench_args

    assert bench_args(ModelSettings(image_tokens=256, dtype="float32"), []) == [
        "--dtype",
        "float32",
        "--budgets",
        "256",
    ]
    assert bench_args(ModelSettings(image_tokens=256), ["--budgets", "512"]) == []


def test_bad_setting_is_a_usage_error_before_loading(tmp_path):
    r = CliRunner().invoke(cli, ["--image-tokens", "0", "search", "x"])
    assert r.exit_code == 2
    assert "image-tokens" in r.output
