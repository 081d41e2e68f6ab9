"""`RetryingBackend`: a `Backend` that retries transient failures of the backend it wraps.

Every `Backend` operation is safe to repeat (reads; write-once puts; commits named by their
hash), so any call that fails with `TransientError` — a dropped connection, a server restart,
a 5xx — is retried with capped exponential backoff until `deadline` seconds have passed
(`--retry-for`; 0: never). Other errors pass through at once.

Fail fast on first contact: until one call has succeeded the backend is not `established`, and
`Unreachable` (no answer at all: refused, name not resolved, plain HTTP to a TLS port) passes
at once, so a typo or a stopped server shows its cause in seconds; once established, the same
errors are an outage (a server restart) and are retried like the rest.

`last_error` names the failure being retried (None once a call succeeds), so a caller can
show an outage before the deadline runs out. A pack upload with a paced `body` cannot be
replayed from here: its caller (the client's uploader) owns those retries. The clock is
injected (`engine.clock`).

The wrapper forwards nothing it does not declare. `with_retries` picks `RetryingRemoteBackend`
for an inner backend with the optional capabilities (`Replicated`, `DrillReceiver`), so an
`isinstance` check on the wrapper answers as it would on the inner backend, and those calls are
retried too. One call is never retried: `quarantine`, which moves an object aside; if its answer
is lost, a repeat finds the object gone and reports a failure for what succeeded.
"""

from __future__ import annotations

import logging
import random
from abc import ABC
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

from engine.backend import Backend, DrillReceiver, Pruning, Replicated, StatsReceiver
from engine.clock import SYSTEM, Clock
from engine.errors import TransientError, Unreachable, UsageError
from engine.ids import ChunkId, PackId, SnapshotId

T = TypeVar("T")
log = logging.getLogger(__name__)
FIRST_DELAY = 0.5
MAX_DELAY = 30.0
RETRY_FOR = 300.0  # seconds an established backup keeps retrying one call
UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """Seconds in `30s`, `5m`, `2h` or a bare number of seconds; 0 allowed."""
    number, unit = (text[:-1], text[-1]) if text[-1:] in UNITS else (text, "s")
    try:
        seconds = float(number) * UNITS[unit]
    except ValueError:
        seconds = -1
    if not seconds >= 0:  # also NaN
        raise UsageError(f"duration must be like 30s, 5m or 2h, got {text!r}")
    return seconds


