"""Send a study (or series) from a snapshot to a DICOM peer by C-STORE, exactly as it was stored.

Owns the `AET@HOST:PORT` peer syntax, the associations (pynetdicom) and per-instance staging:
one instance at a time is restored to a temp file, and its dataset bytes go on the wire as
stored (pynetdicom's chunked send), proposed in the file's own SOP class and transfer syntax.
Never transcodes, never decodes pixel data, and keeps at most one instance on disk.
pynetdicom is imported only when a study is sent, so the rest of the CLI starts without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomFileLike
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID

from client.repository import Repository
from client.restore import Restorer, catalogue
from engine.catalogue import Entry
from engine.errors import DicomvaultError, NotFound, UsageError
from engine.ids import SnapshotId

MAX_AET = 16  # characters in an AE title (PS3.5, VR AE)
MAX_CONTEXTS = 128  # presentation contexts one association may propose (odd ids 1-255)
DEFAULT_TIMEOUT = 30.0  # seconds for association, DIMSE and network waits
WARNING_STATUSES = frozenset({0xB000, 0xB006, 0xB007})  # stored, with coercion or discards

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"


class SendFailed(DicomvaultError):
    """A DICOM peer did not store every instance."""

    exit_code = 18


@dataclass(frozen=True, slots=True)
class Peer:
    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Peer:
        """`AET@HOST:PORT`; an IPv6 host goes in brackets: `PACS@[::1]:104`."""
        aet, at, address = text.partition("@")
        host, colon, port = address.rpartition(":")
        host = host.strip("[]")
        if not at or not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UsageError(f"bad DICOM peer {text!r}: use AET@HOST:PORT")
        return cls(check_aet(aet), host, int(port))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def check_aet(aet: str) -> str:
    if not aet.strip() or len(aet) > MAX_AET or "\\" in aet or not aet.isascii():
        raise UsageError(f"bad AE title {aet!r}: 1-{MAX_AET} ASCII characters, no backslash")
    return aet


@dataclass(frozen=True, slots=True)
class Staged:
    """One instance on disk, ready for pynetdicom's byte-exact send."""

    path: Path
    sop_class: str
    sop_instance: str
    transfer_syntax: str


@dataclass(slots=True)
class InstanceResult:
    path: str
    sop_instance: str
    ok: bool
    status: int | None  # DIMSE status from the peer; None when no response was had
    message: str

    def as_json(self) -> dict[str, Any]:
        return {"path": "/" + self.path, "SOPInstanceUID": self.sop_instance, "ok": self.ok,
                "status": self.status, "message": self.message}  # fmt: skip


@dataclass
class SendSummary:
    snapshot: str = ""
    peer: str = ""
    instances: int = 0
    sent: int = 0
    warnings: int = 0
    failed: int = 0
    bytes_sent: int = 0
    duration_s: float = 0.0
    results: list[InstanceResult] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        doc = {k: v for k, v in self.__dict__.items() if k != "results"}
        doc["results"] = [r.as_json() for r in self.results]
        return doc


# --- staging -------------------------------------------------------------------------------------


def stage(path: Path, hint_ts: str | None) -> Staged:
    """Name what pynetdicom needs to send `path` as it is: SOP class and instance, and syntax.

    A file without a complete file meta group (no preamble, or a meta group lacking the SOP or
    syntax elements) is rewritten once with a fresh meta group in front of its unchanged dataset
    bytes: the meta group never goes on the wire, the dataset does, byte for byte.
    """
    meta, offset, has_preamble = _file_meta(path)
    sop_class = meta.get("MediaStorageSOPClassUID")
    sop_instance = meta.get("MediaStorageSOPInstanceUID")
    ts = meta.get("TransferSyntaxUID")
    if has_preamble and sop_class and sop_instance and ts:
        return Staged(path, str(sop_class), str(sop_instance), str(ts))
    ds_class, ds_instance, ds_ts = _dataset_ids(path, offset)
    staged = Staged(
        path.with_name(path.name + ".meta"),
        str(sop_class or ds_class or ""),
        str(sop_instance or ds_instance or ""),
        str(ts or hint_ts or ds_ts),
    )
    if not staged.sop_class or not staged.sop_instance:
        raise ValueError("no SOP Class UID or SOP Instance UID: not a storable instance")
    _write_with_meta(path, offset, staged)
    return staged


