"""The agent's DICOM door under attack (issue 19): who may associate, how many connections a host
may hold, idle peers timed out, malformed commands answered at once, odd UIDs refused, memory
bounded whatever the instance size, and Storage Commitment that checks the SOP class.

Real senders only: dcmtk's storescu and echoscu, pynetdicom as an SCU (also speaking raw DIMSE to
send what a well-behaved SCU would not), and plain sockets that connect and say nothing. Most
tests run the production `Receiver` on a loopback port; the status, alert and commitment tests
run the whole agent in process, the memory test runs `dicomvault agent` as a subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    SecondaryCaptureImageStorage,
    Verification,
)

from benchmarks.agentkit import agent_site, require_tool
from benchmarks.serverkit import wait_for
from client.agent.config import DicomSettings, Sender
from client.agent.inbox import Inbox, Instance
from client.agent.ledger import Ledger
from client.agent.receiver import (
    CANNOT_UNDERSTAND,
    CLASS_INSTANCE_CONFLICT,
    INVALID_INSTANCE,
    Receiver,
)
from tests.client.agentloop import (
    AGENT_AET,
    MODALITY_AET,
    Reports,
    agent_config,
    agent_port,
    commitment_request,
    ct_instance,
    practice_repository,
    running,
    store_and_commit,
)
from tests.server.monitorkit import start_site
from tests.server.monitorkit import wait_for as wait_async

pytestmark = pytest.mark.robustness
ECHOSCU, STORESCU = "/usr/bin/echoscu", "/usr/bin/storescu"
ATTACKERS = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")  # loopback, other hosts


@pytest.fixture
def spool(tmp_path: Path) -> Inbox:
    return Inbox(tmp_path / "spool")


@contextlib.contextmanager
def receiving(inbox: Inbox, **settings: Any) -> Iterator[tuple[Receiver, list[Instance]]]:
    """The production receiver on a free loopback port; `settings` override DicomSettings."""
    settings.setdefault("senders", (Sender(MODALITY_AET, ("127.0.0.1",)),))
    arrived: list[Instance] = []
    receiver = Receiver(
        DicomSettings(AGENT_AET, "127.0.0.1", 0, **settings),
        inbox,
        on_instance=arrived.append,
        on_commitment=lambda req: None,
        accepting=lambda: True,
    )
    receiver.start()
    try:
        yield receiver, arrived
    finally:
        receiver.stop()


def echoscu(port: int, calling: str, called: str = AGENT_AET) -> subprocess.CompletedProcess[str]:
    require_tool(ECHOSCU, "dcmtk")
    return subprocess.run(
        [ECHOSCU, "-v", "-to", "20", "-aet", calling, "-aec", called, "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def storescu(
    port: int, path: Path, calling: str = MODALITY_AET
) -> subprocess.CompletedProcess[str]:
    require_tool(STORESCU, "dcmtk")
    return subprocess.run(
        [STORESCU, "-to", "20", "-aet", calling, "-aec", AGENT_AET, "127.0.0.1", str(port),
         str(path)],
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip


def saved(ds: Dataset, folder: Path) -> Path:
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def associate(port: int, calling: str = MODALITY_AET, source: str = "127.0.0.1") -> Association:
    ae = AE(calling)
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(SecondaryCaptureImageStorage, ExplicitVRLittleEndian)
    return ae.associate("127.0.0.1", port, ae_title=AGENT_AET, bind_address=(source, 0))


# who may send


def test_an_unlisted_calling_title_is_rejected_at_association_time(spool: Inbox) -> None:
    with receiving(spool) as (receiver, _):
        assert echoscu(receiver.port, MODALITY_AET).returncode == 0
        refused = echoscu(receiver.port, "INTRUDER")
        assert refused.returncode != 0
        assert "Calling AE Title Not Recognized" in refused.stderr, refused.stderr
        assert receiver.door.refused == 1
        assert receiver.door.recent[-1].calling_ae == "INTRUDER"


def test_the_called_title_must_be_ours(spool: Inbox) -> None:
    with receiving(spool, accept_any=True) as (receiver, _):
        assert echoscu(receiver.port, "ANYONE").returncode == 0  # accept_any: any caller
        refused = echoscu(receiver.port, MODALITY_AET, called="SOMEONE_ELSE")
        assert "Called AE Title Not Recognized" in refused.stderr, refused.stderr
        assert receiver.door.refused == 1


def test_a_listed_title_is_rejected_from_a_host_it_is_not_bound_to(spool: Inbox) -> None:
    with receiving(spool) as (receiver, _):
        assoc = associate(receiver.port, source="127.0.0.2")
        assert assoc.is_rejected and not assoc.is_established
        assert "may call only from 127.0.0.1" in receiver.door.recent[-1].reason
        ok = associate(receiver.port)
        assert ok.is_established
        ok.release()


def test_with_no_sender_listed_everyone_is_refused_and_the_agent_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> dict[str, Any]:
        site = await start_site(tmp_path, "site-a")
        site.add_repo()
        config = agent_config(tmp_path, dicom={"senders": ()})
        try:
            async with running(config, await practice_repository(site, config)) as agent:
                sent = await asyncio.to_thread(echoscu, agent_port(agent), MODALITY_AET)
                assert sent.returncode != 0 and "Association Rejected" in sent.stderr
                return dict(await wait_async(lambda: _refusal_alerted(agent), what="an alert"))
        finally:
            await site.server.close()

    with caplog.at_level(logging.WARNING):
        doc = asyncio.run(scenario())
    assert "every association will be refused" in caplog.text
    assert doc["associations_refused"] == 1 and doc["refusals"][0]["calling_ae"] == MODALITY_AET
    assert "refused 1" in doc["alerts"][0] and "not allow-listed" in doc["alerts"][0]


def _refusal_alerted(agent: Any) -> dict[str, Any] | None:
    doc = agent.status()
    return doc if doc["alerts"] else None


# slots and timeouts


def test_idle_connections_from_other_hosts_do_not_lock_out_a_listed_modality(
    spool: Inbox, tmp_path: Path
) -> None:
    """Twenty silent connections from four hosts (more than pynetdicom's default ten slots);
    the ARTIM timer is long, so only the per-host share and the reserved slots keep them out."""
    path = saved(ct_instance(16), tmp_path)
    limits = {"max_associations": 8, "max_per_host": 2, "reserved": 4, "artim_seconds": 120}
    with receiving(spool, **limits) as (receiver, arrived):
        held = [_connect(receiver.port, h) for h in ATTACKERS for _ in range(5)]
        try:
            closed = [s for s in held if _closed_by_peer(s)]
            assert len(closed) == len(held) - 4  # the unknown hosts' share: 8 - 4 reserved
            results = _in_threads([lambda: storescu(receiver.port, path) for _ in range(4)])
            assert [r.returncode for r in results] == [0] * 4, results[0].stderr
            assert len(arrived) == 4
        finally:
            for s in held:
                s.close()
        assert receiver.door.refused >= 16


def test_a_connection_that_never_asks_is_closed_when_artim_expires(spool: Inbox) -> None:
    with (
        receiving(spool, artim_seconds=0.5) as (receiver, _),
        _connect(receiver.port, "127.0.0.1") as s,
    ):
        s.settimeout(10)  # a deadline, not a measurement: ARTIM is 0.5 s (pynetdicom's: 30)
        assert s.recv(1) == b""


def test_a_silent_association_is_aborted_after_the_idle_timeout(spool: Inbox) -> None:
    with receiving(spool, idle_seconds=0.5) as (receiver, _):
        assoc = associate(receiver.port)
        assert assoc.is_established
        wait_for("the idle association aborted", lambda: assoc.is_aborted, timeout=10)


def _connect(port: int, source: str) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))


def _closed_by_peer(s: socket.socket) -> bool:
    s.settimeout(2)
    try:
        return s.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def _in_threads(calls: list[Any]) -> list[Any]:
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


# malformed commands and odd UIDs


LAST_COMMAND, LAST_DATASET, MORE_DATASET = 0x03, 0x02, 0x00  # a PDV's message control header


def send_raw(assoc: Association, cls: str, uid: str, dataset: tuple[int, bytes]) -> None:
    """A C-STORE command with the UIDs exactly as given (a well-behaved SCU would refuse to
    send them), then one dataset fragment: (control header, bytes)."""
    cx = next(c for c in assoc.accepted_contexts if c.abstract_syntax == cls)
    req = C_STORE()
    req.MessageID, req.Priority = 1, 2
    req.AffectedSOPClassUID = cls
    req._affected_sop_instance_uid = uid  # type: ignore[assignment] # unchecked, as on the wire
    req.DataSet = BytesIO(b"\0")  # any: the command then says a dataset follows
    msg = C_STORE_RQ()
    msg.primitive_to_message(req)
    command = (LAST_COMMAND, bytes(encode(msg.command_set, True, True) or b""))
    for control, data in (command, dataset):
        pdu = P_DATA()
        pdv = [int(cx.context_id or 0), bytes([control]) + data]  # a list: its setter insists
        pdu.presentation_data_value_list = [pdv]  # type: ignore[list-item]
        assoc.dul.send_pdu(pdu)


def raw_store(assoc: Association, body: bytes, cls: str, uid: str) -> int | str:
    """`send_raw` the whole dataset `body`; the response status, or "aborted"."""
    assoc._reactor_checkpoint.clear()  # pause the reactor, as release() does: the answer is ours
    while not assoc._is_paused:
        time.sleep(0.001)
    send_raw(assoc, cls, uid, (LAST_DATASET, body))
    try:
        return _response(assoc)
    finally:
        assoc._reactor_checkpoint.set()


def _response(assoc: Association) -> int | str:
    def answered() -> tuple[Any, ...] | None:
        if assoc.is_aborted or assoc.acse.is_aborted():
            return ("aborted",)
        _, rsp = assoc.dimse.get_msg(block=False)
        return (rsp,) if rsp is not None else None

    got = wait_for("a C-STORE response or an abort", answered, timeout=20)[0]
    return got if isinstance(got, str) else int(got.Status)


def encoded(ds: Dataset) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return fp.getvalue()


@pytest.mark.parametrize(
    "uid",
    ["", "../../etc/x", "1.2.3.", "1.2.abc", "1." * 32 + "1"],
    ids=["empty", "path", "trailing-dot", "letters", "65-chars"],
)
def test_an_invalid_instance_uid_in_the_command_is_refused_at_once(spool: Inbox, uid: str) -> None:
    ds = ct_instance(16)
    with receiving(spool) as (receiver, arrived):
        assoc = associate(receiver.port)
        status = raw_store(assoc, encoded(ds), CTImageStorage, uid)
        if assoc.is_established:
            assoc.release()
    # Over 64 characters pynetdicom cannot even decode the command: it aborts at once.
    assert status == ("aborted" if len(uid) > 64 else INVALID_INSTANCE)
    assert arrived == [] and spool.pending() == []
    assert receiver.invalid == 1 and not list(spool.folder.glob(".tmp-*"))


def test_an_odd_uid_inside_the_dataset_is_refused_too(spool: Inbox, tmp_path: Path) -> None:
    ds = ct_instance(16)
    ds.SOPInstanceUID = "../../etc/x"
    with receiving(spool) as (receiver, arrived):
        assoc = associate(receiver.port)
        status = raw_store(assoc, encoded(ds), CTImageStorage, generate_uid())
        assoc.release()
    assert status == INVALID_INSTANCE and arrived == [] and spool.pending() == []


def test_an_empty_dataset_is_answered_at_once(spool: Inbox) -> None:
    with receiving(spool) as (receiver, arrived):
        assoc = associate(receiver.port)
        status = raw_store(assoc, b"", CTImageStorage, generate_uid())
        assoc.release()
    assert status == CANNOT_UNDERSTAND and arrived == []


def test_the_dataset_own_uid_is_kept_when_it_differs_from_the_command(spool: Inbox) -> None:
    ds, command_uid = ct_instance(16), generate_uid()
    with receiving(spool) as (receiver, arrived):
        assoc = associate(receiver.port)
        status = raw_store(assoc, encoded(ds), CTImageStorage, command_uid)
        assoc.release()
    assert status == 0
    (inst,) = arrived
    assert inst.key == (CTImageStorage, command_uid) and inst.dataset_uid == ds.SOPInstanceUID
    assert spool.pending() == [inst]  # the name carries both, across a restart


def test_a_receive_cut_short_leaves_no_temporary_file_for_long(spool: Inbox) -> None:
    ds = ct_instance(64)
    with receiving(spool) as (receiver, arrived):
        assoc = associate(receiver.port)
        # A first dataset fragment, not the last; then the sender goes away.
        send_raw(assoc, CTImageStorage, ds.SOPInstanceUID, (MORE_DATASET, b"\0" * 4096))
        (temp,) = wait_for("the temporary file", lambda: list(spool.folder.glob(".tmp-*")))
        assoc.abort()
    assert arrived == [] and spool.drop_stale_temps(time.time(), 3600) == 0  # still fresh
    os.utime(temp, (time.time() - 7200, time.time() - 7200))
    assert spool.drop_stale_temps(time.time(), 3600) == 1 and not temp.exists()


# memory


@pytest.mark.slow
def test_receiving_an_instance_larger_than_memory_allows_keeps_memory_bounded(
    tmp_path: Path,
) -> None:
    """A 256 MiB instance; the agent's peak RSS (VmHWM) may grow by a small part of that."""
    big = ct_instance(16)
    big.Rows, big.Columns = 8192, 16384
    big.PixelData = os.urandom(1 << 20) * 256  # 256 MiB of 16-bit pixels
    path = saved(big, tmp_path)
    del big
    with agent_site(tmp_path) as site:
        (site.root / "agent.toml").write_text("[batch]\ninterval_seconds = 3600\n")
        config = str(site.root / "agent.toml")
        site.start("--dicom-listen", "127.0.0.1:0", "--ae-title", AGENT_AET,
                   "--allow-sender", MODALITY_AET, "--config", config)  # fmt: skip
        assert site.proc is not None
        before = _peak_rss(site.proc.pid)
        sent = storescu(site.dicom_port, path)
        assert sent.returncode == 0, sent.stderr
        peak = _peak_rss(site.proc.pid)
        (spooled,) = site.spooled()  # its meta group is the agent's: the size differs a little
        assert abs(spooled.stat().st_size - path.stat().st_size) < 1024
    assert peak - before < 64 << 20, f"peak RSS grew by {(peak - before) >> 20} MiB"


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


# Storage Commitment and the SOP class


def test_commitment_for_another_class_than_was_stored_is_a_conflict(tmp_path: Path) -> None:
    async def scenario() -> Dataset:
        site = await start_site(tmp_path, "site-a")
        site.add_repo()
        config = agent_config(tmp_path)
        ds = ct_instance(16)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        asked = ct_instance(16)
        asked.SOPInstanceUID = ds.SOPInstanceUID  # the same instance, asked for as CT
        request, reports = commitment_request([asked]), Reports()
        try:
            async with running(config, await practice_repository(site, config)) as agent:
                await asyncio.to_thread(
                    store_and_commit, agent_port(agent), ds, request, reports, 60
                )
        finally:
            await site.server.close()
        assert reports.received, "no N-EVENT-REPORT on the asking association"
        return reports.received[0][1]

    info = asyncio.run(scenario())
    assert "ReferencedSOPSequence" not in info
    (failed,) = info.FailedSOPSequence
    assert failed.ReferencedSOPClassUID == CTImageStorage
    assert failed.FailureReason == CLASS_INSTANCE_CONFLICT


def test_a_ledger_from_before_the_class_was_kept_is_migrated_without_losing_rows(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE instances (uid TEXT PRIMARY KEY, snapshot TEXT, committed REAL)")
    db.executemany(
        "INSERT INTO instances VALUES (?, ?, ?)", [("1.5", "ab", 1.0), ("1.6", "ab", 1.0)]
    )
    db.commit()
    db.close()
    ledger = Ledger(path)
    held, conflicts = ledger.committed([(CTImageStorage, "1.5"), (CTImageStorage, "1.6")])
    assert held == {(CTImageStorage, "1.5"), (CTImageStorage, "1.6")} and not conflicts
    ledger.record_instances([(SecondaryCaptureImageStorage, "1.7", "")], "cd", 2.0)
    held, conflicts = ledger.committed([(CTImageStorage, "1.7")])
    assert not held and conflicts == {(CTImageStorage, "1.7")}
    ledger.close()
    assert Ledger(path).committed([(SecondaryCaptureImageStorage, "1.7")])[0]  # opens again
