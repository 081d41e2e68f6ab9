"""Scrub: flip bytes in packs stored at the primary and watch scrub find, quarantine and heal them
from the peer — by the CLI against a running server's data folder, and in process.

Two real chunk servers on loopback replicate a real client repository (encrypted packs, real
commits); the corrupted pack is named by the CLI, moved to its quarantine store, fetched from the
peer with the opt-in healing right of the replica token, and `check --read-data` passes after.
"""

from __future__ import annotations

import asyncio
import json
import sys
from asyncio.subprocess import PIPE, STDOUT
from pathlib import Path

import aiohttp

from client.check import check
from client.repository import Repository
from engine.failover import FailoverBackend
from engine.ids import PackId
from engine.pack import pack_name
from engine.remote import RemoteBackend
from server.state import ALERTS, SCRUB
from tests.helpers import PASSPHRASE
from tests.server.conftest import make_commit
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


async def _scrub_cli(site: Site, tmp_path: Path, *extra: str) -> tuple[int, str]:
    """`dicomvault-server scrub` in a real process, while both servers keep serving (the peer
    runs in this event loop, so the process is awaited, not waited for)."""
    peers = "".join(
        f'[[peers]]\nname = "{p.name}"\nurl = "{p.url}"\ntoken = "{p.token}"\n'
        for p in site.config.peers
    )
    cfg = tmp_path / "scrub.toml"
    cfg.write_text(f"index_map_size = {site.config.index_map_size}\n{peers}")
    cmd = [sys.executable, "-m", "server", "scrub", "--data", str(site.config.data_dir)]
    proc = await asyncio.create_subprocess_exec(
        *cmd, "--config", str(cfg), *extra, stdout=PIPE, stderr=STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 300)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_cli_scrub_names_quarantines_and_heals_a_flipped_pack_while_serving(
    sites: tuple[Site, Site], tmp_path: Path
) -> None:
    a, _ = sites
    async with practice(a, tmp_path / "cache") as repo:
        await backup(repo, make_tree(tmp_path, files=12, size=2_000_000))
        await wait_for(a.settled, what="replication to site-b")
        victim = pack_files(a)[0]
        good = victim.read_bytes()
        flip_byte(victim, 100)

        rc, out = await _scrub_cli(a, tmp_path)
        assert rc == 0, out
        assert f"BAD {REPO} {victim.name}" in out and "healed from site-b" in out
        (quarantined,) = (a.config.data_dir / "quarantine" / REPO).glob(f"*-{victim.name}")
        assert quarantined.is_file() and quarantined.read_bytes() != good
        assert victim.read_bytes() == good

        report = await check(repo, read_data=True)
        assert report.problems == [] and report.packs == len(pack_files(a))
        rc, out = await _scrub_cli(a, tmp_path, "--json")
        assert rc == 0 and json.loads(out.splitlines()[-1])["bad"] == []