def _file_meta(path: Path) -> tuple[Any, int, bool]:
    """(meta dataset, offset of the dataset after it, whether the DICM preamble is there)."""
    with open(path, "rb") as fp:
        has_preamble = fp.read(132)[128:] == b"DICM"
        if not has_preamble:
            fp.seek(0)
        try:
            meta = read_dataset(
                fp, is_implicit_VR=False, is_little_endian=True,
                stop_when=lambda tag, vr, length: tag.group != 2,
            )  # fmt: skip
        except Exception:  # an unreadable meta group: treat the file as a bare dataset
            fp.seek(132 if has_preamble else 0)
            meta = Dataset()
        return meta, fp.tell(), has_preamble


def _dataset_ids(path: Path, offset: int) -> tuple[str, str, str]:
    """SOP class, SOP instance and the encoding pydicom found the dataset in."""
    with open(path, "rb") as fp:
        fp.seek(offset)
        ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
    implicit, little = ds.original_encoding
    ts = IMPLICIT_VR_LE if implicit else EXPLICIT_VR_LE if little else EXPLICIT_VR_BE
    return str(ds.get("SOPClassUID", "")), str(ds.get("SOPInstanceUID", "")), ts


def _write_with_meta(source: Path, offset: int, staged: Staged) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(staged.sop_class)
    meta.MediaStorageSOPInstanceUID = UID(staged.sop_instance)
    meta.TransferSyntaxUID = UID(staged.transfer_syntax)
    with open(staged.path, "wb") as out, open(source, "rb") as src:
        out.write(bytes(128) + b"DICM")
        write_file_meta_info(DicomFileLike(out), meta, enforce_standard=True)
        src.seek(offset)
        while block := src.read(1 << 20):
            out.write(block)


# --- association ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _chunked_send() -> Iterator[None]:
    """Make pynetdicom send a file's dataset bytes unchanged, in an exactly matching context."""
    from pynetdicom import _config

    before = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = before


class CannotAssociate(Exception):
    """The peer refused, aborted or could not be reached: every further instance would fail too."""


