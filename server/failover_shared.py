"""A repository's failover state on a store several nodes share (docs/design.md §17, "Several
nodes"): its `Generation` and its replica binding, in the bucket, so every node of a site is
primary, replica or fenced together.

Owns `failover/<repo>/<n, 16 hex>` in the site store: write-once JSON entries (version 1,
tests/fixtures/failover-v1.json); the newest is the state. Every change appends entry n + 1,
and a store put is create-only, so of two nodes appending the same n one loses: a losing
promotion is refused (`PromoteRaced`, exit 23), a losing fence or binding reads again and
retries. Each read is mirrored into this node's LMDB rows (`ReplicationState.mirror`), which
every decision reads. With no entry yet the node's own rows stand (a site from before this
format), and the first change publishes them. Must not know HTTP or decide who may write
(server.fencing does).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

from engine.errors import ObjectNotFound, PrimaryAlive, TransientError
from engine.store.base import Store
from server.replication.state import Generation, ReplicationState

log = logging.getLogger(__name__)

FAILOVER = "failover"
VERSION = 1
RETRIES = 20  # appends a fence or binding retries while other nodes keep changing the state
# A write re-reads the state at most this often per repository and node (one LIST of at most
# two names and one GET: 2 ms on a local SeaweedFS); a write the cache would refuse re-reads
# first, so the window only delays a fence another node heard, never a promotion.
REFRESH_EVERY = 5.0

Binding = dict[str, Any] | None  # {"owner": replica label, "since": unix seconds}


class PromoteRaced(PrimaryAlive):
    """Another node of this site changed the repository's failover state while this promotion
    read it (two promotions at once): this one is refused, nothing changed."""


def entry_name(repo: str, n: int) -> str:
    return f"{FAILOVER}/{repo}/{n:016x}"


def encode(gen: Generation, replica: Binding) -> bytes:
    """An entry's bytes: JSON in this key order (version 1)."""
    return json.dumps({"v": VERSION, **asdict(gen), "replica": replica}).encode()


def decode(data: bytes) -> tuple[Generation, Binding]:
    doc = json.loads(data)
    if doc.get("v") != VERSION:
        raise ValueError(f"failover entry version {doc.get('v')!r} is not {VERSION}")
    fields = {k: doc[k] for k in ("generation", "fenced_by", "primary", "promoted_from")}
    return Generation(**fields), doc.get("replica")


Change = Callable[[Generation, Binding], tuple[Generation, Binding]]


class SharedFailover:
    def __init__(self, site: Store, state: ReplicationState, *, tidy: bool = False) -> None:
        self.site, self.state = site, state
        # Only a running server deletes old entries: an offline command's process aborted at
        # exit after an S3 delete (obstore's runtime), and the next server change tidies anyway.
        self.tidy = tidy

    async def _newest(self, repo: str) -> tuple[int, tuple[Generation, Binding] | None]:
        for _ in range(RETRIES):
            names = [n async for n in self.site.list(f"{FAILOVER}/{repo}")]
            if not names:
                return 0, None
            try:
                data = await self.site.get(names[-1])
            except ObjectNotFound:  # tidied away meanwhile: look again
                continue
            return int(names[-1].rsplit("/", 1)[-1], 16), decode(data)
        raise TransientError(f"{FAILOVER}/{repo} keeps changing: try again")

    def _local(self, repo: str) -> tuple[Generation, Binding]:
        owner = self.state.replica_binding(repo)
        return self.state.generation(repo), owner

    async def refresh(self, repo: str) -> tuple[int, Generation, Binding]:
        """Read the bucket's state into this node's rows; the rows stand if it has none."""
        n, found = await self._newest(repo)
        if found is None:
            return 0, *self._local(repo)
        self.state.mirror(repo, *found)
        return n, *found

    async def change(self, repo: str, fn: Change, *, race: bool = False) -> Generation:
        """Append `fn(state)` unless it changes nothing; `race`: a lost append is refused."""
        for _ in range(RETRIES):
            n, gen, replica = await self.refresh(repo)
            new = fn(gen, replica)
            if new == (gen, replica) and (n > 0 or new == (Generation(), None)):
                return gen  # nothing to change (an empty log publishes this node's own rows)
            if await self.site.put(entry_name(repo, n + 1), encode(*new)):
                self.state.mirror(repo, *new)
                if self.tidy:
                    await self._tidy(repo, n + 1)
                return new[0]
            if race:
                raise PromoteRaced(
                    f"another node changed {repo}'s failover state just now; nothing changed "
                    "here (check `dicomvault-server promote` was not run twice)"
                )
        raise TransientError(f"{FAILOVER}/{repo} keeps changing: try again")

    async def _tidy(self, repo: str, newest: int) -> None:
        """Delete entries older than the newest two: a reader that listed just before still
        finds the one it read, or looks again."""
        async for name in self.site.list(f"{FAILOVER}/{repo}"):
            if int(name.rsplit("/", 1)[-1], 16) < newest - 1:
                try:
                    await self.site.delete(name)
                except ObjectNotFound:
                    continue

    async def fence(self, repo: str, generation: int, primary: str) -> None:
        """Publish that `primary` holds `repo` at `generation` (unless the bucket knows more)."""

        def fenced(gen: Generation, replica: Binding) -> tuple[Generation, Binding]:
            if generation <= gen.current:
                return gen, replica
            return replace(gen, fenced_by=generation, primary=primary), replica

        await self.change(repo, fenced)

    async def promote(self, repo: str) -> Generation:
        """`ReplicationState.promote`, on the bucket: of two nodes promoting at once, one wins."""

        def promoted(gen: Generation, replica: Binding) -> tuple[Generation, Binding]:
            if replica is None and not gen.fenced:  # read after another node's promote won
                raise PromoteRaced(
                    f"another node promoted {repo} just now (generation {gen.current}); "
                    "nothing changed here"
                )
            owner = str(replica["owner"]) if replica else gen.promoted_from
            return Generation(gen.current + 1, 0, "", owner), None

        return await self.change(repo, promoted, race=True)

    async def bind(self, repo: str, owner: str, now: float) -> str:
        """`ReplicationState.claim_replica`, on the bucket: the owner the name has."""

        def bound(gen: Generation, replica: Binding) -> tuple[Generation, Binding]:
            return gen, replica or {"owner": owner, "since": now}

        await self.change(repo, bound)
        return str(self.state.replica_owner(repo))
