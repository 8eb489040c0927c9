"""``pagelens mcp`` driven by the official ``mcp`` client over stdio: list the tools, search
a collection built with the tiny GME, get the top pages back as image content."""

from __future__ import annotations

import base64
import io
import os
import sys
from pathlib import Path

import anyio
import pytest
from PIL import Image

from indexer.pipeline import Indexer
from indexer.store import Collection
from retriever.search import Retriever
from tests.support.pdfs import TOPICS, make_text_pdf

pytest.importorskip("mcp", reason="the mcp extra is part of dev installs")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_embedder) -> Path:
    root = tmp_path_factory.mktemp("mcp-collection")
    a = make_text_pdf(root / "in" / "a.pdf", TOPICS[:3])
    b = make_text_pdf(root / "in" / "b.pdf", TOPICS[3:5])
    with Collection(root / "collection") as store:
        Indexer(store, tiny_embedder).add([a, b])
    return root / "collection"


def server_params(collection: Path, model_dir: Path, home: Path):
    from mcp import StdioServerParameters

    return StdioServerParameters(
        command=sys.executable,
        args=[
            "-c",
            "from app.cli import main; main()",
            "-c",
            str(collection),
            "mcp",
            "--max-side",
            "900",
        ],
        env={
            "PYTHONPATH": str(ROOT),
            "PAGELENS_HOME": str(home),
            "PAGELENS_MODEL": str(model_dir),
            "PAGELENS_DEVICE": "cpu",
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        },
        cwd=str(ROOT),
    )


def test_mcp_over_stdio(built, tiny_model_dir, tiny_embedder, tmp_path):
    from mcp import Client

    with Collection(built) as store:
        expected = Retriever(tiny_embedder, store).search(TOPICS[1], 3)
    params = server_params(built, tiny_model_dir, tmp_path / "home")

    async def session():
        async with Client(params) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            visual = await client.call_tool("search_pages", {"question": TOPICS[1], "k": 3})
            text = await client.call_tool(
                "search_pages",
                {"question": "Westphalia treaty", "k": 2, "mode": "text", "documents": ["a.pdf"]},
            )
            page = await client.call_tool("get_page", {"document": "b.pdf", "page": 2})
            docs = await client.call_tool("list_documents", {})
            missing = await client.call_tool("get_page", {"document": "b.pdf", "page": 9})
            return tools, visual, text, page, docs, missing

    tools, visual, text, page, docs, missing = anyio.run(session)

    assert set(tools) == {"search_pages", "get_page", "list_documents"}
    schema = tools["search_pages"].input_schema
    assert {"question", "k", "documents", "pages", "mode"} <= set(schema["properties"])
    assert "[document, p. N]" in tools["search_pages"].description
    assert tools["search_pages"].annotations.read_only_hint is True

    # visual search: one image per top page, in the library's order, with citations
    assert not visual.is_error, visual.content
    images = [c for c in visual.content if c.type == "image"]
    assert len(images) == 3
    for content in images:
        assert content.mime_type == "image/jpeg"
        with Image.open(io.BytesIO(base64.b64decode(content.data))) as im:
            assert im.width > 100 and max(im.size) == 900  # --max-side
    hits = visual.structured_content["hits"]
    assert [(h["document"], h["page"]) for h in hits] == [(h.document, h.page) for h in expected]
    lines = [c.text for c in visual.content if c.type == "text"]
    assert lines[1].startswith(f"[1] {expected[0].document}, p. {expected[0].page}")

    # text mode, filtered to one document: the treaty page with its snippet
    assert not text.is_error
    assert text.structured_content["hits"][0]["document"] == "a.pdf"
    assert text.structured_content["hits"][0]["page"] == 2
    assert any("Westphalia" in c.text for c in text.content if c.type == "text")
    assert sum(c.type == "image" for c in text.content) == len(text.structured_content["hits"])

    # one page: its text and image
    assert [c.type for c in page.content] == ["text", "image"]
    assert "Mariana" not in page.content[0].text and "revenue" in page.content[0].text
    assert page.structured_content["page"] == 2

    names = [d["name"] for d in docs.structured_content["documents"]]
    assert sorted(names) == ["a.pdf", "b.pdf"]
    assert missing.is_error and "no stored page 9" in missing.content[0].text


