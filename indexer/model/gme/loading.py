"""Loading GME from a hub id or a local folder, with one clear message for each failure.

Every way a load can fail (offline, not a GME checkpoint, a tokenizer that does not match,
damaged weights, out of memory) becomes a :class:`~indexer.errors.ModelNotAvailableError`
that says how to get the weights; offline is detected once, in seconds, before the slow
transformers imports and without the hub's retries.

The hub checkpoint was saved with transformers 4.4x key names (``model.layers.*``,
``visual.*``, ``lm_head``); transformers 5 renames them on load through the
``Qwen2VLForConditionalGeneration`` entry of ``transformers/conversion_mapping.py``
(``^visual`` -> ``model.visual``, ``^model`` -> ``model.language_model``), and
``save_pretrained`` writes the legacy names back. Its flat ``config.json`` (with
``rope_scaling: {"type": "mrope", ...}``) is still accepted by ``Qwen2VLConfig``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from indexer.config import DEFAULT_MODEL_ID, default_model
from indexer.errors import ModelNotAvailableError
from indexer.identity import identify
from indexer.model.gme.embedder import GmeEmbedder
from indexer.model.gme.recipe import IMAGE_PAD
from indexer.model.gme.speedups import QUANTIZE_MODES, compile_embedder, quantize_embedder
from indexer.model.runtime.device import cpu_auto_dtype, resolve_device, resolve_dtype

_HELP = (
    "PageLens needs the GME-Qwen2-VL-2B weights (about 4.5 GB) on this computer. Download them "
    "once with `huggingface-cli download Alibaba-NLP/gme-Qwen2-VL-2B-Instruct --local-dir "
    "~/models/gme-2b` (or `hf download ...` with newer huggingface_hub), then point PageLens at "
    "that folder with `PAGELENS_MODEL=~/models/gme-2b` (or pass the folder as the model)."
)


def _help() -> str:
    """The how-to-get-the-weights advice; names HF_HUB_OFFLINE only when it is really set."""
    if _offline_env():
        return (
            f"{_HELP} On a computer that is online, unsetting HF_HUB_OFFLINE also lets "
            f"PageLens download {DEFAULT_MODEL_ID} by itself."
        )
    return f"{_HELP} Online, PageLens downloads {DEFAULT_MODEL_ID} by itself on first use."


def _auto(dtype: Any) -> bool:
    return dtype is None or (isinstance(dtype, str) and dtype.lower() == "auto")


def _not_available(source: str, reason: str) -> ModelNotAvailableError:
    reason = reason.strip().rstrip(".")  # library messages end with their own period
    return ModelNotAvailableError(f"Cannot load the GME model {source!r}: {reason}. {_help()}")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return first if len(first) <= 300 else first[:297] + "..."


def _offline_env() -> str | None:
    """The variable that declares offline mode (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE), if set."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return name
    return None


def _hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be reached (one TCP connection attempt, to the hub or the proxy),
    or None when it can. Detecting "offline" once, in seconds, replaces huggingface_hub's
    ~40 s of retries and their two dozen warning lines."""
    from urllib.parse import urlsplit

    try:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    except ImportError:  # pragma: no cover - a transformers dependency
        endpoint = "https://huggingface.co"
    proxy = next(
        (
            os.environ[k]
            for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
            if os.environ.get(k)
        ),
        None,
    )
    target = urlsplit(proxy or endpoint)
    host = target.hostname or ""
    port = target.port or (443 if target.scheme == "https" else 80)
    import socket

    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        via = f" (through the proxy {target.hostname}:{port})" if proxy else ""
        return f"cannot reach {endpoint}{via}: {exc.strerror or exc}"
    return None


def _cached_locally(source: str) -> bool:
    """Whether a hub model is completely in the local Hugging Face cache (config + weights)."""
    from indexer.identity import hub_snapshot, weight_files

    snapshot = hub_snapshot(source)
    return snapshot is not None and bool(weight_files(snapshot))


def _offline() -> bool:
    if _offline_env():
        return True
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover
        return False
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _locate(source: str) -> str:
    """A local folder (absolute path) or a hub id; ModelNotAvailableError if neither."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise _not_available(source, f"{path} is a file, not a model folder")
        if not (path / "config.json").is_file():
            raise _not_available(source, f"the folder {path} has no config.json")
        weights = list(path.glob("*.safetensors")) + list(path.glob("pytorch_model*.bin"))
        if not weights:
            raise _not_available(source, f"the folder {path} holds no weights (*.safetensors)")
        return str(path.resolve())
    looks_like_path = (
        source.startswith((".", "/", "~"))
        or "\\" in source
        or os.path.isabs(source)
        or source.count("/") != 1
    )
    if looks_like_path:
        raise _not_available(source, f"the folder {path} does not exist")
    return source


