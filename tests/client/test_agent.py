"""The practice agent end to end: a real chunk server, `dicomvault agent` in a subprocess, dcmtk's
storescu and dcmsend as modalities, pynetdicom as a Storage Commitment SCU, and watched folders.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from benchmarks.agentkit import (
    AGENT_AET,
    STORESCU,
    AgentSite,
    ChunkServer,
    agent_site,
    allow,
    dataset_digest,
    dcmsend,
    pick_files,
    require_tool,
    storescu,
    transfer_syntax,
)
from benchmarks.serverkit import wait_for
from client.agent.receiver import COMMITMENT_INSTANCE
from tests.helpers import ct_small, pydicom_data_files, pydicom_test_files

pytestmark = pytest.mark.slow
BATCH_ONLY = """
[batch]
interval_seconds = 3600
"""
REALTIME = """
[[realtime]]
days = "daily"
start = "00:00"
end = "24:00"
max_delay_seconds = 10
"""


@pytest.fixture
def site(tmp_path: Path) -> Iterator[AgentSite]:
    with agent_site(tmp_path) as s:
        yield s


@pytest.fixture
def server(site: AgentSite) -> ChunkServer:
    return site.server


def listen_args() -> tuple[str, ...]:
    return ("--dicom-listen", "127.0.0.1:0", "--ae-title", AGENT_AET, *allow())


def write_config(site: AgentSite, body: str) -> Path:
    path = site.root / "agent.toml"
    path.write_text(body)
    return path


def corpus() -> list[Path]:
    return [*pydicom_data_files(), *pydicom_test_files()]


def committed_uids(site: AgentSite, target: Path) -> dict[str, Path]:
    """SOP Instance UID → restored file, over every snapshot."""
    out = {}
    for path in site.restore_all(target):
        out[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = path
    return out


def wait_committed(site: AgentSite, count: int, timeout: float = 60) -> None:
    def done() -> bool:
        doc = site.status()
        return bool(
            doc
            and doc["queue"]["files"] == 0
            and doc["last_commit"]
            and not site.spooled()
            and sum(s["files"] for s in site.snapshots()) >= count
        )

    wait_for(f"{count} files committed and the spool empty", done, timeout)


def assert_same_instances(originals: list[Path], restored: dict[str, Path]) -> None:
    for original in originals:
        uid, pixels = dataset_digest(original)
        assert uid in restored, f"{original.name} ({uid}) was not backed up"
        assert dataset_digest(restored[uid]) == (uid, pixels), f"{original.name}: pixels differ"
        if transfer_syntax(restored[uid]) == transfer_syntax(original):
            # dcmtk re-encodes what it sends (it drops group lengths and trailing padding):
            # compare the elements.
            assert elements(restored[uid]) == elements(original), original.name


def elements(path: Path) -> list[tuple[int, str, Any]]:
    ds = pydicom.dcmread(path)
    return [
        (e.tag, e.VR, e.value) for e in ds.iterall() if e.tag.element != 0 and e.tag != 0xFFFCFFFC
    ]


def test_storescu_study_is_committed_and_restores_bit_exact(
    site: AgentSite, tmp_path: Path
) -> None:
    files = pick_files(corpus(), {ExplicitVRLittleEndian}, 12)
    (tmp_path / "empty").mkdir()
    site.start(*listen_args(), "--watch", str(tmp_path / "empty"))  # sources combine
    sent = storescu(site.dicom_port, *files)
    assert sent.returncode == 0, sent.stderr
    wait_committed(site, len(files))
    assert_same_instances(files, committed_uids(site, tmp_path / "restore"))


def test_status_and_heartbeat_report_the_last_commit(site: AgentSite, server: ChunkServer) -> None:
    site.start(*listen_args())
    assert storescu(site.dicom_port, ct_small()).returncode == 0
    wait_committed(site, 1)
    status = site.cli("status", "--state-dir", str(site.state), "--json")
    assert status.rc == 0, status.err
    doc = status.doc
    assert doc["running"] and doc["queue"] == {
        "files": 0,
        "bytes": 0,
        "instances": 0,
        "watched": 0,
        "settling": 0,
    }
    assert doc["sources"] == [f"dicom {AGENT_AET}@127.0.0.1:0"]
    assert doc["last_commit"]["files"] == 1 and doc["mode"] == "realtime"
    assert {"rate_bytes_per_s", "limit_bytes_per_s"} <= set(doc["upload"])
    assert "eta_seconds" in doc and doc["bytes_pending"] == 0 and doc["errors"] == []
    text = site.cli("status", "--state-dir", str(site.state))
    assert "last commit: " + doc["last_commit"]["snapshot"][:8] in text.out

    def heartbeat() -> dict[str, Any] | None:
        beats = server.get("heartbeat")["heartbeats"]
        info = beats[0]["info"] if beats else {}
        return info if info.get("last_commit") else None

    site.kill(signal.SIGTERM)  # a clean stop sends nothing more; restart beats at once
    site.start(*listen_args())
    info = wait_for("a heartbeat that names the last commit", heartbeat)
    assert info["queue_files"] == 0 and info["version"] and info["agent"]


def test_dcmsend_compressed_instances_are_kept_as_sent(site: AgentSite, tmp_path: Path) -> None:
    syntaxes = {JPEG2000Lossless, JPEGLSLossless, RLELossless, JPEGLosslessSV1}
    files = pick_files(corpus(), syntaxes, 10)
    assert len(files) >= 5
    site.start(*listen_args())
    sent = dcmsend(site.dicom_port, *files)
    assert sent.returncode == 0, sent.stderr
    wait_committed(site, len(files))
    restored = committed_uids(site, tmp_path / "restore")
    for original in files:
        uid, _ = dataset_digest(original)
        assert transfer_syntax(restored[uid]) == transfer_syntax(original), "transcoded"
    assert_same_instances(files, restored)


def test_sigkill_right_after_success_loses_no_acknowledged_instance(
    site: AgentSite, tmp_path: Path
) -> None:
    files = pick_files(corpus(), {ExplicitVRLittleEndian}, 6)
    site.start(*listen_args(), "--config", str(write_config(site, BATCH_ONLY)))
    assert storescu(site.dicom_port, *files).returncode == 0
    site.kill(signal.SIGKILL)
    received = {p.name: p.read_bytes() for p in site.spooled()}
    assert len(received) == len(files)  # acknowledged means on disk
    site.start(*listen_args())  # flags only: real time, so the spool drains
    wait_committed(site, len(files))
    restored = committed_uids(site, tmp_path / "restore")
    assert_same_instances(files, restored)
    assert {p.name: p.read_bytes() for p in restored.values()} == received  # bit for bit


def test_sigkill_during_a_receive_keeps_every_acknowledged_instance(
    site: AgentSite, tmp_path: Path
) -> None:
    require_tool(STORESCU, "dcmtk")
    files = pick_files(corpus(), {ExplicitVRLittleEndian}, 60)
    site.start(*listen_args(), "--config", str(write_config(site, BATCH_ONLY)))
    sender = subprocess.Popen(
        [STORESCU, "-v", "-aec", AGENT_AET, "127.0.0.1", str(site.dicom_port), *map(str, files)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert sender.stdout is not None
    acknowledged, lines = 0, []
    for line in sender.stdout:
        lines.append(line)
        if "Received Store Response (Success)" in line:
            acknowledged += 1
            if acknowledged == 5:
                site.kill(signal.SIGKILL)
                break
    rest = sender.communicate(timeout=60)[0]
    acknowledged += len(re.findall(r"Received Store Response \(Success\)", rest))
    assert 5 <= acknowledged < len(files), "".join(lines) + rest
    site.start(*listen_args())
    wait_committed(site, acknowledged)
    assert_same_instances(files[:acknowledged], committed_uids(site, tmp_path / "restore"))


def test_storage_commitment_reports_committed_and_failed_instances(site: AgentSite) -> None:
    site.start(*listen_args())
    ds = pydicom.dcmread(ct_small())
    reports: list[tuple[int, Dataset]] = []
    got = threading.Event()

    def on_report(event: Any) -> tuple[int, None]:
        reports.append((event.event_type, event.event_information))
        got.set()
        return 0x0000, None  # pynetdicom wants (status, event reply); a bare 0 stalls the reply

    ae = AE("MODALITY")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate(
        "127.0.0.1",
        site.dicom_port,
        ae_title=AGENT_AET,
        evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)],
    )
    assert assoc.is_established
    try:
        assert assoc.send_c_store(ds).Status == 0
        unknown = generate_uid()
        request = Dataset()
        request.TransactionUID = generate_uid()
        request.ReferencedSOPSequence = [
            _ref(ds.SOPClassUID, ds.SOPInstanceUID),
            _ref(ds.SOPClassUID, unknown),
        ]
        status, _ = assoc.send_n_action(
            request, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1"
        )
        assert status.Status == 0
        assert got.wait(60), "no N-EVENT-REPORT on the association"
    finally:
        assoc.release()
    event_type, info = reports[0]
    assert event_type == 2 and info.TransactionUID == request.TransactionUID
    assert [r.ReferencedSOPInstanceUID for r in info.ReferencedSOPSequence] == [ds.SOPInstanceUID]
    assert [(r.ReferencedSOPInstanceUID, r.FailureReason) for r in info.FailedSOPSequence] == [
        (unknown, 0x0112)
    ]
    assert any(s["files"] == 1 for s in site.snapshots())  # success only once committed


def test_storage_commitment_refuses_another_instance_or_action(site: AgentSite) -> None:
    """PS3.7 Annex C: the N-ACTION status names what was wrong (not a silent success)."""
    site.start(*listen_args())
    ae = AE("MODALITY")
    ae.add_requested_context(StorageCommitmentPushModel)
    request = Dataset()
    request.TransactionUID = generate_uid()
    request.ReferencedSOPSequence = [_ref(CTImageStorage, generate_uid())]
    push = StorageCommitmentPushModel
    statuses = []
    for args in [(1, push, "1.2.3.4"), (2, push, COMMITMENT_INSTANCE)]:
        assoc = ae.associate("127.0.0.1", site.dicom_port, ae_title=AGENT_AET)
        assert assoc.is_established
        try:
            status, _ = assoc.send_n_action(request, *args)
            statuses.append(status.get("Status"))
        finally:
            assoc.release()
    no_instance, no_action = 0x0112, 0x0123
    assert statuses == [no_instance, no_action]


def _ref(class_uid: str, instance_uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = class_uid
    item.ReferencedSOPInstanceUID = instance_uid
    return item


def test_c_echo_is_answered(site: AgentSite) -> None:
    site.start(*listen_args())
    echo = subprocess.run(
        ["/usr/bin/echoscu", "-aec", AGENT_AET, "127.0.0.1", str(site.dicom_port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert echo.returncode == 0, echo.stderr


def test_watched_folder_waits_for_a_file_still_being_written(
    site: AgentSite, tmp_path: Path
) -> None:
    inbox = tmp_path / "pacs-export"
    inbox.mkdir()
    config = write_config(
        site,
        REALTIME
        + f"""
