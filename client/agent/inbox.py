"""The instance spool: DICOM instances received over the network, each a durable Part 10 file.

Owns the one promise the C-STORE receiver makes: an instance is in the spool (temp file, fsync,
rename, folder fsync) before Success is answered, so an acknowledged image survives a kill or a
power cut the next moment. Files are named `<arrival ns>-<seq>-<SOP Instance UID>.dcm`, so the
folder lists in arrival order and a name is never reused. Knows nothing of backups or servers;
the daemon removes files once their snapshot is committed.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from engine.store.local import fsync_dir

TMP_PREFIX = ".tmp-"
SUFFIX = ".dcm"
_UID = re.compile(r"^[0-9.]{1,64}$")


@dataclass(frozen=True, slots=True)
class Instance:
    path: Path
    sop_instance_uid: str
    size: int


def instance_of(path: Path, size: int) -> Instance | None:
    """The spool entry a file name describes, or None if the name is not one of ours."""
    name = path.name
    if not name.endswith(SUFFIX) or name.startswith("."):
        return None
    parts = name[: -len(SUFFIX)].split("-", 2)
    if len(parts) != 3 or not parts[0].isdigit():
        return None
    return Instance(path, parts[2], size)


class Inbox:
    """A folder of received instances. `write` is safe to call from many receiver threads."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        for stray in folder.glob(f"{TMP_PREFIX}*"):  # a receive cut short: never acknowledged
            stray.unlink(missing_ok=True)
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self._bytes = sum(i.size for i in self.pending())

    @property
    def held_bytes(self) -> int:
        """Bytes of instances waiting (kept as a running total; exact after a restart)."""
        return self._bytes

    def write(self, sop_instance_uid: str, data: bytes) -> Instance:
        """Store one instance durably; return only once it would survive a crash."""
        uid = sop_instance_uid.strip("\0 ")
        if not _UID.match(uid):
            uid = "x" + secrets.token_hex(8)  # a malformed UID still gets a safe, unique name
        with self._lock:
            seq = next(self._seq)
        path = self.folder / f"{time.time_ns():020d}-{seq:06d}-{uid}{SUFFIX}"
        tmp = self.folder / f"{TMP_PREFIX}{secrets.token_hex(8)}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        fsync_dir(self.folder)
        with self._lock:
            self._bytes += len(data)
        return Instance(path, uid, len(data))

    def pending(self) -> list[Instance]:
        """Every instance waiting, in arrival order."""
        out = []
        for entry in os.scandir(self.folder):
            with contextlib.suppress(FileNotFoundError):
                inst = instance_of(Path(entry.path), entry.stat().st_size)
                if inst is not None:
                    out.append(inst)
        return sorted(out, key=lambda i: i.path.name)

    def remove(self, instances: list[Instance]) -> None:
        """Delete instances whose snapshot is committed (the caller's promise)."""
        for inst in instances:
            with contextlib.suppress(FileNotFoundError):
                inst.path.unlink()
                with self._lock:
                    self._bytes -= inst.size
        fsync_dir(self.folder)
