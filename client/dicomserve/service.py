"""The `dicom-serve` process: the archive both front ends share, its configuration, and its life.

Owns the `Archive` (index, fetcher, cache, audit log and the event loop that reads the
repository), the refresh timer, and starting and stopping the DIMSE and DICOMweb servers.
Command-line parsing is `client.cli_serve`'s; DIMSE is `dimse`'s, HTTP is `web`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client import audit as client_audit
from client.dicomserve.audit import AuditLog, AuditRecord
from client.dicomserve.index import CatalogueIndex, IndexReader, InstanceRef
from client.dicomserve.instances import Fetcher, InstanceCache, sop_class_of
from client.dicomserve.query import Request, matching_instances
from client.repository import Repository

log = logging.getLogger(__name__)
FETCH_TIMEOUT = 600.0  # seconds one instance may take to arrive from the slowest site
READ_AHEAD = 4  # instances fetched ahead of the one being sent...
READ_AHEAD_BYTES = 1 << 20  # ...while their stored sizes add up to less than this
PREFETCHED_PATIENTS = 1000  # patients remembered as prefetched (then prefetched again)
INDEX_NAME = "catalogue.sealed"  # the catalogue index, sealed (client.dicomserve.index)


@dataclass(frozen=True)
class Allowed:
    """A calling AE title, and optionally the one host it may call from."""

    ae_title: str
    host: str | None = None

    @classmethod
    def parse(cls, text: str) -> Allowed:
        aet, _, host = text.partition("@")
        return cls(aet.strip(), host.strip() or None)

    def admits(self, ae_title: str, host: str) -> bool:
        return ae_title.strip() == self.ae_title and (self.host is None or self.host == host)


@dataclass(frozen=True)
class ServeConfig:
    ae_title: str = "DICOMVAULT"
    host: str = "127.0.0.1"
    dimse_port: int | None = 11112
    web_port: int | None = None
    allowed: tuple[Allowed, ...] = ()
    accept_any: bool = False
    move_destinations: dict[str, tuple[str, int]] = field(default_factory=dict)
    web_tokens: dict[str, str] = field(default_factory=dict)  # token → name in the audit
    as_of: str | None = None
    cache_bytes: int = 512 << 20
    refresh_s: float = 300.0
    prefetch_patient: bool = False
    dimse_timeout: float = 30.0

    def admits(self, ae_title: str, host: str) -> bool:
        return self.accept_any or any(a.admits(ae_title, host) for a in self.allowed)


RETRIEVALS = frozenset({"C-GET", "C-MOVE", "WADO-RS"})  # what becomes a repository event


class RepositoryEvents:
    """dicom-serve's retrievals as the repository's sealed audit events (`client.audit`),
    recorded on the serving loop from whichever thread wrote the local line."""

    def __init__(self, repo: Repository, loop: asyncio.AbstractEventLoop) -> None:
        self.repo, self.loop = repo, loop
        self.pending: set[Future[None]] = set()

    def mirror(self, doc: dict[str, Any]) -> None:
        if doc["action"] not in RETRIEVALS:
            return
        count = doc.get("instances_count", len(doc["instances"]))
        detail = (f"{doc['action']} by {doc['who']} from {doc['address']}: {count} instances, "
                  f"{doc['outcome']}")  # fmt: skip
        coro = client_audit.record(self.repo, "dicom-serve", studies=doc["studies"],
                                   series=doc["series"], detail=detail)  # fmt: skip
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        self.pending.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: Future[None]) -> None:
        self.pending.discard(future)
        if not future.cancelled() and future.exception() is not None:
            log.error("audit event not recorded: %s", future.exception())

    async def settle(self) -> None:
        """Wait for the events still being written (at shutdown)."""
        await asyncio.gather(*(asyncio.wrap_future(f) for f in list(self.pending)),
                             return_exceptions=True)  # fmt: skip


class Archive:
    """What both front ends serve from. Query methods run in any thread (each opens its own
    index reader); repository reads run on `loop` and other threads wait for them."""

    def __init__(
        self,
        repo: Repository,
        index: CatalogueIndex,
        audit: AuditLog,
        config: ServeConfig,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.repo, self.index, self.audit, self.config = repo, index, audit, config
        self.loop = loop
        self.cache = InstanceCache(config.cache_bytes)
        self.fetcher = Fetcher(repo, self.cache)
        self._prefetching: set[asyncio.Task[None]] = set()
        self._prefetched: OrderedDict[str, None] = OrderedDict()

    @contextlib.contextmanager
    def reader(self) -> Iterator[IndexReader]:
        reader = self.index.open_reader()
        try:
            yield reader
        finally:
            reader.close()

    def instances(self, request: Request) -> list[InstanceRef]:
        with self.reader() as reader:
            return list(matching_instances(reader, request, self.config.as_of))

    def on_loop(self, coro: Any, timeout: float = FETCH_TIMEOUT) -> Any:
        """Run a coroutine on the archive's loop from another thread and wait for it."""
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    async def read(self, ref: InstanceRef) -> bytes:
        data = await self.fetcher.read(ref)
        if self.config.prefetch_patient:
            self._prefetch(ref.attrs.get("PatientID", ""), ref.study)
        return data

    async def read_ahead(
        self, refs: list[InstanceRef], window: int = READ_AHEAD
    ) -> AsyncGenerator[tuple[InstanceRef, bytes | Exception]]:
        """Each instance's bytes (or why not) in order, with up to `window` reads (and about
        READ_AHEAD_BYTES) in flight, so fetching the next instances overlaps sending this one
        while a large instance still has the link to itself and arrives first."""
        queue: deque[tuple[InstanceRef, asyncio.Task[bytes]]] = deque()
        todo = deque(refs)
        try:
            while True:
                while todo and (not queue or _room(queue, todo[0], window)):
                    ref = todo.popleft()
                    queue.append((ref, asyncio.ensure_future(self.read(ref))))
                if not queue:
                    return
                ref, task = queue.popleft()
                try:
                    yield ref, await task
                except Exception as e:  # this instance fails alone
                    yield ref, e
        finally:
            for _, task in queue:
                task.cancel()

    async def sop_classes(self, refs: list[InstanceRef]) -> dict[str, str]:
        """SOP class of each instance: from the index when known, else from its first chunk
        (read concurrently, then remembered in the index). Unknown ones are left out."""
        with self.reader() as reader:
            known = {ref.sop: reader.sop_class(ref.sop) for ref in refs}
        todo = [ref for ref in refs if not known[ref.sop]]

        async def probe(ref: InstanceRef) -> str:  # concurrency: the fetcher's read slots
            try:
                return sop_class_of(await self.fetcher.head(ref))
            except Exception as e:  # reported when the instance itself is sent
                log.warning("no SOP class for %s: %s", ref.sop, e)
                return ""

        found = dict(
            zip((r.sop for r in todo), await asyncio.gather(*map(probe, todo)), strict=True)
        )
        await asyncio.to_thread(
            self.index.remember_sop_classes, {k: v for k, v in found.items() if v}
        )
        return {sop: cls for sop, cls in (known | found).items() if cls}

    def _prefetch(self, patient: str, opened: str) -> None:
        """Once per patient (among the last PREFETCHED_PATIENTS), not on every instance read."""
        if not patient:
            return
        if patient in self._prefetched:
            self._prefetched.move_to_end(patient)
            return
        self._prefetched[patient] = None
        while len(self._prefetched) > PREFETCHED_PATIENTS:
            self._prefetched.popitem(last=False)
        task = self.loop.create_task(self._prefetch_patient(patient, opened))
        self._prefetching.add(task)
        task.add_done_callback(self._prefetching.discard)

    async def _prefetch_patient(self, patient: str, opened: str) -> None:
        """Read the patient's other studies into the cache (the `opened` one is being read
        already); audited, as it decrypts studies nobody asked for yet."""
        request = Request.parse("IMAGE", {"PatientID": patient})
        record = AuditRecord("dicom-serve", "", "prefetch", "PATIENT", {"PatientID": patient})
        for ref in await asyncio.to_thread(self.instances, request):
            if ref.study == opened or ref.digest in self.cache:
                continue
            try:
                await self.fetcher.read(ref)
            except Exception as e:  # prefetch is a courtesy: the retrieve reports real failures
                record.outcome, record.detail = "partial", f"{ref.sop}: {e}"
                break
            record.note(ref.attrs)
        if record.instances or record.outcome != "ok":  # nothing decrypted, nothing to audit
            await asyncio.to_thread(self.audit.write, record)


