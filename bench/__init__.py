"""PageLens benchmark (``pagelens bench`` / ``python -m bench.bench``); see bench/README.md.

A program, not library code: ``bench.bench`` holds the options, the run and ``main``; one
module per part of a run beside it (``machine`` probes, ``flops``, the PDF ``corpus``,
``model_build``, ``page_phase``, ``query_phase``, ``model_phases``, ``vectors``, ``report``,
and the optional phases ``long_pdf``, ``remote_overhead``, ``ray_bench``, ``store_engines``;
``common`` holds the small helpers they share). It may import indexer, retriever, app and
pagelens (public names); nothing in those packages imports it but ``pagelens bench``
(app/cli_bench.py), which loads ``bench.bench`` lazily from a checkout.
"""
