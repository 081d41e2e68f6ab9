"""The DICOM listener: a pynetdicom C-STORE, C-ECHO and Storage Commitment SCP.

Owns the network side of receiving: every storage SOP class in every transfer syntax pydicom
knows, each instance written to the `Inbox` exactly as it arrived (no decode, no re-encode) and
durable before Success is answered; "out of resources" while the spool is over its bound; and
the Storage Commitment N-ACTION (recorded) and N-EVENT-REPORT (sent when the daemon says so, on
the asking association if it is still open, else on a new one to the configured peer). Does not
decide what is committed: the daemon does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import AllTransferSyntaxes
from pynetdicom import AE, AllStoragePresentationContexts, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StorageCommitmentPushModel,
    Verification,
)

from client.agent.config import DicomSettings
from client.agent.inbox import Inbox, Instance
from client.agent.ledger import CommitmentRequest

log = logging.getLogger(__name__)
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # C-STORE: the sender keeps the image and retries later
PROCESSING_FAILURE = 0x0110
NO_SUCH_INSTANCE = 0x0112  # Storage Commitment failure reason: never received here
COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"  # the well-known Push Model SOP Instance
EVENT_ALL_COMMITTED, EVENT_SOME_FAILED = 1, 2


def build_ae(settings: DicomSettings) -> AE:
    ae = AE(settings.ae_title)
    ae.maximum_pdu_size = settings.max_pdu
    ae.require_called_aet = False  # a modality configured with another title still gets through
    syntaxes = list(AllTransferSyntaxes)
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(str(cx.abstract_syntax), syntaxes)
    ae.add_supported_context(Verification, syntaxes)
    ae.add_supported_context(StorageCommitmentPushModel, syntaxes, scu_role=True, scp_role=True)
    return ae


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
    ) -> None:
        self.settings, self.inbox = settings, inbox
        self._on_instance, self._on_commitment = on_instance, on_commitment
        self._accepting = accepting
        self._associations: dict[str, Association] = {}  # transaction UID → asking association
        self._lock = threading.Lock()
        self.ae = build_ae(settings)
        self._server: Any = None
        self.received = 0
        self.refused = 0

    @property
    def port(self) -> int:
        return int(self._server.server_address[1]) if self._server else self.settings.port

    def start(self) -> None:
        handlers: list[Any] = [(evt.EVT_C_STORE, self._store), (evt.EVT_N_ACTION, self._n_action)]
        self._server = self.ae.start_server(
            (self.settings.host, self.settings.port), block=False, evt_handlers=handlers
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    # C-STORE

    def _store(self, event: Any) -> int:
        if not self._accepting():
            self.refused += 1
            return OUT_OF_RESOURCES
        try:
            data = event.encoded_dataset(include_meta=True)
            inst = self.inbox.write(str(event.request.AffectedSOPInstanceUID), data)
        except OSError as e:
            log.error("cannot spool a received instance: %s", e)
            return OUT_OF_RESOURCES
        self.received += 1
        self._on_instance(inst)
        return SUCCESS

    # Storage Commitment

    def _n_action(self, event: Any) -> tuple[int, Dataset | None]:
        if event.request.RequestedSOPClassUID != StorageCommitmentPushModel:
            return 0x0112, None
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
                time.time(),
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


def _deliver(assoc: Association, ds: Dataset, event_type: int) -> bool:
    status, _ = assoc.send_n_event_report(
        ds, event_type, StorageCommitmentPushModel, COMMITMENT_INSTANCE
    )
    return bool(status) and int(status.get("Status", 0xFFFF)) == SUCCESS


def _calling_ae(assoc: Any) -> str:
    title = assoc.requestor.ae_title
    return (title.decode() if isinstance(title, bytes) else str(title)).strip()


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
