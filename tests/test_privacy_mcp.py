"""``pagelens mcp`` under the same network and file audit as the CLI, ``serve`` and the app
(tests/test_privacy.py): an agent's search over stdio, with the official ``mcp`` client,
contacts and looks up nothing but this machine and writes nothing outside the data folder,
the model cache and the temp folder."""

from __future__ import annotations

import subprocess
import sys
import time

import anyio
import pytest

from tests.support.pdfs import TOPICS, make_text_pdf
from tests.test_privacy import _assert_stayed_here, _audited_env, _traced

pytest.importorskip("mcp", reason="the mcp extra is part of dev installs")


@pytest.mark.slow
def test_mcp_contacts_only_this_machine(tmp_path, tiny_model_dir):
    from mcp import Client, StdioServerParameters

    env, log = _audited_env(tmp_path, tiny_model_dir)
    pdf = make_text_pdf(tmp_path / "docs" / "notes.pdf", TOPICS[:2])
    run = [sys.executable, "-m", "app.cli", "-c", "c"]
    r = subprocess.run(
        [*run, "index", str(pdf)], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    log.unlink(missing_ok=True)  # the index run is audited in test_privacy: here, mcp alone
    argv = _traced([*run, "mcp"], tmp_path)
    params = StdioServerParameters(command=argv[0], args=argv[1:], env=env, cwd=str(tmp_path))

    async def session():
        async with Client(params) as client:
            found = await client.call_tool("search_pages", {"question": TOPICS[1], "k": 2})
            docs = await client.call_tool("list_documents", {})
            await anyio.sleep(6)  # onnxruntime's telemetry looked its host up ~4 s after start
            return found, docs

    found, docs = anyio.run(session)
    assert not found.is_error and found.structured_content["hits"]
    assert not docs.is_error
    time.sleep(1)  # the server process writes its last audit records as it exits
    _assert_stayed_here(tmp_path, env, tiny_model_dir)
