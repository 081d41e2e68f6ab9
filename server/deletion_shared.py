"""Deletions on a repository that several server nodes serve from one store (docs/design.md §14,
**Several nodes**; §3.1.3).

Each node's `deletions` table is a cache, like its index: the truth is in the store. Owns
three things there: the schedules (`deletions/<kind>-<id>`, the schedule doc as JSON, put when
a snapshot or pack is scheduled and deleted when it is undeleted, revived or purged), the prune
log (`engine.prunelog`: the generation and the prune lock, appended create-only, so of two
nodes taking the lock one loses), and the commits in flight (`locks/commits/<µs stamp>-<random>`,
put before a commit looks at the log and deleted once its record is stored, so a node that has
just appended to the log can wait for every commit that may not have seen it). `sync` applies
the store's schedules to this node's tables. On a repository only this node serves every
store step is skipped and the LMDB generation and lock of `server.deletion` stay the truth.
Must not know HTTP, and must not decide who may delete (the handlers check roles).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

from engine.clock import Clock
from engine.commit import snapshot_name
from engine.errors import ObjectNotFound
from engine.ids import PackId, SnapshotId
from engine.pack import pack_name
from engine.protocol.errors import FullRefsRequired, PruneLocked
from engine.prunelog import PruneLog, live, lock_doc
from server.catchup import MISSING_EVERY, WINDOW, CatchUp
from server.deletion import (
    PACK,
    SNAPSHOT,
    Deletions,
    Window,
    entries_or_forget,
    pack_entries,
    refs_since,
)
from server.repos import Repository

log = logging.getLogger(__name__)

SCHEDULES = "deletions"  # deletions/<kind>-<id hex>: one schedule doc per scheduled object
CLAIMS = "locks/purging"  # locks/purging/<kind>-<id hex>: a purge is about to destroy it
INTENTS = "locks/commits"  # locks/commits/<µs stamp, 16 hex>-<random, 16 hex>: a commit in flight
# An intent older than this (by its writer's stamp) is a node that died mid-commit: a commit
# takes well under a second; the margin covers clock skew between nodes (catch-up's WINDOW).
INTENT_DEAD = 2 * WINDOW
POLL = 0.05  # pause between listings while waiting for commits in flight
WAIT_POLLS = 1200  # then the lock or schedule is refused (exit 14) rather than wait on
ROUNDS = 20  # a commit looks again at most this often while prunes keep appending


MARK = b"{}"  # the body of a commit's intent and of a purge's claim: only the name matters


def encode_schedule(doc: dict[str, Any]) -> bytes:
    """A schedule object's bytes, and the tombstone's after the purge (version 1: the doc of
    server.deletion as JSON in its insertion order; tests/fixtures/schedule-*-v1.json)."""
    return json.dumps(doc).encode()


def intent_name(stamp: float, nonce: str) -> str:
    return f"{INTENTS}/{int(stamp * 1e6):016x}-{nonce}"


def schedule_name(kind: str, ident: str) -> str:
    return f"{SCHEDULES}/{kind}-{ident}"


def claim_name(kind: str, ident: str) -> str:
    return f"{CLAIMS}/{kind}-{ident}"


def _parse(name: str) -> tuple[str, str] | None:
    kind, _, ident = name.rsplit("/", 1)[-1].partition("-")
    return (kind, ident) if kind in (SNAPSHOT, PACK) and ident else None


@dataclass
class _Synced:
    started: float = float("-inf")  # monotonic start of the last sync
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class SharedDeletions:
    """One per node (the app's): schedules, revival and the prune log of every repository,
    in the store as well as in this node's tables when the repository is shared."""

    def __init__(self, deletions: Deletions, catchup: CatchUp, clock: Clock) -> None:
        self.deletions, self.catchup, self.clock = deletions, catchup, clock
        self._synced: dict[str, _Synced] = {}
        # Per repository: tombstones (schedules of objects already purged) this node has
        # applied, by name, so a sync looks at each once; `expire` deletes them in the end.
        self._settled: dict[str, dict[str, dict[str, Any]]] = {}

    # -- schedules in the store -----------------------------------------------------------

    async def publish(self, repo: Repository, docs: Iterable[dict[str, Any]]) -> None:
        for doc in docs:  # write-once: a schedule already there is the same object's
            await repo.store.put(schedule_name(doc["kind"], doc["id"]), encode_schedule(doc))

    async def withdraw(self, repo: Repository, kind: str, ident: str) -> None:
        if repo.shared:
            with contextlib.suppress(ObjectNotFound):  # another node withdrew it first
                await repo.store.delete(schedule_name(kind, ident))

    async def still_scheduled(self, repo: Repository, doc: dict[str, Any]) -> bool:
        """The purge's last look, after its claim: a schedule another node withdrew (revived,
        undeleted) is not destroyed. Revival withdraws, then looks for a claim, so of a purge
        and a revival at the same instant at least one sees the other (`revive_pack`)."""
        if not repo.shared:
            return True
        claim = claim_name(doc["kind"], doc["id"])
        await repo.store.put(claim, MARK)  # create-only: a killed purge's claim is reused
        if await repo.store.exists(schedule_name(doc["kind"], doc["id"])):
            return True
        await self.unclaim(repo, doc)
        return False

    async def unclaim(self, repo: Repository, doc: dict[str, Any]) -> None:
        if repo.shared:
            with contextlib.suppress(ObjectNotFound):
                await repo.store.delete(claim_name(doc["kind"], doc["id"]))

    async def _claimed(self, repo: Repository, kind: str, ident: str) -> bool:
        """After a withdrawal: a purge claimed the object and may be destroying it now, so it
        stays scheduled here (the purge's tombstone, or the next sync, settles it)."""
        return await repo.store.exists(claim_name(kind, ident))

    async def sync(self, repo: Repository, fresh_for: float = 0.0) -> None:
        """Apply the store's schedules to this node's tables (no-op unless shared); with
        `fresh_for`, a sync that started that recently is enough."""
        if not repo.shared:
            return
        state = self._synced.setdefault(repo.name, _Synced())
        asked = self.clock.monotonic()
        async with state.lock:
            if state.started > asked - fresh_for:
                return
            state.started = self.clock.monotonic()
            async with self.deletions.lock(repo.name):
                await self.sync_locked(repo)

    async def sync_locked(self, repo: Repository) -> None:
        """`sync` for a caller holding the repository's deletions lock."""
        if not repo.shared:
            return
        stored = {}
        async for name in repo.store.list(SCHEDULES):
            parsed = _parse(name)
            if parsed is not None:
                stored[parsed] = name
        local = {(d["kind"], d["id"]): d for d in self.deletions.pending(repo.name)}
        settled = self._settled.setdefault(repo.name, {})
        for name in settled.keys() - stored.values():
            del settled[name]  # expired (or withdrawn) since
        for key in stored.keys() - local.keys():
            if stored[key] in settled:
                continue
            with contextlib.suppress(ObjectNotFound):  # withdrawn since the listing
                doc = json.loads(await repo.store.get(stored[key]))
                if await self._apply(repo, doc):
                    settled[stored[key]] = doc
        for key in local.keys() - stored.keys():
            await self._unapply(repo, local[key])
        for kind, ident in local.keys() & stored.keys():
            if kind == PACK and self.deletions.index.has_pack(repo.name, PackId.parse(ident)):
                await self.revive_pack(repo, PackId.parse(ident))  # uploaded again here

    async def _apply(self, repo: Repository, doc: dict[str, Any]) -> bool:
        """Another node scheduled this: take it out of this node's listings and index. True
        if it was purged already (a tombstone): then only what this node still lists of it
        goes, and no schedule row is kept."""
        if await self._purged(repo, doc):
            await asyncio.to_thread(self.deletions.forget_object, repo.name, doc["kind"], doc["id"])
            return True
        if doc["kind"] == SNAPSHOT:
            await asyncio.to_thread(self.deletions.put_schedule, repo.name, doc)
            return False
        pack_id = PackId.parse(doc["id"])
        if not self.deletions.index.has_pack(repo.name, pack_id):
            await asyncio.to_thread(self.deletions.put_schedule, repo.name, doc)
            return False
        entries = await entries_or_forget(self.deletions, repo, pack_id)
        if entries is None:  # purged just now
            return True
        window = Window(float(doc["purge_after"]) - float(doc["scheduled"]))
        at, by = float(doc["scheduled"]), str(doc.get("by", ""))
        await asyncio.to_thread(
            self.deletions.schedule_pack, repo.name, pack_id, entries, at, window, by
        )
        return False

    async def _purged(self, repo: Repository, doc: dict[str, Any]) -> bool:
        """Past its window and no longer stored: purged by some node (one HEAD, only then)."""
        if float(doc["purge_after"]) > self.clock.time():
            return False
        ident = doc["id"]
        name = snapshot_name(SnapshotId.parse(ident)) if doc["kind"] == SNAPSHOT else None
        return not await repo.store.exists(name or pack_name(PackId.parse(ident)))

    def settle(self, repo: Repository, doc: dict[str, Any]) -> None:
        """This node purged `doc`: its schedule stays in the store as a tombstone (below)."""
        if repo.shared:
            name = schedule_name(doc["kind"], doc["id"])
            self._settled.setdefault(repo.name, {})[name] = doc

    async def expire(self, repo: Repository, now: float, window: Window) -> int:
        """Delete the tombstones this node knows whose purge is a window old: every node that
        ran meanwhile synced (its purge task syncs every `purge_interval`) and dropped them."""
        settled = self._settled.get(repo.name, {})
        old = [n for n, d in settled.items() if float(d["purge_after"]) + window.seconds < now]
        for name in old:
            with contextlib.suppress(ObjectNotFound):  # another node expired it first
                await repo.store.delete(name)
            del settled[name]
        return len(old)

    async def _unapply(self, repo: Repository, doc: dict[str, Any]) -> None:
        """Another node undeleted, revived or purged this: bring it back here, or drop it."""
        if doc["kind"] == SNAPSHOT:
            sid = SnapshotId.parse(doc["id"])
            if await repo.store.exists(snapshot_name(sid)):
                await asyncio.to_thread(self.deletions.undelete, repo.name, [doc["id"]])
            else:
                await asyncio.to_thread(self.deletions.drop, repo.name, SNAPSHOT, doc["id"])
            return
        await self._revive_local(repo, PackId.parse(doc["id"]))

    async def _revive_local(self, repo: Repository, pack_id: PackId) -> None:
        try:
            await self.deletions.revive_pack(repo, pack_id)
        except ObjectNotFound:  # purged (by another node): only the schedule row is left
            await asyncio.to_thread(self.deletions.drop, repo.name, PACK, pack_id.hex())

    # -- scheduling, undoing and reviving, in the store first when shared ---------------------

    async def schedule_snapshots(self, repo: Repository, ids: list[SnapshotId], now: float,
                                 window: Window, by: str) -> list[dict[str, Any]]:  # fmt: skip
        if repo.shared:
            await self.catchup.snapshots(repo)  # committed through another node
        docs = await asyncio.to_thread(
            self.deletions.schedule_snapshots, repo.name, ids, now, window, by
        )
        if repo.shared:
            await self.publish(repo, docs)
        return docs

    async def undelete(self, repo: Repository, names: list[str] | None) -> list[dict[str, Any]]:
        """Bring back snapshots, and every scheduled pack (their chunks are among them)."""
        docs = await asyncio.to_thread(self.deletions.undelete, repo.name, names)
        for doc in list(docs):
            await self.withdraw(repo, SNAPSHOT, doc["id"])
            if repo.shared and await self._claimed(repo, SNAPSHOT, doc["id"]):
                # Too late: its window ended and a purge is destroying it.
                await asyncio.to_thread(self.deletions.put_schedule, repo.name, doc)
                docs.remove(doc)
        for doc in self.deletions.pending(repo.name):
            if doc["kind"] == PACK:
                await self.revive_pack(repo, PackId.parse(doc["id"]))
        return docs

    async def revive_pack(self, repo: Repository, pack_id: PackId) -> None:
        """In the store first (a node killed between leaves it revived for all), unless the
        pack is gone: then its schedule stays as the tombstone the other nodes need."""
        if repo.shared and await repo.store.exists(pack_name(pack_id)):
            await self.withdraw(repo, PACK, pack_id.hex())
            if await self._claimed(repo, PACK, pack_id.hex()):
                return  # its chunks stay absent here: the commit is told they are missing
        await self._revive_local(repo, pack_id)

    async def revive_for(self, repo: Repository, chunk_ids: Iterable[bytes]) -> int:
        """Revive every scheduled pack holding one of `chunk_ids` (rule 2). On a shared store
        the caller passes every ref, not only the absent ones: a pack uploaded again through
        this node is indexed here and still scheduled in the store for the others."""
        packs = await asyncio.to_thread(self.deletions.condemned_packs, repo.name, chunk_ids)
        for pack_id in packs:
            await self.revive_pack(repo, pack_id)
        return len(packs)

    # -- the prune log: generation and lock -------------------------------------------------

    def prune_log(self, repo: Repository) -> PruneLog:
        return PruneLog(repo.store, repo.name)

    async def generation(self, repo: Repository, now: float) -> tuple[int, dict[str, Any] | None]:
        if not repo.shared:
            return self.deletions.generation(repo.name), self.deletions.prune_lock(repo.name, now)
        n, doc = await self.prune_log(repo).newest()
        return n, ({**doc, "generation": n} if live(doc, now) else None)

    async def take_lock(self, repo: Repository, holder: str, ttl: float,
                        now: float) -> dict[str, Any]:  # fmt: skip
        """Take or renew the lock (one append), then wait for the commits in flight on other
        nodes: each either saw the append and commits in full, or is stored before the prune
        lists snapshots."""
        if not repo.shared:
            return self.deletions.take_lock(repo.name, holder, ttl, now)
        n, held = await self.prune_log(repo).newest()
        if live(held, now) and held["holder"] != holder:
            raise PruneLocked(
                f"another prune ({held['holder']}) holds the lock until {held['expires']:.0f}"
            )
        since = held.get("since", now) if live(held, now) else now
        doc = lock_doc(holder, since, now + ttl)
        n = await self.prune_log(repo).append(n, doc)
        await self.wait_for_commits(repo)
        return {**doc, "generation": n}

    async def check_lock(
        self, repo: Repository, holder: str, now: float
    ) -> tuple[int, dict[str, Any]]:
        if not repo.shared:
            return self.deletions.generation(repo.name), self.deletions.check_lock(
                repo.name, holder, now
            )
        n, held = await self.prune_log(repo).newest()
        if not live(held, now) or held["holder"] != holder:
            raise PruneLocked("this prune does not hold the lock (expired or taken): run it again")
        return n, held

    async def release_lock(self, repo: Repository, holder: str) -> None:
        if not repo.shared:
            self.deletions.release_lock(repo.name, holder)
            return
        n, held = await self.prune_log(repo).newest()
        if held.get("holder") == holder:
            n = await self.prune_log(repo).append(n, lock_doc(None, 0, 0))
            await self.prune_log(repo).tidy(n)

    async def bump(self, repo: Repository, n: int, lock: dict[str, Any]) -> int:
        """After a schedule: a new generation; on a shared store, once the commits in flight
        are done (each saw the append, or is stored and seen by `recheck`)."""
        if not repo.shared:
            return self.deletions.bump(repo.name)
        n = await self.prune_log(repo).append(n, lock)
        await self.wait_for_commits(repo)
        return n

    # -- commits (rule 1 across nodes) and the schedule's second look (rule 3) ---------------

    @contextlib.asynccontextmanager
    async def intent(self, repo: Repository) -> AsyncIterator[None]:
        """A commit in flight, visible to every node until its record is stored or refused."""
        if not repo.shared:
            yield
            return
        name = intent_name(self.clock.time(), secrets.token_hex(8))
        await repo.store.put(name, MARK)
        try:
            yield
        finally:
            with contextlib.suppress(ObjectNotFound):
                await repo.store.delete(name)

    async def check_commit(self, repo: Repository, refs: tuple[bytes, ...], generation: int,
                           full: bool, now: float) -> None:  # fmt: skip
        """Rules 1 and 2 on a shared store, inside `intent`: look at the log, apply the
        store's schedules, revive what the refs need, and look at the log again; a commit
        listing only changed chunks is refused (409) if it changed, a full one looks again."""
        prune_log = self.prune_log(repo)
        for _ in range(ROUNDS):
            g0, doc = await prune_log.newest()
            await self.sync_locked(repo)
            if not full and (generation < g0 or live(doc, now)):
                raise FullRefsRequired(
                    "a prune ran or is running: commit again listing every chunk"
                )
            await self.revive_for(repo, refs)
            if await prune_log.generation() == g0:
                return
            if not full:
                raise FullRefsRequired("a prune started: commit again listing every chunk")
        raise PruneLocked(f"{repo.name}: the prune log kept changing during a commit")

    async def wait_for_commits(self, repo: Repository) -> None:
        """Until every commit that was in flight (on any node) when this was called is done."""
        now = self.clock.time()
        waiting = set()
        async for name in repo.store.list(INTENTS):
            stamp = name.rsplit("/", 1)[-1].partition("-")[0]
            with contextlib.suppress(ValueError):
                if int(stamp, 16) / 1e6 > now - INTENT_DEAD:
                    waiting.add(name)
        for _ in range(WAIT_POLLS):
            if not waiting:
                return
            await asyncio.sleep(POLL)  # a pause between listings, not a measure of time
            waiting &= {name async for name in repo.store.list(INTENTS)}
        raise PruneLocked(f"{repo.name}: commits on other nodes did not finish")

    async def recheck(
        self, repo: Repository, since: float, scheduled: list[PackId]
    ) -> list[PackId]:
        """Rule 3's second look, after the schedule's append and the commits in flight: revive
        every pack just scheduled that a commit stored meanwhile (on any node) names."""
        if not repo.shared or not scheduled:
            return []
        await self.catchup.snapshots(repo)
        live_refs = await refs_since(self.deletions.index, repo, since - WINDOW)
        revived = []
        for pack_id in scheduled:
            entries = await pack_entries(repo, pack_id)
            if any(bytes(e.chunk_id) in live_refs for e in entries):
                await self.revive_pack(repo, pack_id)
                revived.append(pack_id)
        return revived


LISTING_FRESH = MISSING_EVERY  # listings and missing-queries: other nodes' schedules, this stale