def _room(queue: deque[tuple[InstanceRef, Any]], ref: InstanceRef, window: int) -> bool:
    in_flight = sum(r.size for r, _ in queue)
    return len(queue) < window and in_flight + ref.size <= READ_AHEAD_BYTES


def alert(message: str) -> None:
    """An instance that cannot be served: said on stderr (the operator's console or journal)."""
    print(f"dicom-serve: alert: {message}", file=sys.stderr, flush=True)


async def refresh_forever(
    archive: Archive, every: float, sleep: Callable[[float], Any] = asyncio.sleep
) -> None:
    """Index new snapshots every `every` seconds; a failed refresh is retried next time."""
    while True:
        await sleep(every)
        try:
            added = await archive.index.refresh(archive.repo)
        except Exception as e:  # the sites may be down; the index still answers
            log.warning("index refresh failed: %s", e)
            continue
        if added:
            log.info("indexed %d new snapshots", added)
            await asyncio.to_thread(archive.index.save)


@dataclass(frozen=True)
class Listening:
    dimse_port: int | None
    web_port: int | None
    snapshots: int


async def serve(
    repo: Repository,
    config: ServeConfig,
    state_dir: Path,
    clock: Callable[[], str],
    ready: Callable[[Listening], None],
    stop: asyncio.Event,
) -> None:
    """Index the snapshots, start the front ends, and serve until `stop` is set."""
    from client.dicomserve.dimse import DimseServer

    index = CatalogueIndex(state_dir / INDEX_NAME, repo.key.serve_key)
    if await index.refresh(repo) or not index.loaded:
        await asyncio.to_thread(index.save)
    await repo.sync_index()  # chunk locations now, not on the first retrieve
    events = RepositoryEvents(repo, asyncio.get_running_loop())
    audit = AuditLog(state_dir / "audit.jsonl", clock, mirror=events.mirror)
    archive = Archive(repo, index, audit, config, asyncio.get_running_loop())
    dimse = DimseServer(archive) if config.dimse_port is not None else None
    runner = None
    try:
        dimse_port = dimse.start() if dimse is not None else None
        web_port = None
        if config.web_port is not None:
            from client.dicomserve.web import start_web

            runner, web_port = await start_web(archive)
        with archive.reader() as reader:
            ready(Listening(dimse_port, web_port, reader.snapshot_count()))
        refresher = asyncio.create_task(refresh_forever(archive, config.refresh_s))
        await stop.wait()
        refresher.cancel()
    finally:
        if dimse is not None:
            await asyncio.to_thread(dimse.stop)
        if runner is not None:
            await runner.cleanup()
        audit.close()
        await events.settle()
        await asyncio.to_thread(index.save)  # the SOP classes learnt while serving
        index.close()
