"""Replication between real chunk servers on loopback, in process (fast, injectable clock).

The kill -9, peer-down and disaster-restore tests, which need real processes, are in
`test_replication_process.py`.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from engine.clock import SYSTEM, SimulatedClock
from engine.commit import snapshot_name
from engine.errors import PermissionDenied, RepositoryNotFound, UsageError
from engine.ids import PackId, SnapshotId
from engine.pack import pack_name
from engine.protocol.routes import replica_repo_url
from engine.rates import parse_rate
from engine.remote import RemoteBackend
from server.admin import create_repository
from server.app import make_app
from server.auth import mint_replica_token
from server.config import ServerConfig, load_config
from server.deletion import Window as UndeleteWindow
from server.deletion import pack_entries
from server.handlers_deletion import purge_once
from server.replication.peer import PeerClient, PeerRefused, PeerUnavailable, RepoNotOnPeer
from server.replication.settings import PeerConfig, Window, peer_from_dict
from server.state import CLOCK, CONFIG, DELETIONS, INDEX, REPLICATION, REPOS
from tests.server.conftest import make_commit, make_key_object, make_pack

MiB = 1024 * 1024
DAY = 86_400.0
REPO = "clinic"


@dataclass
class Site:
    app: web.Application
    server: TestServer
    replica_tokens: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    def replica_token(self, primary: str = "site-a") -> str:
        """A replica token for `primary`, with `REPO` bound to it unless already bound."""
        if primary not in self.replica_tokens:
            self.app[REPLICATION].state.claim_replica(REPO, primary, self.app[CLOCK].time())
            self.replica_tokens[primary] = mint_replica_token(
                self.app[INDEX], primary, self.app[CLOCK].time()
            )
        return self.replica_tokens[primary]

    def repo_dir(self, repo: str = REPO) -> Path:
        return self.app[CONFIG].repos_dir / repo


SiteFactory = Callable[..., Awaitable[Site]]


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[SiteFactory]:
    started: list[Site] = []

    async def start(name: str, peers: Sequence[dict[str, Any]] = (), **settings: Any) -> Site:
        clock = settings.pop("clock", SYSTEM)
        settings.setdefault("index_map_size", 64 * MiB)
        settings.setdefault("replication_poll_interval", 0.05)
        settings.setdefault("replication_retry_max", 0.5)
        config = ServerConfig(
            data_dir=tmp_path / name,
            site_name=name,
            peers=tuple(peer_from_dict(p) for p in peers),
            **settings,
        )
        app = make_app(config, clock=clock)
        server = TestServer(app)
        await server.start_server()
        started.append(Site(app, server))
        return started[-1]

    yield start
    for s in reversed(started):
        await s.server.close()


async def pair(site: SiteFactory, **peer: Any) -> tuple[Site, Site, dict[str, str]]:
    """Peer site-b, then primary site-a replicating to it; a practice repository on site-a."""
    b = await site("site-b")
    a = await site("site-a", [{"url": b.url, "token": b.replica_token(), "name": "site-b", **peer}])
    tokens = create_repository(a.app[REPOS], a.app[INDEX], REPO, a.app[CLOCK].time())
    return a, b, tokens


async def wait_for(predicate: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


def status(s: Site, repo: str = REPO) -> dict[str, Any]:
    return s.app[REPLICATION].repo_status(repo)


def peer_lag(s: Site, peer: str = "site-b") -> dict[str, Any]:
    return next(p for p in status(s)["peers"] if p["name"] == peer)


def settled(s: Site) -> bool:
    return all(p["pending_items"] == 0 for p in status(s)["peers"])


async def backup(
    a: Site, tokens: dict[str, str], packs: int = 3, *, init: bool = True
) -> tuple[list[PackId], str]:
    """What a practice's `init` (unless `init` is False) and one backup send: config, key,
    packs, then a commit."""
    client = RemoteBackend(f"{a.url}/{REPO}", tokens["backup"])
    try:
        if init:
            await client.put_key("k" + os.urandom(4).hex(), make_key_object())
            await client.put_config(b'{"version": 1, "id": "0123"}')
        ids, refs = [], []
        for _ in range(packs):
            pack_id, data, chunks = make_pack(chunks=4, size=2000)
            await client.put_pack(pack_id, data)
            ids.append(pack_id)
            refs += chunks
        sid = await client.commit(make_commit(refs))
    finally:
        await client.close()
    return ids, sid.hex()


@dataclass
class Deletion:
    """A primary holding two replicated snapshots; the older one's first pack is to be deleted."""

    a: Site
    tokens: dict[str, str]
    old: str
    kept: str
    dead: PackId
    admin: RemoteBackend

    async def schedule(self, clock: SimulatedClock) -> None:
        """Forget the older snapshot and schedule its pack under a 14-day undelete window."""
        await self.admin.forget([SnapshotId.parse(self.old)])
        entries = await pack_entries(self.a.app[REPOS].get(REPO), self.dead)
        window = UndeleteWindow(14 * DAY)
        self.a.app[DELETIONS].schedule_pack(REPO, self.dead, entries, clock.time(), window, "t")

    async def seen_by(self, reader: RemoteBackend) -> tuple[list[str], bool]:
        """The snapshots `reader` lists, and whether it still lists the pack to delete."""
        listed = sorted(s.hex() for s in await reader.list_snapshots())
        return listed, self.dead in [p async for p in reader.list_packs()]


