"""Where things live by default, and the environment variables that move them.

One place reads the environment so that tests can redirect everything with two variables:
``PAGELENS_HOME`` (the folder holding collections, default ``./data``) and
``PAGELENS_MODEL`` (the model id or folder, default GME-2B).
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL_ID = "Alibaba-NLP/gme-Qwen2-VL-2B-Instruct"
DEFAULT_COLLECTION = "default"


def default_model() -> str:
    """The model to load when none is named: ``$PAGELENS_MODEL`` or GME-2B on the hub."""
    return os.environ.get("PAGELENS_MODEL") or DEFAULT_MODEL_ID


def home() -> Path:
    """The folder that holds collections: ``$PAGELENS_HOME`` or ``./data``."""
    return Path(os.environ.get("PAGELENS_HOME") or "data").expanduser()


def collection_path(collection: str | os.PathLike[str] | None = None) -> Path:
    """Resolve a collection given as a name (a folder under :func:`home`) or as a path.

    A value containing a path separator, starting with ``.`` or ``~``, or naming an existing
    folder is taken as a path; a bare word is a collection name under the home folder.
    """
    if collection is None or str(collection) == "":
        return home() / DEFAULT_COLLECTION
    text = str(collection)
    if os.sep in text or "/" in text or text.startswith((".", "~")) or Path(text).is_dir():
        return Path(text).expanduser()
    return home() / text


def list_collections() -> list[str]:
    """Names of the collections under the home folder (folders holding a catalog)."""
    root = home()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "catalog.sqlite").is_file())