def _quiet_transformers() -> Any:
    """Silence transformers' logging and progress bars; returns a function that restores them."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    def restore() -> None:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()

    return restore


def load_embedder(
    model: str | os.PathLike[str] | None = None,
    *,
    device: str | None = None,
    dtype: Any = None,
    quantize: str | None = None,
    compile: bool = False,
    **options: Any,
) -> GmeEmbedder:
    """Load GME from a hub id or a local folder (default ``$PAGELENS_MODEL`` or GME-2B).

    ``quantize="int8"``: opt-in int8 dynamic quantisation of the linear layers on CPU
    (:func:`~indexer.model.gme.speedups.quantize_embedder`; loads in float32 first). Never
    the default. ``compile=True``: opt-in ``torch.compile`` of the transformer blocks
    (:func:`~indexer.model.gme.speedups.compile_embedder`), for long indexing jobs.

    ``device``: "cuda", "mps", "cpu"... (default: the best available). ``dtype``: a torch
    dtype or "bfloat16"/"float16"/"float32" (default: bf16 on CUDA and native-bf16 CPUs,
    fp16 on MPS, else fp32). ``options`` go to :class:`GmeEmbedder` (``max_image_tokens``,
    ``min_image_tokens``, ``batch_size``, ``max_length``). Raises
    :class:`~indexer.errors.ModelNotAvailableError` with instructions when the weights
    cannot be found or downloaded.
    """
    source = os.fspath(model) if model is not None else default_model()
    where = _locate(source)
    from_hub = not Path(where).is_dir()  # a hub id, not a folder on this computer
    # Offline? Say so before the slow transformers imports and without hub retries.
    offline = _offline_before_loading(source, from_hub)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    if quantize:
        if quantize not in QUANTIZE_MODES:
            raise ValueError(
                f"unknown quantize mode {quantize!r}; expected one of {QUANTIZE_MODES}"
            )
        torch_dtype = torch.float32
    net, tokenizer, image_processor = _from_pretrained(
        source,
        where,
        from_hub=from_hub,
        offline=offline,
        torch_dtype=torch_dtype,
        cpu_auto=_auto(dtype) and not quantize and torch.device(dev).type == "cpu",
    )
    net = net.to(dev).eval()
    model_id = source if where == source else where
    identity = identify(where)  # local files only: the weights just loaded
    embedder = GmeEmbedder(
        net,
        tokenizer,
        image_processor,
        model_id=model_id,
        fingerprint=identity.fingerprint,
        revision=identity.revision,
        device=dev,
        **options,
    )
    if quantize:
        quantize_embedder(embedder, quantize)
    if compile:
        compile_embedder(embedder)
    return embedder


def _offline_before_loading(source: str, from_hub: bool) -> bool:
    """Whether to load from local files only; ModelNotAvailableError when the hub is needed
    and cannot be reached (one connection attempt, not the hub's ~40 s of retries)."""
    offline = _offline()
    if from_hub and not offline:
        if _cached_locally(source):
            return True  # everything is here: load it without asking the network
        unreachable = _hub_unreachable()
        if unreachable:
            raise _not_available(
                source,
                f"this computer seems to be offline ({unreachable}) and the model is not "
                "in the local Hugging Face cache",
            )
    return offline


def _from_pretrained(
    source: str,
    where: str,
    *,
    from_hub: bool,
    offline: bool,
    torch_dtype: torch.dtype,
    cpu_auto: bool,
) -> tuple[Any, Any, Any]:
    """The model (on CPU), tokenizer and image processor, each failure turned into its own
    message, in the order transformers meets them. ``cpu_auto``: the dtype is the automatic
    CPU one for this config (:func:`~indexer.model.runtime.device.cpu_auto_dtype`)."""
    from transformers import AutoConfig, AutoTokenizer, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    # huggingface_hub reads HF_HUB_OFFLINE once, at import; honour it when set later too.
    hub: dict[str, Any] = {"local_files_only": True} if offline else {}
    # transformers' per-load chatter (progress bars, load reports about the unused lm_head)
    # means nothing to a PageLens user; errors still surface as ModelNotAvailableError.
    quiet = _quiet_transformers()
    try:
        try:
            config = AutoConfig.from_pretrained(where, **hub)
        except OSError as exc:
            if offline and from_hub:
                declared = _offline_env()
                raise _not_available(
                    source,
                    (f"{declared} is set" if declared else "offline mode is on")
                    + " and it is not in the local Hugging Face cache",
                ) from exc
            raise
        if getattr(config, "model_type", None) != "qwen2_vl":
            raise _not_available(
                source,
                f"it is a {getattr(config, 'model_type', 'unknown')!r} model, "
                "not a GME (Qwen2-VL) checkpoint",
            )
        if cpu_auto:
            torch_dtype = cpu_auto_dtype(config)
        tokenizer = AutoTokenizer.from_pretrained(where, **hub)
        if tokenizer.convert_tokens_to_ids(IMAGE_PAD) != config.image_token_id:
            raise _not_available(source, f"its tokenizer has no {IMAGE_PAD} at the model's id")
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(where, **hub)
        net: Any = Qwen2VLForConditionalGeneration.from_pretrained(
            where, config=config, dtype=torch_dtype, attn_implementation="sdpa", **hub
        )
    except ModelNotAvailableError:
        raise
    except torch.OutOfMemoryError:
        raise
    except (OSError, ValueError, KeyError, TypeError, ImportError, RuntimeError) as exc:
        raise _not_available(source, _short(exc)) from exc
    except Exception as exc:
        if type(exc).__name__ != "SafetensorError":  # a damaged weights file
            raise
        raise _not_available(source, f"damaged weights file ({_short(exc)})") from exc
    finally:
        quiet()
    return net, tokenizer, image_processor


__all__ = ["load_embedder"]
