"""A terminal progress bar for indexing: pages done/total, pages per second, ETA."""

from __future__ import annotations

import sys
import time

from indexer.pipeline import Progress, format_duration


class TerminalProgress:
    """Feeds :class:`~indexer.pipeline.Progress` events to stderr.

    On a terminal it redraws one line; elsewhere (CI logs, pipes) it prints a line at most
    every few seconds so that logs stay readable.
    """

    def __init__(self, *, stream=None, interval: float = 2.0) -> None:
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = interval
        self._last = 0.0

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        final = p.done >= p.total
        if not self.tty and not final and now - self._last < self.interval and p.done:
            return
        if p.total == 0:
            return
        self._last = now
        width = 28
        filled = int(width * p.done / max(p.total, 1))
        bar = "#" * filled + "-" * (width - filled)
        rate = f"{p.rate:6.2f} pages/s" if p.rate else "    - pages/s"
        eta = f"ETA {format_duration(p.eta_s)}" if p.eta_s is not None and not final else ""
        label = {"pages": "rendering", "vectors": "embedding"}.get(p.phase, p.phase)
        line = f"{label:9} [{bar}] {p.done}/{p.total} pages  {rate}  {eta}"
        if p.message:  # e.g. "rendered 120/500" while a Ray job embeds
            line += f"  {p.message}"
        if p.file:
            line += f"  {p.file[:40]}"
        if self.tty:
            end = "\n" if final else ""
            self.stream.write("\r\x1b[2K" + line + end)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