async def two_snapshots(site: SiteFactory, peer: dict[str, Any], clock: SimulatedClock) -> Deletion:
    """Primary site-a replicating to `peer`: a practice repository, two backups, replicated."""
    a = await site("site-a", [peer], clock=clock)
    tokens = create_repository(a.app[REPOS], a.app[INDEX], REPO, clock.time())
    old_packs, old = await backup(a, tokens)
    _, kept = await backup(a, tokens, init=False)
    await wait_for(lambda: settled(a))
    admin = RemoteBackend(f"{a.url}/{REPO}", tokens["admin"])
    return Deletion(a, tokens, old, kept, old_packs[0], admin)


# -- continuous mode, the practice's tokens at the peer -----------------------------------------


async def test_continuous_mode_pushes_everything_and_practice_tokens_work_at_the_peer(
    site: SiteFactory,
) -> None:
    a, b, tokens = await pair(site)
    packs, sid = await backup(a, tokens)
    await wait_for(lambda: settled(a))
    assert peer_lag(a)["snapshots"] == {sid: True}
    for role in ("restore", "backup", "admin"):
        at_b = RemoteBackend(f"{b.url}/{REPO}", tokens[role])
        try:
            assert [s.hex() for s in await at_b.list_snapshots()] == [sid]
            assert sorted([p async for p in at_b.list_packs()]) == sorted(packs)
            assert await at_b.get_config() == b'{"version": 1, "id": "0123"}'
            assert len(await at_b.list_keys()) == 1
            pack = await at_b.get_pack(packs[0])
            assert pack == (a.repo_dir() / pack_name(packs[0])).read_bytes()
        finally:
            await at_b.close()


async def test_snapshot_sites_reports_completeness_per_site(site: SiteFactory) -> None:
    a, _, tokens = await pair(site)
    _, sid = await backup(a, tokens)
    client = RemoteBackend(f"{a.url}/{REPO}", tokens["restore"])
    try:
        await wait_for(lambda: settled(a))
        sites = await client.snapshot_sites()
        assert sites is not None
        assert {k.hex(): v for k, v in sites.items()} == {sid: {"site-a": True, "site-b": True}}
    finally:
        await client.close()


async def test_metrics_show_lag_per_repository_and_peer(site: SiteFactory) -> None:
    a, _, tokens = await pair(site)
    await backup(a, tokens)
    await wait_for(lambda: settled(a))
    async with aiohttp.ClientSession() as http, http.get(f"{a.url}/metrics") as resp:
        text = await resp.text()
    assert 'dicomvault_replication_lag_packs{peer="site-b",repo="clinic"} 0' in text
    assert 'dicomvault_replication_lag_oldest_seconds{peer="site-b",repo="clinic"} 0' in text
    assert 'dicomvault_replication_packs_sent_total{peer="site-b"} 3' in text
    assert 'dicomvault_replication_up{peer="site-b"} 1' in text


