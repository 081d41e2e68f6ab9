"""Watched folders: files that appear or change are handed on once they are complete.

Owns change detection (inotify through `watchdog`, plus a periodic walk as the safety net for
events the kernel dropped or that happened while the agent was down) and the settle rule: a file
is complete once its size and mtime have not changed for `settle_seconds`. Does not back up and
does not decide what was already backed up: `is_new(path, size, mtime)` is the daemon's.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from client.agent.config import WatchSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Settled:
    path: str
    size: int
    mtime_ns: int


@dataclass(slots=True)
class _Candidate:
    watch: WatchSettings
    size: int
    mtime_ns: int
    since: float  # monotonic time the current signature was first seen


class Settler:
    """Candidates wait here until their signature has held for their folder's settle time."""

    def __init__(self, monotonic: Callable[[], float]) -> None:
        self._monotonic = monotonic
        self._candidates: dict[str, _Candidate] = {}

    def __len__(self) -> int:
        return len(self._candidates)

    def touch(self, path: str, watch: WatchSettings) -> None:
        """Note that `path` may have changed (an event, or a rescan found it)."""
        sig = _signature(path)
        if sig is None:
            self._candidates.pop(path, None)
            return
        old = self._candidates.get(path)
        if old is None or (old.size, old.mtime_ns) != sig:
            self._candidates[path] = _Candidate(watch, sig[0], sig[1], self._monotonic())

    def ready(self) -> list[Settled]:
        """Remove and return the candidates that have settled (re-checked on disk now)."""
        now, out = self._monotonic(), []
        for path, c in list(self._candidates.items()):
            if now - c.since < c.watch.settle_seconds:
                continue
            sig = _signature(path)
            if sig is None:
                del self._candidates[path]
            elif sig != (c.size, c.mtime_ns):
                self._candidates[path] = _Candidate(c.watch, sig[0], sig[1], now)
            else:
                del self._candidates[path]
                out.append(Settled(path, c.size, c.mtime_ns))
        return out


def _signature(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns) if stat.S_ISREG(st.st_mode) else None


def scan(watch: WatchSettings) -> Iterator[str]:
    """Every regular file under a watched folder that is not ignored."""
    if not watch.recursive:
        with os.scandir(watch.path) as it:
            yield from (
                e.path for e in it if e.is_file(follow_symlinks=False) and not watch.ignores(e.name)
            )
        return
    for root, dirs, files in os.walk(watch.path):
        dirs[:] = [d for d in dirs if not watch.ignores(d)]
        yield from (os.path.join(root, f) for f in files if not watch.ignores(f))


class _Handler(FileSystemEventHandler):
    def __init__(self, watch: WatchSettings, deliver: Callable[[str, WatchSettings], None]) -> None:
        self.watch, self.deliver = watch, deliver

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory or event.event_type not in ("created", "modified", "moved", "closed"):
            return
        raw = event.dest_path if event.event_type == "moved" else event.src_path
        path = raw.decode() if isinstance(raw, bytes) else raw
        if not self.watch.ignores(os.path.basename(path)) and self._inside(path):
            self.deliver(path, self.watch)

    def _inside(self, path: str) -> bool:
        parent = os.path.dirname(path)
        return self.watch.recursive or Path(parent) == self.watch.path


class Watcher:
    """inotify observers for every watched folder, feeding a `Settler` on the event loop."""

    def __init__(
        self, watches: tuple[WatchSettings, ...], settler: Settler, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.watches, self.settler, self.loop = watches, settler, loop
        self._observer = Observer()
        self.errors: list[str] = []

    def start(self) -> None:
        for w in self.watches:
            if not w.path.is_dir():
                self.errors.append(f"watched folder {w.path} does not exist")
                log.error("watched folder %s does not exist", w.path)
                continue
            self._observer.schedule(_Handler(w, self._deliver), str(w.path), recursive=w.recursive)
        self._observer.start()

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=5)

    def _deliver(self, path: str, watch: WatchSettings) -> None:
        """Observer thread: hand the path to the event loop."""
        self.loop.call_soon_threadsafe(self.settler.touch, path, watch)

    def changed(self, is_new: Callable[[str], bool]) -> list[tuple[str, WatchSettings]]:
        """Walk every folder; return the files `is_new` accepts. Runs in a worker thread."""
        found: list[tuple[str, WatchSettings]] = []
        for w in self.watches:
            if w.path.is_dir():
                found.extend((path, w) for path in scan(w) if is_new(path))
        return found
