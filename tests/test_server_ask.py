"""``POST /v1/ask`` on a live ``pagelens serve`` app: pages found as /v1/search finds them go
to the configured LLM (a stub chat server on a free loopback port); the cited answer comes
back whole or as server-sent events, with the API's auth, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from app.server import create_app
from indexer.config import collection_path
from indexer.model import FakeEmbedder
from indexer.pipeline import Indexer
from indexer.store import Collection
from retriever.ask import LLMSettings
from tests.support.pdfs import TOPICS, make_text_pdf
from tests.test_server import live_server

KEY = {"Authorization": "Bearer api-secret"}
QUESTION = "Which treaty ended the Thirty Years War?"
ANSWER = "The Treaty of Westphalia [a.pdf, p. 2]; see also [gone.pdf, p. 3]."


@pytest.fixture
def reports(tmp_path: Path) -> str:
    a = make_text_pdf(tmp_path / "in" / "a.pdf", TOPICS[:3])
    b = make_text_pdf(tmp_path / "in" / "b.pdf", TOPICS[3:5])
    with Collection(collection_path("reports")) as store:
        Indexer(store, None).add([a, b], embed=False)
    return "reports"


def serve(llm: LLMSettings):
    return live_server(create_app(FakeEmbedder(), api_key="api-secret", llm=llm))


def ask_body(**extra) -> dict:
    return {"question": QUESTION, "k": 2, "mode": "text", "collection": "reports", **extra}


def sse_events(response: httpx.Response) -> list[tuple[str, dict]]:
    events, name = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[6:])))
    return events


def test_ask_answers_with_checked_citations(reports, llm_stub):
    llm_stub.answer = ANSWER
    with serve(LLMSettings.from_env()) as url:
        assert httpx.post(f"{url}/v1/ask", json=ask_body()).status_code == 401
        assert llm_stub.requests == []
        r = httpx.post(f"{url}/v1/ask", json=ask_body(), headers=KEY, timeout=60)
        assert r.status_code == 200, r.text
        data = r.json()
        assert data["answer"] == ANSWER and data["model"] == "stub-vision-model"
        first = data["citations"][0]
        assert (first["document"], first["page"], first["sent"]) == ("a.pdf", 2, True)
        assert first["image"] == f"/v1/pages/{first['page_id']}/image?collection=reports"
        assert data["citations"][1] == {
            "document": "gone.pdf",
            "page": 3,
            "image": None,
            "sent": False,
            "page_id": None,
            "highlights": [],
        }
        assert [h["page_id"] for h in data["hits"]][0] == first["page_id"]
        image = httpx.get(url + first["image"], headers=KEY)
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    req = llm_stub.last
    assert req.body["model"] == "stub-vision-model" and req.body["stream"] is False
    assert req.headers["authorization"] == "Bearer sk-test-key"
    assert f"Question: {QUESTION}" in req.texts
    assert len(req.images) == len(data["hits"]) == 2
    assert [t for t in req.texts if t.startswith("[")][0] == "[1] a.pdf, p. 2"


def test_ask_streams_server_sent_events(reports, llm_stub):
    llm_stub.answer = ANSWER
    with serve(LLMSettings.from_env()) as url:
        with httpx.stream(
            "POST", f"{url}/v1/ask", json=ask_body(stream=True), headers=KEY, timeout=60
        ) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            events = sse_events(r)
    names = [n for n, _ in events]
    assert names[0] == "hits" and names[-1] == "done"
    deltas = [d["text"] for n, d in events if n == "delta"]
    assert len(deltas) > 3 and "".join(deltas) == ANSWER
    done = events[-1][1]
    assert done["answer"] == ANSWER and done["citations"][0]["sent"] is True
    assert events[0][1]["hits"] == done["hits"]
    assert llm_stub.last.body["stream"] is True


def test_ask_retries_and_reports_llm_errors(reports, llm_stub):
    llm_stub.answer = ANSWER
    with serve(LLMSettings.from_env(retries=1)) as url:
        llm_stub.fail_next(429, headers={"Retry-After": "0"})
        r = httpx.post(f"{url}/v1/ask", json=ask_body(), headers=KEY, timeout=60)
        assert r.status_code == 200 and r.json()["answer"] == ANSWER
        assert len(llm_stub.requests) == 2  # one 429, then the answer

        llm_stub.fail_next(500, times=2)
        r = httpx.post(f"{url}/v1/ask", json=ask_body(stream=True), headers=KEY, timeout=60)
        assert r.status_code == 502
        err = r.json()["error"]
        assert err["code"] == "llm_error" and "stub says 500" in err["message"]
        assert "tried 2 times" in err["message"]

        llm_stub.fail_next(429, times=2)
        r = httpx.post(f"{url}/v1/ask", json=ask_body(), headers=KEY, timeout=60)
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"


def test_ask_refuses_before_sending(reports, llm_stub):
    with serve(LLMSettings()) as url:  # no LLM configured on this server
        r = httpx.post(f"{url}/v1/ask", json=ask_body(), headers=KEY)
        assert r.status_code == 503 and r.json()["error"]["code"] == "llm_not_configured"
    with serve(LLMSettings.from_env(max_images=1)) as url:
        r = httpx.post(f"{url}/v1/ask", json=ask_body(k=2), headers=KEY)
        assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_images"
        r = httpx.post(f"{url}/v1/ask", json=ask_body(question="  "), headers=KEY)
        assert r.status_code == 400 and r.json()["error"]["param"] == "question"
        r = httpx.post(f"{url}/v1/ask", json=ask_body(k=1, collection="nope"), headers=KEY)
        assert r.status_code == 404
    assert llm_stub.requests == []