async def test_replication_status_route_needs_a_token_of_that_repository(
    site: SiteFactory,
) -> None:
    a, _, tokens = await pair(site)
    other = create_repository(a.app[REPOS], a.app[INDEX], "other", a.app[CLOCK].time())
    url = f"{a.url}/v1/repos/{REPO}/replication"
    async with aiohttp.ClientSession() as http:
        for role in ("backup", "restore", "admin"):
            headers = {"Authorization": f"Bearer {tokens[role]}"}
            async with http.get(url, headers=headers) as resp:
                assert resp.status == 200
                doc = await resp.json()
                assert doc["site"] == "site-a" and doc["peers"][0]["name"] == "site-b"
        async with http.get(url, headers={"Authorization": f"Bearer {other['admin']}"}) as resp:
            assert resp.status == 404


# -- the replica token: push, never read or delete -----------------------------------------------


async def test_replica_token_cannot_read_packs_delete_or_use_practice_routes(
    site: SiteFactory,
) -> None:
    a, b, tokens = await pair(site)
    packs, _ = await backup(a, tokens)
    await wait_for(lambda: settled(a))
    auth = {"Authorization": f"Bearer {b.replica_token()}"}
    pack = packs[0].hex()
    async with aiohttp.ClientSession(headers=auth) as http:
        async with http.get(f"{b.url}/v1/repos/{REPO}/packs/{pack}") as resp:
            assert resp.status == 403
        async with http.get(f"{b.url}/v1/repos/{REPO}/snapshots") as resp:
            assert resp.status == 403
        for method in ("GET", "DELETE"):
            async with http.request(method, f"{b.url}/v1/replica/repos/{REPO}/packs/{pack}") as r:
                assert r.status in (404, 405)
        async with http.delete(f"{b.url}/v1/replica/repos/{REPO}") as resp:
            assert resp.status in (404, 405)
    assert (b.repo_dir() / pack_name(packs[0])).is_file()


async def test_peer_refuses_a_pack_that_does_not_match_its_name(site: SiteFactory) -> None:
    b = await site("site-b")
    pack_id, data, _ = make_pack()
    bad = bytearray(data)
    bad[10] ^= 0xFF
    url = f"{b.url}/v1/replica/repos/{REPO}/packs/{pack_id.hex()}"
    auth = {"Authorization": f"Bearer {b.replica_token()}"}
    async with aiohttp.ClientSession(headers=auth) as http, http.put(url, data=bytes(bad)) as r:
        assert r.status == 422
        assert (await r.json())["code"] == "hash_mismatch"
    assert not (b.repo_dir() / pack_name(pack_id)).exists()
    assert not b.app[INDEX].has_pack(REPO, pack_id)
    assert list((b.repo_dir() / ".incoming").iterdir()) == []


async def test_a_pack_corrupted_at_the_primary_is_refused_and_its_commit_held_back(
    site: SiteFactory,
) -> None:
    b = await site("site-b")
    a = await site("site-a")  # no peer yet: corrupt a stored pack before anything is pushed
    tokens = create_repository(a.app[REPOS], a.app[INDEX], REPO, a.app[CLOCK].time())
    packs, sid = await backup(a, tokens)
    path = a.repo_dir() / pack_name(packs[1])
    path.chmod(0o644)
    raw = bytearray(path.read_bytes())
    raw[5] ^= 0x01
    path.write_bytes(bytes(raw))
    await a.server.close()
    peer = {"url": b.url, "token": b.replica_token(), "name": "site-b"}
    a = await site("site-a", [peer])  # same data folder: start-up anti-entropy queues it all
    await wait_for(lambda: peer_lag(a)["last_error"])
    await wait_for(lambda: peer_lag(a)["pending_packs"] == 1)  # the other packs passed it
    lag = peer_lag(a)
    assert "hash_mismatch" in lag["last_error"]
    assert lag["pending_packs"] == 1 and lag["snapshots"] == {sid: False}
    assert not b.app[INDEX].has_pack(REPO, packs[1])
    assert b.app[INDEX].has_pack(REPO, packs[0]) and b.app[INDEX].has_pack(REPO, packs[2])
    assert list(b.app[INDEX].snapshots(REPO)) == []  # never a snapshot missing a pack