[[watch]]
path = "{inbox}"
settle_seconds = 2
""",
    )
    site.start("--config", str(config))
    data = ct_small().read_bytes()
    slow = inbox / "study" / "slice.dcm"
    slow.parent.mkdir()
    (inbox / "partial.part").write_bytes(b"ignored")
    pieces = [data[i : i + 4000] for i in range(0, len(data), 4000)]

    def write_slowly() -> None:  # ~4 s of writing, a piece every 0.4 s: never settled meanwhile
        with open(slow, "wb") as f:
            for piece in pieces:
                f.write(piece)
                f.flush()
                time.sleep(0.4)

    writer = threading.Thread(target=write_slowly)
    writer.start()
    seen = []
    while writer.is_alive():
        seen.extend(site.snapshots())
    writer.join()
    # Every snapshot ever listed holds the whole file: none caught it half written.
    assert all(s["bytes"] == len(data) for s in seen), seen
    written = time.monotonic()
    wait_for("the finished file in a snapshot", lambda: site.snapshots(), timeout=30)
    assert time.monotonic() - written < 20
    snaps = site.snapshots()
    assert len(snaps) == 1 and snaps[0]["paths"] == [str(slow)]
    restored = site.restore_all(tmp_path / "restore")
    assert [p.read_bytes() for p in restored] == [data]


def test_watched_folder_picks_up_changed_files_and_files_from_before_a_restart(
    site: AgentSite, tmp_path: Path
) -> None:
    inbox = tmp_path / "watched"
    inbox.mkdir()
    (inbox / "before.dcm").write_bytes(ct_small().read_bytes())  # there before the agent
    config = write_config(site, REALTIME + f'[[watch]]\npath = "{inbox}"\nsettle_seconds = 1\n')
    site.start("--config", str(config))
    wait_for("the file from before in a snapshot", lambda: len(site.snapshots()) == 1)
    site.kill(signal.SIGTERM)
    site.start("--config", str(config))
    time.sleep(3)
    assert len(site.snapshots()) == 1, "an unchanged file was sent again after a restart"
    with open(inbox / "before.dcm", "ab") as f:
        f.write(b"\0" * 16)
    wait_for("the changed file in a second snapshot", lambda: len(site.snapshots()) == 2)


def test_config_change_takes_effect_without_a_restart(site: AgentSite) -> None:
    config = write_config(site, BATCH_ONLY)
    site.start(*listen_args(), "--config", str(config))
    assert storescu(site.dicom_port, ct_small()).returncode == 0
    time.sleep(2)
    doc = site.status()
    assert doc is not None and doc["mode"] == "batch" and doc["queue"]["files"] == 1
    assert site.snapshots() == []
    config.write_text(BATCH_ONLY + REALTIME)
    os.utime(config, ns=(time.time_ns(), time.time_ns() + 10**9))
    wait_committed(site, 1, timeout=30)


def test_spool_bound_refuses_instances_and_raises_an_alert(
    site: AgentSite, server: ChunkServer
) -> None:
    config = write_config(site, REALTIME + '[spool]\nmax_bytes = "50kB"\nalert_bytes = "30kB"\n')
    site.start(*listen_args(), "--config", str(config))
    server.stop()  # the link is down: nothing can be committed, so the spool only grows
    assert storescu(site.dicom_port, ct_small()).returncode == 0  # 39 kB: accepted
    assert storescu(site.dicom_port, ct_small()).returncode == 0  # under 50 kB before: accepted
    refused = storescu(site.dicom_port, ct_small(), options=("-v",))
    assert "Received Store Response (Refused: OutOfResources" in refused.stderr, refused.stderr
    doc = wait_for(
        "an alert and a refusal",
        lambda: (d := site.status()) and d["alerts"] and d["refused"] and d,
    )
    assert doc["refused"] == 1 and "alert threshold" in doc["alerts"][0]
    assert len(site.spooled()) == 2


def test_sigterm_stops_cleanly_and_status_says_so(site: AgentSite) -> None:
    site.start(*listen_args())
    assert site.kill(signal.SIGTERM) == 0
    status = site.cli("status", "--state-dir", str(site.state), "--json")
    assert status.rc == 18 and status.doc["running"] is False
    assert "stopped" in site.log()


def test_once_backs_up_the_watched_folders_as_they_are_and_exits(
    site: AgentSite, tmp_path: Path
) -> None:
    inbox = tmp_path / "watched"
    (inbox / "study").mkdir(parents=True)
    (inbox / "study" / "a.dcm").write_bytes(ct_small().read_bytes())
    (inbox / "notes.txt").write_text("not DICOM, backed up as bytes\n")
    once = ("agent", "--once", "--watch", str(inbox), "--spool", str(site.spool))
    result = site.cli(*once, "--state-dir", str(site.state), "--json")
    assert result.rc == 0, result.err
    (snapshot,) = site.snapshots()
    assert snapshot["files"] == 2
    assert result.doc["snapshots"] == [snapshot["id"]] and result.doc["files"] == 2
    assert result.doc["bytes_uploaded"] > 0 and result.doc["errors"] == []
    result = site.cli(*once, "--state-dir", str(site.state))
    assert result.rc == 0 and len(site.snapshots()) == 1, "unchanged files were sent again"
    (inbox / "notes.txt").write_text("changed\n")
    assert site.cli(*once, "--state-dir", str(site.state)).rc == 0
    assert [s["files"] for s in site.snapshots()] == [2, 1]
    out = tmp_path / "out"
    assert site.cli("restore", "latest", "--target", str(out)).rc == 0
    assert (out / str(inbox / "notes.txt").lstrip("/")).read_text() == "changed\n"
