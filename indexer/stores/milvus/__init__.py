"""The Milvus engine: a collection whose documents and pages live in Milvus.

``milvus://HOST:PORT/NAME`` (``milvuss://`` for TLS, verified against gRPC's public roots
or the CA file ``PAGELENS_MILVUS_CA``; token from ``PAGELENS_MILVUS_TOKEN``, sent as gRPC
``authorization`` metadata and never put in a message or stored) names three Milvus
collections:

``NAME_pages``
    one row per page: ``id`` (INT64 primary key), ``document_id``, ``number``, ``text`` (the
    text layer, analysed for BM25), ``sparse`` (its BM25 vector, computed by Milvus's BM25
    function), ``image`` (key in the image store), ``image_sha256``, ``width``, ``height``,
    ``embedded`` (bool), ``embedded_at`` and ``vector`` (FLOAT_VECTOR, the model's dim; zeros
    while pending). Dense index: **HNSW, metric IP** (``M=16``, ``efConstruction=200``;
    search ``ef = max(64, k)``); page vectors are unit length, so IP is the cosine the local
    engine reports. Text index: ``SPARSE_INVERTED_INDEX`` with metric ``BM25``.
``NAME_documents``
    one row per document (the local catalog's columns).
``NAME_meta``
    the collection's identity: model, dim, fingerprint, render settings, image store; the
    placeholders of failed pages (``failed:<doc>:<page>``) and the modification times a
    sync recorded (``source:<sha256>``, module ``sources``).

Ids are deterministic: a document's id is the first 60 bits of its SHA-256, a page's id the
first 60 bits of SHA-256 of ``"<document id>:<number>"``. Two processes indexing the same
file, or a re-run after a crash, write the same rows again (upsert) and can never duplicate
them; that is why :meth:`MilvusCollection.writing` holds no lock and any number of
processes on any number of machines may index into one collection at once.

Visibility: an image is written (image store) before the page row that names it, and a
page row carries its vector in the same upsert that sets ``embedded = true``; visual search
filters on ``embedded == true``. So a page is found only once its row, image (and for visual
search its vector) are all stored. All reads use Strong consistency. Documents a sync holds
hidden (status ``staged`` or ``replaced``) are left out of every search by the expression
(``document_id not in [...]``); a changed file's swap is one upsert of both document rows.

Every filter (documents, page range) becomes a Milvus boolean expression applied inside the
search, never a post-filter of a top-k. Hybrid search is ``hybrid_search`` with
``RRFRanker(RRF_K)``, the constant of the local engine, so both rank the same way.

Every call has a bounded timeout (``PAGELENS_MILVUS_TIMEOUT``, default 10 s) and any failure
of the server becomes one :class:`~indexer.errors.CollectionError` line.

The package, one module per concern (each imports only those above it in this list, plus
:mod:`indexer.config`, :mod:`indexer.errors`, :mod:`indexer.stores.types` for the row types and
:mod:`indexer.stores.base`; pymilvus is imported inside functions, so importing the package
never needs the ``milvus`` extra):

``images``      where page images live (a folder or an S3-compatible bucket);
``address``     ``milvus://HOST:PORT/NAME`` parsed, checked and redacted;
``client``      the connection (token, TLS), bounded calls, retries, one-line errors;
``schema``      field lists, ids, BM25 words, the DDL of the three collections, meta rows;
``query``       filters as Milvus expressions, dense/BM25/hybrid search;
``documents``   document rows, their status and failed pages;
``collection``  :class:`~indexer.stores.milvus.collection.MilvusCollection`, the engine
                (pages, vectors, images, housekeeping) built from the layers above.

Nothing outside :mod:`indexer.stores` imports this package: ``open_collection`` picks it.
"""
