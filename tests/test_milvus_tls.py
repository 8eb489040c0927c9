"""``milvuss://`` (TLS) and ``PAGELENS_MILVUS_TOKEN``, proven against real servers on loopback.

milvus-lite has no TLS, so a TLS-terminating proxy (tests/support/tcp_proxy.py: a private CA and
server certificate made here with ``cryptography``, ALPN ``h2``) stands in front of it, as a
load balancer stands in front of Milvus or Zilliz Cloud. Behind the TLS the proxy sees the
plaintext HTTP/2 stream and decodes it with ``h2``, so the tests read the request headers
pymilvus really sent: the token must be there, and nowhere a user or a log can see it.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import cli
from indexer.errors import CollectionError
from indexer.stores import open_collection
from tests.support.milvus_server import free_port
from tests.support.pdfs import TOPICS, make_text_pdf
from tests.support.tcp_proxy import TcpProxy, make_ca, server_tls_context

pytest.importorskip("pymilvus", reason="the milvus extra is not installed")
pytest.importorskip("h2", reason="the dev extra is not installed")

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
TOKEN = f"pl-test-{uuid.uuid4().hex}"  # Zilliz Cloud style API key
SECRETS = (TOKEN, base64.b64encode(TOKEN.encode()).decode())


@pytest.fixture
def pki(tmp_path: Path) -> dict:
    return make_ca(tmp_path / "pki", "127.0.0.1")


@pytest.fixture
def tls(milvus_server, pki, monkeypatch: pytest.MonkeyPatch):
    """A TLS proxy in front of the session's milvus-lite, tapping the HTTP/2 inside."""
    for name in ("PAGELENS_MILVUS_CA", "SSL_CERT_FILE", "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PAGELENS_MILVUS_TOKEN", TOKEN)
    monkeypatch.setenv("PAGELENS_MILVUS_TIMEOUT", "5")
    proxy = TcpProxy(
        ("127.0.0.1", milvus_server.port),
        tls=server_tls_context(pki["cert"], pki["key"]),
        tap_h2=True,
    ).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def spec(tls, milvus_server):
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield f"milvuss://{tls.address}/{name}"
    try:  # clean up straight on the server (plaintext, no token needed by milvus-lite)
        store = open_collection(f"milvus://{milvus_server.address}/{name}", create=False)
    except Exception:
        return
    store.drop()
    store.close()


