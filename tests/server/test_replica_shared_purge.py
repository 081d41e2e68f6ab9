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
from server.handlers_deletion import purge_once
from server.state import REPOS
from tests.s3kit import SeaweedFS, s3_settings
from tests.server.test_replication import (  # noqa: F401 - the `site` fixture
    DAY,
    REPO,
    SiteFactory,
    settled,
    site,
    two_snapshots,
    wait_for,
)


async def test_a_peer_on_a_shared_store_applies_the_primarys_purge_on_every_node(
    site: SiteFactory,  # noqa: F811
    seaweed: SeaweedFS,
) -> None:
    clock = SimulatedClock(1_900_000_000.0)
    shared = s3_settings(seaweed, f"peer-{secrets.token_hex(6)}")
    b1 = await site("site-b1", clock=clock, store=shared, token_publish_interval=0.05)
    b2 = await site("site-b2", clock=clock, store=shared, token_publish_interval=0.05)
    peer = {"url": b1.url, "token": b1.replica_token(), "name": "site-b"}
    d = await two_snapshots(site, peer, clock)
    readers = [RemoteBackend(f"{s.url}/{REPO}", d.tokens["restore"]) for s in (b1, b2)]

    async def b2_accepts() -> bool:
        try:
            return await d.seen_by(readers[1]) == (sorted([d.old, d.kept]), True)
        except Exception:  # the replicated tokens reach b2 through the bucket
            return False

    try:
        await wait_for(b2_accepts)
        await d.schedule(clock)
        clock.advance(14 * DAY + 1)
        assert len(await purge_once(d.a.app)) == 2
        await wait_for(lambda: settled(d.a))
        for reader in readers:  # b1 received the items; b2 learned them from the bucket
            assert await d.seen_by(reader) == ([d.kept], False)
        store = b2.app[REPOS].get(REPO).store
        assert await store.exists(pack_name(d.dead))  # hidden, not destroyed: the peer's window
        clock.advance(14 * DAY + 1)
        assert len(await purge_once(b2.app)) == 2  # the other node purges
        assert not await store.exists(pack_name(d.dead))
        assert not await store.exists(snapshot_name(SnapshotId.parse(d.old)))
    finally:
        for backend in (d.admin, *readers):
            await backend.close()
