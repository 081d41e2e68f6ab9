"""S3 Object Lock retention of what a thief holding the provider's machine would destroy
(docs/design.md §14 "Object Lock"): which objects are locked, and the task that keeps the locks
of live objects ahead of the undelete window, and, once a day, removes the versions left
behind a newer one (or a delete marker) whose lock has passed.

Owns the choice of objects (`covered`: a repository's packs, commit records, key objects and
config; never quarantine, site objects, pack logs, heartbeats or claims), the `Retention` the S3
store applies before acknowledging a put (server.toml `[object_lock]`), and the `retention`
table (`repo ‖ 0 ‖ object name → retain-until f64`), so extending is one request per object
every `days - undelete_days - LOCK_MARGIN_DAYS` days, not one a day. Only LIVE objects (indexed,
not scheduled for deletion) are extended, so the lock of an object scheduled at t ends by
t + days, and the purge (server.deletion) destroys it then. Deletes only versions no read
returns, once their lock has passed, and never the newest data version of an object the index
holds live or scheduled; must not decide what is live: the index and the deletions table say
that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import AsyncIterator, Callable, Iterable

from aiohttp import web

from engine.clock import Clock
from engine.commit import snapshot_name
from engine.errors import ObjectNotFound, StoreError
from engine.ids import PackId, SnapshotId
from engine.pack import pack_name
from engine.store.s3 import Retention, S3Store, VersionSweep
from server.config import LOCK_MARGIN_DAYS, ServerConfig
from server.deletion import DAY, PACK, SNAPSHOT, Deletions
from server.index import ServerIndex, prefixed
from server.repos import REPOS as REPOS_FOLDER
from server.repos import Repository
from server.state import CLOCK, CONFIG, INDEX, REPOS

log = logging.getLogger(__name__)
_UNTIL = struct.Struct("<d")
EXTEND_INTERVAL = 3600.0  # how often live locks are looked at (a local scan; few requests)
IN_FLIGHT = 8  # retention requests at once
BATCH = 1000  # objects extended, then recorded, at a time
LOCKED_TOPS = ("packs/", "snapshots/", "keys/")
KEYS = "keys"
CONFIG_NAME = "config"


def covered(prefix: str, name: str) -> bool:
    """Is `name` of the store at `prefix` (relative to the root) put under retention?"""
    in_repo = prefix.startswith(f"{REPOS_FOLDER}/")
    return in_repo and (name == CONFIG_NAME or name.startswith(LOCKED_TOPS))


def retention_for(config: ServerConfig, clock: Clock) -> Retention | None:
    lock = config.object_lock
    if lock is None:
        return None
    return Retention(lock.mode, lock.days * DAY, covered, clock)


def _key(repo: str, name: str) -> bytes:
    return f"{repo}\0{name}".encode()


class LockTable:
    """Retain-until per object, as this node last set it."""

    def __init__(self, index: ServerIndex) -> None:
        self.index, self.env, self.db = index, index.env, index.dbs["retention"]

    def record(self, rows: Iterable[tuple[str, str, float]]) -> None:
        with self.env.begin(write=True, db=self.db) as txn:
            for repo, name, until in rows:
                old = txn.get(_key(repo, name))
                if old is None or _UNTIL.unpack(old)[0] < until:
                    txn.put(_key(repo, name), _UNTIL.pack(until))

    def until(self, repo: str, name: str) -> float | None:
        with self.env.begin(db=self.db) as txn:
            raw = txn.get(_key(repo, name))
        return None if raw is None else float(_UNTIL.unpack(raw)[0])

    def due(self, repo: str, horizon: float) -> list[str]:
        """The live packs and commit records whose recorded retain-until is before `horizon`
        (or unknown to this node: put before `[object_lock]`, or by another node)."""
        out: list[str] = []
        prefix = repo.encode() + b"\0"
        with self.env.begin() as txn:
            mine = txn.cursor(self.db)
            for table, name_of in (("packs", _pack), ("snapshots", _snapshot)):
                for ident, _ in prefixed(txn.cursor(self.index.dbs[table]), prefix):
                    name = name_of(ident)
                    raw = mine.get(prefix + name.encode())
                    if raw is None or _UNTIL.unpack(raw)[0] < horizon:
                        out.append(name)
        return out

    def forget_gone(self, repo: str, deletions: Deletions) -> int:
        """Drop the rows of packs and records neither live nor scheduled (destroyed)."""
        prefix = repo.encode() + b"\0"
        gone = []
        with self.env.begin() as txn:
            packs, snaps = self.index.dbs["packs"], self.index.dbs["snapshots"]
            for raw_name, _ in prefixed(txn.cursor(self.db), prefix):
                kind, _, ident = raw_name.decode().rpartition("/")
                if kind == "snapshots":
                    table, what = snaps, SNAPSHOT
                elif kind.startswith("packs/"):
                    table, what = packs, PACK
                else:
                    continue  # keys and config live as long as the repository
                if txn.get(prefix + bytes.fromhex(ident), db=table) is not None:
                    continue
                if not deletions.is_scheduled(repo, what, ident):
                    gone.append(prefix + raw_name)
        with self.env.begin(write=True, db=self.db) as txn:
            for key in gone:
                txn.delete(key)
        return len(gone)


def _pack(ident: bytes) -> str:
    return pack_name(PackId(ident))


def _snapshot(ident: bytes) -> str:
    return snapshot_name(SnapshotId(ident))


class Extender:
    """Keeps every live covered object locked for at least the undelete window plus
    `LOCK_MARGIN_DAYS` ahead, extending it to now + days when it falls short."""

    def __init__(self, config: ServerConfig, index: ServerIndex, clock: Clock) -> None:
        assert config.object_lock is not None
        self.days, self.window = config.object_lock.days, config.undelete_days
        self.table, self.deletions, self.clock = LockTable(index), Deletions(index), clock

    def record_recent(self, retention: Retention) -> None:
        rows = [(p.split("/", 1)[1], n, u) for p, n, u in retention.drain()]
        self.table.record(rows)

    async def extend_repo(self, repo: Repository, retention: Retention) -> int:
        """Extend what is due in one repository; returns how many objects were extended."""
        store = repo.store
        if not isinstance(store, S3Store):
            return 0
        now = self.clock.time()
        horizon = now + (self.window + LOCK_MARGIN_DAYS) * DAY
        names = await asyncio.to_thread(self.table.due, repo.name, horizon)
        # Key objects are few and another node may have added one: listed each pass.
        others = [n async for n in store.list(KEYS)] + [CONFIG_NAME]
        names += [n for n in others if _due(self.table, repo.name, n, horizon)]
        until = now + self.days * DAY
        gate = asyncio.Semaphore(IN_FLIGHT)

        async def one(name: str) -> tuple[str, str, float] | None:
            async with gate:
                try:
                    await store.retain(name, until)
                except ObjectNotFound:
                    return None  # destroyed since it was listed, or no config yet
                except StoreError as e:  # one object must not stop the others
                    log.warning("could not extend the lock of %s/%s: %s", repo.name, name, e)
                    return None
            return (repo.name, name, until)

        count = 0
        for start in range(0, len(names), BATCH):  # recorded as it goes: a kill loses little
            batch = await asyncio.gather(*(one(n) for n in names[start : start + BATCH]))
            done = [r for r in batch if r is not None]
            await asyncio.to_thread(self.table.record, done)
            count += len(done)
        await asyncio.to_thread(self.table.forget_gone, repo.name, self.deletions)
        return count


SWEPT = ("packs", "snapshots")  # where a locked version can be left behind a newer one
SWEEP_INTERVAL = DAY  # how often the task sweeps them: a listing per 1,000 versions


def keeps(index: ServerIndex, deletions: Deletions, repo: str) -> Callable[[str], bool]:
    """Whether the sweep must keep an object's newest data version: it is live, or scheduled
    (the purge destroys it at its date)."""
    snaps = {snapshot_name(sid) for sid, _ in index.snapshots(repo)}

    def keep(name: str) -> bool:
        top, _, ident = name.rpartition("/")
        if name in snaps:
            return True
        if top.startswith("packs/"):
            try:
                pack_id = PackId.parse(ident)
            except ValueError:
                return True  # not a pack name: keep, like any name the sweep does not know
            return index.has_pack(repo, pack_id) or deletions.is_scheduled(repo, PACK, ident)
        if top == "snapshots":
            return deletions.is_scheduled(repo, SNAPSHOT, ident)
        return True  # not a name the sweep knows: keep

    return keep


async def sweep_repo(repo: Repository, index: ServerIndex, now: float) -> VersionSweep:
    """Remove a repository's leftover locked versions whose date has passed (a pack
    quarantined while locked, one uploaded again while hidden) and the markers left over."""
    total = VersionSweep()
    if not isinstance(repo.store, S3Store):
        return total
    keep = await asyncio.to_thread(keeps, index, Deletions(index), repo.name)
    for prefix in SWEPT:
        total += await repo.store.sweep_versions(prefix, now, keep)
    return total


async def sweep_once(app: web.Application) -> VersionSweep:
    """One sweep of every repository's leftover versions, when `[object_lock]` is set."""
    total = VersionSweep()
    if getattr(app[REPOS].root, "retention", None) is None:
        return total
    for name in await asyncio.to_thread(app[REPOS].names):
        total += await sweep_repo(app[REPOS].get(name), app[INDEX], app[CLOCK].time())
    return total


