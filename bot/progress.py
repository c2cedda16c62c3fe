"""A text progress bar on stderr for long commands (import, broadcast), no dependency.

On a terminal it redraws one line; in a log (not a terminal) it writes a line at every
tenth of the way, so CI logs stay short and still show that work is moving.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """``label [########------]  57%  5700/10000  extra``."""

    def __init__(self, label: str, total: int, *, stream: TextIO | None = None,
                 width: int = 28, interval_s: float = 0.1) -> None:
        self.label = label
        self.total = max(0, total)
        self.stream = stream or sys.stderr
        self.width = width
        self.interval_s = interval_s
        self.done = 0
        self.extra = ""
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_draw = 0.0
        self._last_tenth = -1

    def line(self) -> str:
        """Return the bar as text."""
        total = self.total or 1
        frac = min(1.0, self.done / total) if self.total else 1.0
        filled = int(round(frac * self.width))
        bar = "#" * filled + "-" * (self.width - filled)
        text = f"{self.label} [{bar}] {int(frac * 100):3d}%  {self.done}/{self.total}"
        return f"{text}  {self.extra}".rstrip()

    def update(self, done: int, total: int | None = None, extra: str = "") -> None:
        """Move the bar to ``done`` (of ``total``, when it changed)."""
        if total is not None:
            self.total = max(0, total)
        self.done, self.extra = done, extra
        now = time.monotonic()
        if self._tty:
            if now - self._last_draw >= self.interval_s:
                self._last_draw = now
                self.stream.write("\r" + self.line() + "\x1b[K")
                self.stream.flush()
            return
        tenth = int(10 * min(1.0, done / self.total)) if self.total else 10
        if tenth > self._last_tenth:
            self._last_tenth = tenth
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def finish(self, extra: str = "", *, complete: bool = True) -> None:
        """Draw the bar a last time (at its end unless not complete) and leave the line."""
        if complete:
            self.done = max(self.done, self.total)
        self.extra = extra or self.extra
        tenth = int(10 * min(1.0, self.done / self.total)) if self.total else 10
        if self._tty:
            self.stream.write("\r" + self.line() + "\x1b[K\n")
        elif self._last_tenth < tenth or not complete:
            self.stream.write(self.line() + "\n")
        self._last_tenth = tenth
        self.stream.flush()
