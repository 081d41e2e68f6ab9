"""Fire drills against real chunk servers on loopback: a good repository passes (every sampled file
compared with its unchanged source), a changed source or a tampered pack fails, the CLI exits 19
and the server raises a drill alert; the same drill against the peer site passes.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from asyncio.subprocess import PIPE
from pathlib import Path
from typing import Any

import pytest

from benchmarks.clikit import PASSPHRASE, cli_command, cli_env
from client import drill
from client.agent.drills import DrillSchedule
from client.drill import DrillSettings, run_drill
from engine.errors import UsageError
from server.state import ALERTS
from tests.server.monitorkit import (
    REPO,
    Site,
    backup,
    flip_byte,
    make_tree,
    pack_files,
    practice,
    wait_for,
)

ALL = DrillSettings(sample_percent=100.0)


async def test_drill_passes_on_a_good_repository_comparing_with_the_sources(
    sites: tuple[Site, Site], tmp_path: Path
) -> None:
    a, _ = sites
    tree = make_tree(tmp_path, files=5)
    async with practice(a, tmp_path / "cache") as repo:
        await backup(repo, tree)
        report = await run_drill(repo, ALL, agent="pc-1", site="site-a", rng=random.Random(1))
        assert report.ok, report.problems
        assert report.files == report.compared_with_source == 5
        (tree / "file0.bin").write_bytes(b"changed later, so the chunk ids are the record")
        report = await run_drill(repo, ALL, agent="pc-1", site="site-a")
        assert report.ok and report.compared_with_source == 4 and report.verified_by_chunks == 1


async def test_sample_takes_every_recent_file_and_a_seeded_share_of_older_ones(
    sites: tuple[Site, Site], tmp_path: Path
) -> None:
    a, _ = sites
    async with practice(a, tmp_path / "cache") as repo:
        await backup(repo, make_tree(tmp_path, files=40, size=2000))
        later = 10 * 86400.0 + 1e9 * 2  # far in the future: nothing is recent any more
        none = DrillSettings(sample_percent=0.0, recent_hours=24)
        chosen = [e async for _, e in drill.sample(repo, none, random.Random(3), later)]
        assert chosen == []
        some = DrillSettings(sample_percent=25.0)
        first = [e.path async for _, e in drill.sample(repo, some, random.Random(7), later)]
        again = [e.path async for _, e in drill.sample(repo, some, random.Random(7), later)]
        assert first == again and 2 <= len(first) <= 25
        recent = [e async for _, e in drill.sample(repo, none, random.Random(3), 0.0)]
        assert len(recent) == 40  # the snapshot is "of the last day": every file


async def test_changed_source_with_the_same_mtime_is_a_mismatch(
    sites: tuple[Site, Site], tmp_path: Path
) -> None:
    a, _ = sites
    tree = make_tree(tmp_path, files=3)
    async with practice(a, tmp_path / "cache") as repo:
        await backup(repo, tree)
        victim = tree / "file1.bin"
        st = victim.stat()
        data = bytearray(victim.read_bytes())
        data[10] ^= 0x01
        victim.write_bytes(bytes(data))
        os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
        report = await run_drill(repo, ALL, agent="pc-1", site="site-a")
        assert not report.ok and report.mismatches == 1
        assert "file1.bin" in report.problems[0] and "differ" in report.problems[0]


async def _cli(site: Site, tmp_path: Path, *args: str) -> tuple[int, Any, str]:
    pw = tmp_path / "passphrase"
    pw.write_bytes(PASSPHRASE + b"\n")
    env = cli_env(
        DICOMVAULT_REPO=f"{site.url}/{REPO}",
        DICOMVAULT_TOKEN=site.tokens[REPO]["backup"],
        DICOMVAULT_PASSWORD_FILE=str(pw),
        DICOMVAULT_CACHE_DIR=str(tmp_path / "cli-cache"),
    )
    proc = await asyncio.create_subprocess_exec(
        *cli_command(), "drill", "--json", *args, env=env, stdout=PIPE, stderr=PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 300)
    assert proc.returncode is not None
    return proc.returncode, json.loads(out) if out.strip() else None, err.decode()


async def test_tampered_pack_fails_the_cli_drill_raises_an_alert_and_the_peer_still_passes(
    sites: tuple[Site, Site], tmp_path: Path
) -> None:
    a, b = sites
    async with practice(a, tmp_path / "cache") as repo:
        await backup(repo, make_tree(tmp_path, files=4))
    await wait_for(a.settled, what="replication to site-b")
    state = tmp_path / "state"
    rc, doc, err = await _cli(a, tmp_path, "--sample-percent", "100", "--state-dir", str(state))
    assert rc == 0 and doc["ok"] and doc["files"] == 4, err
    for pack in pack_files(a):
        flip_byte(pack, 100)

    rc, doc, err = await _cli(a, tmp_path, "--sample-percent", "100", "--state-dir", str(state))
    assert rc == 19, err
    assert not doc["ok"] and doc["errors"] >= 1 and "cannot restore" in doc["problems"][0]
    assert [h["ok"] for h in drill.history(state)] == [True, False]
    assert "not reported" not in err, err
    conditions = await a.app[ALERTS].tick()
    failed = [c for c in conditions if c.kind == "drill_failed"]
    assert len(failed) == 1 and "fire drill" in failed[0].message

    rc, doc, err = await _cli(a, tmp_path, "--sample-percent", "100", "--site", f"{b.url}/{REPO}")
    assert rc == 0 and doc["ok"] and doc["files"] == 4, err


def test_drill_schedule_reads_the_agent_config(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        "[drill]\ninterval_hours = 24\nsample_percent = 2.5\npeer_every = 7\n"
        'peer_url = "https://b.example:8420/clinic"\n'
    )
    s = DrillSchedule.from_file(cfg)
    assert (s.interval_hours, s.sample_percent, s.peer_every) == (24, 2.5, 7)
    assert DrillSchedule.from_file(None).interval_hours == 0
    cfg.write_text("[drill]\ninterval_hours = 24\npeer_every = 3\n")
    with pytest.raises(UsageError):
        DrillSchedule.from_file(cfg)
