"""The pack log and its segments (server.catchup) on a shared in-memory store with two real
LMDB indexes as two nodes: a node indexes what another logged, folds old entries into
segments, and a fresh node reads the segments instead of every entry; a quarantined pack is not
re-indexed; an entry stamped a little before the reader's cursor is still seen."""

from __future__ import annotations

import os

import pytest

from engine.clock import SimulatedClock
from engine.ids import ChunkId, PackId
from engine.pack import ManifestEntry, pack_name
from engine.store.faulty import FaultyStore
from engine.store.memory import MemoryStore
from server.catchup import PACKLOG, PACKSEG, CatchUp, decode_entry, encode_entry, log_pack
from server.index import ServerIndex
from server.repos import Repository

T0 = 1_800_000_000.0


def _repo() -> Repository:
    return Repository("clinic", MemoryStore(), MemoryStore(), shared=True)


async def _upload(repo: Repository, stamp: float) -> tuple[PackId, list[ChunkId]]:
    """What intake leaves in the store: the pack, then its log entry."""
    pack_id = PackId(os.urandom(32))
    entries = [ManifestEntry(ChunkId(os.urandom(32)), i * 100, 100) for i in range(3)]
    await repo.store.put(pack_name(pack_id), b"pack bytes")
    await log_pack(repo, pack_id, 300, stamp, entries, SimulatedClock(stamp))
    return pack_id, [e.chunk_id for e in entries]


def test_a_log_entry_round_trips() -> None:
    rows = [ManifestEntry(ChunkId(bytes([i]) * 32), i, 7) for i in range(4)]
    assert decode_entry(encode_entry(99, 12.5, rows)) == (99, 12.5, rows)


async def test_a_fresh_node_reads_segments_not_every_entry(indexes: list[ServerIndex]) -> None:
    repo = _repo()
    uploads = [await _upload(repo, T0 + i) for i in range(12)]
    later = SimulatedClock(T0 + 1000)  # every entry is older than two windows
    first = await CatchUp(indexes[0], later, segment=5).packs(repo)
    assert (first.packs, first.segments_written) == (12, 2)
    assert len([n async for n in repo.store.list(PACKSEG)]) == 2

    fresh = CatchUp(indexes[1], later, segment=5)
    report = await fresh.packs(repo)
    assert (report.packs, report.segments_read) == (12, 2)
    # Two segment GETs and the two entries after them, not twelve entry GETs.
    assert report.requests < first.requests
    for pack_id, chunks in uploads:
        assert indexes[1].has_pack("clinic", pack_id)
        assert indexes[1].missing("clinic", chunks) == []


async def test_a_quarantined_pack_is_not_indexed_again(indexes: list[ServerIndex]) -> None:
    repo = _repo()
    kept, _ = await _upload(repo, T0)
    gone, chunks = await _upload(repo, T0 + 1)
    await repo.store.delete(pack_name(gone))  # quarantined (moved out) after it was logged
    catch_up = CatchUp(indexes[0], SimulatedClock(T0 + 5))
    assert (await catch_up.packs(repo)).packs == 1
    assert indexes[0].has_pack("clinic", kept) and not indexes[0].has_pack("clinic", gone)
    assert await catch_up.missing(repo, chunks) == chunks


async def test_an_entry_stamped_before_the_cursor_within_the_window_is_seen(
    indexes: list[ServerIndex],
) -> None:
    repo = _repo()
    await _upload(repo, T0 + 100)
    catch_up = CatchUp(indexes[0], SimulatedClock(T0 + 100))
    await catch_up.packs(repo)
    late, chunks = await _upload(repo, T0 + 70)  # a node whose clock lags by 30 s
    assert await catch_up.missing(repo, chunks, force=True) == []
    assert indexes[0].has_pack("clinic", late)
    names = [n async for n in repo.store.list(PACKLOG)]
    assert len(names) == 2


async def test_a_fresh_node_lists_packs_once_however_many_segments(
    indexes: list[ServerIndex], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("server.catchup.LIST_INSTEAD_OF_HEAD", 2)  # list rather than HEAD
    store = FaultyStore(MemoryStore())
    repo = Repository("clinic", store, MemoryStore(), shared=True)
    for i in range(12):
        await _upload(repo, T0 + i)
    later = SimulatedClock(T0 + 1000)
    await CatchUp(indexes[0], later, segment=3).packs(repo)  # folds four segments
    store.calls.clear()
    report = await CatchUp(indexes[1], later, segment=3).packs(repo)
    assert (report.packs, report.segments_read) == (12, 4)
    assert store.calls.count(("list", "packs")) == 1
