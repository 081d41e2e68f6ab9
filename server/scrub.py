"""Scrub: re-hash every stored pack, quarantine the ones that rotted, heal them from a peer.

Owns one pass over the packs the index names (and the bad packs of earlier passes still waiting
for a good copy): each pack is read in 1 MiB pieces and hashed with BLAKE3 in a worker thread,
paced by a token bucket (`scrub_rate`) so uploads keep the disk. A pack whose bytes no longer
hash to its name (or that vanished) is taken out to the repository's quarantine store
(`server.quarantine.take_out`, the same operation an admin uses), taken out of the
index (`ScrubState.mark_bad`) and fetched again from each configured peer (`server.heal`). Also
owns the schedule (`run_scheduled`). Must not serve HTTP; must not delete a bad pack's bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import blake3

from engine.clock import SYSTEM, Clock
from engine.errors import DicomvaultError, ObjectNotFound, StoreError
from engine.ids import ChunkId, PackId
from engine.pack import pack_name, read_pack_info
from engine.rates import TokenBucket
from server.catchup import CatchUp
from server.config import ServerConfig
from server.heal import heal
from server.index import ServerIndex
from server.quarantine import take_out
from server.replication.state import ReplicationState
from server.repos import Repositories, Repository
from server.scrubstate import ScrubState

log = logging.getLogger(__name__)
PAGE = 1000  # index rows per page: the pass never holds a repository's pack list
PROGRESS_EVERY = 2.0  # seconds between progress records (each one is an LMDB write)


@dataclass
class BadPack:
    repo: str
    pack: str
    reason: str
    healed_from: str | None = None
    errors: list[str] = field(default_factory=list)


@dataclass
class ScrubReport:
    started: float = 0.0
    finished: float = 0.0
    repositories: int = 0
    packs_checked: int = 0
    bytes_checked: int = 0
    bad: list[BadPack] = field(default_factory=list)

    @property
    def unhealed(self) -> list[BadPack]:
        return [b for b in self.bad if b.healed_from is None]

    def as_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["healed"] = len(self.bad) - len(self.unhealed)
        doc["unhealed"] = len(self.unhealed)
        return doc


class Scrubber:
    def __init__(
        self,
        config: ServerConfig,
        index: ServerIndex,
        repos: Repositories,
        clock: Clock = SYSTEM,
    ) -> None:
        self.config, self.index, self.repos, self.clock = config, index, repos, clock
        self.state = ScrubState(index)
        self.catchup = CatchUp(index, clock)  # on a shared store: scrub what other nodes stored
        self.replication = ReplicationState(index)
        self.bucket = TokenBucket(config.scrub_rate, clock=clock)
        self._lock = asyncio.Lock()
        self._report = ScrubReport()
        self._last_progress = 0.0
        self._task: asyncio.Task[ScrubReport] | None = None

    @property
    def running(self) -> bool:
        return self._lock.locked()

    def start(self) -> bool:
        """Start a pass in the background (`POST /v1/scrub`); False if one is running."""
        if self.running or (self._task is not None and not self._task.done()):
            return False
        self._task = asyncio.create_task(self.run_pass(), name="scrub-on-demand")
        return True

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def run_pass(self, only: list[str] | None = None) -> ScrubReport:
        """Scrub every repository (or `only` these); one pass at a time per process."""
        async with self._lock:
            self._report = report = ScrubReport(started=self.clock.time())
            names = only if only is not None else await asyncio.to_thread(self.repos.names)
            for name in names:
                await self._scrub_repo(self.repos.get(name))
                report.repositories += 1
            report.finished = self.clock.time()
            await asyncio.to_thread(self._save_progress, None, True)
            return report

    # -- one repository --------------------------------------------------------------------

    async def _scrub_repo(self, repo: Repository) -> None:
        report = self._report
        before = (report.packs_checked, report.bytes_checked, len(report.bad))
        started = self.clock.time()
        await self.catchup.packs(repo)
        await self._retry_unhealed(repo)
        after: PackId | None = None
        while True:
            page = await asyncio.to_thread(self.index.packs, repo.name, after, PAGE)
            for row in page:
                await self._check(repo, row.pack_id)
                await self._maybe_progress(repo.name)
            if len(page) < PAGE:
                break
            after = page[-1].pack_id
        await asyncio.to_thread(self._save_run, repo.name, started, before)

    async def _check(self, repo: Repository, pack_id: PackId) -> None:
        reason = await self._verify(repo, pack_id)
        self._report.packs_checked += 1
        if reason is not None:
            await self._bad(repo, pack_id, reason)

    async def _verify(self, repo: Repository, pack_id: PackId) -> str | None:
        """None if the stored pack hashes to its name, else why not."""
        hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
        try:
            async for piece in repo.store.get_stream(pack_name(pack_id)):
                await self.bucket.take(len(piece))
                await asyncio.to_thread(hasher.update, piece)
                self._report.bytes_checked += len(piece)
        except ObjectNotFound:
            return "the pack file is missing"
        except StoreError as e:
            return f"read error: {e}"
        digest = hasher.digest()
        return None if digest == pack_id else f"content hashes to {digest.hex()}"

    # -- bad packs -------------------------------------------------------------------------

    async def _bad(self, repo: Repository, pack_id: PackId, reason: str) -> None:
        log.error("scrub: %s pack %s is bad: %s", repo.name, pack_id.hex(), reason)
        bad = BadPack(repo.name, pack_id.hex(), reason)
        self._report.bad.append(bad)
        where = await self._quarantine(repo, pack_id, reason)
        log.info("scrub: quarantined %s/%s at %s", repo.name, pack_id.short(), where)
        await self._heal(repo, pack_id, bad)

    async def _quarantine(self, repo: Repository, pack_id: PackId, reason: str) -> str | None:
        now = self.clock.time()
        entry = await take_out(repo, pack_name(pack_id), by="scrub", reason=reason, now=now)
        # None: missing, or another scrub process moved it first.
        where = None if entry is None else str(entry["to"])
        chunks = None if where is None else await _manifest_chunks(repo, where)
        doc = {
            "repo": repo.name,
            "pack": pack_id.hex(),
            "found": self.clock.time(),
            "reason": reason,
            "quarantine": where,
            "healed": None,
            "healed_from": None,
            "error": None,
        }
        await asyncio.to_thread(self.state.mark_bad, repo.name, pack_id, doc, chunks)
        return where

    async def _heal(self, repo: Repository, pack_id: PackId, bad: BadPack) -> None:
        if await asyncio.to_thread(self.replication.replica_owner, repo.name) is not None:
            # A replica held here: this site has no token to read the primary's copy. The
            # primary's anti-entropy finds the pack missing here and pushes it again.
            bad.errors.append("replica: the primary re-sends it (anti-entropy)")
            await asyncio.to_thread(self.state.update_bad, repo.name, pack_id, error=bad.errors[-1])
            return
        result = await heal(self.config.peers, repo, self.index, pack_id, self.config.max_body_size)
        bad.healed_from, bad.errors = result.peer, list(result.errors)
        changes: dict[str, Any] = {"error": "; ".join(result.errors) or None}
        if result.peer is not None:
            changes.update(healed=self.clock.time(), healed_from=result.peer)
        await asyncio.to_thread(self.state.update_bad, repo.name, pack_id, **changes)

    async def _retry_unhealed(self, repo: Repository) -> None:
        """Bad packs of earlier passes: healed meanwhile (a client or the primary re-sent
        them), or try the peers again."""
        for doc in await asyncio.to_thread(self.state.unhealed, repo.name):
            pack_id = PackId.parse(doc["pack"])
            if await asyncio.to_thread(self.index.has_pack, repo.name, pack_id):
                await asyncio.to_thread(
                    self.state.update_bad,
                    repo.name,
                    pack_id,
                    healed=self.clock.time(),
                    healed_from="re-upload",
                )
                continue
            bad = BadPack(repo.name, pack_id.hex(), str(doc.get("reason")))
            self._report.bad.append(bad)
            await self._heal(repo, pack_id, bad)

    # -- records -----------------------------------------------------------------------------

    def _save_run(self, repo: str, started: float, before: tuple[int, int, int]) -> None:
        r = self._report
        found = r.bad[before[2] :]
        unhealed = [d["pack"] for d in self.state.unhealed(repo)]
        self.state.put_run(
            repo,
            {
                "started": started,
                "finished": self.clock.time(),
                "packs_checked": r.packs_checked - before[0],
                "bytes_checked": r.bytes_checked - before[1],
                "bad": len(found),
                "healed": sum(1 for b in found if b.healed_from is not None),
                "unhealed": unhealed,
            },
        )

    async def _maybe_progress(self, repo: str) -> None:
        now = self.clock.monotonic()
        if now - self._last_progress >= PROGRESS_EVERY:
            self._last_progress = now
            await asyncio.to_thread(self._save_progress, repo, False)

    def _save_progress(self, repo: str | None, done: bool) -> None:
        r = self._report
        self.state.set_progress(
            {
                "running": not done,
                "pid": os.getpid(),
                "repo": repo,
                "started": r.started,
                "finished": r.finished if done else None,
                "updated": self.clock.time(),
                "packs_checked": r.packs_checked,
                "bytes_checked": r.bytes_checked,
                "bad": len(r.bad),
                "unhealed": len(r.unhealed),
            }
        )


async def _manifest_chunks(repo: Repository, where: str) -> list[ChunkId] | None:
    """The chunks a quarantined pack's manifest names (read whole: a bad pack is rare)."""
    try:
        return [e.chunk_id for e in read_pack_info(await repo.quarantine.get(where)).entries]
    except DicomvaultError:
        return None  # the damage reached the manifest: mark_bad scans the index instead


async def run_scheduled(scrubber: Scrubber, interval: float) -> None:
    """Run a pass whenever the last one (by any process) finished `interval` seconds ago."""
    while True:
        last = await asyncio.to_thread(_last_finished, scrubber.state)
        wait = last + interval - scrubber.clock.time() if last is not None else 0.0
        if wait > 0:
            await asyncio.sleep(min(wait, 60.0))  # re-read: a CLI pass may have run meanwhile
            continue
        try:
            report = await scrubber.run_pass()
            log.info(
                "scrub pass: %d packs, %d bytes, %d bad, %d unhealed",
                report.packs_checked,
                report.bytes_checked,
                len(report.bad),
                len(report.unhealed),
            )
        except (DicomvaultError, OSError) as e:
            log.error("scrub pass failed: %s", e)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(
                    scrubber.state.set_progress,
                    {"running": False, "error": str(e), "finished": scrubber.clock.time()},
                )
            await asyncio.sleep(60.0)


def _last_finished(state: ScrubState) -> float | None:
    progress = state.progress()
    if progress is None:
        return None
    finished = progress.get("finished")
    return float(finished) if finished is not None else None
