"""How big a rendered page is: the scale that fills the pixel budget, and the white padding
that brings extreme pages within what Qwen2-VL accepts. Imports pages.types only."""

from __future__ import annotations

import math

from PIL import Image

from indexer.pages.types import RenderSettings


def plan_scale(width: float, height: float, settings: RenderSettings, *, upscale: bool) -> float:
    """The scale (pixels per unit) at which a ``width x height`` page fills the pixel budget.

    The budget is spent on the *final* image, padding included: when the page is more
    elongated than ``max_aspect_ratio`` (or than ``min_side`` allows within the budget), the
    long side gets ``sqrt(budget * ratio)`` pixels and the short side is padded later.
    """
    budget = settings.max_pixels
    long_side, short_side = max(width, height), min(width, height)
    ratio = long_side / short_side
    ratio_cap = min(settings.max_aspect_ratio, max(1.0, budget / settings.min_side**2))
    target_long = math.sqrt(budget * min(ratio, ratio_cap))
    scale = target_long / long_side
    if upscale:
        # Cap the zoom for tiny pages, but always allow enough to reach min_side.
        scale = min(scale, max(settings.max_zoom, settings.min_side / short_side))
    else:
        scale = min(scale, 1.0)
    return scale


def padded_size(width: int, height: int, settings: RenderSettings) -> tuple[int, int]:
    """Smallest size >= (width, height) that Qwen accepts: sides >= min_side, ratio <= max."""
    width = max(width, settings.min_side)
    height = max(height, settings.min_side)
    if width >= height:
        height = max(height, math.ceil(width / settings.max_aspect_ratio))
    else:
        width = max(width, math.ceil(height / settings.max_aspect_ratio))
    return width, height


def pad(image: Image.Image, settings: RenderSettings) -> Image.Image:
    """Pad with white (content centred) to the size Qwen accepts; no-op for normal pages."""
    size = padded_size(image.width, image.height, settings)
    if size == image.size:
        return image
    canvas = Image.new("RGB", size, (255, 255, 255))
    canvas.paste(image, ((size[0] - image.width) // 2, (size[1] - image.height) // 2))
    return canvas