# -- isolation between practices and between primaries -----------------------------------------


async def test_a_replica_token_cannot_touch_a_practice_repository_of_the_peer(
    site: SiteFactory,
) -> None:
    b = await site("site-b")
    create_repository(b.app[REPOS], b.app[INDEX], "local", b.app[CLOCK].time())
    pack_id, data, _ = make_pack()
    auth = {"Authorization": f"Bearer {b.replica_token('site-a')}"}
    async with aiohttp.ClientSession(headers=auth) as http:
        for path in ("config", f"packs/{pack_id.hex()}"):
            async with http.put(f"{b.url}/v1/replica/repos/local/{path}", data=data) as r:
                assert r.status == 404 and (await r.json())["code"] == "repo_not_found"
        async with http.get(f"{b.url}/v1/replica/repos/local/snapshots") as r:
            assert r.status == 404


async def test_a_replica_token_cannot_create_a_name_not_bound_to_it(site: SiteFactory) -> None:
    """The name stays free: the peer's own practice of that name can be created later."""
    b = await site("site-b")
    pack_id, data, _ = make_pack()
    auth = {"Authorization": f"Bearer {b.replica_token('site-a')}"}
    async with aiohttp.ClientSession(headers=auth) as http:
        for path in ("config", f"packs/{pack_id.hex()}", "keys/k1"):
            async with http.put(f"{b.url}/v1/replica/repos/newclinic/{path}", data=data) as r:
                assert r.status == 404 and (await r.json())["code"] == "repo_not_found"
    assert b.app[REPLICATION].state.replica_owner("newclinic") is None
    assert "newclinic" not in b.app[REPOS].names()
    assert create_repository(b.app[REPOS], b.app[INDEX], "newclinic", b.app[CLOCK].time())


async def test_a_primary_cannot_touch_a_replica_pushed_by_another_primary(
    site: SiteFactory,
) -> None:
    b = await site("site-b")
    pack_id, data, _ = make_pack()
    url = f"{b.url}/v1/replica/repos/{REPO}/packs/{pack_id.hex()}"
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {b.replica_token('site-a')}"}
        async with http.put(url, data=data, headers=headers) as r:
            assert r.status == 201
        headers = {"Authorization": f"Bearer {b.replica_token('site-x')}"}
        async with http.put(url, data=data, headers=headers) as r:
            assert r.status == 404
        async with http.get(f"{b.url}/v1/replica/repos/{REPO}/snapshots", headers=headers) as r:
            assert r.status == 404


async def test_practice_tokens_see_only_their_repository_at_the_peer(site: SiteFactory) -> None:
    a, b, tokens = await pair(site)
    other = create_repository(a.app[REPOS], a.app[INDEX], "other", a.app[CLOCK].time())
    b.app[REPLICATION].state.claim_replica("other", "site-a", time.time())  # bound at b too
    await backup(a, tokens)
    await wait_for(lambda: settled(a))
    a.app[REPLICATION].replicators[0].request_anti_entropy()  # sends "other"'s token hashes
    await wait_for(lambda: (b.app[CONFIG].repos_dir / "other").is_dir())
    await wait_for(lambda: settled(a))
    spy = RemoteBackend(f"{b.url}/{REPO}", other["admin"])
    try:
        with pytest.raises(RepositoryNotFound):
            await spy.list_snapshots()
    finally:
        await spy.close()


async def test_practice_writes_to_a_replica_are_refused_until_promoted(
    site: SiteFactory,
) -> None:
    a, b, tokens = await pair(site)
    await backup(a, tokens)
    await wait_for(lambda: settled(a))
    at_b = RemoteBackend(f"{b.url}/{REPO}", tokens["backup"])
    pack_id, data, _ = make_pack()
    try:
        with pytest.raises(PermissionDenied, match="replica"):
            await at_b.put_pack(pack_id, data)
        assert b.app[REPLICATION].state.release_replica(REPO)
        await at_b.put_pack(pack_id, data)  # promoted: the practice writes here now
    finally:
        await at_b.close()


# -- scheduled mode, anti-entropy -------------------------------------------------------------


