"""The user's choices that shape a collection's pages and vectors, in one typed object.

The CLI's global options, the web app (through the environment ``pagelens app`` sets), the
API server, the integrity check's re-embedding and the benchmark all read and pass on the
same :class:`ModelSettings`. Each field carries its command-line flag, environment variable
and help text as metadata, and every consumer iterates over the fields, so adding an option
is one edit here (the CLI's global options are generated from these fields too).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from indexer import config
from indexer.config import default_model
from indexer.errors import UsageError

if TYPE_CHECKING:
    from indexer.model import Embedder
    from indexer.pages import RenderSettings

#: GME's published visual-token budget per page.
DEFAULT_IMAGE_TOKENS = 1280
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def _opt(
    flags: tuple[str, ...], env: str, help: str, *, load_as: str | None = None, default=None
) -> Any:
    """A settings field: its CLI flags, environment variable, help, and load_embedder name."""
    return field(
        default=default,
        metadata={"flags": flags, "env": env, "help": help, "load_as": load_as},
    )


@dataclass(frozen=True)
class ModelSettings:
    """Which model, where it runs, and how pages are sized for it.

    ``None`` means "the default" everywhere (hub model or ``$PAGELENS_MODEL``, best device,
    automatic dtype, 1280 visual tokens, no quantisation).
    """

    model: str | None = _opt(
        ("--model", "-m"),
        "PAGELENS_MODEL",
        "GME model: hub id or local folder (default Alibaba-NLP/gme-Qwen2-VL-2B-Instruct; "
        "~4.5 GB, downloaded on first use).",
    )
    device: str | None = _opt(
        ("--device",), "PAGELENS_DEVICE", "cuda, mps or cpu (default: auto).", load_as="device"
    )
    dtype: str | None = _opt(
        ("--dtype",),
        "PAGELENS_DTYPE",
        "bfloat16, float16 or float32 (default: auto).",
        load_as="dtype",
    )
    image_tokens: int | None = _opt(
        ("--image-tokens",),
        "PAGELENS_IMAGE_TOKENS",
        "Visual-token budget per page (1280 as published; 768, 512, 256 are faster). "
        "A collection keeps the budget it was made with.",
        load_as="max_image_tokens",
    )
    quantize: str | None = _opt(
        ("--quantize",),
        "PAGELENS_QUANTIZE",
        "Opt-in CPU fast path: 'int8' (dynamic int8 linear layers, weights and "
        "activations). Not exact: page vectors at cosine 0.985-0.988 to float32, top-10 "
        "overlap with float32 rankings 0.875-0.962 (pagelens bench; below the 0.95 that "
        "would make it a default). Default: off.",
        load_as="quantize",
    )
    compile: bool = _opt(
        ("--compile",),
        "PAGELENS_COMPILE",
        "Opt-in: torch.compile the model's blocks (~1.4x faster pages on CPU after a "
        "one-off compilation of tens of seconds; for long indexing jobs).",
        load_as="compile",
        default=False,
    )

    embedder_url: str | None = _opt(
        ("--embedder",),
        "PAGELENS_EMBEDDER_URL",
        "Embed on a remote OpenAI-compatible endpoint (e.g. 'pagelens serve' on a GPU "
        "machine: http(s)://HOST:PORT) instead of loading GME here; key from "
        "PAGELENS_API_KEY. --model then picks the endpoint's model.",
        load_as="embedder_url",
    )

    def __post_init__(self) -> None:
        if self.image_tokens is not None and not 4 <= int(self.image_tokens) <= 16384:
            raise UsageError(
                f"--image-tokens must be between 4 and 16384 (GME: 256..1280), "
                f"not {self.image_tokens}."
            )
        if self.quantize not in (None, "", "int8"):
            raise UsageError(f"--quantize takes 'int8', not '{self.quantize}'.")

    # -- reading and passing on ----------------------------------------------------------
    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ModelSettings:
        """The settings the environment holds (what ``pagelens app`` hands to Streamlit)."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = config.get(f.metadata["env"], environ)  # unset or empty: the default
            if raw is None:
                continue
            values[f.name] = _parse(f, raw)
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """Environment variables that make :meth:`from_env` return these settings."""
        out: dict[str, str] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None or value is False:
                continue
            out[f.metadata["env"]] = "1" if value is True else str(value)
        return out

    def replace(self, **changes: Any) -> ModelSettings:
        return dataclasses.replace(self, **changes)

    @property
    def model_source(self) -> str:
        """The model to load: the chosen one, else ``$PAGELENS_MODEL`` or the hub id."""
        return self.model or default_model()

    @property
    def display(self) -> str:
        """What to call the model in messages: the endpoint (key-free) or the model."""
        if self.embedder_url:
            from indexer.model.remote import redact_url

            return redact_url(self.embedder_url)
        return self.model_source

    @property
    def tokens(self) -> int:
        """The visual-token budget pages are rendered for."""
        return int(self.image_tokens or DEFAULT_IMAGE_TOKENS)

    def load_options(self) -> dict[str, Any]:
        """Keyword arguments for :func:`indexer.load_embedder` (defaults left out)."""
        options: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            name = f.metadata["load_as"]
            value = getattr(self, f.name)
            if name and value not in (None, False, ""):
                options[name] = value
        return options

    def load(self, *, fail_fast: bool = False) -> Embedder:
        """Load the model these settings describe; ``fail_fast`` for a query (a refused
        remote endpoint fails at once, see :func:`indexer.load_embedder`)."""
        from indexer import load_embedder

        options = self.load_options()
        if fail_fast:
            options["fail_fast"] = True
        return load_embedder(self.load_target, **options)

    @property
    def load_target(self) -> str | None:
        """``load_embedder``'s first argument: a remote endpoint picks its own default model."""
        return self.model if self.embedder_url else self.model_source

    def render_settings(self, **overrides: Any) -> RenderSettings:
        """How pages are rendered for this visual-token budget."""
        from indexer.pages import RenderSettings

        return RenderSettings.for_tokens(self.tokens, **overrides)


def _parse(f: dataclasses.Field, raw: str) -> Any:
    kind = str(f.type)
    if kind.startswith("bool"):
        text = raw.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise UsageError(f"{f.metadata['env']} must be 1 or 0, not '{raw}'.")
    if kind.startswith("int"):
        try:
            return int(raw)
        except ValueError as exc:
            raise UsageError(f"{f.metadata['env']} must be a whole number, not '{raw}'.") from exc
    return raw


__all__ = ["DEFAULT_IMAGE_TOKENS", "ModelSettings"]
