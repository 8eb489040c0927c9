"""The API's size limits, in one place so the docs, the CLI and the tests agree."""

from __future__ import annotations

from indexer.pages.decoding import DECODE_BUDGET_BYTES, DECODE_WAIT_S

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
#: Bytes all the image decodes running at once may take, as estimated from each image's header
#: (a progressive JPEG's full-size coefficients included): decodes wait for room, and one
#: image whose estimate alone is larger is refused. Not a count: one progressive 8000 x 8000
#: CMYK JPEG of 1 MB needs ~0.55 GB, more than forty ordinary photos.
MAX_DECODE_BYTES = DECODE_BUDGET_BYTES
#: Seconds an image waits for room in that budget before the request gets 503.
MAX_DECODE_WAIT_S = DECODE_WAIT_S
#: Decoded pixels of all the images of one request together (after downscaling).
MAX_REQUEST_PIXELS = 64_000_000
#: Bytes of one request body (Content-Length, and counted as a chunked body arrives).
MAX_REQUEST_BYTES = 64 * 1024 * 1024
#: Most hits one search may ask for.
MAX_K = 100
