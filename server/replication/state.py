"""Durable replication state in the server's LMDB environment (DATA/index.lmdb).

Owns, per peer and repository, the FIFO queue of objects still to push, the set of snapshots a
peer acknowledged, and, on a peer, which replica owns each replicated repository. Every change is
one LMDB write transaction (fsynced on commit), so a server killed mid-transfer resumes with
exactly the items it had not seen acknowledged. Must not do network I/O or know HTTP.

Tables (keys use NUL as the separator; peer and repository names cannot contain it):

    repl_queue    peer ‖ repo ‖ seq u64 BE          → JSON {kind, name, size, time}
    repl_pending  peer ‖ repo ‖ kind ‖ name           → seq u64 BE (one queued copy per object)
    repl_acked    peer ‖ repo ‖ "snapshot" ‖ name     → acknowledged at (f64 unix seconds)
    repl_meta     "seq"                              → last sequence number u64 BE
    repl_meta     "gen" ‖ repo                       → JSON Generation (docs/design.md §17)
    replicas      repo                               → JSON {owner, since}   (peer side)

On a store several nodes share, "gen" and `replicas` are a cache of the bucket's
(server.failover_shared), re-read before the decisions that depend on them.

Unlike the chunks/packs/snapshots cache, these tables are not dropped by reindex; losing them
costs only a re-comparison with the peer (anti-entropy), never data.
"""

from __future__ import annotations

import itertools
import json
import logging
import struct
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

import lmdb

from server.index import ServerIndex, prefixed

PACK, SNAPSHOT, KEY, CONFIG, TOKENS = "pack", "snapshot", "key", "config", "tokens"
EVENT = "event"  # a sealed audit event, `events/<name>` (docs/design.md §16)
PURGE = "purge"  # `snapshot:<hex>` or `pack:<hex>` the primary destroyed past its window (§14)
KINDS = (PACK, SNAPSHOT, KEY, CONFIG, TOKENS, EVENT, PURGE)
log = logging.getLogger(__name__)
_SEQ = struct.Struct(">Q")  # big-endian, so LMDB's byte order is queue order
_TIME = struct.Struct("<d")
_TABLES = ("repl_queue", "repl_pending", "repl_acked", "repl_meta", "replicas")


@dataclass(frozen=True, slots=True)
class Item:
    """One object to push: a pack or snapshot (hex id), a key object (its name), config, tokens,
    or a purge (`<kind>:<hex id>`: the primary destroyed that object after its undelete window)."""

    kind: str
    name: str
    size: int = 0
    time: float = 0.0
    seq: int = 0


@dataclass(frozen=True, slots=True)
class Lag:
    items: int = 0
    packs: int = 0
    bytes: int = 0
    oldest_pack_time: float | None = None  # enqueue time of the oldest unreplicated pack


@dataclass(frozen=True, slots=True)
class Generation:
    """A repository's primacy at this site. `generation` counts promotions (1: the site where
    the practice began); `fenced_by` > `generation` means another site became primary since,
    so this one must not accept a practice's writes; `primary` names that site (its peer name
    here) and `promoted_from` the replica label of the primary this site took over from."""

    generation: int = 1
    fenced_by: int = 0
    primary: str = ""
    promoted_from: str = ""

    @property
    def fenced(self) -> bool:
        return self.fenced_by > self.generation

    @property
    def current(self) -> int:
        """The highest generation this site knows of."""
        return max(self.generation, self.fenced_by)


def _key(*parts: str) -> bytes:
    return b"\0".join(p.encode() for p in parts)


def _prefix(*parts: str) -> bytes:
    return _key(*parts) + b"\0"


