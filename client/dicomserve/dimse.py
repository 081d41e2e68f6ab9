"""The DIMSE side of `dicom-serve`: a read-only Query/Retrieve SCP on pynetdicom.

Owns the AE (C-ECHO; C-FIND, C-GET and C-MOVE in the patient and study root models), the
calling-AE allow-list, and sending each instance bit-exact: its Part 10 bytes go into an anonymous
in-memory file (memfd, never on disk) and pynetdicom's chunked send puts the dataset on the wire
as stored, in the file's own SOP class and transfer syntax (never transcoded). An instance that
cannot be read fails alone, with a failure sub-operation and an alert; the rest still arrive.
pynetdicom runs each association in its own thread; repository reads run on the archive's loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncGenerator, Iterator
from typing import Any, TypeVar

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, _config, evt
from pynetdicom.presentation import build_context

from client.dicomserve.audit import AuditRecord
from client.dicomserve.index import InstanceRef
from client.dicomserve.instances import Part10, part10
from client.dicomserve.query import BadQuery, Request, answer_dataset, answers
from client.dicomserve.service import Archive, alert

T = TypeVar("T")
log = logging.getLogger(__name__)
SUCCESS, PENDING, PENDING_WARNING, CANCEL = 0x0000, 0xFF00, 0xFF01, 0xFE00
IDENTIFIER_MISMATCH = 0xA900  # the identifier does not match the SOP class (bad level, keys)
UNABLE_TO_PROCESS = 0xC001  # a malformed identifier, or the index failed
MOVE_DESTINATION_UNKNOWN = 0xA801
NOT_AUTHORIZED = 0x0124  # general status "refused: not authorized" (C-ECHO)
REFUSED = 0xA700  # C-FIND/C-GET have no "not authorized": "refused: out of resources"
STORED_WITH_WARNING = frozenset({0xB000, 0xB006, 0xB007})  # coercion, elements discarded
MAX_CONTEXTS = 128
MAX_FAILED_LISTED = 20  # instance UIDs named in an audit record's detail
# A C-GET context carries one transfer syntax, chosen by us in this order from those the SCU
# offers: explicit VR first (what most stored files are), as we never transcode.
GET_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"] + [
    ts for ts in ALL_TRANSFER_SYNTAXES if ts not in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
]  # presentation contexts one association may propose
VERIFICATION = "1.2.840.10008.1.1"
# Patient root and study root Q/R information models: FIND (.1), MOVE (.2), GET (.3).
QR_MODELS = tuple(f"1.2.840.10008.5.1.4.1.2.{root}.{op}" for root in (1, 2) for op in (1, 2, 3))


class StoredInstance(Dataset):
    """What a C-GET/C-MOVE handler yields: pynetdicom counts it as a dataset, the exact sender
    below puts its stored bytes on the wire. `error` set: the instance could not be read."""

    def __init__(self, sop_instance: str, framed: Part10 | None, error: str = "") -> None:
        super().__init__()
        self.SOPInstanceUID = sop_instance  # for pynetdicom's list of failed instances
        self._dv_framed, self._dv_error = framed, error
        self._dv_stored = False  # set by the exact sender: the peer stored it (maybe warning)


@contextlib.contextmanager
def memory_file(data: bytes) -> Iterator[str]:
    """A path to `data` in anonymous memory (memfd): pynetdicom can open it, no disk holds it."""
    fd = os.memfd_create("dicomvault-instance", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def exact_store(assoc: Any) -> None:
    """Make `assoc.send_c_store` send a StoredInstance's bytes as stored."""
    original = assoc.send_c_store
    if getattr(original, "dv_exact", False):
        return

    def send(dataset: Any, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(dataset, StoredInstance):
            return original(dataset, *args, **kwargs)
        if dataset._dv_framed is None:
            raise RuntimeError(dataset._dv_error)
        with memory_file(dataset._dv_framed.data) as path:
            status = original(path, *args, **kwargs)
        code = int(getattr(status, "Status", -1)) if status else -1
        dataset._dv_stored = code == 0 or code in STORED_WITH_WARNING
        return status

    send.dv_exact = True  # type: ignore[attr-defined]
    assoc.send_c_store = send


class ServeAE(AE):
    """An AE whose outgoing associations (C-MOVE destinations) send stored bytes exactly."""

    def associate(self, *args: Any, **kwargs: Any) -> Any:
        assoc = super().associate(*args, **kwargs)
        exact_store(assoc)
        return assoc


def identifier_keys(ds: Dataset) -> tuple[str, dict[str, str]]:
    """(QueryRetrieveLevel, keyword → value) of a request identifier; a sequence or private key
    is kept by name with an empty value, so it is reported as unsupported."""
    keys: dict[str, str] = {}
    for elem in ds:
        name = elem.keyword or f"({elem.tag.group:04X},{elem.tag.element:04X})"
        value = elem.value
        if elem.VR == "SQ" or value is None:
            keys[name] = ""
        elif isinstance(value, MultiValue):
            keys[name] = "\\".join(str(v) for v in value)
        else:
            keys[name] = str(value)
    return keys.pop("QueryRetrieveLevel", ""), keys


class DimseServer:
    def __init__(self, archive: Archive) -> None:
        self.archive, self.config = archive, archive.config
        self.ae = self._make_ae()
        self.server: Any = None

    def _make_ae(self) -> ServeAE:
        config = self.config
        ae = ServeAE(ae_title=config.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = config.dimse_timeout
        ae.maximum_associations = 16
        ae.add_supported_context(VERIFICATION)
        for model in QR_MODELS:
            ae.add_supported_context(model)
        for cx in StoragePresentationContexts:  # C-GET: we act as the storage SCU
            ae.add_supported_context(
                str(cx.abstract_syntax), GET_SYNTAXES, scu_role=True, scp_role=True
            )
        if not config.accept_any:
            ae.require_calling_aet = sorted({a.ae_title for a in config.allowed}) or ["\x00"]
        return ae

    def start(self) -> int:
        """Listen; return the port (useful when the configured port is 0)."""
        _config.STORE_SEND_CHUNKED_DATASET = True  # paths only: stored bytes, unchanged
        handlers: list[Any] = [
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_FIND, self.on_find),
            (evt.EVT_C_GET, self.on_get),
            (evt.EVT_C_MOVE, self.on_move),
            (evt.EVT_REJECTED, self.on_rejected),
        ]
        port = self.config.dimse_port or 0
        self.server = self.ae.start_server(
            (self.config.host, port), block=False, evt_handlers=handlers
        )
        return int(self.server.server_address[1])

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()

    # --- who is calling --------------------------------------------------------------------------

    def _caller(self, event: Any) -> tuple[str, str, bool]:
        requestor = event.assoc.requestor
        aet, host = str(requestor.ae_title).strip(), str(requestor.address)
        return aet, f"{host}:{requestor.port}", self.config.admits(aet, host)

    def _refused(self, event: Any, action: str) -> bool:
        aet, address, ok = self._caller(event)
        if not ok:
            self.archive.audit.write(
                AuditRecord(aet, address, action, outcome="refused", detail="not allowed")
            )
        return not ok

    # --- services --------------------------------------------------------------------------------

    def on_rejected(self, event: Any) -> None:
        """An association refused (calling AE title not allowed, or too many at once)."""
        aet, address, _ = self._caller(event)
        record = AuditRecord(aet, address, "association", outcome="refused", detail="rejected")
        self.archive.audit.write(record)

    def on_echo(self, event: Any) -> int:
        return NOT_AUTHORIZED if self._refused(event, "C-ECHO") else SUCCESS

    def _request(self, event: Any) -> tuple[Request | None, AuditRecord, int]:
        aet, address, _ = self._caller(event)
        record = AuditRecord(aet, address, _action(event))
        try:
            level, keys = identifier_keys(event.identifier)
            record.level, record.keys = level, keys
            return Request.parse(level, keys), record, SUCCESS
        except BadQuery as e:
            record.outcome, record.detail = "failed", str(e)
            return None, record, IDENTIFIER_MISMATCH
        except Exception as e:  # a malformed identifier: a failure status, never a crash
            record.outcome, record.detail = "failed", f"malformed identifier: {e}"
            return None, record, UNABLE_TO_PROCESS

    def _retrieve_request(self, event: Any) -> tuple[Request, AuditRecord]:
        """A C-GET or C-MOVE identifier; a bad one is audited and raised, and pynetdicom answers
        a failure status (0xC5xx)."""
        request, record, _ = self._request(event)
        if request is None:
            self.archive.audit.write(record)
            raise BadQuery(record.detail)
        return request, record

    def on_find(self, event: Any) -> Iterator[tuple[int, Dataset | None]]:
        if self._refused(event, "C-FIND"):
            yield REFUSED, None
            return
        request, record, status = self._request(event)
        if request is None:
            self.archive.audit.write(record)
            yield status, None
            return
        pending = PENDING_WARNING if request.unsupported else PENDING
        if request.unsupported:
            record.detail = "unsupported keys: " + ", ".join(request.unsupported)
        audit = _Once(self.archive, record)
        try:
            with self.archive.reader() as reader:
                for answer in answers(reader, request, self.config.as_of, self.config.ae_title):
                    if event.is_cancelled:
                        record.outcome = "cancelled"
                        audit.write()
                        yield CANCEL, None
                        return
                    record.note(answer)
                    yield pending, answer_dataset(answer)
            audit.write()  # before the final status: a peer that reads the trail finds it
            yield SUCCESS, None
        finally:
            audit.write()

    def on_get(self, event: Any) -> Iterator[Any]:
        if self._refused(event, "C-GET"):
            yield REFUSED, None
            return
        request, record = self._retrieve_request(event)
        exact_store(event.assoc)
        refs = self.archive.instances(request)
        yield len(refs)
        yield from self._send(event, refs, record)

    def on_move(self, event: Any) -> Iterator[Any]:
        if self._refused(event, "C-MOVE"):
            yield None, None
            return
        request, record = self._retrieve_request(event)
        destination = self.config.move_destinations.get(_text(event.move_destination))
        if destination is None:
            record.outcome = "failed"
            record.detail = f"unknown move destination {_text(event.move_destination)}"
            self.archive.audit.write(record)
            yield None, None
            return
        refs = self.archive.instances(request)
        contexts = self._contexts(refs)
        yield destination[0], destination[1], {"contexts": contexts}
        yield len(refs)
        yield from self._send(event, refs, record)

    def _contexts(self, refs: list[InstanceRef]) -> list[Any]:
        """One presentation context per (SOP class, stored transfer syntax) among `refs`."""
        classes = self.archive.on_loop(self.archive.sop_classes(refs))
        pairs = {(classes[r.sop], r.transfer_syntax): None for r in refs
                 if r.sop in classes and r.transfer_syntax}  # fmt: skip
        return [build_context(c, t) for c, t in list(pairs)[:MAX_CONTEXTS]]

    def _send(self, event: Any, refs: list[InstanceRef], record: AuditRecord) -> Iterator[Any]:
        failed: list[str] = []
        reads = self.archive.read_ahead(refs)
        audit = _Once(self.archive, record)
        try:
            for _ in refs:
                if event.is_cancelled:
                    record.outcome = "cancelled"
                    audit.write()
                    yield CANCEL, Dataset()
                    return
                ref, got = self.archive.on_loop(_next(reads))
                instance = _instance(ref, got)
                record.note(ref.attrs)
                yield PENDING, instance  # pynetdicom sends it before asking for the next
                if not instance._dv_stored:
                    failed.append(ref.sop)
                    record.outcome = "partial" if len(failed) < len(refs) else "failed"
                    record.detail = f"{len(failed)} of {len(refs)} instances not stored: " + (
                        ", ".join(failed[:MAX_FAILED_LISTED])
                    )
            audit.write()  # before the final status: a peer that reads the trail finds it
            yield SUCCESS, None
        finally:
            self.archive.on_loop(_close(reads))
            audit.write()


class _Once:
    """Writes its audit record once: at the end of a handler, or when it is cut short."""

    def __init__(self, archive: Archive, record: AuditRecord) -> None:
        self.archive, self.record, self.done = archive, record, False

    def write(self) -> None:
        if not self.done:
            self.done = True
            self.archive.audit.write(self.record)


async def _next(reads: AsyncGenerator[T]) -> T:
    return await anext(reads)


async def _close(reads: AsyncGenerator[Any]) -> None:
    await reads.aclose()


def _instance(ref: InstanceRef, got: bytes | Exception) -> StoredInstance:
    try:
        if isinstance(got, Exception):
            raise got
        return StoredInstance(ref.sop, part10(got, ref.transfer_syntax))
    except Exception as e:  # this instance fails alone; the rest of the study still goes
        alert(f"instance {ref.sop} (/{ref.path}, snapshot {ref.snapshot[:8]}): {e}")
        return StoredInstance(ref.sop, None, str(e))


def _text(value: Any) -> str:
    return (value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)).strip()


def _action(event: Any) -> str:
    return {evt.EVT_C_FIND: "C-FIND", evt.EVT_C_GET: "C-GET", evt.EVT_C_MOVE: "C-MOVE"}.get(
        event.event, str(event.event)
    )
