"""The API's size limits, in one place so the docs, the CLI and the tests agree."""

from __future__ import annotations

#: Most inputs in one embeddings request (OpenAI allows 2048; images make ours heavier).
MAX_ITEMS = 256
#: Characters per text input, refused before tokenising (GME's 1800 tokens are far fewer).
MAX_TEXT_CHARS = 65_536
MAX_INSTRUCTION_CHARS = 2_000
#: Bytes of one image (decoded from its data URL, or downloaded).
MAX_IMAGE_BYTES = 20 * 1024 * 1024
#: Pixels of one image (checked from its header, before decoding); JPEGs may have four times
#: as many, since they are decoded at 1/2..1/8 scale. Every image is kept at most at
#: :data:`indexer.pages.raster.TARGET_PIXELS` (~4 M) once decoded.
MAX_IMAGE_PIXELS = 16_000_000
#: Decoded pixels of all the images of one request together (after downscaling).
MAX_REQUEST_PIXELS = 64_000_000
#: Bytes of one request body (Content-Length, and counted as a chunked body arrives).
MAX_REQUEST_BYTES = 64 * 1024 * 1024
#: Most hits one search may ask for.
MAX_K = 100
