"""Loading Qwen3-VL-Reranker from a hub id or a local folder, with one clear message per failure.

As for GME (:mod:`indexer.model.gme.loading`, whose hub helpers this reuses): offline is
detected once, in seconds, before the slow loads and without the hub's retries; every other
failure (not a Qwen3-VL checkpoint, no "yes"/"no" tokens, a chat template that renders the
prompt differently from :mod:`.recipe`, damaged weights) becomes a
:class:`~indexer.errors.ModelNotAvailableError` that says how to get the weights.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from indexer import config
from indexer.errors import ModelNotAvailableError
from indexer.identity import identify
from indexer.model.gme.loading import (
    _cached_locally,
    _hub_unreachable,
    _offline,
    _offline_env,
    _quiet_transformers,
    _short,
)
from indexer.model.rerank import recipe
from indexer.model.rerank.qwen3vl import Qwen3VLReranker
from indexer.model.runtime.device import resolve_device

_HELP = (
    "Reranking needs the Qwen3-VL-Reranker-2B weights (about 4.3 GB) on this computer. "
    f"Download them once with `huggingface-cli download {recipe.DEFAULT_RERANKER_ID} "
    "--local-dir ~/models/qwen3-vl-reranker-2b` (or `hf download ...` with newer "
    "huggingface_hub), then point PageLens at that folder with "
    "`PAGELENS_RERANK_MODEL=~/models/qwen3-vl-reranker-2b` (or pass the folder as the model)."
)


def default_reranker() -> str:
    """The reranker to load when none is named: ``$PAGELENS_RERANK_MODEL`` or the 2B one."""
    return config.get(config.RERANK_MODEL_ENV) or recipe.DEFAULT_RERANKER_ID


def _not_available(source: str, reason: str) -> ModelNotAvailableError:
    reason = reason.strip().rstrip(".")
    if _offline_env():
        tail = (
            "On a computer that is online, unsetting HF_HUB_OFFLINE also lets PageLens "
            f"download {recipe.DEFAULT_RERANKER_ID} by itself."
        )
    else:
        tail = f"Online, PageLens downloads {recipe.DEFAULT_RERANKER_ID} by itself on first use."
    return ModelNotAvailableError(f"Cannot load the reranker {source!r}: {reason}. {_HELP} {tail}")


def _locate(source: str) -> str:
    """A local folder (absolute path) or a hub id; ModelNotAvailableError if neither."""
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise _not_available(source, f"{path} is not a model folder (no config.json)")
        if not list(path.glob("*.safetensors")):
            raise _not_available(source, f"the folder {path} holds no weights (*.safetensors)")
        return str(path.resolve())
    if source.startswith((".", "/", "~")) or "\\" in source or source.count("/") != 1:
        raise _not_available(source, f"the folder {path} does not exist")
    return source


def _offline_before_loading(source: str, from_hub: bool) -> bool:
    """Whether to load from local files only; raises when the hub is needed and unreachable."""
    offline = _offline()
    if from_hub and not offline:
        if _cached_locally(source):
            return True
        unreachable = _hub_unreachable()
        if unreachable:
            raise _not_available(
                source,
                f"this computer seems to be offline ({unreachable}) and the model is not "
                "in the local Hugging Face cache",
            )
    return offline


def check_template(processor: Any) -> str | None:
    """Why the checkpoint's chat template does not render :func:`recipe.build_prompt`'s
    prompt for the reference's messages (a text query and a page image with text), or None."""
    messages = [
        {"role": "system", "content": [{"type": "text", "text": recipe.SYSTEM_PROMPT}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "<Instruct>: " + recipe.DEFAULT_INSTRUCTION},
                {"type": "text", "text": recipe.QUERY_PREFIX},
                {"type": "text", "text": "q"},
                {"type": "text", "text": recipe.DOCUMENT_PREFIX},
                {"type": "image", "image": "page"},
                {"type": "text", "text": "d"},
            ],
        },
    ]
    try:
        rendered = processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
    except Exception as exc:  # no template, or one that refuses these messages
        return f"its chat template cannot render the reranker prompt ({_short(exc)})"
    expected = recipe.build_prompt(query_text="q", doc_text="d", doc_image_tokens=1)
    if rendered != expected:
        return "its chat template renders the reranker prompt differently from Qwen3-VL-Reranker's"
    return None