class ReplicationState:
    def __init__(self, index: ServerIndex) -> None:
        self.env = index.env
        self.db = {name: index.dbs[name] for name in _TABLES}

    # -- queue -------------------------------------------------------------------------------

    def enqueue(self, peers: Iterable[str], repo: str, items: Iterable[Item], now: float) -> int:
        """Queue `items` for each peer unless already queued (or, for snapshots, acknowledged)."""
        peers, items = list(peers), list(items)
        added = 0
        with self.env.begin(write=True) as txn:
            seq = self._last_seq(txn)
            for peer in peers:
                for item in items:
                    if self._known(txn, peer, repo, item):
                        continue
                    seq += 1
                    self._put_item(txn, peer, repo, item, seq, now)
                    added += 1
            txn.put(b"seq", _SEQ.pack(seq), db=self.db["repl_meta"])
        return added

    def _last_seq(self, txn: lmdb.Transaction) -> int:
        raw = txn.get(b"seq", db=self.db["repl_meta"])
        return int(_SEQ.unpack(raw)[0]) if raw else 0

    def _known(self, txn: lmdb.Transaction, peer: str, repo: str, item: Item) -> bool:
        pk = _key(peer, repo, item.kind, item.name)
        if txn.get(pk, db=self.db["repl_pending"]) is not None:
            return True
        return item.kind == SNAPSHOT and txn.get(pk, db=self.db["repl_acked"]) is not None

    def _put_item(
        self, txn: lmdb.Transaction, peer: str, repo: str, item: Item, seq: int, now: float
    ) -> None:
        doc = {"kind": item.kind, "name": item.name, "size": item.size, "time": item.time or now}
        txn.put(_prefix(peer, repo) + _SEQ.pack(seq), json.dumps(doc).encode(),
                db=self.db["repl_queue"])  # fmt: skip
        txn.put(_key(peer, repo, item.kind, item.name), _SEQ.pack(seq), db=self.db["repl_pending"])

    def head(self, peer: str, repo: str, limit: int = 1) -> list[Item]:
        """The oldest `limit` queued items for (peer, repo), in order."""
        return list(self._items(peer, repo, limit))

    def _items(self, peer: str, repo: str, limit: int | None = None) -> Iterator[Item]:
        p = _prefix(peer, repo)
        with self.env.begin(db=self.db["repl_queue"]) as txn:
            rows = prefixed(txn.cursor(), p)
            for key, value in rows if limit is None else itertools.islice(rows, limit):
                doc = json.loads(value)
                seq = int(_SEQ.unpack(key)[0])
                yield Item(doc["kind"], doc["name"], doc["size"], doc["time"], seq)

    def repos_with_work(self, peer: str) -> list[str]:
        """Repositories with at least one queued item for `peer` (skips over each repo's rows)."""
        p = _prefix(peer)
        out: list[str] = []
        with self.env.begin(db=self.db["repl_queue"]) as txn:
            cur = txn.cursor()
            start = p
            while cur.set_range(start) and cur.key().startswith(p):
                repo = cur.key()[len(p) :].split(b"\0", 1)[0]
                out.append(repo.decode())
                start = p + repo + b"\x01"  # just past every key of this repository
        return out

    def ack(self, peer: str, repo: str, items: Iterable[Item], now: float) -> None:
        """The peer holds `items`: drop them from the queue; remember snapshots as held."""
        with self.env.begin(write=True) as txn:
            for item in items:
                self._dequeue(txn, peer, repo, item.kind, item.name)
                if item.kind == SNAPSHOT:
                    txn.put(_key(peer, repo, SNAPSHOT, item.name), _TIME.pack(now),
                            db=self.db["repl_acked"])  # fmt: skip

    def drop(self, peer: str, repo: str, item: Item) -> None:
        """Forget a queued item without acknowledging it (anti-entropy will find it again)."""
        with self.env.begin(write=True) as txn:
            self._dequeue(txn, peer, repo, item.kind, item.name)

    def _dequeue(self, txn: lmdb.Transaction, peer: str, repo: str, kind: str, name: str) -> None:
        pk = _key(peer, repo, kind, name)
        seq = txn.pop(pk, db=self.db["repl_pending"])
        if seq is not None:
            txn.delete(_prefix(peer, repo) + bytes(seq), db=self.db["repl_queue"])

    def reconcile(
        self, peer: str, repo: str, lacking: Iterable[Item], held: Iterable[Item], now: float
    ) -> int:
        """Anti-entropy result: queue what the peer lacks, settle what it already holds."""
        added = self.enqueue([peer], repo, lacking, now)
        self.ack(peer, repo, held, now)
        return added

    # -- what the peer holds -------------------------------------------------------------------

    def acked_snapshots(self, peer: str, repo: str) -> set[str]:
        p = _prefix(peer, repo, SNAPSHOT)
        with self.env.begin(db=self.db["repl_acked"]) as txn:
            return {key.decode() for key, _ in prefixed(txn.cursor(), p)}

    def lag(self, peer: str, repo: str) -> Lag:
        """Pending items, packs and bytes for (peer, repo); cost ∝ the backlog."""
        items = packs = size = 0
        oldest: float | None = None
        for item in self._items(peer, repo):
            items += 1
            if item.kind == PACK:
                packs, size = packs + 1, size + item.size
                oldest = item.time if oldest is None else min(oldest, item.time)
        return Lag(items, packs, size, oldest)

    # -- peer side: which replica owns a repository ----------------------------------------------

    def replica_owner(self, repo: str) -> str | None:
        binding = self.replica_binding(repo)
        return str(binding["owner"]) if binding is not None else None

    def replica_binding(self, repo: str) -> dict[str, Any] | None:
        """The binding's JSON doc `{owner, since}`, None for a repository bound to no replica."""
        with self.env.begin(db=self.db["replicas"]) as txn:
            raw = txn.get(repo.encode())
        return dict(json.loads(raw)) if raw is not None else None

    def mirror(self, repo: str, gen: Generation, replica: dict[str, Any] | None) -> None:
        """Set both rows to what the store several nodes share says (server.failover_shared)."""
        with self.env.begin(write=True) as txn:
            self._put_generation(txn, repo, gen)
            if replica is None:
                txn.delete(repo.encode(), db=self.db["replicas"])
            else:
                txn.put(repo.encode(), json.dumps(replica).encode(), db=self.db["replicas"])

    def claim_replica(self, repo: str, owner: str, now: float) -> str:
        """Bind `repo` to replica `owner` unless already bound; return the owner it has."""
        doc: dict[str, Any] = {"owner": owner, "since": now}
        with self.env.begin(write=True, db=self.db["replicas"]) as txn:
            if txn.put(repo.encode(), json.dumps(doc).encode(), overwrite=False):
                return owner
            raw = txn.get(repo.encode())
            return str(json.loads(raw)["owner"]) if raw is not None else owner

    # -- generations: who is primary (docs/design.md §17) -------------------------------------

    def generation(self, repo: str) -> Generation:
        with self.env.begin(db=self.db["repl_meta"]) as txn:
            raw = txn.get(_key("gen", repo))
        return Generation(**json.loads(raw)) if raw is not None else Generation()

    def _put_generation(self, txn: lmdb.Transaction, repo: str, gen: Generation) -> None:
        txn.put(_key("gen", repo), json.dumps(asdict(gen)).encode(), db=self.db["repl_meta"])

    def fence(self, repo: str, generation: int, primary: str = "") -> bool:
        """Record that `primary` holds `repo` at `generation`; True if this fences this site
        (first news of a generation above its own)."""
        if generation <= self.generation(repo).current:  # the common case: no write
            return False
        with self.env.begin(write=True) as txn:
            raw = txn.get(_key("gen", repo), db=self.db["repl_meta"])
            gen = Generation(**json.loads(raw)) if raw is not None else Generation()
            if generation <= gen.current:
                return False
            self._put_generation(txn, repo, replace(gen, fenced_by=generation, primary=primary))
            return True

    def observe_peer(self, repo: str, peer: str, text: str) -> bool:
        """A peer answered about `repo` with generation `text`: above ours fences this site
        (True: this answer did)."""
        try:
            generation = int(text)
        except ValueError:
            return False
        if self.replica_owner(repo) is None and self.fence(repo, generation, peer):
            log.warning("%s: %s is primary at generation %d: this site is fenced", repo, peer,
                        generation)  # fmt: skip
            return True
        return False

    def promote(self, repo: str) -> Generation:
        """Make this site primary of `repo` at a generation above any it knows of: drop the
        replica binding, remember whom it was taken from."""
        with self.env.begin(write=True) as txn:
            raw = txn.get(_key("gen", repo), db=self.db["repl_meta"])
            gen = Generation(**json.loads(raw)) if raw is not None else Generation()
            owner_raw = txn.get(repo.encode(), db=self.db["replicas"])
            owner = str(json.loads(owner_raw)["owner"]) if owner_raw is not None else ""
            txn.delete(repo.encode(), db=self.db["replicas"])
            new = Generation(gen.current + 1, 0, "", owner or gen.promoted_from)
            self._put_generation(txn, repo, new)
            return new

    def release_replica(self, repo: str) -> bool:
        """Promote a replica to a primary repository: its practice may write here from now on."""
        with self.env.begin(write=True, db=self.db["replicas"]) as txn:
            return bool(txn.delete(repo.encode()))
