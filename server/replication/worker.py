"""One replicator per peer: drains the durable queue in order and runs anti-entropy passes.

Owns the push loop (oldest first per repository, round-robin across repositories), the ordering
rule that a commit is pushed only after every item queued before it was acknowledged (so a snapshot
at the peer never lacks a pack the primary held when it was committed), pacing through the
token bucket, the time window of a scheduled peer, retry with capped backoff, and the
anti-entropy comparison of inventories. Must not serve HTTP or change what the primary stores.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from engine.clock import Clock
from engine.commit import snapshot_name
from engine.errors import ObjectNotFound
from engine.ids import PackId, SnapshotId
from engine.pack import pack_name
from engine.rates import TokenBucket
from server.failover_shared import SharedFailover
from server.index import ServerIndex
from server.replication.peer import PeerClient, PeerRefused, PeerUnavailable, RepoNotOnPeer
from server.replication.settings import PeerConfig
from server.replication.state import (
    CONFIG,
    EVENT,
    KEY,
    PACK,
    PURGE,
    SNAPSHOT,
    TOKENS,
    Item,
    ReplicationState,
)
from server.repos import Repositories, Repository

log = logging.getLogger(__name__)
PIECE = 256 * 1024  # bytes granted by the bucket at a time
LOOKAHEAD = 64  # queued items looked at per repository when the oldest are being retried
PAGE = 10_000  # local packs compared with the peer per inventory question
PRACTICE_ROLES = ("backup", "restore", "admin")  # replica tokens are never replicated
BACKOFF_START = 0.5


@dataclass
class PeerStatus:
    """What the API and /metrics report about one peer (in memory; the queue is durable)."""

    up: bool = False
    last_success: float | None = None
    last_error: str | None = None
    last_error_time: float | None = None
    last_anti_entropy: float | None = None
    packs_sent: int = 0
    bytes_sent: int = 0
    commits_sent: int = 0
    refused: int = 0
    down_since: float | None = None  # first failure since the peer last took work
    reason: str | None = None  # why, while down: one of `peer`'s reasons


@dataclass
class _Backoff:
    not_before: float = 0.0
    delay: float = 0.0

    def fail(self, now: float, cap: float) -> float:
        self.delay = min(cap, max(BACKOFF_START, self.delay * 2))
        self.not_before = now + self.delay
        return self.delay


def token_hashes(index: ServerIndex, repo: str) -> list[dict[str, str]]:
    """The practice's token hashes (never the tokens: the server does not have them)."""
    return [
        {"hash": h.hex(), "role": str(doc["role"])}
        for h, doc in index.tokens()
        if doc.get("repo") == repo and doc.get("role") in PRACTICE_ROLES
    ]