async def test_scheduled_mode_pushes_only_inside_its_window(site: SiteFactory) -> None:
    day = datetime.now().replace(hour=12, minute=0, second=0, microsecond=0).timestamp()
    clock = SimulatedClock(day)  # noon: outside "22:00-06:00"
    b = await site("site-b")
    peer = {"url": b.url, "token": b.replica_token(), "name": "site-b"}
    peer |= {"mode": "scheduled", "window": "22:00-06:00"}
    a = await site("site-a", [peer], clock=clock)
    tokens = create_repository(a.app[REPOS], a.app[INDEX], REPO, a.app[CLOCK].time())
    packs, sid = await backup(a, tokens)
    await asyncio.sleep(0.5)  # many poll intervals
    lag = peer_lag(a)
    assert lag["pending_packs"] == 3 and lag["snapshots"] == {sid: False}
    assert not b.repo_dir().exists()
    clock.advance(11 * 3600)  # 23:00
    await wait_for(lambda: settled(a))
    assert peer_lag(a)["snapshots"] == {sid: True}
    assert all(b.app[INDEX].has_pack(REPO, p) for p in packs)


async def test_anti_entropy_fills_a_peer_added_later_and_one_that_lost_a_pack(
    site: SiteFactory,
) -> None:
    b = await site("site-b")
    a = await site("site-a")
    tokens = create_repository(a.app[REPOS], a.app[INDEX], REPO, a.app[CLOCK].time())
    packs, sid = await backup(a, tokens)
    await a.server.close()
    peer = {"url": b.url, "token": b.replica_token(), "name": "site-b"}
    a = await site("site-a", [peer])
    await wait_for(lambda: settled(a) and peer_lag(a)["snapshots"] == {sid: True})
    assert all(b.app[INDEX].has_pack(REPO, p) for p in packs)
    # The peer loses a pack (disk trouble, and its index rebuilt): the next pass restores it.
    (b.repo_dir() / pack_name(packs[0])).unlink()
    b.app[INDEX].drop_repo_cache(REPO)
    from server.reindex import reindex

    await reindex(b.app[REPOS], b.app[INDEX])
    a.app[REPLICATION].replicators[0].request_anti_entropy()
    await wait_for(lambda: b.app[INDEX].has_pack(REPO, packs[0]))


# -- pieces --------------------------------------------------------------------------------


def test_windows_wrap_past_midnight() -> None:
    window = Window.parse("22:00-06:00, 12:30-13:00")

    def at(h: int, m: int) -> float:
        return datetime(2026, 3, 4, h, m).timestamp()

    assert window.is_open(at(23, 0)) and window.is_open(at(5, 59)) and window.is_open(at(12, 45))
    assert not window.is_open(at(6, 0)) and not window.is_open(at(12, 0))
    assert Window.parse(None).is_open(at(12, 0))


def test_rates_and_peer_settings_are_validated() -> None:
    assert parse_rate("80Mbit/s") == 10e6
    assert parse_rate("10MiB/s") == 10 * MiB
    assert parse_rate(0) is None
    with pytest.raises(UsageError):
        peer_from_dict({"url": "http://b:8420", "token": "t", "mode": "scheduled"})
    with pytest.raises(UsageError):
        peer_from_dict({"url": "ftp://b", "token": "t"})
    peer = peer_from_dict({"url": "http://b:8420/", "token": "t", "rate_limit": "4MiB/s"})
    assert (peer.name, peer.url, peer.rate_limit) == ("b:8420", "http://b:8420", 4 * MiB)


def test_server_toml_peers_and_cli_peers_combine(tmp_path: Path) -> None:
    path = tmp_path / "server.toml"
    path.write_text(
        'data_dir = "/srv/dv"\nsite_name = "clinic-a"\n'
        '[[peers]]\nname = "night"\nurl = "https://b.example:8420"\ntoken = "t1"\n'
        'mode = "scheduled"\nwindow = "22:00-06:00"\nrate_limit = "20MiB/s"\n'
    )
    extra = [{"url": "http://c:8420", "token": "t2"}]
    config = load_config(path, add_peers=extra)
    assert config.site_name == "clinic-a"
    assert [(p.name, p.mode) for p in config.peers] == [
        ("night", "scheduled"),
        ("c:8420", "continuous"),
    ]


