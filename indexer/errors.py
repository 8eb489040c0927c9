"""The few exceptions PageLens raises on purpose.

Everything a user can cause (a bad file, a missing model, a wrong collection) is a
``PageLensError`` with a message written for a person; the CLI and the app print that
message and never a traceback. Anything else escaping is a bug.
"""

from __future__ import annotations

import os


class PageLensError(Exception):
    """Base class: the message is meant to be shown to the user as is."""


class UsageError(PageLensError):
    """The command or setting itself is wrong (a bad option value): exit code 2, not 1."""


class ModelNotAvailableError(PageLensError):
    """The model's weights could not be found locally nor downloaded."""


class ModelMismatchError(PageLensError):
    """A collection was opened with a model (or dimension) other than the one that built it."""


class CollectionError(PageLensError):
    """A collection folder is missing, unreadable, read-only or otherwise unusable."""


class CollectionNotFoundError(CollectionError):
    """The collection named does not exist (and was not to be created): not a failure of
    its server, so an API answers 404 for it, and 503 for other collection errors."""


class CollectionLockedError(CollectionError):
    """Another process holds the collection's write lock for longer than we were willing to wait."""


class DocumentNotFoundError(PageLensError):
    """A document named by the user (by name or id) is not in the collection."""


class DocumentError(PageLensError):
    """A single input file was refused. ``reason`` is a short stable code, ``path`` the file.

    Reason codes (stable, used in JSON output): ``not-found``, ``empty``, ``not-a-pdf``,
    ``unsupported``, ``damaged``, ``needs-password``, ``wrong-password``, ``no-pages``,
    ``too-large``, ``bad-image``, ``needs-libreoffice`` (an office file where LibreOffice is
    missing), ``conversion-failed`` (LibreOffice ran past its time or memory limit),
    ``busy`` (an image waited past its time for room in the process's decode budget: retry).
    """

    def __init__(self, path: str | os.PathLike[str], reason: str, message: str) -> None:
        super().__init__(message)
        self.path = str(path)
        self.reason = reason


class QueryError(PageLensError):
    """A search request that cannot be answered as asked (empty question, bad image...)."""


class EndpointError(PageLensError):
    """A remote embedder endpoint cannot be used as configured (bad URL, key, model, answer).

    ``status`` is the HTTP status when the endpoint answered one. Messages never contain the
    API key.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class EmbeddingError(PageLensError):
    """Some inputs of one embedding call got no vector, after every retry.

    ``failed`` maps input positions to the reason; ``vectors`` holds the rows of the inputs
    that did succeed (the failed rows are zeros and must not be used); ``retryable`` is True
    when the cause may pass by itself (the endpoint was unreachable or overloaded), so a
    caller stops for now instead of sending more work, and a later run fills the gaps in.
    """

    def __init__(
        self,
        message: str,
        *,
        failed: dict[int, str],
        vectors: object = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(message)
        self.failed = dict(failed)
        self.vectors = vectors
        self.retryable = retryable
