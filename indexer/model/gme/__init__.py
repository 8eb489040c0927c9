"""GME (``Alibaba-NLP/gme-Qwen2-VL-2B-Instruct``) run in this process, on transformers.

Holds ``recipe`` (GME's prompt, image sizes and constants), ``embedder`` (:class:`GmeEmbedder`:
batching, forward, pooling), ``prefix`` (the prompt prefix kept as a KV cache),
``query_weights`` (which decoder weights text queries use: plan, choice and the policy the
embedder holds) with ``query_weights_cache`` (decisions kept on disk), ``speedups``
(opt-in int8 and ``torch.compile``), ``loading`` (:func:`load_embedder`), ``page_kernels``
(leaner vision forwards) and ``random`` (random-weight checkpoints for tests and the bench).

May import: ``indexer.model.base``, ``indexer.model.runtime``, ``indexer.config``,
``indexer.errors`` and ``indexer.identity``. Import the submodules themselves: this package
imports nothing, so ``indexer.model.gme.random`` does not load the embedder.
"""
