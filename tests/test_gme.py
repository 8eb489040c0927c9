"""GME recipe tests on the tiny random checkpoint (real tokenizer, processor and code path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from indexer import DEFAULT_INSTRUCTION, QUERY_INSTRUCTION, ModelNotAvailableError, load_embedder
from indexer.model.gme.embedder import GmeEmbedder
from indexer.model.gme.recipe import MAX_LENGTH, build_prompt
from indexer.model.runtime.device import resolve_dtype

IMAGE_PAD_ID = 151655


def _image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def fp32(tiny_model_dir: Path) -> GmeEmbedder:
    """float32 tiny embedder (the session one may be bf16 on CPUs with native bf16)."""
    return load_embedder(tiny_model_dir, device="cpu", dtype="float32")


@pytest.fixture
def fresh(fp32: GmeEmbedder):
    """The fp32 embedder with its tunables restored after the test."""
    saved = (fp32.batch_size, fp32.padding_side, fp32.max_image_tokens, fp32.min_image_tokens)
    yield fp32
    fp32.batch_size, fp32.padding_side, fp32.max_image_tokens, fp32.min_image_tokens = saved


TEXTS = [
    "hi",
    "What was the total revenue in the fourth quarter of 2023, according to the table? " * 6,
    "x y z",
    "Invoice 1234: due date, amount and the bank account of the supplier.",
    "",
]
SIZES = [(300, 200), (800, 600), (60, 90), (1400, 1000), (200, 200)]


# ----------------------------------------------------------------------------- prompts


def test_prompt_strings_are_gme_exact():
    assert build_prompt("cats?", instruction=QUERY_INSTRUCTION) == (
        "<|im_start|>system\nFind a screenshot that relevant to the user's question.<|im_end|>\n"
        "<|im_start|>user\ncats?<|im_end|>\n<|im_start|>assistant\n<|endoftext|>"
    )
    assert build_prompt(image=True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n"
        "<|im_start|>assistant\n<|endoftext|>"
    )
    assert build_prompt("page text", image=True, instruction=DEFAULT_INSTRUCTION) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>page text<|im_end|>\n"
        "<|im_start|>assistant\n<|endoftext|>"
    )


def test_token_ids_are_the_prompt_with_expanded_pads(fresh):
    tok = fresh.tokenizer
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>"]
    assert tok.convert_tokens_to_ids(specials) == [151643, 151644, 151645, 151652]
    img = _image(300, 200)
    batch = fresh.encode(["page text"], [img], instruction=QUERY_INSTRUCTION)
    ids = batch["input_ids"][0].tolist()
    n = int(batch["image_grid_thw"].prod()) // 4
    assert ids.count(IMAGE_PAD_ID) == n == fresh.image_token_count(img)
    expected = build_prompt("page text", image=True, instruction=QUERY_INSTRUCTION, image_tokens=n)
    assert tok.decode(ids) == expected
    assert ids[0] == 151644 and ids[-1] == 151643  # no BOS/EOS added by the tokenizer
    # a text input is the tokenised prompt, nothing more
    text_ids = fresh.encode(["hello"])["input_ids"][0].tolist()
    assert text_ids == tok(build_prompt("hello"), add_special_tokens=False)["input_ids"]
    assert fresh.count_tokens("hello") == len(text_ids)
    assert fresh.count_tokens("hello", img) == len(text_ids) + n + 2


# ----------------------------------------------------------------------------- image tokens


def test_visual_token_budget(fresh):
    small, big, page = _image(40, 30), _image(4000, 3000), _image(850, 1100)
    counts = [fresh.image_token_count(i) for i in (small, big, page)]
    assert counts[0] >= 256 and counts[1] <= 1280 and 256 <= counts[2] <= 1280
    assert counts[1] > 1100  # large images do use most of the budget
    batch = fresh.encode([None, None, None], [small, big, page])
    grid = batch["image_grid_thw"]
    assert (grid[:, 0] == 1).all()
    assert (grid.prod(-1) // 4).tolist() == counts
    assert (batch["input_ids"] == IMAGE_PAD_ID).sum(1).tolist() == counts
    assert batch["pixel_values"].shape == (int(grid.prod(-1).sum()), 3 * 2 * 14 * 14)
    # the budget is a user option
    fresh.max_image_tokens = 300
    assert 256 <= fresh.image_token_count(big) <= 300
    fresh.min_image_tokens = 64
    assert fresh.image_token_count(small) < 256


def test_budget_options_through_load_embedder(tiny_model_dir):
    e = load_embedder(tiny_model_dir, device="cpu", dtype=torch.float32, max_image_tokens=400)
    assert e.max_image_tokens == 400 and e.min_image_tokens == 256
    assert 256 <= e.image_token_count(_image(3000, 3000)) <= 400
    assert e.dtype == "float32" and e.device == "cpu"
    low = GmeEmbedder(e.model, e.tokenizer, e.image_processor, model_id="x", max_image_tokens=100)
    assert low.min_image_tokens == 100 and low.image_token_count(_image(3000, 3000)) <= 100
    with pytest.raises(ValueError):
        GmeEmbedder(e.model, e.tokenizer, e.image_processor, model_id="x", min_image_tokens=2000)


def test_extreme_aspect_ratio_is_padded_not_refused(fresh):
    long_img, tall_img = _image(3000, 10, seed=1), _image(12, 3600, seed=2)
    vecs = fresh.embed_images([long_img, tall_img])
    assert vecs.shape == (2, fresh.dim) and np.isfinite(vecs).all()
    assert 256 <= fresh.image_token_count(long_img) <= 1280
    # 200:1 after rounding to 28 px is refused by the recipe too; still handled
    assert np.isfinite(fresh.embed_images([_image(30000, 150)])).all()


def test_rgba_is_converted_like_gme(fresh):
    """GME's fetch_image does a plain convert("RGB"): alpha is dropped, not composited."""
    rgba = np.zeros((200, 300, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red everywhere, fully transparent on the left half
    rgba[:, 150:, 3] = 255
    image = Image.fromarray(rgba, "RGBA")
    on_white = Image.new("RGB", image.size, (255, 255, 255))
    on_white.paste(image, mask=image.split()[3])
    got, plain, white = fresh.embed_images([image, image.convert("RGB"), on_white])
    assert np.allclose(got, plain, atol=1e-6) and float(got @ white) < 0.9999


# ----------------------------------------------------------------------------- forward


def test_decoder_gets_plain_positions_on_all_three_axes(fresh):
    seen = []

    def hook(module, args, kwargs):
        mask = kwargs["attention_mask"]
        seen.append((kwargs["position_ids"].clone(), None if mask is None else mask.clone()))

    texts, images = ["short", "a longer text " * 10], [_image(300, 200), _image(64, 64)]
    lengths = [fresh.count_tokens(t, i) for t, i in zip(texts, images, strict=True)]
    handle = fresh.text_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for side in ("right", "left"):
            fresh.padding_side = side
            fresh.embed_fused(texts, images)
    finally:
        handle.remove()
    assert len(seen) == 2
    # right padding: no mask (causal attention already hides the trailing pads)
    assert seen[0][1] is None and seen[1][1] is not None
    width = seen[0][0].shape[-1]
    right = torch.tensor([[1] * n + [0] * (width - n) for n in sorted(lengths, reverse=True)])
    seen[0] = (seen[0][0], right)
    for pos, mask in seen:
        assert pos.shape == (3, 2, mask.shape[1])
        for b in range(2):
            real = pos[:, b][:, mask[b].bool()]
            n = int(mask[b].sum())
            assert torch.equal(real, torch.arange(n).expand(3, n))


def test_pooling_matches_a_manual_forward(fresh):
    """Last real token of an unpadded sequence, transformers' default positions 0..L-1."""
    model = fresh.model.model
    img = _image(300, 200)
    for text, image in (("some page text", None), ("caption", img)):
        batch = fresh.encode([text], [image])
        with torch.no_grad():
            emb = model.language_model.embed_tokens(batch["input_ids"])
            if image is not None:
                feats = torch.cat(
                    model.get_image_features(
                        batch["pixel_values"], batch["image_grid_thw"]
                    ).pooler_output
                )
                emb[batch["input_ids"] == IMAGE_PAD_ID] = feats
            hidden = model.language_model(inputs_embeds=emb).last_hidden_state[0, -1]
        manual = torch.nn.functional.normalize(hidden, dim=-1).numpy()
        got = fresh.embed_fused([text], [image])[0] if image else fresh.embed_texts([text])[0]
        assert np.allclose(got, manual, atol=1e-5)
        if image is not None:
            # transformers' own 3-D M-RoPE positions give another vector: the test can fail
            types = (batch["input_ids"] == IMAGE_PAD_ID).long()  # 1 = image token
            with torch.no_grad():
                mrope = model(**batch, mm_token_type_ids=types).last_hidden_state[0, -1]
            mrope = torch.nn.functional.normalize(mrope, dim=-1).numpy()
            assert float(mrope @ got) < 0.999


def test_output_contract(tiny_embedder):
    """The session embedder (auto dtype), whatever dtype the CPU picked."""
    assert tiny_embedder.dim == 64 and tiny_embedder.max_image_tokens == 1280
    for vecs in (
        tiny_embedder.embed_texts(["a", "b c"]),
        tiny_embedder.embed_images([_image(100, 80), _image(500, 700)]),
        tiny_embedder.embed_fused(["a", "b"], [_image(100, 80), _image(50, 70)]),
    ):
        assert vecs.shape == (2, 64) and vecs.dtype == np.float32
        assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert tiny_embedder.embed_texts([]).shape == (0, 64)
    with pytest.raises(ValueError):
        tiny_embedder.embed_fused(["a"], [])


# ----------------------------------------------------------------------------- batching


def _modes(e: GmeEmbedder, fn):
    e.padding_side, e.batch_size = "right", 8
    batched = fn()
    e.batch_size = 2  # several sorted batches
    chunked = fn()
    e.padding_side = "left"
    left = fn()
    e.padding_side, e.batch_size = "right", 1
    single = fn()
    return batched, chunked, left, single


@pytest.mark.parametrize("kind", ["texts", "images", "fused"])
def test_batched_equals_one_at_a_time(fresh, kind):
    images = [_image(w, h, seed=i) for i, (w, h) in enumerate(SIZES)]
    fn = {
        "texts": lambda: fresh.embed_texts(TEXTS),
        "images": lambda: fresh.embed_images(images),
        "fused": lambda: fresh.embed_fused(TEXTS, images),
    }[kind]
    batched, chunked, left, single = _modes(fresh, fn)
    for other in (chunked, left, single):
        assert (batched * other).sum(1).min() >= 0.9999
    # inputs really differ, so the threshold above means something
    sims = single @ single.T
    assert sims[~np.eye(len(sims), dtype=bool)].max() < 0.99


def test_instruction_changes_the_vector(fresh):
    doc, query = (
        fresh.embed_texts(["revenue table"]),
        fresh.embed_texts(["revenue table"], instruction=QUERY_INSTRUCTION),
    )
    assert float(doc[0] @ query[0]) < 0.99
    explicit = fresh.embed_texts(["revenue table"], instruction=DEFAULT_INSTRUCTION)
    assert np.allclose(doc, explicit)


def test_truncation_at_1800_tokens(fresh):
    words = " ".join(f"word{i}" for i in range(3000))
    assert fresh.count_tokens(words) == MAX_LENGTH == 1800
    batch = fresh.encode([words, "short"])
    assert batch["input_ids"].shape[1] == 1800
    assert batch["input_ids"][0, -1].item() != 151643  # <|endoftext|> was cut off
    a, b = fresh.embed_texts([words, words + " and a different ending"])
    assert np.isfinite(a).all() and float(a @ b) > 0.99999  # only the tail differed
    # fused: long text after an image still truncates behind the pads
    n = fresh.image_token_count(_image(800, 600))
    assert fresh.count_tokens(words, _image(800, 600)) == 1800
    fused = fresh.encode([words], [_image(800, 600)])
    assert int((fused["input_ids"] == IMAGE_PAD_ID).sum()) == n


def test_image_that_cannot_fit_the_token_limit_is_refused_clearly(fresh):
    fresh.max_image_tokens = fresh.min_image_tokens = 2000
    with pytest.raises(ValueError, match="max_image_tokens"):
        fresh.embed_images([_image(1200, 1200)])


# ----------------------------------------------------------------------------- loading


def test_checkpoint_weights_are_really_loaded(tiny_model_dir, fp32):
    """The saved keys use the transformers 4.4x layout; loading must map them, not re-init."""
    from safetensors.torch import load_file

    saved = load_file(tiny_model_dir / "model.safetensors")
    assert "model.layers.0.mlp.down_proj.weight" in saved and "visual.merger.mlp.0.weight" in saved
    lm, vis = fp32.model.model.language_model, fp32.model.model.visual
    assert torch.equal(
        lm.layers[1].mlp.down_proj.weight, saved["model.layers.1.mlp.down_proj.weight"]
    )
    assert torch.equal(vis.merger.mlp[0].weight, saved["visual.merger.mlp.0.weight"])
    assert fp32.model_id == str(tiny_model_dir.resolve())


@pytest.mark.parametrize("where", ["missing-folder", "nobody-here/no-such-gme-model"])
def test_unavailable_model_gives_one_clear_error(tmp_path, where):
    target = str(tmp_path / where) if where == "missing-folder" else where
    with pytest.raises(ModelNotAvailableError) as info:
        load_embedder(target, device="cpu")
    message = str(info.value)
    assert "huggingface-cli download" in message and "PAGELENS_MODEL" in message
    assert target in message and "\n" not in message


def test_folder_without_weights_is_not_available(tmp_path, tiny_model_dir):
    (tmp_path / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    with pytest.raises(ModelNotAvailableError, match="weights"):
        load_embedder(tmp_path, device="cpu")


def test_pagelens_model_env_is_honoured(monkeypatch, tiny_model_dir, tmp_path):
    monkeypatch.setenv("PAGELENS_MODEL", str(tiny_model_dir))
    e = load_embedder(None, device="cpu", dtype="float32")
    assert e.model_id == str(tiny_model_dir.resolve()) and e.dim == 64
    monkeypatch.setenv("PAGELENS_MODEL", str(tmp_path / "elsewhere"))
    with pytest.raises(ModelNotAvailableError, match="elsewhere"):
        load_embedder(device="cpu")


def test_dtype_resolution():
    assert resolve_dtype("bfloat16") is torch.bfloat16
    assert resolve_dtype(torch.float16) is torch.float16
    assert resolve_dtype("float32", "cuda") is torch.float32
    assert resolve_dtype(None, "cpu") in (torch.float32, torch.bfloat16)
    with pytest.raises(ValueError):
        resolve_dtype("int8")


def test_in_memory_random_model_matches_the_saved_one(fp32):
    from indexer.model.gme.random import random_embedder

    mem = random_embedder("tiny", device="cpu", dtype="float32")
    image = _image(300, 200)
    assert np.allclose(mem.embed_texts(["abc"]), fp32.embed_texts(["abc"]), atol=1e-6)
    assert np.allclose(mem.embed_images([image]), fp32.embed_images([image]), atol=1e-6)
    other = random_embedder("tiny", seed=1, device="cpu", dtype="float32")
    assert float(other.embed_texts(["abc"])[0] @ fp32.embed_texts(["abc"])[0]) < 0.99


def test_full_config_is_the_published_gme_2b_shape():
    from indexer.model.gme.random import make_config

    cfg = make_config("full")
    text, vision = cfg.text_config, cfg.vision_config
    assert (text.hidden_size, text.intermediate_size, text.num_hidden_layers) == (1536, 8960, 28)
    assert (text.num_attention_heads, text.num_key_value_heads, text.vocab_size) == (12, 2, 151936)
    assert text.rope_parameters["mrope_section"] == [16, 24, 24]
    assert text.rope_parameters["rope_theta"] == 1e6 and text.rms_norm_eps == 1e-6
    assert (vision.depth, vision.embed_dim, vision.hidden_size, vision.num_heads) == (
        32,
        1280,
        1536,
        16,
    )
    assert cfg.tie_word_embeddings and cfg.image_token_id == 151655


def test_cpu_auto_dtype_keeps_small_models_in_float32(tiny_embedder):
    from types import SimpleNamespace

    from indexer.model.runtime.device import cpu_auto_dtype

    assert tiny_embedder.dtype == "float32"  # tiny checkpoint: bf16 would only cost accuracy
    big = SimpleNamespace(text_config=SimpleNamespace(hidden_size=1536))
    assert cpu_auto_dtype(big) is resolve_dtype(None, "cpu")


def test_eager_fallback_is_scoped_to_a_compiled_embedders_model_calls(fresh, monkeypatch):
    """Dynamo's suppress_errors is process-wide: on only while a compiled embedder runs."""
    import torch._dynamo

    seen: list[bool] = []
    handle = fresh.text_model.register_forward_pre_hook(
        lambda module, args: seen.append(torch._dynamo.config.suppress_errors)
    )
    try:
        fresh.embed_texts(["eager text"])
        fresh.embed_images([_image(64, 64)])
        eager, seen[:] = list(seen), []
        monkeypatch.setattr(fresh, "compiled", True)  # as compile_embedder marks it
        fresh.embed_texts(["compiled text"])
        fresh.embed_images([_image(64, 64)])
    finally:
        handle.remove()
    assert eager and set(eager) == {False}
    assert seen and set(seen) == {True}
    assert torch._dynamo.config.suppress_errors is False


@pytest.mark.slow
def test_compiled_model_gives_the_same_vectors(tiny_model_dir):
    """``--compile`` (torch.compile of the blocks) is a speed option, not another model."""
    eager = load_embedder(tiny_model_dir, device="cpu", dtype="float32")
    compiled = load_embedder(tiny_model_dir, device="cpu", dtype="float32", compile=True)
    assert compiled.compiled and not eager.compiled
    image = Image.new("RGB", (300, 200), (200, 30, 30))
    texts = ["what did the 2023 report say about churn?"]
    for a, b in (
        (eager.embed_texts(texts), compiled.embed_texts(texts)),
        (eager.embed_images([image]), compiled.embed_images([image])),
    ):
        assert float((a * b).sum()) >= 0.9999
    from torch._dynamo.utils import counters

    assert counters["stats"]["unique_graphs"] > 0  # really compiled, not silently eager
    import torch._dynamo

    assert torch._dynamo.config.suppress_errors is False  # left as the process had it
