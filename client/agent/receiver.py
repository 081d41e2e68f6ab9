"""The DICOM listener: a pynetdicom C-STORE, C-ECHO and Storage Commitment SCP.

Owns the network side of receiving: the `Door`'s rules applied (a connection over its host's
share closed at once, an association from a sender not allow-listed rejected, idle peers timed
out); every storage SOP class in every transfer syntax pydicom knows, each instance streamed to a
file in the `Inbox` as its PDUs arrive (no decode, no re-encode, memory bounded by the PDU size)
and durable before Success is answered; a failure status at once for a command or dataset that
cannot be kept (`store_problem`); "out of resources" while the spool is over its bound; and the
Storage Commitment N-ACTION (recorded) and N-EVENT-REPORT (sent when the daemon says so, on the
asking association if it is still open, else on a new one to the configured peer). Does not
decide what is committed: the daemon does.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, AllTransferSyntaxes
from pynetdicom import AE, AllStoragePresentationContexts, _config, build_role, dimse_messages, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StorageCommitmentPushModel,
    Verification,
)
from pynetdicom.transport import AssociationServer

from client.agent.config import DicomSettings
from client.agent.door import Door
from client.agent.inbox import MAX_UID, TMP_PREFIX, Inbox, Instance, valid_uid
from client.agent.ledger import CommitmentRequest
from engine.clock import SYSTEM, Clock

log = logging.getLogger(__name__)
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # C-STORE: the sender keeps the image and retries later
PROCESSING_FAILURE = 0x0110
NO_SUCH_INSTANCE = 0x0112  # Storage Commitment failure reason: never received here
INVALID_INSTANCE = 0x0117  # a SOP Instance (or Class) UID that is not a valid DICOM UID
CLASS_INSTANCE_CONFLICT = 0x0119  # Storage Commitment: the instance was stored as another class
NOT_THE_CLASS = 0xA900  # C-STORE: the dataset is of another SOP class than the command says
CANNOT_UNDERSTAND = 0xC000  # C-STORE: an empty or unreadable dataset
C_STORE_RQ_FIELD = 0x0001  # Command Field of a C-STORE request
COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"  # the well-known Push Model SOP Instance
COMMITMENT_ACTION = 1  # Request Storage Commitment, the model's one action
NO_SUCH_ACTION = 0x0123  # N-ACTION status (PS3.7 Annex C)
EVENT_ALL_COMMITTED, EVENT_SOME_FAILED = 1, 2


def build_ae(settings: DicomSettings) -> AE:
    ae = AE(settings.ae_title)
    ae.maximum_pdu_size = settings.max_pdu
    ae.maximum_associations = settings.max_associations  # the Door keeps us under it
    ae.acse_timeout = settings.artim_seconds  # also the ARTIM timer
    ae.network_timeout = settings.idle_seconds
    ae.dimse_timeout = settings.dimse_seconds
    syntaxes = list(AllTransferSyntaxes)
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(str(cx.abstract_syntax), syntaxes)
    ae.add_supported_context(Verification, syntaxes)
    ae.add_supported_context(StorageCommitmentPushModel, syntaxes, scu_role=True, scp_role=True)
    return ae


class GatedServer(AssociationServer):
    """pynetdicom's server, run in one thread, that asks the `Door` before it spends a thread on
    a connection. Sequential on purpose: each admitted connection's association thread is
    running before the next connection is looked at, so the count the Door sees is exact."""

    door: Door
    clock: Clock

    def verify_request(self, request: Any, client_address: Any) -> bool:
        host = str(client_address[0])
        live = [str(a.requestor.address) for a in self.ae.active_associations if a.is_acceptor]
        reason = self.door.connection(host, live)
        if reason is not None:
            self.door.refuse(self.clock.time(), host, "", reason)
        return reason is None


def stream_to(inbox: Inbox) -> None:
    """Have pynetdicom write each received dataset to a temporary file in the spool folder (as
    the PDUs arrive), so an instance of any size costs one PDU of memory and is adopted by a
    rename. Process-wide: pynetdicom reads these as module globals, so `stop_streaming` puts
    them back when the receiver stops (another SCP in the process must not write here)."""
    _config.STORE_RECV_CHUNKED_DATASET = True
    dimse_messages.NamedTemporaryFile = functools.partial(  # type: ignore[assignment]
        tempfile.NamedTemporaryFile, dir=inbox.folder, prefix=TMP_PREFIX
    )
    dimse_messages.create_file_meta = _temp_file_meta  # type: ignore[assignment]


def stop_streaming() -> None:
    _config.STORE_RECV_CHUNKED_DATASET = _original_chunked
    dimse_messages.NamedTemporaryFile = _original_temp_file
    dimse_messages.create_file_meta = _original_file_meta


_original_chunked = _config.STORE_RECV_CHUNKED_DATASET
_original_temp_file = dimse_messages.NamedTemporaryFile
_original_file_meta = dimse_messages.create_file_meta
PLACEHOLDER_UID = "2.25.0"  # in a temporary file only: its instance is refused, never kept


def _temp_file_meta(*, sop_class_uid: Any, sop_instance_uid: Any, transfer_syntax: Any) -> Any:
    """pynetdicom's meta group for a temporary file, which must not raise on an empty UID in
    the command (pydicom refuses to write one, and the association would hang in the UL thread
    instead of answering): the handler refuses that instance with INVALID_INSTANCE."""
    return _original_file_meta(
        sop_class_uid=sop_class_uid or UID(PLACEHOLDER_UID),
        sop_instance_uid=sop_instance_uid or UID(PLACEHOLDER_UID),
        transfer_syntax=transfer_syntax,
    )


class Receiver:
    """Runs the SCP in pynetdicom's threads; calls back (from those threads) on each event."""

    def __init__(
        self,
        settings: DicomSettings,
        inbox: Inbox,
        *,
        on_instance: Callable[[Instance], None],
        on_commitment: Callable[[CommitmentRequest], None],
        accepting: Callable[[], bool],
        clock: Clock = SYSTEM,
    ) -> None:
        self.settings, self.inbox = settings, inbox
        self._on_instance, self._on_commitment = on_instance, on_commitment
        self._accepting, self.clock = accepting, clock
        self._associations: dict[str, Association] = {}  # transaction UID → asking association
        self._lock = threading.Lock()
        self.ae = build_ae(settings)
        self._server: GatedServer | None = None
        self.door = Door(settings)
        self.received = 0
        self.refused = 0  # C-STORE answered "out of resources"
        self.invalid = 0  # C-STORE answered with a failure: a command or dataset not kept

    @property
    def port(self) -> int:
        return int(self._server.server_address[1]) if self._server else self.settings.port

    def start(self) -> None:
        stream_to(self.inbox)
        handlers: list[Any] = [
            (evt.EVT_REQUESTED, self._requested),
            (evt.EVT_DIMSE_RECV, self._dimse_received),
            (evt.EVT_C_STORE, self._store),
            (evt.EVT_N_ACTION, self._n_action),
        ]
        address = (self.settings.host, self.settings.port)
        server = cast(
            GatedServer,
            self.ae.make_server(address, evt_handlers=handlers, server_class=GatedServer),
        )
        server.door, server.clock = self.door, self.clock
        # pynetdicom's shutdown() removes the server from this list
        self.ae._servers.append(server)  # type: ignore[arg-type]
        threading.Thread(target=server.serve_forever, name="dicom-listener", daemon=True).start()
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
            stop_streaming()

    # association requests

    def _requested(self, event: Any) -> None:
        """A-ASSOCIATE-RQ: reject it here, before negotiation, unless the Door lets it in."""
        assoc, rq = event.assoc, event.assoc.requestor.primitive
        calling, called = _title(rq.calling_ae_title), _title(rq.called_ae_title)
        host = str(assoc.requestor.address)
        verdict = self.door.association(calling, called, host)
        if verdict is None:
            return
        reject, reason = verdict
        self.door.refuse(self.clock.time(), host, calling, reason)
        assoc.acse.send_reject(*reject)
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()

    # C-STORE

    def _dimse_received(self, event: Any) -> None:
        """A C-STORE whose command pynetdicom cannot serve: with an empty UID it would drop the
        request silently (the sender waits for its timeout), so it is answered INVALID_INSTANCE
        here, at once; over 64 characters it cannot decode the command and aborts the
        association at once. Either way the temporary file goes. Runs in the UL thread."""
        msg = event.message
        cmd = msg.command_set
        if int(cmd.CommandField) != C_STORE_RQ_FIELD:
            return
        uids = (_uid(cmd.get("AffectedSOPClassUID")), _uid(cmd.get("AffectedSOPInstanceUID")))
        if all(0 < len(u) <= MAX_UID for u in uids):
            return  # decodable: the C-STORE handler decides
        log.warning("C-STORE refused: unusable UIDs in the command: %r", uids)
        self.invalid += 1
        _discard_temp(msg)
        if all(len(u) <= MAX_UID for u in uids):
            rsp = C_STORE()
            rsp.MessageIDBeingRespondedTo = cmd.MessageID
            rsp.Status = INVALID_INSTANCE
            event.assoc.dimse.send_msg(rsp, msg.context_id)

    def _store(self, event: Any) -> int:
        key, dataset_uid, status = store_problem(event.request, event.dataset_path)
        if status is not None:
            self.invalid += 1
            return status
        if not self._accepting():
            self.refused += 1
            return OUT_OF_RESOURCES
        try:
            inst = self.inbox.adopt(Path(event.dataset_path), key, dataset_uid)
        except OSError as e:
            log.error("cannot spool a received instance: %s", e)
            return OUT_OF_RESOURCES
        self.received += 1
        self._on_instance(inst)
        return SUCCESS

    # Storage Commitment

    def _n_action(self, event: Any) -> tuple[int, Dataset | None]:
        refused = _not_a_commitment(event.request)
        if refused:
            return refused, None
        try:
            info = event.action_information
            items = tuple(
                (str(r.ReferencedSOPClassUID), str(r.ReferencedSOPInstanceUID))
                for r in info.ReferencedSOPSequence
            )
            req = CommitmentRequest(
                str(info.TransactionUID),
                _calling_ae(event.assoc),
                str(event.assoc.requestor.address),
                items,
                self.clock.time(),
            )
        except (AttributeError, ValueError, TypeError) as e:
            log.warning("malformed Storage Commitment request: %s", e)
            return 0x0115, None  # invalid argument value
        with self._lock:
            self._associations[req.transaction_uid] = event.assoc
        self._on_commitment(req)
        return SUCCESS, None

    def send_report(
        self,
        req: CommitmentRequest,
        committed: list[tuple[str, str]],
        failed: list[tuple[str, str, int]],
    ) -> bool:
        """Send the N-EVENT-REPORT (blocking; call from a worker thread). True once delivered."""
        ds = report_dataset(req.transaction_uid, committed, failed)
        event_type = EVENT_SOME_FAILED if failed else EVENT_ALL_COMMITTED
        with self._lock:
            assoc = self._associations.pop(req.transaction_uid, None)
        if assoc is not None and assoc.is_established:
            return _deliver(assoc, ds, event_type)
        return self._report_on_new_association(req, ds, event_type)

    def _report_on_new_association(
        self, req: CommitmentRequest, ds: Dataset, event_type: int
    ) -> bool:
        peer = self.settings.peers.get(req.calling_ae)
        if peer is None:
            log.warning(
                "Storage Commitment %s: %s has closed its association and is not in "
                "[dicom.peers]; keeping the report",
                req.transaction_uid,
                req.calling_ae,
            )
            return False
        ae = AE(self.settings.ae_title)
        ae.add_requested_context(StorageCommitmentPushModel)
        role = build_role(StorageCommitmentPushModel, scp_role=True)
        assoc = ae.associate(peer[0], peer[1], ae_title=req.calling_ae, ext_neg=[role])
        if not assoc.is_established:
            return False
        try:
            return _deliver(assoc, ds, event_type)
        finally:
            assoc.release()


