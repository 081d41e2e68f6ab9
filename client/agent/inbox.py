"""The instance spool: DICOM instances received over the network, each a durable Part 10 file.

Owns the one promise the C-STORE receiver makes: an instance is in the spool (temp file, fsync,
rename, folder fsync) before Success is answered, so an acknowledged image survives a kill or a
power cut the next moment. Files are named `<arrival ns>-<seq>-<SOP Class UID>-<SOP Instance
UID>[-<the dataset's own SOP Instance UID, if it differs>].dcm` (spools from before the class was
kept hold `<arrival ns>-<seq>-<SOP Instance UID>.dcm`), so the folder lists in arrival order and a
name is never reused; only valid DICOM UIDs (`valid_uid`) ever go into a name. Knows nothing of
backups or servers; the daemon removes files once their snapshot is committed.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from engine.store.local import fsync_dir

TMP_PREFIX = ".tmp-"
SUFFIX = ".dcm"
# PS3.5 9.1: digit components separated by dots, at most 64 characters. Leading zeros in a
# component break the rule but are tolerated: deployed modalities emit them and they are harmless.
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
MAX_UID = 64


def valid_uid(text: str) -> bool:
    return len(text) <= MAX_UID and _UID.match(text) is not None


@dataclass(frozen=True, slots=True)
class Instance:
    path: Path
    sop_instance_uid: str
    size: int
    sop_class_uid: str = ""  # "" in a spool written before the class was kept
    dataset_uid: str = ""  # the dataset's own SOP Instance UID when it differs from the command's

    @property
    def key(self) -> tuple[str, str]:
        """(SOP Class UID, SOP Instance UID) as the sender's command named them."""
        return self.sop_class_uid, self.sop_instance_uid


def instance_of(path: Path, size: int) -> Instance | None:
    """The spool entry a file name describes, or None if the name is not one of ours."""
    name = path.name
    if not name.endswith(SUFFIX) or name.startswith("."):
        return None
    parts = name[: -len(SUFFIX)].split("-")
    if not 3 <= len(parts) <= 5 or not parts[0].isdigit():
        return None
    if len(parts) == 3:  # the older name, without the class
        return Instance(path, parts[2], size)
    return Instance(path, parts[3], size, parts[2], parts[4] if len(parts) == 5 else "")


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

    def adopt(self, tmp: Path, key: tuple[str, str], dataset_uid: str = "") -> Instance:
        """Make the received file `tmp` (in this folder) durable as the instance `key` (SOP
        Class UID, SOP Instance UID); return only once it would survive a crash."""
        names = (*key, dataset_uid) if dataset_uid else key
        if not all(valid_uid(uid) for uid in names):
            raise ValueError(f"not valid DICOM UIDs: {names!r}")  # never part of a path
        with self._lock:
            seq = next(self._seq)
        path = self.folder / f"{time.time_ns():020d}-{seq:06d}-{'-'.join(names)}{SUFFIX}"
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        size = os.stat(tmp).st_size
        os.rename(tmp, path)
        fsync_dir(self.folder)
        with self._lock:
            self._bytes += size
        return Instance(path, key[1], size, key[0], dataset_uid)

    def drop_stale_temps(self, now: float, older_than: float) -> int:
        """Remove temporary files untouched for `older_than` seconds: receives cut short (an
        aborted association leaves pynetdicom's file behind). A live receive writes to its file
        with every PDU, so one silent this long belongs to no association still open."""
        dropped = 0
        for stray in self.folder.glob(f"{TMP_PREFIX}*"):
            with contextlib.suppress(FileNotFoundError):
                if now - stray.stat().st_mtime > older_than:
                    stray.unlink()
                    dropped += 1
        return dropped

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