def test_mcp_streamable_http_with_key(tmp_path):
    """``--http``: the same tools over streamable HTTP (here in-process on a loopback port),
    behind the bearer-key guard that ``pagelens mcp --http --api-key`` adds."""
    import httpx
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    from app.cli.mcp import guarded_http_app
    from app.exposure import decide
    from app.mcp_server import build_server
    from tests.test_server import live_server

    pdf = make_text_pdf(tmp_path / "in" / "a.pdf", TOPICS[:3])
    store = Collection(tmp_path / "collection")
    Indexer(store, None).add([pdf], embed=False)
    server = build_server(store, None)  # no model: search falls back to the text layer
    app = guarded_http_app(server, decide("127.0.0.1"), "mcp-key")

    with live_server(app) as url:
        assert httpx.post(f"{url}/mcp", json={}).status_code == 401

        async def session():
            headers = {"Authorization": "Bearer mcp-key"}
            async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
                transport = streamable_http_client(f"{url}/mcp", http_client=http)
                async with Client(transport) as client:
                    return await client.call_tool("search_pages", {"question": "Westphalia"})

        result = anyio.run(session)
    assert not result.is_error, result.content
    assert result.structured_content["hits"][0]["page"] == 2
    assert any(c.type == "image" for c in result.content)
    assert "text (keyword) search" in result.content[0].text  # says the model is missing


def test_readme_mcp_block_is_valid_config():
    import json
    import re

    from typer.testing import CliRunner

    from app.cli import cli

    text = (ROOT / "README.md").read_text()
    section = text.split("PageLens as an MCP server", 1)[1]
    block = re.search(r"```json\n(.*?)```", section, re.S)
    assert block, "README's MCP section must carry the JSON block to paste"
    entry = json.loads(block.group(1))["mcpServers"]["pagelens"]
    assert entry["command"].endswith("/.venv/bin/pagelens")
    assert entry["args"][-1] == "mcp"
    result = CliRunner().invoke(cli, [*entry["args"], "--help"])
    assert result.exit_code == 0 and "MCP server" in result.output


def test_mcp_http_command(monkeypatch, tmp_path):
    """``pagelens mcp --http``: loopback by default, the key guard when a key is given, and
    another address refused without a key (exit 2)."""
    from typer.testing import CliRunner

    from app.cli import cli

    pdf = make_text_pdf(tmp_path / "in" / "a.pdf", TOPICS[:2])
    with Collection(tmp_path / "collection") as store:
        Indexer(store, None).add([pdf], embed=False)
    calls: dict = {}
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: calls.update(app=app, **kw))
    args = ["-c", str(tmp_path / "collection"), "mcp", "--http"]
    result = CliRunner().invoke(cli, [*args, "--port", "8766", "--api-key", "k"])
    assert result.exit_code == 0, result.output
    assert (calls["host"], calls["port"]) == ("127.0.0.1", 8766)
    assert "http://127.0.0.1:8766/mcp" in result.stderr

    from tests.test_server import live_server

    with live_server(calls["app"]) as url:
        import httpx

        assert httpx.post(f"{url}/mcp", json={}).status_code == 401
        ok = httpx.post(
            f"{url}/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
            headers={"Authorization": "Bearer k", "Accept": "application/json, text/event-stream"},
        )
        assert ok.status_code != 401

    refused = CliRunner().invoke(cli, [*args, "--host", "0.0.0.0"])
    assert refused.exit_code == 2 and "--api-key" in refused.stderr