def store_problem(request: Any, path: Path) -> tuple[tuple[str, str], str, int | None]:
    """((SOP Class UID, SOP Instance UID) of the command, the dataset's own instance UID if it
    differs, and the failure status to answer, None if the instance may be kept)."""
    key = (_uid(request.AffectedSOPClassUID), _uid(request.AffectedSOPInstanceUID))
    if not all(valid_uid(u) for u in key):
        log.warning("C-STORE refused: not valid DICOM UIDs in the command: %r", key)
        return key, "", INVALID_INSTANCE
    own = _dataset_uids(path)
    if own is None:
        log.warning("C-STORE %s refused: empty or unreadable dataset", key[1])
        return key, "", CANNOT_UNDERSTAND
    if own[0] != key[0]:
        log.warning("C-STORE %s refused: the dataset is a %s, not a %s", key[1], own[0], key[0])
        return key, "", NOT_THE_CLASS
    if not valid_uid(own[1]):
        log.warning("C-STORE %s refused: the dataset's own UID %r is not valid", key[1], own[1])
        return key, "", INVALID_INSTANCE
    return key, own[1] if own[1] != key[1] else "", None


def _discard_temp(msg: Any) -> None:
    temp = getattr(msg, "_data_set_file", None)
    if temp is not None:
        temp.close()
        with contextlib.suppress(OSError):
            os.unlink(temp.name)


