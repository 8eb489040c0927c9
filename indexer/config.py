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
