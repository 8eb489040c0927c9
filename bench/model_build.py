"""The embedders the model phases measure, built fresh for each phase: given weights, or
random ones at full size (or tiny), optionally cut in depth (``--depth``) or to a text-only
decoder (``--queries-only``). None reads or writes the user's query-weights decisions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.bench import BenchConfig


def build(cfg: BenchConfig, dtype: str, **options: Any):
    """A fresh embedder: the given weights, or random ones of ``cfg.size``; it neither
    reads nor writes the user's query-weights decisions (the bench measures)."""
    if cfg.model:
        from indexer.model.gme.loading import load_embedder

        emb = load_embedder(cfg.model, device=cfg.device, dtype=dtype, **options)
    elif cfg.depth:
        emb = _build_cut(cfg, dtype, **options)
    else:
        from indexer.model.gme.random import random_embedder

        emb = random_embedder(cfg.size, seed=cfg.seed, device=cfg.device, dtype=dtype, **options)
    emb.decision_cache = None
    return emb


def _build_cut(cfg: BenchConfig, dtype: str, **options: Any) -> Any:
    """The random model at full width but only ``cfg.depth`` = (vision blocks, decoder layers)
    deep (``--depth``): every layer keeps its shapes, so per-layer speed, fraction of peak and
    the ratios between paths are those of the full model, in a fraction of its time and
    memory (for shared machines). The report's ``model.depth`` says it was cut."""
    import torch
    from transformers import Qwen2VLForConditionalGeneration
    from transformers.initialization import no_init_weights

    from indexer.model.gme import random as rm
    from indexer.model.gme.embedder import GmeEmbedder

    assert cfg.depth is not None, "--depth V,T"
    vision, text = cfg.depth
    config = rm.make_config(cfg.size)
    config.vision_config.depth = vision
    config.text_config.num_hidden_layers = text
    config.text_config.max_window_layers = text
    config.text_config.layer_types = config.text_config.layer_types[:text]
    with torch.device(cfg.device), no_init_weights():
        model = Qwen2VLForConditionalGeneration(config)
    rm.randomize_weights(model, std=rm.INIT_STD[cfg.size], seed=cfg.seed)
    model.tie_weights()
    model = model.to(getattr(torch, dtype)).eval()
    return GmeEmbedder(
        model,
        rm.build_tokenizer(),
        rm.make_image_processor(),
        model_id=f"pagelens/random-gme-{cfg.size}-depth{vision}+{text}-seed{cfg.seed}",
        device=cfg.device,
        **options,
    )


def build_text_only(cfg: BenchConfig) -> Any:
    """The full-size decoder (random weights, float32) with a one-block vision tower: the
    text-query path at full size in ~6 GB instead of ~9 (``--queries-only``)."""
    import torch
    from transformers import Qwen2VLForConditionalGeneration
    from transformers.initialization import no_init_weights

    from indexer.model.gme import random as rm
    from indexer.model.gme.embedder import GmeEmbedder

    config = rm.make_config(cfg.size)
    config.vision_config.depth = 1
    with torch.device(cfg.device), no_init_weights():
        model = Qwen2VLForConditionalGeneration(config)
    rm.randomize_weights(model, std=rm.INIT_STD[cfg.size], seed=cfg.seed)
    model.tie_weights()
    emb = GmeEmbedder(
        model.eval(),
        rm.build_tokenizer(),
        rm.make_image_processor(),
        model_id=f"pagelens/random-gme-{cfg.size}-text-only-seed{cfg.seed}",
        device=cfg.device,
        query_weights="exact",
    )
    emb.decision_cache = None  # the bench measures; never the user's decisions
    return emb