async def test_bad_pack_without_a_good_copy_is_reported_missing_refused_and_alerted(
    sites: tuple[Site, Site], tmp_path: Path
) -> None:
    a, b = sites
    victim = await _replicated_backup(a, tmp_path)
    pack_id = PackId.parse(victim.name)
    (b.repo_dir() / pack_name(pack_id)).unlink()  # the peer lost its copy too
    flip_byte(victim, victim.stat().st_size // 2)

    report = await a.app[SCRUB].run_pass()
    assert [bad.pack for bad in report.unhealed] == [victim.name]
    assert not victim.exists()
    headers = {"Authorization": f"Bearer {a.tokens[REPO]['backup']}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        (quarantined,) = (a.config.data_dir / "quarantine" / REPO).glob(f"*-{victim.name}")
        chunks = _chunk_ids(quarantined)
        async with http.post(f"{a.url}/v1/repos/{REPO}/missing", data=b"".join(chunks)) as r:
            assert len(await r.read()) == 32 * len(chunks)  # every chunk of it is missing now
        async with http.post(f"{a.url}/v1/repos/{REPO}/snapshots", data=make_commit(chunks)) as r:
            assert r.status == 409 and (await r.json())["code"] == "missing_chunks"
        async with http.get(f"{a.url}/v1/repos/{REPO}/scrub") as r:
            doc = await r.json()
            assert doc["last_run"]["unhealed"] == [victim.name]
            assert doc["bad"][0]["healed"] is None and "site-b" in doc["bad"][0]["error"]
        async with http.get(f"{a.url}/metrics") as r:
            text = await r.text()
            assert f'dicomvault_scrub_repo_unhealed{{repo="{REPO}"}} 1' in text
            assert "dicomvault_scrub_running 0" in text
    conditions = await a.app[ALERTS].tick()
    assert any(c.kind == "scrub_failed" and victim.name[:16] in c.message for c in conditions)
    rc, out = await _scrub_cli(a, tmp_path)
    assert rc == 17 and "NOT HEALED" in out


async def _replicated_backup(a: Site, tmp_path: Path) -> Path:
    """A practice's backup of three files at site a, replicated to site-b; its last pack."""
    async with practice(a, tmp_path / "cache") as repo:
        await backup(repo, make_tree(tmp_path, files=3))
        await wait_for(a.settled, what="replication to site-b")
    return pack_files(a)[-1]


def _chunk_ids(path: Path) -> list[bytes]:
    from engine.pack import read_pack_info

    return [bytes(e.chunk_id) for e in read_pack_info(path.read_bytes()).entries]


async def test_a_vanished_pack_is_reported_missing_with_nothing_quarantined(
    sites: tuple[Site, Site], tmp_path: Path
) -> None:
    a, b = sites
    victim = await _replicated_backup(a, tmp_path)
    (b.repo_dir() / pack_name(PackId.parse(victim.name))).unlink()
    victim.unlink()

    report = await a.app[SCRUB].run_pass()
    assert [(bad.pack, bad.reason) for bad in report.unhealed] == [
        (victim.name, "the pack file is missing")
    ]
    (doc,) = a.app[SCRUB].state.bad(REPO)
    assert doc["pack"] == victim.name and doc["quarantine"] is None
    assert not [p for p in (a.config.data_dir / "quarantine").rglob("*") if p.is_file()]
    assert not list((a.config.data_dir / "quarantine").rglob("log"))


async def test_check_names_a_pack_the_primary_lost_and_scrub_heals_it_from_the_peer(
    sites: tuple[Site, Site], tmp_path: Path
) -> None:
    """The peer serves the pack, so the data is safe, but the primary is damaged: `check`
    says so (a problem, exit 17, naming the pack and both sites), with and without
    --read-data, until the primary's scrub has fetched the pack again from the peer."""
    a, b = sites
    victim = await _replicated_backup(a, tmp_path)
    victim_id = PackId.parse(victim.name)
    victim.unlink()

    token = a.tokens[REPO]["restore"]
    backend = FailoverBackend([RemoteBackend(f"{s.url}/{REPO}", token) for s in (a, b)])
    reader = await Repository.open(backend, PASSPHRASE, tmp_path / "reader")
    try:
        for read_data in (False, True):
            report = await check(reader, read_data=read_data)
            (problem,) = report.problems
            assert victim_id.hex() in problem and a.url in problem and b.url in problem
            (damage,) = report.sites_damaged
            assert damage["object"] == f"pack {victim_id.hex()}"
            assert (damage["site"], damage["served_by"]) == (f"{a.url}/{REPO}", f"{b.url}/{REPO}")

        scrubbed = await a.app[SCRUB].run_pass()
        assert [(bad.pack, bad.healed_from) for bad in scrubbed.bad] == [(victim.name, "site-b")]
        assert victim.is_file()
        report = await check(reader, read_data=True)
        assert report.problems == [] and report.sites_damaged == []
    finally:
        await reader.close()
