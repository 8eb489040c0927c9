"""Qwen3-VL-Reranker in PageLens equals an independent oracle written from the reference script.

The oracle (below, in this file) follows QwenLM/Qwen3-VL-Embedding's
``src/models/qwen3_vl_reranker.py`` step by step on the tiny random checkpoint: the messages
its ``format_mm_instruction`` builds (system prompt, instruction, query and document parts,
per-image pixel budget), the checkpoint's chat template through ``apply_chat_template``,
``process_vision_info`` with patch 16, the processor with ``do_resize=False``, left padding
with ``tokenizer.pad``, the model's forward, and ``sigmoid`` of the "yes" minus "no" logits
at the last position. It shares nothing with PageLens's code but the checkpoint and
qwen-vl-utils (the reference's own image loader): PageLens builds the prompt string itself,
pads on the right, reads the last real token, and scores with a precomputed yes-no direction
on the final hidden state instead of the full ``lm_head`` logits.

One adaptation, to run the reference on transformers 5: its processor also returns
``mm_token_type_ids`` (which the model now needs for M-RoPE), and the oracle left-pads it as
the reference left-pads ``input_ids``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

# The reference's constants, written out here (not imported from PageLens).
SYSTEM = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".'
)
INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."
MIN_PIXELS = 4 * 32 * 32
MAX_PIXELS = 1800 * 32 * 32


# ------------------------------------------------------------------------------- the oracle


def _content(prefix, text, image):
    """The reference's ``format_mm_content`` for one side (no video)."""
    content = [{"type": "text", "text": prefix}]
    if text is None and image is None:
        return content + [{"type": "text", "text": "NULL"}]
    if image is not None:
        content.append(
            {"type": "image", "image": image, "min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS}
        )
    if text is not None:
        content.append({"type": "text", "text": text})
    return content


def _messages(query_text, query_image, doc_text, doc_image):
    """The reference's ``format_mm_instruction``."""
    contents = [{"type": "text", "text": "<Instruct>: " + INSTRUCTION}]
    contents += _content("<Query>:", query_text, query_image)
    contents += _content("\n<Document>:", doc_text, doc_image)
    return [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM}]},
        {"role": "user", "content": contents},
    ]


def _left_pad(rows, value):
    width = max(len(r) for r in rows)
    return torch.tensor([[value] * (width - len(r)) + list(r) for r in rows])


def oracle_scores(model, processor, query, pages, batch_size):
    """The reference's ``process`` over (query, page) pairs: one score per page."""
    from qwen_vl_utils import process_vision_info

    pairs = [_messages(query[0], query[1], text, image) for image, text in pages]
    yes = processor.tokenizer.get_vocab()["yes"]
    no = processor.tokenizer.get_vocab()["no"]
    scores = []
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start : start + batch_size]
        text = processor.apply_chat_template(batch, tokenize=False, add_generation_prompt=True)
        images, _, _ = process_vision_info(
            batch, image_patch_size=16, return_video_kwargs=True, return_video_metadata=True
        )
        inputs = processor(
            text=text, images=images, truncation=False, padding=False, do_resize=False
        )
        padded = processor.tokenizer.pad(
            {"input_ids": inputs["input_ids"]}, padding=True, return_tensors="pt"
        )
        assert processor.tokenizer.padding_side == "left"
        forward = {
            "input_ids": padded["input_ids"],
            "attention_mask": padded["attention_mask"],
            "mm_token_type_ids": _left_pad(inputs["mm_token_type_ids"], 0),
        }
        if images:
            forward["pixel_values"] = torch.as_tensor(np.asarray(inputs["pixel_values"]))
            forward["image_grid_thw"] = torch.as_tensor(np.asarray(inputs["image_grid_thw"]))
        with torch.no_grad():
            logits = model(**forward).logits[:, -1].double()
        scores += torch.sigmoid(logits[:, yes] - logits[:, no]).tolist()
    return np.array(scores)


# ------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_reranker_dir(tmp_path_factory):
    from indexer.model.rerank.random import build_random_reranker

    return build_random_reranker(tmp_path_factory.mktemp("tiny-reranker") / "model")


