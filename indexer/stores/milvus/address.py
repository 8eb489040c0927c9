"""Where a Milvus collection is: ``milvus://HOST:PORT/NAME[?images=LOCATION]`` parsed and
checked (``milvuss://`` for TLS), and an address made fit to show (no credentials)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from indexer.config import MILVUS_TOKEN_ENV as TOKEN_ENV
from indexer.errors import CollectionError
from indexer.stores.milvus.images import redact_userinfo, refuse_credentials

DEFAULT_PORT = 19530
#: Milvus allows 255 characters per collection name; PageLens adds up to 10 (``_documents``)
#: and keeps headroom, so a PageLens name has at most ``NAME_MAX`` characters.
NAME_MAX = 181
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class MilvusAddress:
    """A parsed ``milvus://HOST:PORT/NAME[?images=LOCATION]`` (``milvuss://``: TLS)."""

    host: str
    port: int
    name: str
    secure: bool = False
    images: str | None = None

    @property
    def uri(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.host}:{self.port}"

    @property
    def spec(self) -> str:
        return f"{'milvuss' if self.secure else 'milvus'}://{self.host}:{self.port}/{self.name}"

    @classmethod
    def parse(cls, spec: str) -> MilvusAddress:
        shown = redact_address(spec)  # errors never echo credentials
        scheme = spec.split("://", 1)[0].lower() if "://" in spec else ""
        if scheme not in ("milvus", "milvuss"):
            raise CollectionError(f"'{shown}' is not a Milvus address (milvus://HOST:PORT/NAME).")
        # Any '@' first, before the URL is split: a password may hold '/', '?', '#', '@' or
        # a space, which would end the host part early and put pieces of it in the port,
        # the name or the options (an '@' in an ?images= folder is written %40).
        if "@" in spec:
            raise CollectionError(
                f"Milvus address '{shown}' carries credentials (an '@'): put the token in "
                f"{TOKEN_ENV} instead (an address is shown in logs, output and shell history)."
            )
        try:
            parts = urlsplit(spec)
        except ValueError:  # e.g. an unclosed '[': ValueError names no part of the text
            raise CollectionError(
                f"'{shown}' is not a Milvus address (milvus://HOST:PORT/NAME)."
            ) from None
        name = parts.path.strip("/")
        try:
            port = parts.port or DEFAULT_PORT
        except ValueError:
            raise CollectionError(f"Bad port in Milvus address '{shown}'.") from None
        if not parts.hostname:
            raise CollectionError(
                f"Milvus address '{shown}' names no host (milvus://HOST:PORT/NAME)."
            )
        if len(name) > NAME_MAX:  # its own message: "only letters, digits" would mislead
            raise CollectionError(
                f"Milvus collection name in '{shown[:80]}...' is {len(name)} characters long; "
                f"at most {NAME_MAX} (Milvus's limit, less PageLens's suffixes)."
            )
        if not _NAME.fullmatch(name):
            raise CollectionError(
                f"Milvus collection name '{name}' in '{shown}' must start with a letter or '_' "
                "and hold only letters, digits and '_' (Milvus's rule)."
            )
        images = parse_qs(parts.query).get("images", [None])[0]
        if images:
            refuse_credentials(images)
        return cls(parts.hostname, port, name, scheme == "milvuss", images)


def redact_address(spec: str) -> str:
    """A collection address fit to show: everything from its scheme to its last ``@``
    replaced by ``***`` (see :func:`~indexer.stores.milvus.images.redact_userinfo`: where a
    password ends cannot be told, so only what follows the last ``@`` is shown)."""
    return redact_userinfo(spec)
