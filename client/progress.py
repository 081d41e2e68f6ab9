"""Progress of one long command (backup, restore, check) on stderr, never on stdout.

On a terminal: a `rich` bar with done/total files and bytes, percent, rate and ETA. In logs and
under `--json`: one JSON object per line every `interval` seconds (restic's `status` message),
and a last one at the end if any was written, so a short command prints none. Knows nothing of
what is counted: the command sets totals when it knows them and reports running counts.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Literal, TextIO

Style = Literal["bar", "lines", "off"]


def choose_style(json_output: bool, stream: TextIO | None = None) -> Style:
    """A bar for a person at a terminal; JSON lines for logs and for `--json` readers."""
    stream = stream or sys.stderr
    return "bar" if stream.isatty() and not json_output else "lines"


class Progress:
    def __init__(
        self,
        command: str,
        unit: str = "files",
        *,
        style: Style = "lines",
        interval: float = 10.0,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.command, self.unit, self.style, self.interval = command, unit, style, interval
        self.stream = stream or sys.stderr
        self.clock = clock
        self.total_items: int | None = None
        self.total_bytes: int | None = None
        self.items = self.bytes = 0
        self.current = ""
        self._start = self._last_line = clock()
        self._lines = 0
        self._bar: Any = None
        self._task: Any = None
        if style == "bar":
            self._start_bar()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(finished=exc[0] is None)

    def set_total(self, items: int | None = None, bytes: int | None = None) -> None:
        """Safe from another thread (the scanner): the next update shows it."""
        self.total_items, self.total_bytes = items, bytes

    def update(self, items: int, bytes: int, current: str = "") -> None:
        self.items, self.bytes, self.current = items, bytes, current
        self._show()

    def status(self) -> dict[str, Any]:
        """Where the command is, as a JSON-able document (field names as restic's)."""
        elapsed = max(self.clock() - self._start, 1e-9)
        doc: dict[str, Any] = {
            "message_type": "status",
            "command": self.command,
            "seconds_elapsed": round(elapsed, 1),
            f"{self.unit}_done": self.items,
            "bytes_done": self.bytes,
            "bytes_per_second": round(self.bytes / elapsed),
        }
        if self.total_items is not None:
            doc[f"total_{self.unit}"] = self.total_items
        if self.total_bytes is not None:
            doc["total_bytes"] = self.total_bytes
        fraction = self._fraction()
        if fraction is not None:
            doc["percent_done"] = round(fraction, 4)
            if 0 < fraction < 1:
                doc["seconds_remaining"] = round(elapsed * (1 - fraction) / fraction)
        return doc

    def close(self, finished: bool = True) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        elif self.style == "lines" and self._lines and finished:
            self._line()

    def _fraction(self) -> float | None:
        """Done share by bytes when their total is known, else by items."""
        if self.total_bytes:
            return min(self.bytes / self.total_bytes, 1.0)
        if self.total_items:
            return min(self.items / self.total_items, 1.0)
        if self.total_bytes == 0 or self.total_items == 0:
            return 1.0
        return None

    def _show(self) -> None:
        if self._bar is not None:
            self._refresh_bar()
        elif self.style == "lines" and self.clock() - self._last_line >= self.interval:
            self._line()

    def _line(self) -> None:
        self._last_line = self.clock()
        self._lines += 1
        self.stream.write(json.dumps(self.status()) + "\n")
        self.stream.flush()

    # -- the terminal bar -----------------------------------------------------------------------

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, TextColumn
        from rich.progress import Progress as Bar

        self._bar = Bar(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[line]}"),
            console=Console(file=self.stream),
            transient=True,  # the summary line replaces it
            refresh_per_second=4,
            redirect_stdout=False,  # stdout is the command's output, never the bar's
        )
        self._task = self._bar.add_task(self.command, total=None, line="")
        self._bar.start()

    def _refresh_bar(self) -> None:
        doc = self.status()
        fraction = doc.get("percent_done")
        self._bar.update(
            self._task,
            total=1.0 if fraction is not None else None,
            completed=fraction or 0.0,
            line=bar_text(doc, self.unit, self.current),
        )


def bar_text(doc: dict[str, Any], unit: str, current: str) -> str:
    """`42% 1,204/2,900 files 1.2/3.4 GiB 48.0 MiB/s ETA 0:00:51 /srv/pacs/…`"""
    total = doc.get(f"total_{unit}")
    parts = [f"{doc['percent_done']:.0%}"] if "percent_done" in doc else []
    parts.append(
        f"{doc[f'{unit}_done']:,}" + (f"/{total:,}" if total is not None else "") + f" {unit}"
    )
    total_bytes = doc.get("total_bytes")
    parts.append(size(doc["bytes_done"]) + (f"/{size(total_bytes)}" if total_bytes else ""))
    parts.append(f"{size(doc['bytes_per_second'])}/s")
    if "seconds_remaining" in doc:
        parts.append(f"ETA {clock_time(doc['seconds_remaining'])}")
    if current:
        parts.append(current if len(current) <= 40 else "…" + current[-39:])
    return "  ".join(parts)


def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def clock_time(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def scan_totals(paths: Iterable[str], progress: Progress) -> threading.Thread:
    """Count the files and bytes under `paths` in a thread, as restic's scanner does, and give
    them to `progress` as its totals when done. Links are not followed; errors are skipped (the
    backup itself reports them)."""

    def run() -> None:
        files = total = 0
        for path in paths:
            for st in _walk_stats(path):
                if stat.S_ISREG(st.st_mode):
                    files, total = files + 1, total + st.st_size
        progress.set_total(files, total)

    thread = threading.Thread(target=run, name="progress-scan", daemon=True)
    thread.start()
    return thread


def _walk_stats(path: str) -> Iterable[os.stat_result]:
    try:
        st = os.lstat(path)
    except OSError:
        return
    yield st
    if not stat.S_ISDIR(st.st_mode):
        return
    for dirpath, dirnames, filenames in os.walk(path, onerror=lambda e: None):
        for name in (*dirnames, *filenames):
            try:
                yield os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
