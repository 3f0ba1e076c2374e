"""A one-line progress bar on standard error, redrawn in place."""

from __future__ import annotations

import sys
import time
from typing import IO


class ProgressBar:
    """Shows `label [#####.....] done/total` and the elapsed time; call `advance` per step and `close` at the end.

    On a terminal the bar is redrawn in place; elsewhere (a log, a pipe) only the final line is written.
    """

    def __init__(self, label: str, total: int, stream: IO[str] = sys.stderr, width: int = 30) -> None:
        self._label = label
        self._total = max(total, 1)
        self._stream = stream
        self._width = width
        self._done = 0
        self._started = time.monotonic()
        self._live = stream.isatty()
        if self._live:
            self._draw()

    def advance(self, steps: int = 1) -> None:
        """Records `steps` more steps done and redraws."""
        self._done = min(self._total, self._done + steps)
        if self._live:
            self._draw()

    def close(self) -> None:
        """Ends the bar's line."""
        if not self._live:
            self._draw()
        self._stream.write("\n")
        self._stream.flush()

    def _draw(self) -> None:
        filled = self._width * self._done // self._total
        elapsed = time.monotonic() - self._started
        redraw = "\r" if self._live else ""
        self._stream.write(f"{redraw}{self._label} [{'#' * filled}{'.' * (self._width - filled)}] "
                           f"{self._done}/{self._total} {elapsed:5.1f} s")
        self._stream.flush()