@pytest.fixture(scope="module")
def reference(tiny_reranker_dir):
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    model = Qwen3VLForConditionalGeneration.from_pretrained(tiny_reranker_dir, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(tiny_reranker_dir, padding_side="left")
    return model.eval(), processor


@pytest.fixture(scope="module")
def reranker(tiny_reranker_dir):
    from indexer.model.rerank.loading import load_reranker

    return load_reranker(tiny_reranker_dir, device="cpu", batch_size=3)


def _image(width, height, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


PAGES = [  # (image, text layer): different lengths, so every batch is padded
    (_image(120, 90, 1), "Revenue grew 12% in the third quarter."),
    (_image(64, 200, 2), None),
    (None, "A page known only by its text layer, which runs a little longer than the others."),
    (_image(400, 300, 3), "Figure 3: the pipeline."),
    (_image(96, 96, 4), ""),
]
QUERIES = {
    "text": ("What was the revenue growth?", None),
    "image": (None, _image(150, 100, 5)),
    "text+image": ("Which page shows this chart?", _image(80, 60, 6)),
}


def _ours(reranker, query, pages):
    from indexer.model.rerank.base import RerankPage, RerankQuery

    return reranker.score(
        RerankQuery(text=query[0], image=query[1]), [RerankPage(i, t) for i, t in pages]
    )


# ------------------------------------------------------------------------------- fidelity


@pytest.mark.parametrize("kind", sorted(QUERIES))
def test_scores_equal_the_reference(kind, reranker, reference):
    query = QUERIES[kind]
    ours = _ours(reranker, query, PAGES)  # batches of 3, sorted by length, right-padded
    expected = oracle_scores(*reference, query, PAGES, batch_size=len(PAGES))  # one batch
    assert ours.dtype == np.float32 and ours.shape == (len(PAGES),)
    np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=0)
    assert list(np.argsort(-ours, kind="stable")) == list(np.argsort(-expected, kind="stable"))
    assert np.ptp(expected) > 0.05  # the tiny model separates pages: the check can fail


def test_one_page_at_a_time_equals_the_batch(reranker, reference):
    query = QUERIES["text+image"]
    batched = _ours(reranker, query, PAGES)
    single = np.array([_ours(reranker, query, [page])[0] for page in PAGES])
    np.testing.assert_allclose(batched, single, atol=1e-5, rtol=0)
    one_by_one = oracle_scores(*reference, query, PAGES, batch_size=1)
    np.testing.assert_allclose(batched, one_by_one, atol=1e-4, rtol=0)


def test_sequence_lengths_match_the_reference(reranker, reference):
    from indexer.model.rerank.base import RerankPage, RerankQuery

    model, processor = reference
    for query in QUERIES.values():
        for image, text in PAGES:
            messages = [_messages(query[0], query[1], text, image)]
            rendered = processor.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
            from qwen_vl_utils import process_vision_info

            images, _ = process_vision_info(messages, image_patch_size=16)
            ids = processor(text=rendered, images=images, do_resize=False)["input_ids"][0]
            pair = (RerankQuery(text=query[0], image=query[1]), RerankPage(image, text))
            assert reranker.count_tokens(*pair) == len(ids)


def test_empty_and_invalid_inputs(reranker):
    from indexer.model.rerank.base import Reranker, RerankPage, RerankQuery

    assert isinstance(reranker, Reranker)
    assert reranker.score(RerankQuery("q"), []).shape == (0,)
    with pytest.raises(ValueError):
        RerankQuery()
    with pytest.raises(ValueError):
        RerankPage(None)


def test_a_chat_template_that_differs_is_refused(tiny_reranker_dir, tmp_path):
    import shutil

    from indexer.errors import ModelNotAvailableError
    from indexer.model.rerank.loading import load_reranker

    copy = tmp_path / "thinking"
    shutil.copytree(tiny_reranker_dir, copy)
    template = copy / "chat_template.jinja"
    template.write_text(template.read_text().replace("assistant\\n", "assistant\\n<think>\\n"))
    with pytest.raises(ModelNotAvailableError, match="chat template"):
        load_reranker(copy, device="cpu")


# ------------------------------------------------------------------------------- offline

PROBE = """
import json, time
import indexer.model.rerank.loading as loading  # torch and transformers before the clock
from indexer.errors import ModelNotAvailableError
t = time.monotonic()
try:
    loading.load_reranker(device="cpu")
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


def _load_offline(tmp_path, **extra):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "PAGELENS_RERANK_MODEL")
    }
    env.update(
        HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}",
        HF_HOME=str(tmp_path / "hf"),
        PYTHONPATH=str(ROOT),
        **extra,
    )
    r = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stderr


def test_missing_reranker_offline_is_one_clear_paragraph_quickly(tmp_path):
    out, stderr = _load_offline(tmp_path)
    message = out["error"]
    assert message and out["seconds"] < 10, out
    assert "offline" in message and "huggingface-cli download" in message
    assert "Qwen/Qwen3-VL-Reranker-2B" in message and "PAGELENS_RERANK_MODEL" in message
    assert "\n" not in message and not re.search(r"[^.]\.\.(?!\.)", message)
    assert "HF_HUB_OFFLINE" not in message
    assert "Retrying" not in stderr and "WARNING" not in stderr


def test_declared_offline_names_the_variable(tmp_path):
    out, _ = _load_offline(tmp_path, HF_HUB_OFFLINE="1")
    assert out["error"] and "HF_HUB_OFFLINE is set" in out["error"]
    assert out["seconds"] < 10


# ------------------------------------------------------------------------------- length limit

#: A text layer far over a 700-token limit (a dense table, an OCR'd spreadsheet).
LONG_TEXT = " ".join(f"row{i} alpha beta" for i in range(1200))


def test_a_page_over_the_length_limit_is_judged_on_its_text_cut_from_the_end(
    tiny_reranker_dir, reranker
):
    """Trimming policy: the page's text layer is cut to fit, its beginning kept; the query
    and the images are never cut; a pair over the limit without the page's text is refused."""
    from indexer.model.rerank.base import RerankPage, RerankQuery
    from indexer.model.rerank.loading import load_reranker

    short = load_reranker(tiny_reranker_dir, device="cpu", max_length=700)
    query, image = RerankQuery("alpha beta"), _image(64, 64, 7)
    page = RerankPage(image, LONG_TEXT)
    assert reranker.count_tokens(query, page) > 700  # over the limit as it stands
    assert 650 < short.count_tokens(query, page) <= 700  # cut to fit, not emptied
    (score,) = short.score(query, [page])
    assert 0.0 <= score <= 1.0
    # the beginning is what is judged: another ending changes nothing, another start does
    (other_end,) = short.score(query, [RerankPage(image, LONG_TEXT + " gamma" * 500)])
    (other_start,) = short.score(query, [RerankPage(image, "delta " * 300 + LONG_TEXT)])
    (image_only,) = short.score(query, [RerankPage(image, "")])
    assert other_end == pytest.approx(score, abs=1e-6)
    assert abs(other_start - score) > 1e-4 and abs(image_only - score) > 1e-4
    (text_only,) = short.score(query, [RerankPage(None, LONG_TEXT)])  # no image: text cut too
    assert 0.0 <= text_only <= 1.0
    with pytest.raises(ValueError, match="without the page's text"):
        short.score(RerankQuery(LONG_TEXT), [RerankPage(image, "x")])


def test_search_reranks_a_page_whose_text_layer_is_over_the_limit(tiny_reranker_dir, tmp_path):
    """Through search: the long page is reranked (a rerank score, no failure note), not
    dropped from the rerank nor the rerank abandoned for the first stage."""
    from indexer.model import FakeEmbedder
    from indexer.model.rerank.loading import load_reranker
    from indexer.pipeline import Indexer
    from indexer.stores import open_collection
    from retriever.search import Retriever
    from tests.support.pdfs import make_text_pdf

    pdf = make_text_pdf(
        tmp_path / "table.pdf", [LONG_TEXT, "alpha beta on a short page"], size=(3000, 4000)
    )
    store = open_collection(str(tmp_path / "c"))
    try:
        embedder = FakeEmbedder()
        Indexer(store, embedder).add([pdf])
        (long_page,) = [p for p in store.pages() if p.number == 1]
        assert "row1199 alpha beta" in long_page.text  # the whole layer is stored
        notes: list[str] = []
        # the page image is ~1k tokens at the reranker's budget; its text several thousand
        reranker = load_reranker(tiny_reranker_dir, device="cpu", max_length=1500)
        hits = Retriever(embedder, store, reranker=reranker).search(
            "alpha beta", 2, mode="text", rerank=2, notify=notes.append
        )
        assert notes == []
        assert sorted(h.page for h in hits) == [1, 2]
        assert all("rerank" in h.scores and "first_stage" in h.scores for h in hits)
    finally:
        store.close()
