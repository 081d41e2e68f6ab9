"""A one-line progress display on a terminal's stderr; silent when stderr is not a terminal."""

from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    def __init__(self, enabled: bool | None = None, interval: float = 0.2) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.interval = interval
        self._last = 0.0

    def __call__(self, summary: Any, current: str) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        self._last = now
        mib = getattr(summary, "bytes_read", getattr(summary, "bytes_written", 0)) / 2**20
        line = f"{summary.files} files, {mib:,.1f} MiB  {current[-60:]}"
        sys.stderr.write("\r\033[K" + line)
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled and self._last:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