class Replicator:
    def __init__(
        self,
        peer: PeerConfig,
        state: ReplicationState,
        index: ServerIndex,
        repos: Repositories,
        *,
        clock: Clock,
        poll: float,
        retry_max: float,
    ) -> None:
        self.peer, self.state, self.index, self.repos = peer, state, index, repos
        self.clock, self.poll, self.retry_max = clock, poll, retry_max
        self.client = PeerClient(
            peer,
            generation_of=lambda repo: state.generation(repo).current,
            on_generation=self._on_generation,
        )
        self._publishing: set[asyncio.Task[None]] = set()
        self.bucket = TokenBucket(peer.rate_limit, clock=clock)
        self.status = PeerStatus()
        self.wake = asyncio.Event()
        self._next_anti_entropy = 0.0  # due at start-up
        self._peer_backoff = _Backoff()
        self._item_backoff: dict[tuple[str, str, str], _Backoff] = {}

    def _on_generation(self, repo: str, text: str) -> None:
        """The peer's answer fenced this site: on a shared store, tell the other nodes."""
        if self.state.observe_peer(repo, self.peer.name, text) and self.repos.root.shared:
            gen = self.state.generation(repo)
            shared = SharedFailover(self.repos.site, self.state, tidy=True)
            task = asyncio.create_task(shared.fence(repo, gen.fenced_by, gen.primary))
            self._publishing.add(task)
            task.add_done_callback(self._published)

    def _published(self, task: asyncio.Task[None]) -> None:
        self._publishing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("publishing a fence to the store failed: %s", task.exception())

    @property
    def name(self) -> str:
        return self.peer.name

    async def run(self) -> None:
        try:
            while True:
                await self.step()
        finally:
            await self.client.close()

    def request_anti_entropy(self) -> None:
        self._next_anti_entropy = 0.0
        self.wake.set()

    async def step(self) -> None:
        """One unit of work, or one wait: what `run` repeats until cancelled."""
        now = self.clock.time()
        if not self.peer.may_send(now):
            await self._idle(self.poll)
            return
        try:
            if now >= self._next_anti_entropy:
                await self.anti_entropy()
            busy = await self.drain_round()
        except PeerUnavailable as e:
            await self._peer_failed(now, str(e), e.reason)
            return
        except PeerRefused as e:
            await self._peer_failed(now, str(e), "refused")
            return
        except Exception as e:  # a bug or a disk error must not end replication for good
            log.exception("peer %s: replication step failed", self.name)
            await self._peer_failed(now, f"{type(e).__name__}: {e}", "error")
            return
        self._peer_backoff = _Backoff()
        self._peer_answered()
        if not busy:
            await self._idle(self.poll)

    async def _peer_failed(self, now: float, message: str, reason: str) -> None:
        delay = self._peer_backoff.fail(now, self.retry_max)
        self._record_error(message, up=False)
        if self.status.down_since is None:
            self.status.down_since = now
        self.status.reason = reason
        log.warning("peer %s: %s; retrying in %.1f s", self.name, message, delay)
        await asyncio.sleep(delay)  # not woken by new uploads: the peer is what we wait for

    async def _idle(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), timeout=seconds)
        self.wake.clear()

    def _peer_answered(self) -> None:
        """The peer took a step's work: no longer down (resolves `peer_unreachable`)."""
        self.status.down_since = self.status.reason = None

    def _record_error(self, message: str, *, up: bool) -> None:
        self.status.up = up
        self.status.last_error, self.status.last_error_time = message, self.clock.time()

    # -- draining the queue -----------------------------------------------------------------

    async def drain_round(self) -> bool:
        """Push one item of every repository with work; True if anything was pushed."""
        busy = False
        for repo in await asyncio.to_thread(self.state.repos_with_work, self.name):
            if not self.peer.may_send(self.clock.time()):
                break
            head = await asyncio.to_thread(self.state.head, self.name, repo, LOOKAHEAD)
            item = self._next_sendable(repo, head)
            if item is not None:
                busy |= await self._push(repo, item)
        return busy

    def _next_sendable(self, repo: str, head: list[Item]) -> Item | None:
        """The oldest item that may go now. A commit goes only when nothing older is queued
        (so every pack it may need is at the peer); packs and key objects may pass an item the
        peer refused, so one bad pack does not hold back the others."""
        now = self.clock.time()
        for i, item in enumerate(head):
            backoff = self._item_backoff.get((repo, item.kind, item.name))
            if backoff is not None and now < backoff.not_before:
                continue
            if item.kind != SNAPSHOT or i == 0:
                return item
        return None

    async def _push(self, repo: str, item: Item) -> bool:
        try:
            await self.push(repo, item)
        except PeerRefused as e:
            self._refused(repo, item, e)
            return False
        except ObjectNotFound as e:
            log.error("peer %s: %s/%s %s vanished here (%s); dropped", self.name, repo,
                      item.kind, item.name, e)  # fmt: skip
            await asyncio.to_thread(self.state.drop, self.name, repo, item)
            return True
        await asyncio.to_thread(self.state.ack, self.name, repo, [item], self.clock.time())
        self._item_backoff.pop((repo, item.kind, item.name), None)
        self.status.up, self.status.last_success = True, self.clock.time()
        self._peer_answered()
        return True

    def _refused(self, repo: str, item: Item, e: PeerRefused) -> None:
        self.status.refused += 1
        self._record_error(str(e), up=True)
        if item.kind == SNAPSHOT and e.code == "missing_chunks":
            # The peer lost packs it had acknowledged: let anti-entropy queue them, then this
            # commit again behind them (queue order is what makes commits safe).
            self.state.drop(self.name, repo, item)
            self.request_anti_entropy()
            return
        backoff = self._item_backoff.setdefault((repo, item.kind, item.name), _Backoff())
        delay = backoff.fail(self.clock.time(), self.retry_max)
        log.error("peer %s refused %s %s of %s: %s (retry in %.1f s)", self.name, item.kind,
                  item.name[:16], repo, e, delay)  # fmt: skip

    async def push(self, repo_name: str, item: Item) -> None:
        repo = self.repos.get(repo_name)
        if item.kind == PACK:
            await self._push_pack(repo, PackId.parse(item.name))
        elif item.kind == SNAPSHOT:
            sid = SnapshotId.parse(item.name)
            record = await repo.store.get(snapshot_name(sid))
            await self.bucket.take(len(record))
            await self.client.commit(repo_name, sid, record)
            self.status.commits_sent += 1
        elif item.kind in (KEY, CONFIG, EVENT):
            name = small_object_name(item)
            await self.client.put_object(repo_name, name, await repo.store.get(name))
        elif item.kind == PURGE:
            kind, ident = item.name.split(":", 1)
            with contextlib.suppress(RepoNotOnPeer):  # no replica there: nothing to delete
                await self.client.purge(repo_name, kind, ident)
        elif item.kind == TOKENS:
            hashes = await asyncio.to_thread(token_hashes, self.index, repo_name)
            await self.client.put_tokens(repo_name, hashes)

    async def _push_pack(self, repo: Repository, pack_id: PackId) -> None:
        name = pack_name(pack_id)
        size = await repo.store.size(name)
        await self.client.put_pack(
            repo.name, pack_id, size, self._paced(repo.store.get_stream(name))
        )
        self.status.packs_sent += 1

    async def _paced(self, pieces: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for read in pieces:
            for start in range(0, len(read), PIECE):
                piece = read[start : start + PIECE]
                await self.bucket.take(len(piece))
                self.status.bytes_sent += len(piece)
                yield piece

    # -- anti-entropy -----------------------------------------------------------------------

    async def anti_entropy(self) -> None:
        """Compare inventories with the peer and queue what it lacks, for every repository
        this site is primary for (replicas held here are not passed on)."""
        started = self.clock.time()
        for name in await asyncio.to_thread(self.repos.names):
            if await asyncio.to_thread(self.state.replica_owner, name) is None:
                await self._reconcile(self.repos.get(name))
        self._next_anti_entropy = started + self.peer.anti_entropy_interval
        self.status.last_anti_entropy = started
        log.info("peer %s: anti-entropy pass done", self.name)

    async def _reconcile(self, repo: Repository) -> None:
        now = self.clock.time()
        meta = await _metadata_items(repo)
        await asyncio.to_thread(self.state.enqueue, [self.name], repo.name, meta, now)
        await self._reconcile_packs(repo.name, now)
        await self._reconcile_snapshots(repo.name, now)

    async def _reconcile_packs(self, repo: str, now: float) -> None:
        after: PackId | None = None
        while True:
            page = await asyncio.to_thread(self.index.packs, repo, after, PAGE)
            if not page:
                return
            lacking = await self.client.packs_lacking(repo, [r.pack_id for r in page])
            todo = [Item(PACK, r.pack_id.hex(), r.size, r.time) for r in page
                    if r.pack_id in lacking]  # fmt: skip
            held = [Item(PACK, r.pack_id.hex()) for r in page if r.pack_id not in lacking]
            await asyncio.to_thread(self.state.reconcile, self.name, repo, todo, held, now)
            if len(page) < PAGE:
                return
            after = page[-1].pack_id

    async def _reconcile_snapshots(self, repo: str, now: float) -> None:
        held_ids = await self.client.snapshots(repo)
        rows = await asyncio.to_thread(lambda: list(self.index.snapshots(repo)))
        rows.sort(key=lambda r: (r[1].get("received", 0), r[0].hex()))
        todo = [Item(SNAPSHOT, sid.hex()) for sid, _ in rows if sid not in held_ids]
        held = [Item(SNAPSHOT, sid.hex()) for sid, _ in rows if sid in held_ids]
        await asyncio.to_thread(self.state.reconcile, self.name, repo, todo, held, now)


async def _metadata_items(repo: Repository) -> list[Item]:
    items = [Item(CONFIG, "config")] if await repo.store.exists("config") else []
    keys = [name async for name in repo.store.list("keys")]  # sorted by the Store
    items += [Item(KEY, name.removeprefix("keys/")) for name in keys]
    events = [name async for name in repo.store.list("events")]
    items += [Item(EVENT, name.removeprefix("events/")) for name in events]
    return [*items, Item(TOKENS, "tokens")]


def small_object_name(item: Item) -> str:
    """The store name of a `config`, key object or audit event item."""
    if item.kind == CONFIG:
        return "config"
    return f"{'keys' if item.kind == KEY else 'events'}/{item.name}"