class RetryingBackend(Backend):
    def __init__(
        self,
        inner: Backend,
        *,
        deadline: float = RETRY_FOR,
        clock: Clock = SYSTEM,
    ) -> None:
        self.inner = inner
        self.knows_chunks, self.location = inner.knows_chunks, inner.location
        self.deadline, self._clock = deadline, clock
        self.retries = 0
        self.last_error: str | None = None
        self.established = False  # set by the first call that succeeds

    @property
    def bytes_uploaded(self) -> int:
        return self.inner.bytes_uploaded

    async def _retry(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        give_up, delay = self._clock.monotonic() + self.deadline, FIRST_DELAY
        while True:
            try:
                result = await call()
            except TransientError as e:
                self.last_error = f"{what} failed: {e}"
                if self._clock.monotonic() + delay > give_up or self._first_contact(e):
                    raise
                self.retries += 1
                log.warning("%s failed (%s); retrying in %.1f s", what, e, delay)
                # Jittered, but never past the deadline.
                await self._clock.sleep(
                    min(delay * random.uniform(0.8, 1.2), give_up - self._clock.monotonic())
                )
                delay = min(delay * 2, MAX_DELAY)
            else:
                self.last_error, self.established = None, True
                return result

    def _first_contact(self, e: TransientError) -> bool:
        """No answer from a server that never answered: a typo or a stopped server, not an
        outage; its cause, not minutes of retries."""
        return isinstance(e, Unreachable) and not self.established

    async def get_config(self) -> bytes:
        return await self._retry("get config", self.inner.get_config)

    async def put_config(self, data: bytes) -> None:
        await self._retry("put config", lambda: self.inner.put_config(data))

    async def list_keys(self) -> list[str]:
        return await self._retry("list keys", self.inner.list_keys)

    async def get_key(self, name: str) -> bytes:
        return await self._retry("get key", lambda: self.inner.get_key(name))

    async def put_key(self, name: str, data: bytes) -> None:
        await self._retry("put key", lambda: self.inner.put_key(name, data))

    async def missing(self, ids: Sequence[ChunkId]) -> set[ChunkId]:
        return await self._retry("missing-query", lambda: self.inner.missing(ids))

    async def put_pack(
        self, pack_id: PackId, data: bytes | memoryview, body: AsyncIterable[bytes] | None = None
    ) -> None:
        if body is not None:
            await self.inner.put_pack(pack_id, data, body)
            return
        await self._retry("pack upload", lambda: self.inner.put_pack(pack_id, data))

    async def get_pack(self, pack_id: PackId) -> bytes:
        return await self._retry("pack read", lambda: self.inner.get_pack(pack_id))

    async def get_pack_range(self, pack_id: PackId, offset: int, length: int) -> bytes:
        return await self._retry(
            "pack read", lambda: self.inner.get_pack_range(pack_id, offset, length)
        )

    async def has_pack(self, pack_id: PackId) -> bool:
        return await self._retry("pack lookup", lambda: self.inner.has_pack(pack_id))

    async def get_pack_tail(self, pack_id: PackId, length: int) -> tuple[int, bytes]:
        return await self._retry("pack read", lambda: self.inner.get_pack_tail(pack_id, length))

    async def list_packs(self) -> AsyncIterator[PackId]:
        packs = await self._retry("list packs", self._collect_packs)
        for pack_id in packs:
            yield pack_id

    async def _collect_packs(self) -> list[PackId]:
        # Listed whole so a retry restarts cleanly; 32 bytes a pack (≈ 2 MB per TB stored).
        return [p async for p in self.inner.list_packs()]

    async def commit(self, record: bytes) -> SnapshotId:
        return await self._retry("commit", lambda: self.inner.commit(record))

    async def list_snapshots(self) -> list[SnapshotId]:
        return await self._retry("list snapshots", self.inner.list_snapshots)

    async def get_snapshot(self, snapshot_id: SnapshotId) -> bytes:
        return await self._retry("get snapshot", lambda: self.inner.get_snapshot(snapshot_id))

    async def put_event(self, name: str, data: bytes) -> None:
        await self._retry("put event", lambda: self.inner.put_event(name, data))

    async def list_events(self) -> list[str]:
        return await self._retry("list events", self.inner.list_events)

    async def get_event(self, name: str) -> bytes:
        return await self._retry("get event", lambda: self.inner.get_event(name))

    async def quarantine(self, kind: str, ident: str, reason: str = "") -> dict[str, Any]:
        return await self.inner.quarantine(kind, ident, reason)  # not retried: see the docstring

    async def forget(self, snapshot_ids: Sequence[SnapshotId]) -> list[dict[str, Any]]:
        # Idempotent: a snapshot already scheduled keeps its schedule.
        return await self._retry("forget", lambda: self.inner.forget(snapshot_ids))

    async def pending_deletions(self) -> list[dict[str, Any]]:
        return await self._retry("pending deletions", self.inner.pending_deletions)

    async def undelete(self, names: Sequence[str] | None) -> list[dict[str, Any]]:
        return await self.inner.undelete(names)  # not retried: a repeat finds nothing to undo

    async def heartbeat(self, info: dict[str, Any]) -> None:
        await self._retry("heartbeat", lambda: self.inner.heartbeat(info))

    async def close(self) -> None:
        await self.inner.close()


class RetryingRemoteBackend(RetryingBackend, Replicated, DrillReceiver, Pruning, StatsReceiver):
    """`RetryingBackend` around a backend with the chunk server's optional capabilities."""

    def __init__(self, inner: RemoteCapable, **kw: Any) -> None:
        super().__init__(inner, **kw)
        self.remote = inner

    async def replication_status(self) -> dict[str, Any] | None:
        return await self._retry("replication status", self.remote.replication_status)

    async def snapshot_sites(self) -> dict[SnapshotId, dict[str, bool]] | None:
        return await self._retry("snapshot sites", self.remote.snapshot_sites)

    async def report_drill(self, report: dict[str, Any]) -> None:
        # Idempotent: the server keeps the last report per repository; a repeat replaces it.
        await self._retry("drill report", lambda: self.remote.report_drill(report))

    async def report_stats(self, stats: dict[str, Any]) -> None:
        # Idempotent: the server keeps the last report per repository.
        await self._retry("stats report", lambda: self.remote.report_stats(stats))

    # The prune protocol: every call is idempotent (a lock is renewed by its holder, a pack
    # already scheduled is reported absent, a commit is stored under its hash).

    async def generation(self) -> int:
        return await self._retry("generation", self.remote.generation)

    async def commit_at(self, record: bytes, generation: int, full: bool) -> SnapshotId:
        return await self._retry("commit", lambda: self.remote.commit_at(record, generation, full))

    async def prune_lock(self, holder: str, ttl: float) -> dict[str, Any]:
        return await self._retry("prune lock", lambda: self.remote.prune_lock(holder, ttl))

    async def prune_release(self, holder: str) -> None:
        await self._retry("prune unlock", lambda: self.remote.prune_release(holder))

    async def prune_schedule(self, holder: str, packs: Sequence[PackId]) -> dict[str, Any]:
        return await self._retry(
            "prune schedule", lambda: self.remote.prune_schedule(holder, packs)
        )


class RemoteCapable(Backend, Replicated, DrillReceiver, Pruning, StatsReceiver, ABC):
    """What `RetryingRemoteBackend` wraps (for the type checker; `isinstance` decides)."""


def with_retries(inner: Backend, **kw: Any) -> RetryingBackend:
    """`inner` wrapped in a retrying backend that declares the same optional capabilities."""
    if isinstance(inner, Replicated) and isinstance(inner, DrillReceiver):
        return RetryingRemoteBackend(cast(RemoteCapable, inner), **kw)
    return RetryingBackend(inner, **kw)
