"""The prune log of a repository whose writers share no lock but the store (docs/design.md §14):
a local folder opened by several machines, and a repository served by several server nodes.

`locks/generation/<n, 16 hex>` holds write-once JSON objects `{holder, expires[, since]}`; the
newest is both the repository's prune generation and its prune lock (holder null: released;
expired: free). Every change appends one, and since a store put is create-only, of two writers
appending the same `n` one loses (`PruneLocked`, exit 14). Owns the names and the append; must
not decide who may prune (its callers check the holder).
"""

from __future__ import annotations

import json
from typing import Any

from engine.errors import ObjectNotFound
from engine.protocol.errors import PruneLocked
from engine.store.base import Store

GENERATIONS = "locks/generation"


def entry_name(n: int) -> str:
    return f"{GENERATIONS}/{n:016x}"


def encode(doc: dict[str, Any]) -> bytes:
    """An entry's bytes (version 1: JSON in insertion order, tests/fixtures/prunelog-v1.json)."""
    return json.dumps(doc).encode()


def lock_doc(holder: str | None, since: float, expires: float) -> dict[str, Any]:
    """A server's entry: the holder (None: released), when its lock was first taken, and when
    it lapses unless renewed."""
    return {"holder": holder, "since": since, "expires": expires}


def live(doc: dict[str, Any], now: float) -> bool:
    """Whether an entry holds the lock at `now`."""
    return doc.get("holder") is not None and float(doc.get("expires", 0)) > now


class PruneLog:
    def __init__(self, store: Store, where: str) -> None:
        self.store, self.where = store, where  # `where` names the repository in messages

    async def newest(self) -> tuple[int, dict[str, Any]]:
        """The newest entry: (generation, doc); (0, {}) if none."""
        for _ in range(20):
            names = [n async for n in self.store.list(GENERATIONS)]
            if not names:
                return 0, {}
            try:
                doc = json.loads(await self.store.get(names[-1]))
            except ObjectNotFound:  # a release tidied it away meanwhile: look again
                continue
            return int(names[-1].rsplit("/", 1)[-1], 16), doc
        raise PruneLocked(f"{self.where}/{GENERATIONS} keeps changing")

    async def generation(self) -> int:
        """The newest entry's number only: one listing, no read."""
        names = [n async for n in self.store.list(GENERATIONS)]
        return int(names[-1].rsplit("/", 1)[-1], 16) if names else 0

    async def append(self, after: int, doc: dict[str, Any]) -> int:
        """Append generation `after + 1`; another writer appended it first: `PruneLocked`."""
        n = after + 1
        if not await self.store.put(entry_name(n), encode(doc)):
            raise PruneLocked(f"another prune changed {self.where}/{GENERATIONS} just now")
        return n

    async def tidy(self, newest: int) -> None:
        """Delete every entry but the newest two (after a release)."""
        async for name in self.store.list(GENERATIONS):
            if int(name.rsplit("/", 1)[-1], 16) < newest - 1:
                try:
                    await self.store.delete(name)
                except ObjectNotFound:  # another writer tidied it first
                    continue