def load_local_reranker(
    model: str | os.PathLike[str] | None = None,
    *,
    device: str | None = None,
    dtype: Any = None,
    **options: Any,
) -> Qwen3VLReranker:
    """Load Qwen3-VL-Reranker (hub id or folder; ``$PAGELENS_RERANK_MODEL`` or the 2B one).

    ``device``: "cuda", "mps", "cpu"... (default: the best available). ``dtype``: default
    bfloat16 on CUDA (attention through SDPA) and float32 elsewhere; a torch dtype or its name
    overrides it. ``options`` go to :class:`Qwen3VLReranker` (``instruction``,
    ``max_image_tokens``, ``min_image_tokens``, ``batch_size``, ``max_length``). Raises
    :class:`~indexer.errors.ModelNotAvailableError` with instructions when the weights cannot
    be found or downloaded.
    """
    source = os.fspath(model) if model is not None else default_reranker()
    where = _locate(source)
    from_hub = not Path(where).is_dir()
    offline = _offline_before_loading(source, from_hub)
    dev = resolve_device(device)
    torch_dtype = _dtype(dtype, dev)
    net, processor = _from_pretrained(
        source, where, from_hub=from_hub, offline=offline, torch_dtype=torch_dtype
    )
    identity = identify(where)
    return Qwen3VLReranker(
        net.to(dev).eval(),
        processor,
        model_id=source if where == source else where,
        device=dev,
        fingerprint=identity.fingerprint,
        revision=identity.revision,
        **options,
    )


def _dtype(dtype: Any, device: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or str(dtype).lower() == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    named = getattr(torch, str(dtype).lower().removeprefix("torch."), None)
    if not isinstance(named, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}")
    return named


def _from_pretrained(
    source: str, where: str, *, from_hub: bool, offline: bool, torch_dtype: torch.dtype
) -> tuple[Any, Any]:
    """The model (on CPU) and processor, each failure turned into its own message."""
    from transformers import AutoConfig, AutoProcessor, Qwen3VLForConditionalGeneration

    hub: dict[str, Any] = {"local_files_only": True} if offline else {}
    quiet = _quiet_transformers()
    try:
        try:
            cfg = AutoConfig.from_pretrained(where, **hub)
        except OSError as exc:
            if offline and from_hub:
                declared = _offline_env()
                raise _not_available(
                    source,
                    (f"{declared} is set" if declared else "offline mode is on")
                    + " and it is not in the local Hugging Face cache",
                ) from exc
            raise
        if getattr(cfg, "model_type", None) != "qwen3_vl":
            kind = getattr(cfg, "model_type", "unknown")
            raise _not_available(source, f"it is a {kind!r} model, not a Qwen3-VL checkpoint")
        processor = AutoProcessor.from_pretrained(where, **hub)
        vocab = processor.tokenizer.get_vocab()
        if recipe.YES not in vocab or recipe.NO not in vocab:
            raise _not_available(source, 'its tokenizer has no "yes" and "no" tokens')
        mismatch = check_template(processor)
        if mismatch:
            raise _not_available(source, mismatch)
        net = Qwen3VLForConditionalGeneration.from_pretrained(
            where, config=cfg, dtype=torch_dtype, attn_implementation="sdpa", **hub
        )
    except ModelNotAvailableError:
        raise
    except torch.OutOfMemoryError:
        raise
    except (OSError, ValueError, KeyError, TypeError, ImportError, RuntimeError) as exc:
        raise _not_available(source, _short(exc)) from exc
    except Exception as exc:
        if type(exc).__name__ != "SafetensorError":
            raise
        raise _not_available(source, f"damaged weights file ({_short(exc)})") from exc
    finally:
        quiet()
    return net, processor


__all__ = ["check_template", "default_reranker", "load_local_reranker"]
