"""The primary site goes down under a running agent: `dicomvault agent` (a subprocess) keeps
accepting instances by C-STORE and files in its watched folder, keeps them in its spool and says
so in its status; when the primary comes back (same port, same data folder) the agent catches up
without a restart, the primary replicates to the peer, and a disaster restore from the peer with
the restore token gives back every file bit for bit.

Both chunk servers are real `python -m server serve` processes (the primary replicates to the
peer, tests/server/test_replication_process.py); the modality is dcmtk's storescu.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from benchmarks.agentkit import (
    AGENT_AET,
    AgentSite,
    ChunkServer,
    allow,
    dataset_digest,
    pick_files,
    storescu,
)
from benchmarks.serverkit import wait_for
from tests.helpers import PASSPHRASE, ct_small, pydicom_data_files, pydicom_test_files
from tests.server.test_replication_process import Site, settled

pytestmark = pytest.mark.slow
AGENT_CONFIG = """
[[realtime]]
days = "daily"
start = "00:00"
end = "24:00"
max_delay_seconds = 2

[spool]
delete_after = "peer"

[[watch]]
path = "{watched}"
settle_seconds = 1
"""


@pytest.fixture
def sites(tmp_path: Path) -> Iterator[tuple[Site, Site, dict[str, str]]]:
    peer = Site(tmp_path, "site-b")
    primary = Site(tmp_path, "site-a", [peer.peer_entry("site-a")])
    tokens = primary.create_repo()
    peer.start()
    primary.start()
    yield primary, peer, tokens
    primary.stop()
    peer.stop()


@pytest.fixture
def agent(
    tmp_path: Path, sites: tuple[Site, Site, dict[str, str]]
) -> Iterator[tuple[AgentSite, Path]]:
    primary, _, tokens = sites
    server = ChunkServer(tmp_path, port=primary.port, tokens=tokens)
    site = AgentSite(tmp_path / "practice", server).init()
    watched = tmp_path / "watched"
    watched.mkdir()
    config = site.root / "agent.toml"
    config.write_text(AGENT_CONFIG.format(watched=watched))
    site.start(
        "--dicom-listen", "127.0.0.1:0", "--ae-title", AGENT_AET, *allow(), "--config", str(config)
    )
    yield site, watched
    site.stop()


def status(site: AgentSite) -> dict[str, Any]:
    doc = site.status()
    assert doc is not None and doc["state"] == "running", doc
    return doc


def drop(source: Path, folder: Path, name: str) -> Path:
    """Copy `source` into the watched `folder` the way an export does: written aside, renamed in."""
    target = folder / name
    aside = folder.parent / f".{name}.part"
    shutil.copyfile(source, aside)
    aside.rename(target)
    return target


def pending(doc: dict[str, Any]) -> int:
    """Files the agent has but has not committed: queued, or watched and settling (a watched
    file joins the queue between batches, and the batch under way waits for the primary)."""
    return int(doc["queue"]["files"] + doc["queue"]["settling"])


def caught_up(site: AgentSite, files: int) -> bool:
    doc = status(site)
    return bool(
        doc["queue"]["files"] == 0
        and doc["spool"]["held_for_peer"] == 0
        and doc["spool"]["packs_bytes"] == 0
        and not site.spooled()
        and sum(s["files"] for s in site.snapshots()) >= files
    )


def test_agent_spools_while_the_primary_is_down_and_catches_up_when_it_returns(
    sites: tuple[Site, Site, dict[str, str]],
    agent: tuple[AgentSite, Path],
    tmp_path: Path,
) -> None:
    primary, peer, tokens = sites
    site, watched = agent
    corpus = [p for p in (*pydicom_data_files(), *pydicom_test_files()) if p != ct_small()]
    sent = pick_files(corpus, {ExplicitVRLittleEndian}, 8)
    dropped = [p for p in pick_files(corpus, {ExplicitVRLittleEndian}, 20) if p not in sent][:4]
    assert len(sent) == 8 and len(dropped) == 4

    # Up: one instance goes all the way to the peer (the agent and both sites work).
    assert storescu(site.dicom_port, ct_small()).returncode == 0
    wait_for("the first instance committed and at the peer", lambda: caught_up(site, 1), 60)

    # Down: kill -9 of the primary; the modality and the export keep going.
    primary.kill()
    result = storescu(site.dicom_port, *sent)
    assert result.returncode == 0, result.stderr  # every instance acknowledged
    originals = {drop(p, watched, f"{i}-{p.name}"): p.read_bytes() for i, p in enumerate(dropped)}
    doc = wait_for(
        "the agent to report the outage with everything pending",
        lambda: (d := status(site))["errors"] and pending(d) == len(sent) + len(dropped) and d,
        60,
    )
    assert doc["queue"]["instances"] == len(sent) and doc["bytes_pending"] > 0
    assert doc["last_commit"]["files"] == 1  # nothing committed meanwhile
    messages = [e["message"] for e in doc["errors"]]
    assert any(
        "repository unreachable" in m and f"127.0.0.1:{primary.port}" in m for m in messages
    ), messages
    received = {p.name: p.read_bytes() for p in site.spooled()}
    assert len(received) == len(sent)  # acknowledged means on the agent's disk
    assert site.proc is not None and site.proc.poll() is None  # the agent did not give up

    # Back: same port, same data folder; no agent restart.
    pid = site.proc.pid
    primary.start()
    total = 1 + len(sent) + len(dropped)
    wait_for("the agent to catch up", lambda: caught_up(site, total), 75)
    assert site.proc.poll() is None and status(site)["pid"] == pid
    assert status(site)["alerts"] == []
    wait_for("replication to the peer to settle", lambda: settled(primary, tokens["admin"]), 30)
    snapshots = site.snapshots()
    assert all(s["sites"] == {"site-a": True, "site-b": True} for s in snapshots), snapshots

    # Disaster restore from the peer: the passphrase and the restore token only.
    at_peer = ChunkServer(tmp_path, port=peer.port, tokens={"backup": tokens["restore"]})
    dr = AgentSite(tmp_path / "replacement", at_peer)
    dr.root.mkdir()
    (dr.root / "passphrase").write_bytes(PASSPHRASE + b"\n")
    assert {s["id"] for s in dr.snapshots()} == {s["id"] for s in snapshots}
    restored = dr.restore_all(tmp_path / "restore")
    target = tmp_path / "restore"
    for path, data in originals.items():
        assert (target / str(path).lstrip("/")).read_bytes() == data, f"{path} differs"
    by_uid = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
        for p in restored
        if watched.name not in p.parts
    }
    for original in sent:
        uid, pixels = dataset_digest(original)
        assert uid in by_uid, f"{original.name} ({uid}) was lost"
        assert dataset_digest(by_uid[uid]) == (uid, pixels), f"{original.name}: pixels differ"
    restored_names = {p.name: p.read_bytes() for p in by_uid.values()}
    assert {name: restored_names.get(name) for name in received} == received  # bit for bit
