"""Evidence for a hit: where on the page the answer lies.

Holds ``visual`` (a heat map over a page from embedded overlapping crops, an approximation)
and ``cache`` (:class:`~retriever.evidence.cache.EvidenceCache`, so a second request for the
same page, query and model is free).

May import :mod:`indexer` (the ``Embedder`` interface, config, progress), never :mod:`app`
or :mod:`pagelens`.
"""