def _no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def test_milvuss_with_private_ca_indexes_and_searches_and_sends_the_token(
    spec, tls, pki, tmp_path, tiny_model_dir, monkeypatch, caplog, reuse_loaded_models
):
    monkeypatch.setenv("PAGELENS_MILVUS_CA", str(pki["ca"]))
    monkeypatch.setenv("PAGELENS_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("PAGELENS_MILVUS_LOG", "1")  # keep pymilvus's own log records too
    caplog.set_level(logging.DEBUG)
    a = make_text_pdf(tmp_path / "a.pdf", TOPICS[:3])
    b = make_text_pdf(tmp_path / "b.pdf", TOPICS[3:5])
    base = ["--verbose", "--collection", spec, "--image-tokens", "16"]
    outputs = []

    def cli_ok(*args: str) -> str:
        result = runner.invoke(cli, [*base, *map(str, args)])
        assert result.exit_code == 0, result.output
        outputs.append(result.output)
        return result.stdout

    report = json.loads(cli_ok("index", a, b, "--json"))
    assert report["pages_stored"] == 5, report
    hits = json.loads(cli_ok("search", "sourdough starter wild yeast", "--mode", "text", "--json"))
    assert (hits["hits"][0]["document"], hits["hits"][0]["page"]) == ("b.pdf", 1)
    hits = json.loads(cli_ok("search", "anything", "-k", "10", "--json"))["hits"]
    assert len(hits) == 5 and all(Path(h["image"]).is_file() for h in hits)
    cli_ok("docs", "--json")
    cli_ok("check", "--json")

    # Every request that reached the server carried the token, as gRPC metadata.
    assert not [t.broken for t in tls.taps if t.broken]  # the decoder followed every stream
    requests = tls.requests()
    paths = {r[":path"].rsplit("/", 1)[-1] for r in requests}
    assert {"Upsert", "Search", "Query"} <= paths, paths
    assert all(r.get("authorization") == SECRETS[1] for r in requests)
    assert all(r[":scheme"] == "https" for r in requests)

    # ... and nowhere else: output (--json included), logs, stored metadata.
    for text in outputs:
        _no_secret(text)
    # (hpack/h2 records are this test's own proxy decoding the stream, not PageLens's)
    records = [r for r in caplog.records if r.name.split(".")[0] not in ("hpack", "h2")]
    assert records, "no log records captured"
    for record in records:
        _no_secret(record.getMessage())
    store = open_collection(spec, create=False)
    _no_secret(json.dumps(store.all_meta()))
    _no_secret(json.dumps([d.as_dict() for d in store.documents()]))
    store.close()


def test_untrusted_certificate_is_one_clear_line(spec, tls, pki, tmp_path):
    """No CA configured: the private CA's certificate is refused in one line, exit 1."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "--collection", spec, "docs"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert time.monotonic() - started < 60  # bounded, not a hang
    assert out.returncode == 1, out.stdout + out.stderr
    lines = (out.stdout + out.stderr).strip().splitlines()
    assert len(lines) == 1, lines  # nothing from gRPC's C core either
    assert lines[0].startswith("error: TLS with Milvus at 127.0.0.1:")
    assert "not trusted" in lines[0] and "PAGELENS_MILVUS_CA" in lines[0]
    _no_secret(out.stdout + out.stderr)
    assert tls.handshake_errors  # the client hung up during the handshake
    assert not tls.requests()  # so no request (and no token) was sent


def test_a_ca_that_did_not_sign_the_certificate_is_refused(spec, tls, tmp_path, monkeypatch):
    other = make_ca(tmp_path / "other-pki", "127.0.0.1", name="Someone else")
    monkeypatch.setenv("PAGELENS_MILVUS_CA", str(other["ca"]))
    with pytest.raises(CollectionError, match="not trusted") as err:
        open_collection(spec)
    _no_secret(str(err.value))
    assert not tls.requests()


def test_a_missing_ca_file_is_named(spec, tmp_path, monkeypatch):
    monkeypatch.setenv("PAGELENS_MILVUS_CA", str(tmp_path / "nope.pem"))
    with pytest.raises(CollectionError, match="PAGELENS_MILVUS_CA names .*nope.pem"):
        open_collection(spec)


def test_tls_to_a_plaintext_port_is_one_clear_line(milvus_server, monkeypatch):
    monkeypatch.setenv("PAGELENS_MILVUS_TIMEOUT", "3")
    monkeypatch.setenv("PAGELENS_MILVUS_TOKEN", TOKEN)
    started = time.monotonic()
    result = runner.invoke(
        cli, ["--collection", f"milvuss://{milvus_server.address}/plain", "docs"]
    )
    assert time.monotonic() - started < 30
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert lines[0].startswith(f"error: TLS with Milvus at {milvus_server.address} failed")
    assert "did not answer with TLS" in lines[0]
    _no_secret(result.output)


def test_a_certificate_for_another_name_is_refused(tls, pki, monkeypatch):
    """The certificate names 127.0.0.1; connecting as ``localhost`` must not pass."""
    monkeypatch.setenv("PAGELENS_MILVUS_CA", str(pki["ca"]))
    with pytest.raises(CollectionError, match="does not name this host"):
        open_collection(f"milvuss://localhost:{tls.port}/x")
    assert not tls.requests()


def test_the_token_is_in_no_error_message(milvus_server, spec, pki, monkeypatch):
    """Unreachable server, a server error whose text quotes the token, and an address
    that tries to carry credentials: none of the messages shows the secret."""
    from pymilvus.exceptions import MilvusException

    monkeypatch.setenv("PAGELENS_MILVUS_TIMEOUT", "2")
    result = runner.invoke(cli, ["--collection", f"milvuss://127.0.0.1:{free_port()}/x", "docs"])
    assert result.exit_code == 1 and "Cannot reach Milvus" in result.output, result.output
    _no_secret(result.output)

    monkeypatch.setenv("PAGELENS_MILVUS_CA", str(pki["ca"]))
    store = open_collection(spec)

    def leaky(*args, **kwargs):
        raise MilvusException(message=f"auth failed for token {TOKEN} ({SECRETS[1]})")

    monkeypatch.setattr(store.client, "query", leaky)
    with pytest.raises(CollectionError) as err:
        store.all_meta()
    assert "auth failed for token ***" in str(err.value)
    _no_secret(str(err.value))
    store.close()

    for address in (
        f"milvus://root:{TOKEN}@{milvus_server.address}/docs",
        f"milvuss://{TOKEN}@127.0.0.1:notaport/docs",
        f"milvus://root:{TOKEN}@/docs",
    ):
        with pytest.raises(CollectionError) as err:
            open_collection(address)
        message = str(err.value)
        _no_secret(message)
        assert "PAGELENS_MILVUS_TOKEN" in message and "***@" in message
