"""Where things live by default, and the environment variables that move them.

One place reads the environment so that tests can redirect everything with a few variables:
``PAGELENS_HOME`` (the folder holding collections), ``PAGELENS_MODEL`` (the model id or
folder, default GME-2B) and ``PAGELENS_CACHE`` (small caches such as weight hashes).

Where collections live never depends on the current folder (a command run elsewhere must
not silently start a new empty ``./data``): ``$PAGELENS_HOME`` if set, else the platform's
user data folder (:func:`user_data_dir`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL_ID = "Alibaba-NLP/gme-Qwen2-VL-2B-Instruct"
DEFAULT_COLLECTION = "default"


def default_model() -> str:
    """The model to load when none is named: ``$PAGELENS_MODEL`` or GME-2B on the hub."""
    return os.environ.get("PAGELENS_MODEL") or DEFAULT_MODEL_ID


#: Said in ``--help``, the app and the README: where collections live.
HOME_RULE = (
    "Collections live in $PAGELENS_HOME if set, else in the user data folder "
    "(Linux: $XDG_DATA_HOME/pagelens or ~/.local/share/pagelens; macOS: "
    "~/Library/Application Support/PageLens; Windows: %LOCALAPPDATA%\\PageLens)"
)


def user_data_dir() -> Path:
    """The platform's per-user data folder for PageLens (XDG on Linux and other Unixes)."""
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "PageLens"
    if os.name == "nt":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "PageLens"
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "pagelens"


def cache_dir() -> Path:
    """Small, re-creatable caches (weight hashes): ``$PAGELENS_CACHE`` or the user cache."""
    if os.environ.get("PAGELENS_CACHE"):
        return Path(os.environ["PAGELENS_CACHE"]).expanduser()
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "PageLens"
    if os.name == "nt":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "PageLens" / "Cache"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pagelens"


def home() -> Path:
    """The folder that holds collections: ``$PAGELENS_HOME`` or :func:`user_data_dir`.

    An explicit relative ``PAGELENS_HOME`` is made absolute once, so that a process which
    changes folder keeps using the same collections.
    """
    explicit = os.environ.get("PAGELENS_HOME")
    if explicit:
        return Path(explicit).expanduser().absolute()
    return user_data_dir()


def is_collection_name(collection: str | os.PathLike[str] | None) -> bool:
    """True for a bare name (or None: the default), False for anything written as a path.

    A value with a path separator, or starting with ``.`` or ``~``, is a path; everything
    else is a name, even when a folder of that name happens to exist in the current folder
    (``./odd`` means that folder).
    """
    if collection is None or str(collection) == "":
        return True
    text = str(collection)
    return not (os.sep in text or "/" in text or text.startswith((".", "~")))


def collection_path(collection: str | os.PathLike[str] | None = None) -> Path:
    """Resolve a collection given as a name (a folder under :func:`home`) or as a path.

    See :func:`is_collection_name`: bare names always mean named collections under the home
    folder; paths are paths. A ``~user`` that cannot be expanded is a
    :class:`~indexer.errors.UsageError` (one line, not a traceback).
    """
    if collection is None or str(collection) == "":
        return home() / DEFAULT_COLLECTION
    text = str(collection)
    if not is_collection_name(text):
        try:
            return Path(text).expanduser()
        except RuntimeError as exc:  # "Could not determine home directory."
            from indexer.errors import UsageError

            user = text.split("/", 1)[0].split(os.sep, 1)[0]
            raise UsageError(
                f"Cannot expand {user!r} in collection path {text!r} (no such user?)."
            ) from exc
    return home() / text


def list_collections() -> list[str]:
    """Names of the collections under the home folder (folders holding a catalog)."""
    root = home()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "catalog.sqlite").is_file())


# --- The registry of PAGELENS_* variables -------------------------------------------------
# Every PAGELENS_* variable is declared here (name, what it does) and read through
# :func:`get` / :func:`get_float` / :func:`get_int` / :func:`get_flag`: no other module reads
# one from ``os.environ`` (a test checks). Declared in blocks by the layer that uses them.


