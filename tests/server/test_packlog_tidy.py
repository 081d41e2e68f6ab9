"""Pack-log entries are deleted once folded into a segment (server.catchup; docs/design.md
§3.1.3), on the session's real SeaweedFS with two nodes (two real LMDB indexes, one bucket
prefix): a node catching up while the other folds and deletes the very entries it listed still
indexes every pack, from the segment it lists after the log; a node that was idle while others
folded finds the new segment; the log keeps only what is not folded; and a purged pack whose
rows stay in a segment is never indexed again."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from engine.clock import SimulatedClock
from engine.ids import ChunkId, PackId
from engine.pack import ManifestEntry, pack_name
from engine.store.base import Store
from engine.store.faulty import FaultyStore
from engine.store.s3 import S3Root
from server.catchup import PACKLOG, PACKSEG, CatchUp, log_pack
from server.index import ServerIndex
from server.repos import Repository
from tests.s3kit import SeaweedFS, s3_settings

T0 = 1_800_000_000.0
REPO = "clinic"


@dataclass
class _FoldMeanwhile(FaultyStore):
    """The reading node's view of the bucket: before its first GET of a log entry, `meanwhile`
    (the other node's catch-up) runs to the end, and every GET of an entry waits for it."""

    meanwhile: Callable[[], Awaitable[object]] | None = None
    _done: asyncio.Event = field(default_factory=asyncio.Event)

    async def get(self, name: str) -> bytes:
        if name.startswith(PACKLOG + "/"):
            if self.meanwhile is not None:
                hook, self.meanwhile = self.meanwhile, None
                await hook()
                self._done.set()
            await self._done.wait()
        return await super().get(name)


def _repo(store: Store, quarantine: Store) -> Repository:
    return Repository(REPO, store, quarantine, shared=True)


async def _upload(repo: Repository, stamp: float) -> PackId:
    """What intake leaves in the store: the pack, then its log entry."""
    pack_id = PackId(os.urandom(32))
    entries = [ManifestEntry(ChunkId(os.urandom(32)), i * 100, 100) for i in range(3)]
    await repo.store.put(pack_name(pack_id), b"pack bytes")
    await log_pack(repo, pack_id, 300, stamp, entries, SimulatedClock(stamp))
    return pack_id


async def _names(store: Store, prefix: str) -> list[str]:
    return [n async for n in store.list(prefix)]


async def test_folded_entries_are_deleted_and_no_node_misses_a_pack(
    seaweed: SeaweedFS, indexes: list[ServerIndex]
) -> None:
    root = S3Root(s3_settings(seaweed, f"tidy-{secrets.token_hex(6)}"))
    store, quarantine = root.child(f"repos/{REPO}"), root.child(f"quarantine/{REPO}")
    node_a = _repo(store, quarantine)
    first = [await _upload(node_a, T0 + i) for i in range(12)]
    catch_a = CatchUp(indexes[0], SimulatedClock(T0 + 1000), segment=5)

    # Node B lists the log; before it reads an entry, node A folds ten of them into two
    # segments and deletes them.
    seen_by_b = _FoldMeanwhile(store, meanwhile=lambda: catch_a.packs(node_a))
    catch_b = CatchUp(indexes[1], SimulatedClock(T0 + 12), segment=5)
    report = await catch_b.packs(_repo(seen_by_b, quarantine))
    assert catch_a.total.segments_written == 2 and catch_a.total.entries_deleted == 10
    assert report.packs == 12 and report.segments_read == 2
    assert all(indexes[1].has_pack(REPO, p) for p in first)
    assert len(await _names(store, PACKLOG)) == 2  # only what is not folded yet

    # B idles while A folds again (after more uploads): B's next catch-up lists the log from
    # its cursor, where those entries are gone, and finds them in the new segment.
    second = [await _upload(node_a, T0 + 2000 + i) for i in range(6)]
    catch_a.clock = SimulatedClock(T0 + 3000)
    await catch_a.packs(node_a)
    assert catch_a.total.segments_written == 3
    assert len(await _names(store, PACKLOG)) == 3
    catch_b.clock = SimulatedClock(T0 + 2010)  # folds nothing itself
    report = await catch_b.packs(_repo(store, quarantine))
    assert report.segments_read == 1
    assert all(indexes[1].has_pack(REPO, p) for p in second)

    # A pack purged since: its rows stay in a segment (write-once), but catch-up checks that
    # the pack is stored before indexing it, so a fresh node never indexes it again.
    purged = first[3]
    await store.delete(pack_name(purged))
    fresh = CatchUp(indexes[2], SimulatedClock(T0 + 3000), segment=5)
    report = await fresh.packs(_repo(store, quarantine))
    assert report.segments_read == len(await _names(store, PACKSEG)) == 3
    assert not indexes[2].has_pack(REPO, purged)
    assert all(indexes[2].has_pack(REPO, p) for p in first + second if p != purged)
