"""Agent snapshots as a person reads them (issue 17 item 9): a real agent commits several batches
of C-STORE'd instances to a real chunk server; `dicomvault snapshots` shows each by its source,
not its spool files; `ls --as-of` lists every instance of every batch under a readable name;
`restore --as-of` restores that union bit-exact."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset

from client.cli import main
from tests.client.agentloop import (
    AGENT_AET,
    agent_config,
    agent_port,
    ct_instance,
    practice_repository,
    running,
    send,
)
from tests.helpers import PASSPHRASE
from tests.server.monitorkit import REPO, Site, start_site, wait_for


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    s = await start_site(tmp_path, "site-a")
    s.add_repo()
    yield s
    await s.server.close()


async def cli(site: Site, tmp_path: Path, capsys: Any, *argv: str) -> tuple[int, Any]:
    """`dicomvault ARGV --json` against the site's repository, in a worker thread (it runs its
    own event loop); its exit code and JSON output."""
    password = tmp_path / "password"
    password.write_bytes(PASSPHRASE + b"\n")
    capsys.readouterr()
    code = await asyncio.to_thread(
        main,
        [
            *argv,
            "--json",
            "-r",
            f"{site.url}/{REPO}",
            f"--token={site.tokens[REPO]['backup']}",
            "-p",
            str(password),
            "--cache-dir",
            str(tmp_path / "cli-cache"),
        ],
    )
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


async def commit_batches(site: Site, tmp_path: Path, batches: list[list[Dataset]]) -> list[str]:
    """Each batch sent in its own association and committed as its own snapshot; their times."""
    config = agent_config(tmp_path)
    repo = await practice_repository(site, config)
    times = []
    async with running(config, repo) as agent:
        for batch in batches:
            before = agent.last_commit
            assert await asyncio.to_thread(send, agent_port(agent), batch) == [0] * len(batch)
            commit = await wait_for(
                lambda b=before: agent.last_commit if agent.last_commit is not b else None,  # type: ignore[misc]
                what="the batch's commit",
            )
            assert commit.files == len(batch)
            times.append(commit.time)
    return times


async def test_agent_snapshots_show_sources_and_the_archive_as_of_a_time_restores_bit_exact(
    site: Site, tmp_path: Path, capsys: Any
) -> None:
    batches = [[ct_instance(64), ct_instance(64)], [ct_instance(64)], [ct_instance(64)] * 1]
    times = await commit_batches(site, tmp_path, batches)

    code, doc = await cli(site, tmp_path, capsys, "snapshots")
    assert code == 0
    snaps = doc["snapshots"]
    assert len(snaps) == 3
    for s in snaps:
        assert s["sources"] == [f"dicom:{AGENT_AET}@127.0.0.1:0"]
        assert s["where"] == f"dicom:{AGENT_AET}@127.0.0.1:0"  # not a list of spool files

    code, doc = await cli(site, tmp_path, capsys, "ls", "--as-of", "now")
    assert code == 0
    files = [e for e in doc["entries"] if e["type"] == "file"]
    sent = [ds for batch in batches for ds in batch]
    shown = {e["shown"] for e in files}
    assert shown == {
        f"dicom/{ds.PatientID}/{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
        for ds in sent
    }
    assert {e["snapshot"] for e in files} == {s["id"] for s in snaps}

    code, doc = await cli(site, tmp_path, capsys, "ls", "--as-of", times[0])
    assert {e["dicom"]["SOPInstanceUID"] for e in doc["entries"] if e["type"] == "file"} == {
        ds.SOPInstanceUID for ds in batches[0]
    }

    target = tmp_path / "restored"
    code, doc = await cli(
        site, tmp_path, capsys, "restore", "--as-of", "now", "--target", str(target)
    )
    assert code == 0 and doc["files"] == len(sent)
    for e in files:  # the instance as sent, from the snapshot that holds it
        ds = pydicom.dcmread(target / e["path"])
        sent_ds = next(d for d in sent if d.SOPInstanceUID == ds.SOPInstanceUID)
        assert ds.PixelData == sent_ds.PixelData
    for s in snaps:  # and byte for byte what restoring that one snapshot gives
        alone = tmp_path / f"alone-{s['id'][:8]}"
        code, _ = await cli(site, tmp_path, capsys, "restore", s["id"], "--target", str(alone))
        assert code == 0
        for e in files:
            if e["snapshot"] == s["id"]:
                assert (alone / e["path"]).read_bytes() == (target / e["path"]).read_bytes()