def _due(table: LockTable, repo: str, name: str, horizon: float) -> bool:
    until = table.until(repo, name)
    return until is None or until < horizon


async def extend_once(app: web.Application) -> int:
    """One pass over every repository: record what the store locked since the last pass,
    then extend the live objects whose lock would end too soon."""
    retention = getattr(app[REPOS].root, "retention", None)
    if retention is None:
        return 0
    extender = Extender(app[CONFIG], app[INDEX], app[CLOCK])
    await asyncio.to_thread(extender.record_recent, retention)
    total = 0
    for name in await asyncio.to_thread(app[REPOS].names):
        total += await extender.extend_repo(app[REPOS].get(name), retention)
    return total


async def _extend_forever(app: web.Application) -> None:
    swept = float("-inf")
    while True:
        try:
            extended = await extend_once(app)
            if extended:
                log.info("extended the Object Lock retention of %d objects", extended)
            if app[CLOCK].time() - swept >= SWEEP_INTERVAL:
                done = await sweep_once(app)
                swept = app[CLOCK].time()
                if done.removed:
                    log.info("removed %d versions whose Object Lock had passed", done.removed)
        except StoreError as e:  # the store is down: the next pass tries again
            log.warning("extending Object Lock retention failed: %s", e)
        except Exception:
            log.exception("extending Object Lock retention failed")
        await asyncio.sleep(EXTEND_INTERVAL)


async def objectlock_ctx(app: web.Application) -> AsyncIterator[None]:
    """After the index: keeps live objects locked, when `[object_lock]` is set."""
    task = None
    if app[CONFIG].object_lock is not None:
        task = asyncio.create_task(_extend_forever(app), name="object-lock")
    yield
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
