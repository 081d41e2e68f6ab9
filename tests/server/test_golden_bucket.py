"""Golden fixtures of the bucket formats other nodes and later versions read (docs/design.md
§3.1.3 pack log and segments; §14 schedules, tombstones, the prune log, commits in flight and
purge claims), made by tests/fixtures/make_fixtures.py from the format descriptions.

Two directions: the checked-in bytes (and their object names, tests/fixtures/bucket-names-v1.json)
decode to the values written here, and today's encoders, fed the same inputs, still produce
them byte for byte. A failure here is a format change: make it deliberately (a new version, new
fixtures, the readers of the old), never by regenerating alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from engine.commit import CommitRecord, snapshot_id_of
from engine.ids import ChunkId, PackId
from engine.pack import ManifestEntry
from engine.prunelog import PruneLog, encode, live, lock_doc
from engine.prunelog import entry_name as generation_name
from engine.store.memory import MemoryStore
from server import catchup
from server.deletion import DAY, Deletions, Window
from server.deletion_shared import (
    MARK,
    _parse,
    claim_name,
    encode_schedule,
    intent_name,
    schedule_name,
)
from server.failover_shared import SharedFailover
from server.failover_shared import encode as encode_failover
from server.failover_shared import entry_name as failover_name
from server.index import ServerIndex
from server.reindex import snapshot_summary
from server.replication.state import Generation, ReplicationState

FIXTURES = Path(__file__).parent.parent / "fixtures"
NAMES: dict[str, str] = json.loads((FIXTURES / "bucket-names-v1.json").read_text())
STAMP = 1793522000.25
PACK_ID = PackId.parse("803a088740e6af75aa4af1c6722adb897e003a5f508f56277294a3a89bf2aac6")
SNAPSHOT = "e853c38988a6d125e1c90f7c1a4b571ce0dc991f72a828b982829fbd47f21a9b"
ENTRIES = [
    ManifestEntry(
        ChunkId.parse("503d93f22fb5ca75c8a05e809968bb770c6d715e95c344d1016c2665b0ab24bb"), 0, 97
    ),
    ManifestEntry(
        ChunkId.parse("117f1ba99f4620ea43b45125f846bf119e652fa6bada985cfe4a937082ce417a"), 97, 113
    ),
]
WINDOW = Window(14 * DAY)
REPO = "golden"


def _bytes(file: str) -> bytes:
    return (FIXTURES / file).read_bytes()


def _json(file: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(_bytes(file))
    return doc


@pytest.fixture
def index(tmp_path: Path) -> Any:
    opened = ServerIndex(tmp_path / "index", 64 << 20)
    yield opened
    opened.close()


# -- the checked-in bytes decode --------------------------------------------------------------


def test_pack_log_entry_v1_decodes_to_the_packs_manifest() -> None:
    assert catchup.decode_entry(_bytes("packlog-v1.bin")) == (365, STAMP - 1.5, ENTRIES)
    assert catchup._parse_name(NAMES["packlog-v1.bin"]) == (STAMP, PACK_ID)
    assert len(_bytes("packlog-v1.bin")) == 25 + 40 * len(ENTRIES)


def test_segment_v1_decodes_to_its_log_entries() -> None:
    assert catchup.decode_segment(_bytes("packseg-v1.bin")) == [(PACK_ID, _bytes("packlog-v1.bin"))]
    assert catchup._segment_range(NAMES["packseg-v1.bin"]) == (STAMP, STAMP)


def test_schedule_and_tombstone_v1_decode_to_their_docs() -> None:
    assert _parse(NAMES["schedule-pack-v1.json"]) == ("pack", PACK_ID.hex())
    assert _json("schedule-pack-v1.json") == {
        "kind": "pack", "id": PACK_ID.hex(), "scheduled": STAMP,
        "purge_after": STAMP + 14 * DAY, "size": 365, "arrival": STAMP - 1.5, "by": "admin",
    }  # fmt: skip
    assert _parse(NAMES["tombstone-snapshot-v1.json"]) == ("snapshot", SNAPSHOT)
    tombstone = _json("tombstone-snapshot-v1.json")
    assert tombstone["summary"] == {
        "time": "2026-11-01T08:30:00Z", "agent": "fixture-host", "received": STAMP - 60
    }  # fmt: skip
    assert (tombstone["kind"], tombstone["id"], tombstone["purge_after"]) == (
        "snapshot", SNAPSHOT, STAMP + 14 * DAY
    )  # fmt: skip


def test_a_node_reads_the_schedule_fixture_into_its_table(index: ServerIndex) -> None:
    deletions = Deletions(index)
    deletions.put_schedule(REPO, _json("schedule-pack-v1.json"))
    assert deletions.is_scheduled(REPO, "pack", PACK_ID.hex())
    assert deletions.pending(REPO) == [_json("schedule-pack-v1.json")]


async def test_prune_log_entry_v1_is_read_as_the_generation_and_lock() -> None:
    store = MemoryStore()
    await store.put(NAMES["prunelog-v1.json"], _bytes("prunelog-v1.json"))
    n, doc = await PruneLog(store, REPO).newest()
    assert n == 7 and doc == {"holder": "prune@fixture-host", "since": STAMP,
                              "expires": STAMP + 3600}  # fmt: skip
    assert live(doc, STAMP + 3599) and not live(doc, STAMP + 3601)


async def test_failover_entry_v1_is_read_as_the_generation_and_binding(index: Any) -> None:
    site = MemoryStore()  # the site store, beside the repositories
    await site.put(NAMES["failover-v1.json"], _bytes("failover-v1.json"))
    state = ReplicationState(index)
    n, gen, replica = await SharedFailover(site, state).refresh(REPO)
    assert (n, gen) == (3, Generation(1, 2, "site-a", ""))
    assert replica == {"owner": "site-a", "since": STAMP}
    assert state.generation(REPO).fenced and state.replica_owner(REPO) == "site-a"


def test_intent_and_claim_v1_are_empty_marks_named_by_stamp_and_object() -> None:
    assert _bytes("intent-v1.json") == _bytes("claim-v1.json") == b"{}"
    stamp = NAMES["intent-v1.json"].rsplit("/", 1)[-1].partition("-")[0]
    assert int(stamp, 16) / 1e6 == STAMP  # how wait_for_commits dates an intent
    assert _parse(NAMES["claim-v1.json"]) == ("pack", PACK_ID.hex())


# -- today's encoders still produce them ------------------------------------------------------


def test_todays_pack_log_and_segment_encoders_produce_the_fixtures() -> None:
    entry = catchup.encode_entry(365, STAMP - 1.5, ENTRIES)
    assert entry == _bytes("packlog-v1.bin")
    assert catchup.entry_name(STAMP, PACK_ID) == NAMES["packlog-v1.bin"]
    assert catchup.encode_segment([(PACK_ID, entry)]) == _bytes("packseg-v1.bin")
    assert catchup.segment_name(STAMP, STAMP) == NAMES["packseg-v1.bin"]


def test_todays_schedules_produce_the_fixtures(index: ServerIndex) -> None:
    """Through the tables a forget and a prune schedule with, as `publish` writes them."""
    deletions = Deletions(index)
    index.add_packs(REPO, [(PACK_ID, 365, STAMP - 1.5, ENTRIES)])
    doc = deletions.schedule_pack(REPO, PACK_ID, ENTRIES, STAMP, WINDOW, "admin")
    assert doc is not None and encode_schedule(doc) == _bytes("schedule-pack-v1.json")
    assert schedule_name("pack", PACK_ID.hex()) == NAMES["schedule-pack-v1.json"]
    commit = _bytes("commit-v2.json")
    sid = snapshot_id_of(commit)
    assert sid.hex() == SNAPSHOT
    index.add_snapshot(REPO, sid, snapshot_summary(CommitRecord.decode(commit), STAMP - 60))
    (doc,) = deletions.schedule_snapshots(REPO, [sid], STAMP, WINDOW, "admin")
    assert encode_schedule(doc) == _bytes("tombstone-snapshot-v1.json")
    assert schedule_name("snapshot", SNAPSHOT) == NAMES["tombstone-snapshot-v1.json"]


def test_todays_failover_entry_produces_the_fixture() -> None:
    replica = {"owner": "site-a", "since": STAMP}
    assert encode_failover(Generation(1, 2, "site-a", ""), replica) == _bytes("failover-v1.json")
    assert failover_name(REPO, 3) == NAMES["failover-v1.json"]


def test_todays_prune_log_intent_and_claim_produce_the_fixtures() -> None:
    lock = lock_doc("prune@fixture-host", STAMP, STAMP + 3600)
    assert encode(lock) == _bytes("prunelog-v1.json")
    assert generation_name(7) == NAMES["prunelog-v1.json"]
    assert intent_name(STAMP, "5a" * 8) == NAMES["intent-v1.json"]
    assert claim_name("pack", PACK_ID.hex()) == NAMES["claim-v1.json"]
    assert MARK == _bytes("intent-v1.json") == _bytes("claim-v1.json")
