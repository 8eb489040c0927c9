"""``ask``: pages + question to an OpenAI-compatible chat endpoint (a stub started by the
test on a free loopback port), answer and citations back, through the library and the CLI."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from indexer.config import collection_path
from indexer.pipeline import Indexer
from indexer.store import Collection
from retriever.ask import (
    AskLimitError,
    ChatClient,
    LLMError,
    LLMNotConfiguredError,
    LLMSettings,
    ask,
    ask_stream,
    parse_citations,
)
from retriever.search import Retriever
from tests.support.pdfs import TOPICS, make_text_pdf

ANSWER = (
    "The Thirty Years War ended with the Treaty of Westphalia in 1648 [a.pdf, p. 2]. "
    "Bees dance [2]. A made-up source [nowhere.pdf, p. 9]."
)
QUESTION = "Which treaty ended the Thirty Years War?"


@pytest.fixture
def store(tmp_path: Path) -> Collection:
    """The default collection with a.pdf (3 pages) and b.pdf (2 pages), text only (fast)."""
    a = make_text_pdf(tmp_path / "in" / "a.pdf", TOPICS[:3])
    b = make_text_pdf(tmp_path / "in" / "b.pdf", TOPICS[3:5])
    store = Collection(collection_path(None))
    Indexer(store, None).add([a, b], embed=False)
    return store


def hits_for(store: Collection, k: int = 3):
    """Three pages, best first: a.pdf p. 2 (the treaty), a.pdf p. 1, b.pdf p. 2."""
    retriever = Retriever(None, store)
    queries = [QUESTION, "honeybees waggle dance", "quarterly revenue cloud"]
    return [retriever.search(q, 1, mode="text")[0] for q in queries[:k]]


def test_not_configured_sends_nothing(store, monkeypatch):
    hits = hits_for(store)
    with pytest.raises(LLMNotConfiguredError, match="PAGELENS_LLM_URL"):
        ask(QUESTION, hits)
    with pytest.raises(LLMNotConfiguredError):
        ask_stream(QUESTION, hits)
    with pytest.raises(LLMNotConfiguredError):
        ChatClient(LLMSettings())
    assert LLMSettings.from_env().configured is False
    assert "nowhere" in LLMSettings().destination()


def _check_request(stub, hits, *, stream: bool) -> None:
    req = stub.last
    assert req.path == "/v1/chat/completions"
    assert req.headers["authorization"] == "Bearer sk-test-key"
    assert req.body["model"] == "stub-vision-model"
    assert req.body["stream"] is stream
    assert req.body["messages"][0]["role"] == "system"
    assert f"Question: {QUESTION}" in req.texts
    # one citation line and one image per page, in rank order
    assert [t for t in req.texts if t.startswith("[")] == [
        f"[{i}] {h.document}, p. {h.page}" for i, h in enumerate(hits, 1)
    ]
    assert len(req.images) == len(hits)
    for url in req.images:
        assert url.startswith("data:image/jpeg;base64,")
        Image.open(io.BytesIO(base64.b64decode(url.partition(",")[2]))).verify()


@pytest.mark.parametrize("stream", [False, True])
def test_answer_and_checked_citations(store, llm_stub, stream):
    llm_stub.answer = ANSWER
    hits = hits_for(store)
    assert (hits[0].document, hits[0].page) == ("a.pdf", 2)
    if stream:
        answer_stream = ask_stream(QUESTION, hits)
        assert not llm_stub.requests  # nothing is sent before the stream is read
        pieces = list(answer_stream)
        assert len(pieces) > 3 and "".join(pieces) == ANSWER  # arrived in pieces
        answer = answer_stream.answer
    else:
        answer = ask(QUESTION, hits)
    assert len(llm_stub.requests) == 1
    _check_request(llm_stub, hits, stream=stream)
    assert answer.text == ANSWER
    assert answer.model == "stub-vision-model"
    cites = [c.as_dict() for c in answer.citations]
    assert cites[0] == {
        "document": "a.pdf",
        "page": 2,
        "image": hits[0].image,
        "sent": True,
        "highlights": [],
    }
    # [2] is the second page sent, whatever its name
    assert cites[1] == {
        "document": "a.pdf",
        "page": 1,
        "image": hits[1].image,
        "sent": True,
        "highlights": [],
    }
    flagged = [c for c in answer.citations if not c.sent]
    assert [(c.document, c.page, c.image) for c in flagged] == [("nowhere.pdf", 9, None)]
    data = answer.as_dict()
    assert set(data) >= {"answer", "citations", "hits"}
    assert [h["page_id"] for h in data["hits"]] == [h.page_id for h in hits]


def test_library_front_asks(store, llm_stub):
    from pagelens import PageLens

    llm_stub.answer = ANSWER
    lens = PageLens(store=store)
    answer = lens.ask(QUESTION, k=2, mode="text")
    assert answer.text == ANSWER and len(answer.hits) == 2
    assert len(llm_stub.last.images) == 2
    stream = lens.ask_stream(QUESTION, answer.hits[:1])
    assert "".join(stream) == ANSWER and stream.answer.citations[0].sent
    assert len(llm_stub.last.images) == 1


def test_citation_forms(store):
    hits = hits_for(store)
    text = (
        "x [A.PDF, page 2; b.pdf, p. 2] y [2] z [7] w [note] [a.pdf, p. 2] "
        "[a.pdf,p.3] [nowhere, p. 1]"
    )
    cites = parse_citations(text, hits)
    sent = {(h.document, h.page) for h in hits}
    got = [(c.document, c.page, c.sent) for c in cites]
    assert got[0] == ("a.pdf", 2, True)  # case-insensitive match keeps the stored name
    assert got[1] == ("b.pdf", 2, True)
    assert got[2] == ("a.pdf", 1, True)  # [2]: the second citation line
    assert ("a.pdf", 3, False) in got  # a page of a sent document, but not sent itself
    assert ("a.pdf", 3) not in sent
    assert (None, None, False) in got  # [7]: no such source line
    assert ("nowhere", 1, False) in got
    assert len([g for g in got if g[:2] == ("a.pdf", 2)]) == 1  # de-duplicated
    for c in cites:
        assert (c.image is not None) == c.sent


def test_retries_429_then_answers(store, llm_stub):
    llm_stub.answer = ANSWER
    llm_stub.fail_next(429, headers={"Retry-After": "0"})
    llm_stub.fail_next(500)
    waits: list[float] = []
    settings = LLMSettings.from_env()
    answer = ask(QUESTION, hits_for(store), client=ChatClient(settings, sleep=waits.append))
    assert answer.text == ANSWER
    assert len(llm_stub.requests) == 3 and len(waits) == 2
    assert waits[0] == 0.0  # Retry-After honoured


def test_streamed_request_retries_500(store, llm_stub):
    llm_stub.answer = ANSWER
    llm_stub.fail_next(500)
    client = ChatClient(LLMSettings.from_env(), sleep=lambda s: None)
    assert "".join(ask_stream(QUESTION, hits_for(store), client=client)) == ANSWER
    assert len(llm_stub.requests) == 2


def test_errors_after_retries_are_clear(store, llm_stub):
    llm_stub.fail_next(429, times=3)
    client = ChatClient(LLMSettings.from_env(), sleep=lambda s: None)
    with pytest.raises(LLMError, match=r"rate-limiting.*stub says 429.*tried 3 times") as err:
        ask(QUESTION, hits_for(store), client=client)
    assert err.value.code == "rate_limited" and err.value.status == 429
    llm_stub.fail_next(401)
    with pytest.raises(LLMError, match="PAGELENS_LLM_API_KEY"):
        ask(QUESTION, hits_for(store), client=client)
    assert len(llm_stub.requests) == 4  # 401 is not retried


def test_local_llm_ignores_proxy_variables(store, llm_stub, monkeypatch):
    """A proxy from the environment must not see pages meant for a local LLM."""
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    llm_stub.answer = ANSWER
    assert ask(QUESTION, hits_for(store)).text == ANSWER


def test_unreachable_endpoint_is_a_clear_error(store, llm_stub):
    settings = LLMSettings.from_env(url="http://127.0.0.1:9/v1", retries=0)
    with pytest.raises(LLMError, match=r"Cannot reach the LLM at http://127.0.0.1:9/v1"):
        ask(QUESTION, hits_for(store), settings=settings)


def test_limits_are_checked_before_sending(store, llm_stub):
    hits = hits_for(store, k=3)
    with pytest.raises(AskLimitError, match="at most 2 images") as err:
        ask(QUESTION, hits, settings=LLMSettings.from_env(max_images=2))
    assert err.value.code == "too_many_images"
    with pytest.raises(AskLimitError, match="PAGELENS_LLM_MAX_IMAGE_MB"):
        ask(QUESTION, hits, settings=LLMSettings.from_env(max_image_bytes=100))
    with pytest.raises(AskLimitError, match="PAGELENS_LLM_MAX_REQUEST_MB"):
        ask(QUESTION, hits, settings=LLMSettings.from_env(max_request_bytes=20_000))
    assert llm_stub.requests == []  # nothing was sent


def test_settings_from_env(monkeypatch):
    monkeypatch.setenv("PAGELENS_LLM_URL", "http://user:pw@localhost:11434/v1/")
    monkeypatch.setenv("PAGELENS_LLM_MAX_IMAGES", "3")
    monkeypatch.setenv("PAGELENS_LLM_MAX_SIDE", "800")
    s = LLMSettings.from_env()
    assert s.endpoint == "http://user:pw@localhost:11434/v1/chat/completions"
    assert s.destination() == "http://localhost:11434 (model qwen2.5vl)"
    assert s.max_images == 3 and s.image.max_side == 800
    assert s.is_local  # reached without any proxy from the environment
    assert not LLMSettings(url="https://api.example.com/v1").is_local
    assert LLMSettings(url="http://[::1]:8000/v1").is_local
    monkeypatch.setenv("PAGELENS_LLM_MAX_IMAGES", "many")
    with pytest.raises(Exception, match="PAGELENS_LLM_MAX_IMAGES must be a whole number"):
        LLMSettings.from_env()
    with pytest.raises(Exception, match="http"):
        LLMSettings(url="localhost:11434")


# --------------------------------------------------------------------------- CLI


def cli_run(*args: str):
    from app.cli import cli

    return CliRunner().invoke(cli, list(args))


def test_cli_ask_json(store, llm_stub):
    llm_stub.answer = ANSWER
    result = cli_run("ask", QUESTION, "-k", "2", "--mode", "text", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["answer"] == ANSWER
    assert data["citations"][0] == {
        "document": "a.pdf",
        "page": 2,
        "image": data["hits"][0]["image"],
        "sent": True,
        "highlights": [],
    }
    assert Path(data["citations"][0]["image"]).is_file()
    unsent = {"document": "nowhere.pdf", "page": 9, "image": None, "sent": False, "highlights": []}
    assert unsent in data["citations"]
    assert len(data["hits"]) == 2 and len(llm_stub.last.images) == 2
    assert llm_stub.last.body["stream"] is False


def test_cli_ask_streams_and_lists_cited_pages(store, llm_stub):
    llm_stub.answer = ANSWER
    result = cli_run("ask", QUESTION, "-k", "2", "--mode", "text")
    assert result.exit_code == 0, result.output
    assert ANSWER in result.stdout
    assert llm_stub.last.body["stream"] is True
    assert "127.0.0.1" in result.stderr and "stub-vision-model" in result.stderr
    tail = result.stdout.split(ANSWER, 1)[1]
    assert "a.pdf" in tail and "p. 2" in tail and ".png" in tail
    assert "nowhere.pdf" in tail and "not among the pages sent" in tail


def test_cli_ask_visual_default_with_the_model(
    llm_stub, monkeypatch, tmp_path, tiny_model_dir, tiny_embedder
):
    """The default mode: GME (the tiny checkpoint) ranks the pages that are sent."""
    monkeypatch.setenv("PAGELENS_MODEL", str(tiny_model_dir))
    pdf = make_text_pdf(tmp_path / "in" / "v.pdf", TOPICS[5:8])
    with Collection(collection_path("visual")) as store:
        Indexer(store, tiny_embedder).add([pdf])
    llm_stub.answer = "Deepest: [v.pdf, p. 1]."
    result = cli_run(
        "--collection", "visual", "--device", "cpu", "ask", "deepest", "-k", "3", "--json"
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert len(data["hits"]) == 3 and len(llm_stub.last.images) == 3
    assert data["citations"] == [
        {
            "document": "v.pdf",
            "page": 1,
            "image": data["citations"][0]["image"],
            "sent": True,
            "highlights": [],
        }
    ]
    assert data["citations"][0]["image"] == next(h["image"] for h in data["hits"] if h["page"] == 1)


def test_cli_ask_without_llm_is_a_clear_error_and_sends_nothing(store):
    result = cli_run("ask", QUESTION, "--mode", "text")
    assert result.exit_code == 1
    assert "PAGELENS_LLM_URL" in result.stderr


def test_cli_ask_usage_errors_exit_2(store, llm_stub):
    for args in (["   "], [QUESTION, "-k", "0"], [QUESTION, "--mode", "fuzzy"]):
        result = cli_run("ask", *args)
        assert result.exit_code == 2, (args, result.output)
    result = cli_run("ask", QUESTION, "-k", "11")  # more than PAGELENS_LLM_MAX_IMAGES (10)
    assert result.exit_code == 1 and "PAGELENS_LLM_MAX_IMAGES" in result.stderr
    assert llm_stub.requests == []


def test_cli_ask_reports_provider_errors(store, llm_stub, monkeypatch):
    monkeypatch.setenv("PAGELENS_LLM_RETRIES", "1")
    llm_stub.fail_next(500, times=2)
    result = cli_run("ask", QUESTION, "--mode", "text", "--json")
    assert result.exit_code == 1
    assert "server error (500: stub says 500)" in result.stderr
    assert "tried 2 times" in result.stderr
    assert len(llm_stub.requests) == 2


AUDIT = """
import sys
def hook(event, args):
    if event == "socket.connect":
        sys.stderr.write(f"CONNECT {args[1]!r}\\n")