@dataclass(frozen=True)
class Variable:
    """One environment variable PageLens reads: its name and what it changes."""

    name: str
    help: str


#: Every declared variable, by name (documentation and the registry test read it).
VARIABLES: dict[str, Variable] = {}

_TRUE = {"1", "ON", "YES", "TRUE"}


def variable(name: str, help: str) -> str:
    """Declare a PAGELENS_* variable; returns its name, to keep in a module constant."""
    if not name.startswith("PAGELENS_"):
        raise ValueError(f"{name}: PageLens's own variables start with PAGELENS_")
    if name in VARIABLES:
        raise ValueError(f"{name} is declared twice")
    VARIABLES[name] = Variable(name, help)
    return name


def get(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The variable's value, or None when it is unset or empty (both mean "not set").

    ``environ`` reads another mapping (what ``pagelens app`` hands to Streamlit, a test's);
    the name must be declared, so a typo fails loudly instead of reading nothing.
    """
    if name not in VARIABLES:
        raise KeyError(f"{name} is not a declared PageLens variable (indexer/config.py)")
    value = (os.environ if environ is None else environ).get(name)
    return value if value else None


def get_float(name: str, default: float, environ: Mapping[str, str] | None = None) -> float:
    """A number-valued variable; a value that is no number is a clear UsageError."""
    raw = get(name, environ)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        from indexer.errors import UsageError

        raise UsageError(f"{name} must be a number, not {raw!r}.") from None


def get_int(name: str, default: int, environ: Mapping[str, str] | None = None) -> int:
    """An integer-valued variable; a value that is no integer is a clear UsageError."""
    raw = get(name, environ)
    if raw is None:
        return default
    try:
        return int(raw.strip())
    except ValueError:
        from indexer.errors import UsageError

        raise UsageError(f"{name} must be a whole number, not {raw!r}.") from None


def get_flag(name: str, environ: Mapping[str, str] | None = None) -> bool:
    """A yes/no variable: 1, on, yes or true (any case) mean yes."""
    raw = get(name, environ)
    return raw is not None and raw.strip().upper() in _TRUE


# -- paths and the model (this module)
HOME_ENV = variable("PAGELENS_HOME", "the folder holding named collections")
MODEL_ENV = variable("PAGELENS_MODEL", "the embedding model: a hub id or a folder")
CACHE_ENV = variable("PAGELENS_CACHE", "small re-creatable caches (weight hashes, decisions)")


# -- model settings and loading (indexer/settings.py, indexer/model/)
DEVICE_ENV = variable("PAGELENS_DEVICE", "where the model runs: cuda, mps or cpu (default: auto)")
DTYPE_ENV = variable("PAGELENS_DTYPE", "the model's dtype: bfloat16, float16, float32 (auto)")
IMAGE_TOKENS_ENV = variable("PAGELENS_IMAGE_TOKENS", "visual-token budget per page (1280)")
QUANTIZE_ENV = variable("PAGELENS_QUANTIZE", "opt-in CPU fast path: int8 (default: off)")
COMPILE_ENV = variable("PAGELENS_COMPILE", "1: torch.compile the model's blocks (opt-in)")
RERANK_URL_ENV = variable(
    "PAGELENS_RERANK_URL", "rerank through this /v1/rerank endpoint (vLLM, Jina, pagelens serve)"
)
RERANK_MODEL_ENV = variable(
    "PAGELENS_RERANK_MODEL",
    "the reranker: a hub id or folder run here (Qwen/Qwen3-VL-Reranker-2B), or the model "
    "name at PAGELENS_RERANK_URL",
)
RERANK_API_KEY_ENV = variable(
    "PAGELENS_RERANK_API_KEY", "the rerank endpoint's API key (sent as a bearer token)"
)
RERANK_TIMEOUT_ENV = variable(
    "PAGELENS_RERANK_TIMEOUT", "seconds one remote rerank may take in all (default 30)"
)
RERANK_CA_ENV = variable(
    "PAGELENS_RERANK_CA", "a CA bundle (PEM) to trust for an https rerank endpoint"
)


# -- remote embedder (indexer/model/remote/)
EMBEDDER_URL_ENV = variable(
    "PAGELENS_EMBEDDER_URL", "embed through this OpenAI-compatible endpoint instead of here"
)
EMBEDDER_BATCH_ENV = variable("PAGELENS_EMBEDDER_BATCH", "inputs per request to the endpoint")
EMBEDDER_CONCURRENCY_ENV = variable(
    "PAGELENS_EMBEDDER_CONCURRENCY", "requests to the endpoint in flight at once"
)
EMBEDDER_TIMEOUT_ENV = variable("PAGELENS_EMBEDDER_TIMEOUT", "seconds one request may take")
EMBEDDER_RETRIES_ENV = variable("PAGELENS_EMBEDDER_RETRIES", "retries per failed request")
EMBEDDER_CA_ENV = variable(
    "PAGELENS_EMBEDDER_CA", "a CA bundle (PEM) to trust for an https endpoint"
)


# -- stores: Milvus engine (indexer/stores/milvus/)
MILVUS_TOKEN_ENV = variable(
    "PAGELENS_MILVUS_TOKEN", "the Milvus server's token (user:password or an API key)"
)
MILVUS_CA_ENV = variable(
    "PAGELENS_MILVUS_CA", "the PEM file of the CA that signed a milvuss:// server's certificate"
)
MILVUS_TIMEOUT_ENV = variable(
    "PAGELENS_MILVUS_TIMEOUT", "seconds each Milvus call may take (default 10)"
)
MILVUS_IMAGES_ENV = variable(
    "PAGELENS_MILVUS_IMAGES", "where this machine finds a Milvus collection's page images"
)
MILVUS_ORPHAN_GRACE_ENV = variable(
    "PAGELENS_MILVUS_ORPHAN_GRACE",
    "seconds before check --repair deletes a Milvus image no page names (default 3600)",
)
MILVUS_LOG_ENV = variable(
    "PAGELENS_MILVUS_LOG", "set: keep pymilvus's own log records (quieted by default)"
)


# -- sync (indexer/sync/)
WATCH_SETTLE_ENV = variable(
    "PAGELENS_WATCH_SETTLE",
    "seconds a changed file must keep its size and time before sync --watch reads it (1)",
)

# -- retriever and LLMs (retriever/)
LLM_URL_ENV = variable("PAGELENS_LLM_URL", "the OpenAI-compatible chat endpoint ask sends to")
LLM_MODEL_ENV = variable("PAGELENS_LLM_MODEL", "the vision LLM's model name at that endpoint")
LLM_API_KEY_ENV = variable("PAGELENS_LLM_API_KEY", "the LLM endpoint's API key")
LLM_TIMEOUT_ENV = variable("PAGELENS_LLM_TIMEOUT", "seconds one LLM request may take")
LLM_RETRIES_ENV = variable("PAGELENS_LLM_RETRIES", "retries of a failed LLM request")
LLM_MAX_IMAGES_ENV = variable("PAGELENS_LLM_MAX_IMAGES", "page images per LLM request")
LLM_MAX_IMAGE_MB_ENV = variable("PAGELENS_LLM_MAX_IMAGE_MB", "MB per page image sent")
LLM_MAX_REQUEST_MB_ENV = variable("PAGELENS_LLM_MAX_REQUEST_MB", "MB per LLM request")
LLM_MAX_SIDE_ENV = variable("PAGELENS_LLM_MAX_SIDE", "longest image side sent, in pixels")


# -- app, servers, MCP (app/)
COLLECTION_ENV = variable("PAGELENS_COLLECTION", "the collection the CLI and the app open")
MAX_UPLOAD_MB_ENV = variable("PAGELENS_MAX_UPLOAD_MB", "the app's upload limit per file, in MB")
APP_PASSWORD_ENV = variable(
    "PAGELENS_APP_PASSWORD", "the app's password (required when it listens beyond loopback)"
)
API_KEY_ENV = variable(
    "PAGELENS_API_KEY", "the bearer key: of pagelens serve/mcp, and sent to a remote embedder"
)
