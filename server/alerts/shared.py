"""What the server nodes of one shared store (docs/design.md §3.1.3) share for alerting: agent
heartbeats, and which node delivers each alert transition.

Owns two kinds of write-once objects, written only when the store is shared (a local folder keeps
the index-only path):

    heartbeats/<agent hash>-<µs stamp, 16 hex>   in the repository's store: the heartbeat's JSON
        doc as the receiving node recorded it. Each node publishes at most one per agent per
        `PUBLISH_INTERVAL`; `merge` lists the folder once per repository, copies into this
        node's index every heartbeat newer than the one it holds, and deletes superseded ones.
    alerts/<alert key hash>-<sequence, 8 hex>      in the site store: one claim per transition
        of an alert (alert, repeat, resolved): JSON {event, time, opened}. The node whose put
        creates it sends; the others see it and record the transition as sent.
    alerts/digest-<YYYY-MM-DD>                     in the site store: the same for the daily
        digest.

Must not decide what is wrong or deliver anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from hashlib import blake2b
from typing import Any

from engine.errors import ObjectNotFound
from engine.store.base import Store
from server.index import ServerIndex
from server.repos import Repository

HEARTBEATS = "heartbeats"
CLAIMS = "alerts"
# A node publishes an agent's heartbeat at most this often (seconds): far below any sane
# `heartbeat_timeout` (900 s by default), so another node's view is late by at most this much.
PUBLISH_INTERVAL = 60.0


def _hash(text: str) -> str:
    return blake2b(text.encode(), digest_size=16).hexdigest()


def _stamp(t: float) -> int:
    return int(t * 1_000_000)


class SharedHeartbeats:
    def __init__(self, index: ServerIndex, interval: float = PUBLISH_INTERVAL) -> None:
        self.index, self.interval = index, interval
        self._published: dict[tuple[str, str], float] = {}  # (repo, agent) → received

    async def publish(self, repo: Repository, doc: dict[str, Any]) -> bool:
        """Put the heartbeat `doc` (agent, received, info) in the store unless this node put
        one for the agent less than `interval` ago; True if it did."""
        agent, received = str(doc["agent"]), float(doc["received"])
        last = self._published.get((repo.name, agent))
        if not repo.shared or (last is not None and received - last < self.interval):
            return False
        name = f"{HEARTBEATS}/{_hash(agent)}-{_stamp(received):016x}"
        await repo.store.put(name, json.dumps(doc).encode(), mtime=received)
        self._published[(repo.name, agent)] = received
        return True

    async def merge(self, repo: Repository) -> int:
        """Bring this node's heartbeat rows up to the newest any node published (one listing);
        return how many rows changed."""
        if not repo.shared:
            return 0
        newest: dict[str, tuple[int, str]] = {}
        superseded = []
        async for name in repo.store.list(HEARTBEATS):
            agent, _, stamp = name.removeprefix(HEARTBEATS + "/").rpartition("-")
            entry = (int(stamp, 16), name)
            old = newest.get(agent)
            if old is not None:
                superseded.append(min(old, entry)[1])
            newest[agent] = max(old, entry) if old is not None else entry
        rows = await asyncio.to_thread(self.index.heartbeats, repo.name)
        held = {_hash(str(h["agent"])): _stamp(float(h["received"])) for h in rows}
        changed = 0
        for agent, (when, name) in newest.items():
            if when > held.get(agent, -1):
                with contextlib.suppress(ObjectNotFound):  # superseded meanwhile
                    doc = json.loads(await repo.store.get(name))
                    await asyncio.to_thread(
                        self.index.put_heartbeat, repo.name, str(doc["agent"]), doc
                    )
                    changed += 1
        for name in superseded:
            with contextlib.suppress(ObjectNotFound):  # another node deleted it first
                await repo.store.delete(name)
        return changed


@dataclass(frozen=True)
class Claim:
    seq: int
    event: str  # "alert" | "repeat" | "resolved"
    time: float
    opened: float


class Claims:
    def __init__(self, site: Store, shared: bool) -> None:
        self.site, self.shared = site, shared

    async def newest(self, key: str) -> Claim | None:
        """The last transition any node claimed for the alert `key` (older claims deleted)."""
        prefix = f"{CLAIMS}/{_hash(key)}-"
        names = []
        async for name in self.site.list(CLAIMS, start_after=prefix):
            if not name.startswith(prefix):
                break
            names.append(name)
        for name in names[:-1]:  # superseded: only the newest says where the alert stands
            with contextlib.suppress(ObjectNotFound):
                await self.site.delete(name)
        if not names:
            return None
        try:
            doc = json.loads(await self.site.get(names[-1]))
        except ObjectNotFound:  # released by a node whose delivery failed
            return None
        seq = int(names[-1].removeprefix(prefix), 16)
        return Claim(seq, str(doc["event"]), float(doc["time"]), float(doc["opened"]))

    async def claim(self, key: str, seq: int, event: str, now: float, opened: float) -> bool:
        """True if this node created claim `seq` for `key` and so delivers `event`."""
        doc = {"key": key, "event": event, "time": now, "opened": opened}
        return await self.site.put(self._name(key, seq), json.dumps(doc).encode(), mtime=now)

    async def release(self, key: str, seq: int) -> None:
        """Give up claim `seq` (its delivery failed), so the next evaluation anywhere retries."""
        with contextlib.suppress(ObjectNotFound):
            await self.site.delete(self._name(key, seq))

    async def claim_digest(self, date: str, now: float) -> bool:
        """True if this node sends the daily digest of `date` (always, on an unshared store)."""
        if not self.shared:
            return True
        return await self.site.put(self._digest(date), json.dumps({"time": now}).encode())

    async def release_digest(self, date: str) -> None:
        with contextlib.suppress(ObjectNotFound):
            await self.site.delete(self._digest(date))

    @staticmethod
    def _digest(date: str) -> str:
        return f"{CLAIMS}/digest-{date}"

    @staticmethod
    def _name(key: str, seq: int) -> str:
        return f"{CLAIMS}/{_hash(key)}-{seq:08x}"