# the replicator decodes the peer's answers with the one protocol table (engine/protocol)


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (401, "unauthenticated", PeerUnavailable),
        (403, "forbidden", PeerUnavailable),
        (503, "unavailable", PeerUnavailable),
        (408, "too_slow", PeerUnavailable),
        (404, "repo_not_found", RepoNotOnPeer),
        (422, "hash_mismatch", PeerRefused),
        (409, "missing_chunks", PeerRefused),
    ],
)
def test_the_replicator_reads_the_same_table(status: int, code: str, expected: type) -> None:
    client = PeerClient(PeerConfig(name="b", url="http://127.0.0.1:1", token="t"))
    error = client.refused(status, code, "pack ab", "no")
    assert type(error) is expected
    assert str(error) == f"pack ab: {status} {code} no"


# -- deletions reach peers only after the undelete window (docs/design.md §14) -------------------


async def test_peers_apply_a_deletion_only_after_the_primarys_window(site: SiteFactory) -> None:
    clock = SimulatedClock(1_900_000_000.0)
    b = await site("site-b", clock=clock)
    d = await two_snapshots(
        site, {"url": b.url, "token": b.replica_token(), "name": "site-b"}, clock
    )
    a, old, kept, dead = d.a, d.old, d.kept, d.dead
    at_b = RemoteBackend(f"{b.url}/{REPO}", d.tokens["restore"])
    try:
        await d.schedule(clock)  # scheduled at the primary: the peer still has it
        assert await d.seen_by(at_b) == (sorted([old, kept]), True)
        await d.admin.undelete(None)  # undone: nothing ever reaches the peer
        clock.advance(15 * DAY)
        assert await purge_once(a.app) == []
        queued = a.app[REPLICATION].state.head("site-b", REPO, 1000)
        assert all(item.kind != "purge" for item in queued)
        await asyncio.sleep(0.3)  # several replication rounds
        assert await d.seen_by(at_b) == (sorted([old, kept]), True)

        await d.schedule(clock)  # again, and this time the window passes
        clock.advance(14 * DAY + 1)
        assert len(await purge_once(a.app)) == 2
        await wait_for(lambda: settled(a))
        assert await d.seen_by(at_b) == ([kept], False)  # listings agree with the primary's
        assert [s.hex() for s in await d.admin.list_snapshots()] == [kept]
        # The peer scheduled them on its own window: a stolen replica token hides, never destroys.
        assert (b.repo_dir() / pack_name(dead)).is_file()
        assert (b.repo_dir() / snapshot_name(SnapshotId.parse(old))).is_file()
        clock.advance(14 * DAY + 1)
        assert len(await purge_once(b.app)) == 2
        assert not (b.repo_dir() / pack_name(dead)).exists()
        assert not (b.repo_dir() / snapshot_name(SnapshotId.parse(old))).exists()
        assert await purge_once(b.app) == []
    finally:
        await d.admin.close()
        await at_b.close()


async def test_only_the_primarys_replica_token_may_send_a_purge(site: SiteFactory) -> None:
    a, b, tokens = await pair(site)
    packs, sid = await backup(a, tokens)
    await wait_for(lambda: settled(a))
    url = replica_repo_url(b.url, REPO) + "/purge"
    async with aiohttp.ClientSession() as http:
        for role in ("backup", "restore", "admin"):  # a stolen practice token
            body = {"kind": "snapshot", "id": sid}
            headers = {"Authorization": f"Bearer {tokens[role]}"}
            async with http.post(url, json=body, headers=headers) as resp:
                assert resp.status == 403
        other = mint_replica_token(b.app[INDEX], "site-c", b.app[CLOCK].time())
        headers = {"Authorization": f"Bearer {other}"}  # another primary's replica token
        async with http.post(url, json={"kind": "pack", "id": packs[0].hex()},
                             headers=headers) as resp:  # fmt: skip
            assert resp.status == 404
    at_b = RemoteBackend(f"{b.url}/{REPO}", tokens["restore"])
    try:
        assert [s.hex() for s in await at_b.list_snapshots()] == [sid]
        assert sorted([p async for p in at_b.list_packs()]) == sorted(packs)
    finally:
        await at_b.close()