sys.addaudithook(hook)
from app.cli import main
sys.argv = ["pagelens", *sys.argv[1:]]
main()
"""


def _audited_ask(env: dict) -> tuple[int, list[str], str]:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    run = subprocess.run(
        [sys.executable, "-c", AUDIT, "ask", QUESTION, "-k", "2", "--mode", "text", "--json"],
        env={**os.environ, **env, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
    )
    connects = [line for line in run.stderr.splitlines() if line.startswith("CONNECT ")]
    return run.returncode, connects, run.stdout + run.stderr


def test_ask_connects_nowhere_unless_configured(store, llm_stub, monkeypatch):
    """Every outbound connection attempt of a real ``pagelens ask`` process, recorded by an
    audit hook: none without PAGELENS_LLM_URL; only the configured LLM's address with it."""
    monkeypatch.delenv("PAGELENS_LLM_URL")
    code, connects, output = _audited_ask({})
    assert code == 1 and "PAGELENS_LLM_URL" in output
    assert connects == [] and llm_stub.requests == []

    llm_stub.answer = ANSWER
    port = int(llm_stub.url.rsplit(":", 1)[1].split("/")[0])
    code, connects, output = _audited_ask({"PAGELENS_LLM_URL": llm_stub.url})
    assert code == 0, output
    assert connects and all(c == f"CONNECT ('127.0.0.1', {port})" for c in connects), connects
    assert len(llm_stub.requests) == 1
