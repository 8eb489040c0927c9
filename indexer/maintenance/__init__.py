"""Maintenance of a collection, for every engine: ``check`` (is it consistent?), ``repair``
(fix what can be fixed) and ``migrate`` (copy it to another engine without re-embedding).

May import :mod:`indexer.stores` (the :class:`~indexer.stores.base.Store` protocol, its
capabilities and value types, ``open_collection``), :mod:`indexer.pages`,
:mod:`indexer.pipeline`, the embedder protocol and :mod:`indexer.errors`. Never an engine
module: what only one engine's storage can suffer is checked by that engine, through the
:class:`~indexer.stores.base.StorageChecks` capability.
"""