class Sender:
    """C-STORE over associations to one peer; a new association when a new context is needed."""

    def __init__(self, peer: Peer, calling_aet: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.peer, self.calling_aet, self.timeout = peer, check_aet(calling_aet), timeout
        self._assoc: Any = None
        self._accepted: set[tuple[str, str]] = set()
        self._proposed: dict[tuple[str, str], None] = {}  # insertion-ordered: newest last
        self._message_id = 0

    def send(self, staged: Staged) -> tuple[bool, int | None, str]:
        """Store one instance: (ok, status, message). Raises CannotAssociate."""
        pair = (staged.sop_class, staged.transfer_syntax)
        if pair not in self._proposed or self._assoc is None or not self._assoc.is_established:
            self._associate(pair)
        if pair not in self._accepted:
            return False, None, f"peer accepts no context for {_ts_name(pair[1])} ({pair[0]})"
        self._message_id = self._message_id % 0xFFFF + 1
        try:
            with _chunked_send():
                status = self._assoc.send_c_store(staged.path, msg_id=self._message_id)
        except (ValueError, AttributeError, RuntimeError) as e:
            return False, None, str(e)
        return _verdict(status)

    def close(self) -> None:
        if self._assoc is not None and self._assoc.is_established:
            self._assoc.release()
        self._assoc = None

    def _associate(self, pair: tuple[str, str]) -> None:
        from pynetdicom import AE

        self.close()
        self._proposed.pop(pair, None)
        self._proposed[pair] = None
        while len(self._proposed) > MAX_CONTEXTS:
            self._proposed.pop(next(iter(self._proposed)))
        ae = AE(ae_title=self.calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        for sop_class, ts in self._proposed:
            ae.add_requested_context(sop_class, ts)
        assoc = ae.associate(self.peer.host, self.peer.port, ae_title=self.peer.ae_title)
        if not assoc.is_established:
            why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "failed"
            raise CannotAssociate(f"association with {self.peer} {why}")
        self._assoc = assoc
        self._accepted = {
            (str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts
        }


def _verdict(status: Any) -> tuple[bool, int | None, str]:
    if not status or "Status" not in status:
        return False, None, "no response from the peer (timeout or abort)"
    code = int(status.Status)
    if code == 0:
        return True, code, "stored"
    if code in WARNING_STATUSES:
        return True, code, f"stored with warning 0x{code:04X}"
    return False, code, f"refused with status 0x{code:04X}"


def _ts_name(uid: str) -> str:
    return UID(uid).name


# --- the command ---------------------------------------------------------------------------------


async def send_study(
    repo: Repository,
    snapshot: SnapshotId,
    select: Callable[[Entry], bool],
    peer: Peer,
    calling_aet: str,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    report: Callable[[InstanceResult], None] | None = None,
) -> SendSummary:
    """Send every file of `snapshot` that `select` accepts to `peer`; one result per instance."""
    start = time.monotonic()
    _, body = await repo.load_snapshot(snapshot)
    entries = [e async for e in catalogue(repo, body) if e.type == "file" and select(e)]
    if not entries:
        raise NotFound(f"snapshot {snapshot.short()} holds no file of that study or series")
    summary = SendSummary(snapshot.hex(), str(peer), len(entries))
    sender = Sender(peer, calling_aet, timeout)
    try:
        with tempfile.TemporaryDirectory(prefix="dicomvault-topacs-") as tmp:
            await _send_all(repo, entries, sender, Path(tmp), summary, report or (lambda r: None))
    finally:
        await asyncio.to_thread(sender.close)
    summary.duration_s = round(time.monotonic() - start, 3)
    return summary


async def _send_all(
    repo: Repository,
    entries: list[Entry],
    sender: Sender,
    tmp: Path,
    summary: SendSummary,
    report: Callable[[InstanceResult], None],
) -> None:
    reader = Restorer(repo, tmp)
    stuck: str | None = None  # set once the peer cannot be associated with
    for entry in entries:
        sop = (entry.dicom or {}).get("SOPInstanceUID", "")
        if stuck is not None:
            result = InstanceResult(entry.path, sop, False, None, stuck)
        else:
            try:
                result = await _send_one(reader, entry, sender, tmp / "instance.dcm")
            except CannotAssociate as e:
                stuck = str(e)
                result = InstanceResult(entry.path, sop, False, None, stuck)
        _tally(summary, result, entry.size)
        report(result)


async def _send_one(reader: Restorer, entry: Entry, sender: Sender, path: Path) -> InstanceResult:
    sop = (entry.dicom or {}).get("SOPInstanceUID", "")
    with open(path, "wb") as f:
        async for data in reader.read_file(entry.chunks):
            f.write(data)
            del data  # outside the restore window once the next chunk is asked for
    try:
        staged = await asyncio.to_thread(stage, path, (entry.dicom or {}).get("TransferSyntaxUID"))
        ok, status, message = await asyncio.to_thread(sender.send, staged)
    except CannotAssociate:
        raise
    except Exception as e:  # an unreadable instance fails alone; the next one is still sent
        return InstanceResult(entry.path, sop, False, None, f"cannot send: {e}")
    finally:
        for leftover in (path, path.with_name(path.name + ".meta")):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)
    return InstanceResult(entry.path, staged.sop_instance or sop, ok, status, message)


def _tally(summary: SendSummary, result: InstanceResult, size: int) -> None:
    summary.results.append(result)
    if not result.ok:
        summary.failed += 1
        return
    summary.sent += 1
    summary.bytes_sent += size
    if result.status:
        summary.warnings += 1