def _uid(value: Any) -> str:
    return str(value or "").strip("\0 ")


def _dataset_uids(path: Path) -> tuple[str, str] | None:
    """The dataset's (SOP Class UID, SOP Instance UID), read from the file's start only."""
    try:
        ds = pydicom.dcmread(
            path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"]
        )
        return _uid(ds.SOPClassUID), _uid(ds.SOPInstanceUID)
    except (InvalidDicomError, AttributeError, ValueError, EOFError, OSError):
        return None


def _title(value: Any) -> str:
    return (value.decode(errors="replace") if isinstance(value, bytes) else str(value)).strip()


def _deliver(assoc: Association, ds: Dataset, event_type: int) -> bool:
    status, _ = assoc.send_n_event_report(
        ds, event_type, StorageCommitmentPushModel, COMMITMENT_INSTANCE
    )
    return bool(status) and int(status.get("Status", 0xFFFF)) == SUCCESS


def _calling_ae(assoc: Any) -> str:
    return _title(assoc.requestor.ae_title)


def report_dataset(
    transaction_uid: str, committed: list[tuple[str, str]], failed: list[tuple[str, str, int]]
) -> Dataset:
    """Event Information of a Storage Commitment result (PS3.4 J.3.3)."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    if committed:
        ds.ReferencedSOPSequence = [_ref(c, i) for c, i in committed]
    if failed:
        ds.FailedSOPSequence = [_ref(c, i, reason) for c, i, reason in failed]
    return ds


def _ref(class_uid: str, instance_uid: str, reason: int | None = None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = class_uid
    item.ReferencedSOPInstanceUID = instance_uid
    if reason is not None:
        item.FailureReason = reason
    return item


def _not_a_commitment(request: Any) -> int:
    """The N-ACTION status for a request that is not a Storage Commitment (0: it is one).
    Its SOP class is the Push Model's: pynetdicom hands this handler no other (it leaves a
    request for an unknown class unanswered before any handler)."""
    if request.RequestedSOPInstanceUID != COMMITMENT_INSTANCE:
        return NO_SUCH_INSTANCE
    if request.ActionTypeID != COMMITMENT_ACTION:
        return NO_SUCH_ACTION
    return 0
