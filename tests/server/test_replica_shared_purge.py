"""A peer whose replica lives in a store two nodes share applies the primary's purges
(docs/design.md §14, peers and several nodes): the node that receives the purge item schedules
the objects in the store, so the other node stops listing them too, and the other node's purge
destroys them once the peer's own window has passed."""

from __future__ import annotations

import secrets

from engine.clock import SimulatedClock
from engine.commit import snapshot_name
from engine.ids import SnapshotId
from engine.pack import pack_name
from engine.remote import RemoteBackend
from server.admin import create_repository
from server.deletion import Window
from server.deletion import pack_entries as stored_entries
from server.handlers_deletion import purge_once
from server.state import DELETIONS, INDEX, REPOS
from tests.s3kit import SeaweedFS, s3_settings
from tests.server.test_replication import (  # noqa: F401 - the `site` fixture
    REPO,
    SiteFactory,
    backup,
    settled,
    site,
    wait_for,
)

DAY = 86_400.0


async def test_a_peer_on_a_shared_store_applies_the_primarys_purge_on_every_node(
    site: SiteFactory,  # noqa: F811
    seaweed: SeaweedFS,
) -> None:
    clock = SimulatedClock(1_900_000_000.0)
    shared = s3_settings(seaweed, f"peer-{secrets.token_hex(6)}")
    b1 = await site("site-b1", clock=clock, store=shared, token_publish_interval=0.05)
    b2 = await site("site-b2", clock=clock, store=shared, token_publish_interval=0.05)
    peer = {"url": b1.url, "token": b1.replica_token(), "name": "site-b"}
    a = await site("site-a", [peer], clock=clock)
    tokens = create_repository(a.app[REPOS], a.app[INDEX], REPO, clock.time())
    old_packs, old = await backup(a, tokens)
    _, kept = await backup(a, tokens, init=False)
    await wait_for(lambda: settled(a))
    admin = RemoteBackend(f"{a.url}/{REPO}", tokens["admin"])
    readers = [RemoteBackend(f"{s.url}/{REPO}", tokens["restore"]) for s in (b1, b2)]
    dead = old_packs[0]

    async def view(reader: RemoteBackend) -> tuple[list[str], bool]:
        listed = sorted(s.hex() for s in await reader.list_snapshots())
        return listed, dead in [p async for p in reader.list_packs()]

    async def b2_accepts() -> bool:
        try:
            return await view(readers[1]) == (sorted([old, kept]), True)
        except Exception:  # the replicated tokens reach b2 through the bucket
            return False

    try:
        await wait_for(b2_accepts)
        await admin.forget([SnapshotId.parse(old)])
        entries = await stored_entries(a.app[REPOS].get(REPO), dead)
        a.app[DELETIONS].schedule_pack(REPO, dead, entries, clock.time(), Window(14 * DAY), "t")
        clock.advance(14 * DAY + 1)
        assert len(await purge_once(a.app)) == 2
        await wait_for(lambda: settled(a))
        for reader in readers:  # b1 received the items; b2 learned them from the bucket
            assert await view(reader) == ([kept], False)
        store = b2.app[REPOS].get(REPO).store
        assert await store.exists(pack_name(dead))  # hidden, not destroyed: the peer's window
        clock.advance(14 * DAY + 1)
        assert len(await purge_once(b2.app)) == 2  # the other node purges
        assert not await store.exists(pack_name(dead))
        assert not await store.exists(snapshot_name(SnapshotId.parse(old)))
    finally:
        for backend in (admin, *readers):
            await backend.close()
