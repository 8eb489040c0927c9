"""Reranking: the :class:`~indexer.model.rerank.base.Reranker` interface and Qwen3-VL-Reranker.

Holds ``base`` (the interface with :class:`RerankQuery` and :class:`RerankPage`), ``recipe``
(Qwen3-VL-Reranker's prompt, image budget and constants, from the reference inference
script), ``qwen3vl`` (:class:`Qwen3VLReranker`: batching, forward, the yes/no score),
``loading`` (:func:`load_reranker`, with GME's offline handling) and ``random``
(random-weight checkpoints for tests and the bench).

May import: ``indexer.model.base``, ``indexer.model.gme`` (its hub helpers and random
tokenizer), ``indexer.model.runtime``, ``indexer.config``, ``indexer.errors`` and
``indexer.identity``. Import the submodules themselves: this package imports nothing, so
``indexer.model.rerank.base`` does not import torch.
"""
