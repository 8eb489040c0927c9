"""PageLens benchmark (``pagelens bench`` / ``python -m bench.bench``); see bench/README.md."""
