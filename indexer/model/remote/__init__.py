"""GME behind an OpenAI-compatible ``/v1/embeddings`` endpoint: index here, embed elsewhere.

On a laptop CPU a page costs tens of seconds at GME's published budget; on one GPU it costs a
fraction of a second. :class:`RemoteEmbedder` implements the same
:class:`~indexer.embedder.Embedder` interface as the in-process
:class:`~indexer.gme.GmeEmbedder`, so the indexer, the retriever, the app and ``pagelens
serve`` use it unchanged. The first target is PageLens's own ``pagelens serve`` on a GPU
machine; the request shapes are the ones it serves, which are also those of hosted GME APIs:

* texts are strings, images ``{"image": "data:image/png;base64,..."}``, fused inputs
  ``{"text": ..., "image": ...}``;
* ``"input_type": "query"`` for GME's retrieval-query instruction, ``"document"`` for the
  default one, ``"instruction"`` (a PageLens extension) for any other.

Why the vectors equal local ones: pages are rendered here at the endpoint's visual-token
budget (read from its model card) and sent as PNG, which is lossless, so the server's GME
sees the very pixels the local one would; the returned vectors are re-normalised float32.

Throughput: a call's inputs are split into requests of ``batch_size`` inputs, and up to
``concurrency`` requests are in flight at once, so one client keeps a GPU server busy.
:attr:`batch_hint` tells the indexer how many pages to hand over per call.

Faults: every request has a timeout; connection errors, timeouts, 408, 429 and 5xx answers
are retried with exponential backoff (with jitter, capped), honouring ``Retry-After``: an
index run rides out a server restarting mid-job. A query is different: a person waits, so
with ``fail_fast`` (what ``pagelens search`` and ``ask`` use) a refused connection (nothing
listens at that address) fails at once with one line instead of ~1.5 min of retries. When
a request finally fails, :class:`~indexer.errors.EmbeddingError` says which inputs got no
vector and why; the indexer stores the others and leaves those pages pending (never stored
without a vector), so a later run fills them in. An input the server refuses on its own
(``400`` naming ``input[i]``) fails alone; the rest of its request is sent again.

Identity: the endpoint's model id and dimension (from ``/v1/models``, or from the first
response) are this embedder's :attr:`model_id` and :attr:`dim`, and the weights'
``fingerprint`` (see :mod:`indexer.identity`; ``pagelens serve`` puts it in its model card)
is its :attr:`fingerprint`, so a collection records the same identity whether its model ran
here or there, and a collection built with another model refuses it before anything is
written. An endpoint that gives no fingerprint is matched by name, like any such model.

Security: ``https://`` works (system certificates; ``verify=`` or ``$PAGELENS_EMBEDDER_CA``
for a private CA; a refused certificate is an error at once, not retried); the API key
goes only into the ``Authorization`` header and never into a message, log line, ``repr`` or
the collection's metadata; credentials written into the URL itself are refused.

Modules: ``client`` (:class:`RemoteEmbedder`, :func:`load_remote_embedder`), ``http``
(addresses, retries, error answers, TLS) and ``wire`` (what goes over the wire: exact PNGs,
data URLs, inputs and vectors). The package imports indexer.config, indexer.errors and the
embedder interface; nothing imports it but the model loader and programs.
"""

from indexer.model.remote.client import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CONCURRENCY,
    RemoteEmbedder,
    load_remote_embedder,
)
from indexer.model.remote.http import (
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    MAX_RETRY_AFTER,
    RetryPolicy,
    api_base,
    is_endpoint_url,
    parse_retry_after,
    redact_url,
)
from indexer.model.remote.wire import image_data_url, png_exact

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT",
    "MAX_RETRY_AFTER",
    "RemoteEmbedder",
    "RetryPolicy",
    "api_base",
    "image_data_url",
    "is_endpoint_url",
    "load_remote_embedder",
    "parse_retry_after",
    "png_exact",
    "redact_url",
]
