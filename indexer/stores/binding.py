"""The model-identity rule every engine shares: the first model to embed a page owns the
collection (see :mod:`indexer.identity`). Imports only :mod:`indexer.errors` and
:mod:`indexer.identity`."""

from __future__ import annotations

import json
import os
from pathlib import Path

from indexer.errors import ModelMismatchError
from indexer.identity import ModelIdentity


def mismatch_message(
    location: str | Path,
    stored: ModelIdentity,
    model_id: str,
    dim: int | None,
    fingerprint: str | None,
) -> str:
    """One sentence naming both models (by weights when both have a fingerprint)."""
    given = f"'{model_id}' (dim {dim}" + (f", weights {fingerprint})" if fingerprint else ")")
    had = f"'{stored.display}' (dim {stored.dim}" + (
        f", weights {stored.fingerprint})" if stored.fingerprint else ")"
    )
    return (
        f"Collection {location} was built with model {had}, but {given} was given. Use the same "
        "model (--model / PAGELENS_MODEL), or index into another collection (--collection)."
    )


def _model_key(model_id: str) -> str:
    """Name rule, only for models without a fingerprint: compare the last path component."""
    text = str(model_id).rstrip("/\\")
    return os.path.basename(text).lower()


class ModelBinding:
    """The model-identity rule, shared by every engine (it needs ``meta``, ``_set_meta`` and
    ``location``): vectors of two models live in different spaces, so the first model to
    embed a page owns the collection (see :mod:`indexer.identity`)."""

    read_only: bool

    def meta(self, key: str) -> str | None:  # pragma: no cover - provided by the engine
        raise NotImplementedError

    def _set_meta(self, values: dict[str, str]) -> None:  # pragma: no cover
        raise NotImplementedError

    @property
    def location(self) -> str:  # pragma: no cover - provided by the engine
        raise NotImplementedError

    @property
    def model_id(self) -> str | None:
        return self.meta("model_id")

    @property
    def dim(self) -> int | None:
        value = self.meta("dim")
        return int(value) if value else None

    @property
    def model_fingerprint(self) -> str | None:
        """The recorded weights fingerprint (see :mod:`indexer.identity`); None in
        collections made before fingerprints, or by a model that has none."""
        return self.meta("model_fingerprint") or None

    def model_identity(self) -> ModelIdentity | None:
        """The model this collection records, or None before anything was embedded."""
        if self.model_id is None:
            return None
        return ModelIdentity(
            name=self.model_id,
            dim=self.dim,
            fingerprint=self.model_fingerprint,
            revision=self.meta("model_revision") or None,
        )

    def bind_model(
        self,
        model_id: str,
        dim: int | None,
        *,
        fingerprint: str | None = None,
        revision: str | None = None,
    ) -> None:
        """Record the model that embeds this collection, or fail if another one did.

        Vectors of two models live in different spaces: mixing them would return nonsense,
        so the first model to embed a page owns the collection. A collection recorded before
        fingerprints existed adopts the fingerprint of the first matching model (by name).
        """
        stored = self.model_identity()
        if stored is None:
            if not self.read_only:
                values = {"model_id": model_id, "dim": str(dim or "")}
                if fingerprint:
                    values["model_fingerprint"] = fingerprint
                if revision:
                    values["model_revision"] = revision
                self._set_meta(values)
            return
        if not self.same_model(model_id, dim, fingerprint=fingerprint):
            raise ModelMismatchError(
                mismatch_message(self.location, stored, model_id, dim, fingerprint)
            )
        if fingerprint and not stored.fingerprint and not self.read_only:
            self._set_meta({"model_fingerprint": fingerprint})

    def bind_embedder(self, embedder: object) -> None:
        """:meth:`bind_model` with an embedder's identity (name, dim, fingerprint)."""
        ident = ModelIdentity.of(embedder)
        self.bind_model(
            ident.name, ident.dim, fingerprint=ident.fingerprint, revision=ident.revision
        )

    def same_model(self, model_id: str, dim: int | None, *, fingerprint: str | None = None) -> bool:
        """Whether the given model is the one this collection records (True when none is).

        When both sides have a weights fingerprint, it decides alone: the same weights match
        from any folder or hub id, different weights never do. Otherwise (an old collection,
        or a model that cannot fingerprint itself) models compare by name.
        """
        stored = self.model_identity()
        if stored is None:
            return True
        if dim is not None and stored.dim is not None and stored.dim != dim:
            return False
        if fingerprint and stored.fingerprint:
            return fingerprint == stored.fingerprint
        return _model_key(stored.name) == _model_key(model_id)

    def render_settings(self) -> dict | None:
        value = self.meta("render_settings")
        return json.loads(value) if value else None

    def set_render_settings(self, settings: dict) -> None:
        self._set_meta({"render_settings": json.dumps(settings, sort_keys=True)})
