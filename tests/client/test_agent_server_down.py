"""The practice agent started while its chunk server is down: the DICOM door opens anyway.

Real parts: `dicomvault-server serve` in a subprocess (stopped, then started again on the same
port), `dicomvault agent` in a subprocess, dcmtk's storescu as the modality, `dicomvault status`
and `dicomvault restore`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian

from benchmarks.agentkit import AgentSite, agent_site, pick_files, storescu
from benchmarks.serverkit import wait_for
from tests.client.test_agent import (
    assert_same_instances,
    committed_uids,
    corpus,
    listen_args,
    wait_committed,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def site(tmp_path: Path) -> Iterator[AgentSite]:
    with agent_site(tmp_path) as s:
        yield s


def test_agent_receives_while_the_server_is_down_at_start_and_backs_up_once_it_is_up(
    site: AgentSite, tmp_path: Path
) -> None:
    site.server.stop()
    site.start(*listen_args())  # before this change the agent exited 14 here
    files = pick_files(corpus(), {ExplicitVRLittleEndian}, 8)
    sent = storescu(site.dicom_port, *files, options=("-v",))
    assert sent.returncode == 0, sent.stderr
    assert sent.stderr.count("Received Store Response (Success)") == len(files), sent.stderr
    assert len(site.spooled()) == len(files)

    wait_for("the status file to count the received instances", lambda: _queued(site, len(files)))
    status = site.cli("status", "--state-dir", str(site.state))
    assert status.rc == 0, status.err
    assert "repository unreachable since" in status.out and "retrying" in status.out, status.out
    assert site.status()["last_commit"] is None  # type: ignore[index]

    site.server.start()
    wait_committed(site, len(files), timeout=120)
    assert site.status()["repository_unreachable_since"] is None  # type: ignore[index]
    assert_same_instances(files, committed_uids(site, tmp_path / "restore"))


def test_sigterm_while_the_server_is_still_down_stops_cleanly(site: AgentSite) -> None:
    site.server.stop()
    site.start(*listen_args())
    wait_for("the agent to say the repository is unreachable", _unreachable(site))
    assert site.kill(15) == 0, site.log()
    assert site.status()["state"] == "stopped"  # type: ignore[index]


def test_a_wrong_passphrase_still_exits_12_at_once(site: AgentSite) -> None:
    (site.root / "passphrase").write_text("not the passphrase\n")
    result = site.cli("agent", "--spool", str(site.spool), "--state-dir", str(site.state),
                      *listen_args(), timeout=120)  # fmt: skip
    assert result.rc == 12, result.err
    assert site.status() is None  # no door was opened


def _queued(site: AgentSite, count: int) -> bool:
    return bool((doc := site.status()) and doc["queue"]["instances"] == count)


def _unreachable(site: AgentSite):  # type: ignore[no-untyped-def]
    return lambda: bool((doc := site.status()) and doc.get("repository_unreachable_since"))
