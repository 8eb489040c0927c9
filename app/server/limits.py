"""The API's size limits, in one place so the docs, the CLI and the tests agree."""

from __future__ import annotations

#: Most inputs in one embeddings request (OpenAI allows 2048; images make ours heavier).
MAX_ITEMS = 256
#: Characters per text input, refused before tokenising (GME's 1800 tokens are far fewer).
MAX_TEXT_CHARS = 65_536
MAX_INSTRUCTION_CHARS = 2_000
#: Bytes of one image (decoded from its data URL, or downloaded).
MAX_IMAGE_BYTES = 20 * 1024 * 1024
#: Pixels of one image (checked from its header, before decoding).
MAX_IMAGE_PIXELS = 50_000_000
#: Bytes of one request body (checked against Content-Length).
MAX_REQUEST_BYTES = 64 * 1024 * 1024
#: Most hits one search may ask for.
MAX_K = 100
