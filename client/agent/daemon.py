"""The practice agent: sources in, snapshots out, one asyncio loop.

Owns the agent's life: starting the receiver and the folder watcher, deciding when a batch is
due (`batching`), backing up exactly the files of a batch as one snapshot (`client.backup`),
recording the commit (`Ledger`) before deleting spooled instances (or holding them until the
peer sites have the snapshot too, `PeerHold`), answering Storage Commitment, sending heartbeats,
re-reading the live policy, and writing the status file every second. Deletion order (the
agent's safety rule): server commit → [every peer holds it →] ledger → unlink. Does not parse
flags or read the environment: the CLI builds the `AgentConfig`, `Repository` and clock.

A repository the CLI could not reach at start comes as an opener instead: the door (receiver,
watchers, status) opens at once and only the loops that need the repository wait for
`_await_repository`, which retries on the clock with backoff (everything received meanwhile
waits in the spool and goes in the first batches).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from client.agent import batching
from client.agent.alerts import agent_alerts
from client.agent.batching import Decision, Item, Queue
from client.agent.config import AgentConfig, WatchSettings, load_policy
from client.agent.drills import DrillScheduler
from client.agent.inbox import Inbox, Instance
from client.agent.ledger import CommitmentRequest, Ledger
from client.agent.page import PageSettings, StatusPage, page_document
from client.agent.peerhold import PeerHold, committed_rows, peer_holds
from client.agent.receiver import (
    CLASS_INSTANCE_CONFLICT,
    NO_SUCH_INSTANCE,
    PROCESSING_FAILURE,
    Receiver,
)
from client.agent.status import STATUS_VERSION, agent_version, write_status
from client.agent.watcher import Settled, Settler, Watcher, scan
from client.archive import batch_sources
from client.backup import Backup, Summary
from client.repository import Repository, now_rfc3339
from engine.backend import Replicated
from engine.clock import SYSTEM, Clock
from engine.errors import DicomvaultError, TransientError, UsageError
from engine.retry import RetryingBackend

log = logging.getLogger(__name__)
TICK = 0.2  # the batch loop looks at the queue this often (and at once on an arrival)
RETRY_SECONDS = 30.0  # a file that failed waits this long before its next try
BACKOFF_MAX = 60.0
SHUTDOWN_GRACE = 10.0  # a batch under way gets this long to commit before it is cancelled
KEEP_ERRORS = 20
RATE_WINDOW = 10.0  # seconds of upload history behind the "current rate"
PEER_POLL = 5.0  # delete_after = "peer": ask the server this often which snapshots peers hold
SWEEP_SECONDS = 60.0  # the spool is swept for temporary files of receives cut short this often
T = TypeVar("T")
Opener = Callable[[], Awaitable[Repository]]  # opens the repository (the CLI's, with its backend)


@dataclass
class Commit:
    snapshot: str
    time: str
    files: int
    bytes: int

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Agent:
    def __init__(
        self, config: AgentConfig, repo: Repository | Opener, clock: Clock | None = None
    ) -> None:
        self.config = config
        self._repo: Repository | None = repo if isinstance(repo, Repository) else None
        self._opener: Opener | None = None if isinstance(repo, Repository) else repo
        # the CLI could not open the repository: since when (None once it is open)
        self.unreachable_since = None if self._opener is None else now_rfc3339()
        self.clock: Clock = clock or SYSTEM
        self.policy = config.policy
        self.inbox = Inbox(config.instances_dir)
        self.ledger = Ledger(config.state_dir / "ledger.sqlite")
        self.hold = PeerHold(self.ledger, self.inbox, self.clock)
        self.queue = Queue()
        self.settler = Settler(self.clock.monotonic)
        self.receiver: Receiver | None = None
        self.watcher: Watcher | None = None
        self.errors: deque[dict[str, str]] = deque(maxlen=KEEP_ERRORS)
        self.alerts: list[str] = []
        self.last_commit: Commit | None = None
        self.decision = Decision(False, "batch")
        self.started = now_rfc3339()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._batching = False
        self._uploaded: deque[tuple[float, int]] = deque()
        self._config_mtime = _mtime(config.config_file)
        self._report_after: dict[str, float] = {}
        self._heartbeat_now = asyncio.Event()
        self._unreachable: str | None = None  # the repository's failure being retried, if any
        self._batch_summaries: list[Summary] | None = None  # kept in --once mode only
        # fire drills: client/agent/drills.py, [drill]
        self.drills = DrillScheduler(config, self._repo, clock=self.clock) if self._repo else None
        # the status page at the practice: client/agent/page.py, [status_page]
        self.page_settings = PageSettings.from_file(config.config_file)
        self.page: StatusPage | None = None
        self.peer_holds_last: bool | None = None  # None: no second site (or not asked yet)
        self._committed_at = 0.0  # on the clock; 0: before this start

    @property
    def opened(self) -> bool:
        return self._repo is not None

    @property
    def repo(self) -> Repository:
        assert self._repo is not None, "the repository is not open yet"
        return self._repo

    # life cycle

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    async def run(self) -> None:
        """Run until `request_stop`; on return nothing acknowledged is lost."""
        self._loop = asyncio.get_running_loop()
        last = self.ledger.get_meta("last_commit")
        self.last_commit = Commit(**last) if last else None
        self._resume_spool()
        self._start_sources()
        tasks = _spawn(
            ("status", self._status_loop()),
            ("rescan", self._rescan_loop()),
            ("config", self._config_loop()),
        )
        if self.page_settings is not None:
            tasks += _spawn(("page", self._page_loop(self.page_settings)))
        try:
            if await self._await_repository():
                assert self.drills is not None
                tasks += _spawn(
                    ("batches", self._batch_loop()),
                    ("heartbeat", self._heartbeat_loop()),
                    ("drills", self.drills.run()),
                    ("peer-hold", self._release_loop()),
                )
                await self._stop.wait()
        finally:
            await self._shutdown(tasks)

    async def _await_repository(self) -> bool:
        """Open the repository if the CLI could not: retry an unreachable one on the clock with
        backoff until it opens (True) or the agent is stopped (False). Other errors (a wrong
        passphrase) end the agent."""
        backoff = 1.0
        while self._repo is None:
            assert self._opener is not None
            if (opening := await self._unless_stopped(self._opener())) is None:
                return False
            try:
                self._repo = opening.result()
            except TransientError as e:
                if backoff == 1.0:
                    self._error(f"repository unreachable, retrying (files wait in the spool): {e}")
                if await self._unless_stopped(self.clock.sleep(backoff)) is None:
                    return False
                backoff = min(backoff * 2, BACKOFF_MAX)
        if self.unreachable_since is not None:
            log.info("repository opened (unreachable since %s)", self.unreachable_since)
            self.unreachable_since = None
        self.drills = self.drills or DrillScheduler(self.config, self._repo, clock=self.clock)
        return True

    async def _unless_stopped(self, work: Awaitable[T]) -> asyncio.Future[T] | None:
        """`work`'s finished future, or None (`work` cancelled) if the agent is stopped first."""
        task, stop = asyncio.ensure_future(work), asyncio.ensure_future(self._stop.wait())
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if self._stop.is_set():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return None
        return task

    async def run_once(self) -> dict[str, Any]:
        """Catch-up mode (`agent --once`): back up what the spool holds and every new or changed
        file in the watched folders as they are now, in batches, then return their summed
        summary (`errors` lists files left for the next run). The folders are taken as complete
        (no settle wait) and no DICOM listener is started."""
        self._loop = asyncio.get_running_loop()
        start = self.clock.monotonic()
        self._resume_spool()
        await self._resume_uploads()
        now = self.clock.monotonic()
        for w in self.config.watch:
            for path in await asyncio.to_thread(self._new_files, w):
                with contextlib.suppress(FileNotFoundError):
                    st = os.stat(path)
                    self.queue.add(Item(path, st.st_size, now, mtime_ns=st.st_mtime_ns))
        self._batch_summaries = []
        try:
            while self.queue.waiting(self.clock.monotonic()):
                await self._run_batch()  # a file that fails waits RETRY_SECONDS: not retried here
        finally:
            self._write_status(state="stopped")
            self.ledger.close()
        return _summed(self._batch_summaries, self.errors, self.clock.monotonic() - start)

    def _new_files(self, watch: WatchSettings) -> list[str]:
        return [p for p in scan(watch) if self._is_new(p)]

    async def _shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        self._stop_sources()  # no new acknowledgements from here on
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._idle()), SHUTDOWN_GRACE)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._write_status(state="stopped")
        self.ledger.close()
        log.info("agent stopped; %d files wait in the queue for the next start", self.queue.files)

    async def _idle(self) -> None:
        while self._batching:
            await asyncio.sleep(0.05)

    def _resume_spool(self) -> None:
        """Instances received before a restart (acknowledged, not yet committed) queue first."""
        now, held = self.clock.monotonic(), self.hold.paths()
        for inst in self.inbox.pending():
            if str(inst.path) not in held:  # committed already; waits for the peers
                self.queue.add(Item(str(inst.path), inst.size, now, inst))
        if self.queue.files:
            log.info("resuming %d received instances from the spool", self.queue.files)

    def _start_sources(self) -> None:
        if self.config.dicom is not None:
            self.receiver = Receiver(
                self.config.dicom,
                self.inbox,
                on_instance=self._instance_arrived,
                on_commitment=self._commitment_arrived,
                accepting=self._accepting,
                clock=self.clock,
            )
            self.receiver.start()
            d = self.config.dicom
            log.info("DICOM listener %s on port %d", d.ae_title, self.receiver.port)
            if d.accept_any or not d.senders:
                log.warning("DICOM listener: %s", d.door_summary())
            else:
                log.info("DICOM listener: %s", d.door_summary())
        if self.config.watch:
            assert self._loop is not None
            self.watcher = Watcher(self.config.watch, self.settler, self._loop)
            self.watcher.start()
            for e in self.watcher.errors:
                self._error(e)

    def _stop_sources(self) -> None:
        if self.receiver is not None:
            self.receiver.stop()
        if self.watcher is not None:
            self.watcher.stop()

    # arrivals (the receiver calls these from its threads)

    def _accepting(self) -> bool:
        limit = self.policy.spool_max_bytes
        return limit is None or self.inbox.held_bytes < limit

    def _instance_arrived(self, inst: Instance) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._enqueue_instance, inst)

    def _enqueue_instance(self, inst: Instance) -> None:
        self.queue.add(Item(str(inst.path), inst.size, self.clock.monotonic(), inst))
        self._wake.set()

    def _commitment_arrived(self, req: CommitmentRequest) -> None:
        self.ledger.add_commitment(req)  # durable before the N-ACTION is answered
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._wake.set)

    def _is_new(self, path: str) -> bool:
        """Watched file not in the queue, and changed since it was last committed."""
        if path in self.queue.items:
            return False
        try:
            st = os.stat(path)
        except OSError:
            return False
        return self.ledger.watched_signature(path) != (st.st_size, st.st_mtime_ns)

    def _collect_settled(self) -> None:
        for s in self.settler.ready():
            if self._is_new(s.path):
                self.queue.add(self._watched_item(s))

    def _watched_item(self, s: Settled) -> Item:
        return Item(s.path, s.size, self.clock.monotonic(), mtime_ns=s.mtime_ns)

    # batches

    async def _batch_loop(self) -> None:
        await self._resume_uploads()
        backoff = 1.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK)
            self._wake.clear()
            self._collect_settled()
            await self._report_commitments()
            if not self._decide().due:
                continue
            try:
                await self._run_batch()
                backoff = 1.0
            except (DicomvaultError, OSError) as e:
                self._error(f"backup failed: {e}")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    def _decide(self) -> Decision:
        now = self.clock.monotonic()
        waiting = self.queue.waiting(now)
        self.decision = batching.due(
            self.policy,
            self.clock.now(),
            now,
            waiting,
            self.queue.last_arrival,
            self.spool_bytes(),
        )
        return self.decision

    async def _resume_uploads(self) -> None:
        """Packs sealed before a restart go out first (their chunks are already indexed)."""
        uploader = self.repo.uploader
        if uploader is not None and uploader.spool.pending():
            try:
                await uploader.drain()
            except DicomvaultError as e:
                self._error(f"uploading spooled packs: {e}")

    async def _run_batch(self) -> None:
        now = self.clock.monotonic()
        items = batching.take(self.queue.waiting(now), self.policy)
        for item in items:
            item.in_batch = True
        self._batching = True
        try:
            summary = await self._backup([i.path for i in items])
        except BaseException:
            for item in items:
                item.in_batch = False
            raise
        finally:
            self._batching = False
        self._settle_batch(items, summary)

    async def _backup(self, paths: list[str]) -> Summary:
        backup = Backup(self.repo, host=self.config.name, files_cache=False, find_parent=False)
        summary = await backup.run(paths, ["agent"], batch_sources(self.config, paths))
        if self._batch_summaries is not None:
            self._batch_summaries.append(summary)
        log.info(
            "snapshot %s: %d files, %d new bytes, %d bytes uploaded",
            summary.snapshot[:8],
            summary.files,
            summary.bytes_new,
            summary.bytes_uploaded,
        )
        return summary

    def _settle_batch(self, items: list[Item], summary: Summary) -> None:
        """The snapshot is committed: ledger first, then delete (or hold) spooled instances."""
        failed = {e.split(": ", 1)[0] for e in summary.errors}
        done = [i for i in items if i.path not in failed]
        when = self.clock.time()
        instances = [i.instance for i in done if i.instance]
        if self.policy.delete_after == "peer":
            self.hold.hold(summary.snapshot, instances)
        else:
            self.ledger.record_instances(committed_rows(instances), summary.snapshot, when)
        self.ledger.record_watched(
            ((i.path, i.size, i.mtime_ns) for i in done if not i.instance), summary.snapshot, when
        )
        self.last_commit = Commit(
            summary.snapshot, now_rfc3339(), len(done), sum(i.size for i in done)
        )
        self.ledger.put_meta("last_commit", self.last_commit.as_json())
        self._committed_at = self.clock.time()
        if self.policy.delete_after != "peer":
            self.inbox.remove(instances)
        for i in done:
            del self.queue.items[i.path]
        for i in items:
            if i.path in failed:
                self._retry_later(i, summary)

    def _retry_later(self, item: Item, summary: Summary) -> None:
        item.in_batch = False
        message = next(e for e in summary.errors if e.startswith(item.path + ": "))
        self._error(message)
        if item.instance is None:  # a watched file: settle it again (it may have changed)
            del self.queue.items[item.path]
            w = next((w for w in self.config.watch if item.path.startswith(str(w.path))), None)
            if w is not None:
                self.settler.touch(item.path, w)
        elif not os.path.exists(item.path):
            del self.queue.items[item.path]
        else:
            item.not_before = self.clock.monotonic() + RETRY_SECONDS

    async def _release_loop(self) -> None:
        """Held instances go once every peer holds their snapshot (at once under "commit")."""
        while True:
            await asyncio.sleep(PEER_POLL)
            wait = self.policy.delete_after == "peer"
            try:
                released = await self.hold.release_ready(self.repo.backend, wait)
            except (DicomvaultError, OSError) as e:
                log.warning("cannot learn which snapshots the peer sites hold: %s", e)
                continue
            if released:
                log.info("the peer sites hold %d more snapshots: spool freed", len(released))
                self._wake.set()  # Storage Commitment requests may be decided now

    # Storage Commitment

    async def _report_commitments(self) -> None:
        if self.receiver is None:
            return
        now = self.clock.time()
        for req in self.ledger.commitments():
            if self._report_after.get(req.transaction_uid, 0) > now:
                continue
            result = self._commitment_result(req, now)
            if result is None:
                continue
            delivered = await asyncio.to_thread(self.receiver.send_report, req, *result)
            if delivered:
                self.ledger.remove_commitment(req.transaction_uid)
                self._report_after.pop(req.transaction_uid, None)
            else:
                self._report_after[req.transaction_uid] = now + RETRY_SECONDS

    def _commitment_result(
        self, req: CommitmentRequest, now: float
    ) -> tuple[list[tuple[str, str]], list[tuple[str, str, int]]] | None:
        """(committed, failed) once every instance is decided; None while some are queued.
        Committed means: the same (SOP Class UID, SOP Instance UID) as stored."""
        committed, conflicts = self.ledger.committed(req.items)
        queued = (self.queue.uids() | self.hold.uids()) & {uid for _, uid in req.items}
        if queued and now - req.received < self.policy.commitment_timeout_seconds:
            return None
        ok = [key for key in req.items if key in committed]
        failed = [(c, i, _failure(c, i, conflicts, queued)) for c, i in req.items]
        return ok, [f for f in failed if (f[0], f[1]) not in committed]

    # heartbeat, live config, rescans

    async def _heartbeat_loop(self) -> None:
        while True:
            try:
                await self.repo.backend.heartbeat(self._heartbeat())
            except DicomvaultError as e:
                self._error(f"heartbeat: {e}")
            self._heartbeat_now.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._heartbeat_now.wait(), self.policy.heartbeat_seconds)

    def _heartbeat(self) -> dict[str, Any]:
        return {
            "agent": self.config.name,
            "version": agent_version(),
            "time": now_rfc3339(),
            "queue_files": self.queue.files,
            "queue_bytes": self.queue.bytes,
            "bytes_pending": self.bytes_pending(),
            "last_commit": self.last_commit.as_json() if self.last_commit else None,
            "alerts": list(self.alerts),
            "errors": len(self.errors),
            "drill": self.drills.summary() if self.drills else None,
        }

    async def _config_loop(self) -> None:
        path = self.config.config_file
        while path is not None:
            await asyncio.sleep(1.0)
            mtime = _mtime(path)
            if mtime == self._config_mtime:
                continue
            self._config_mtime = mtime
            try:
                self.policy = await asyncio.to_thread(load_policy, path)
                log.info("re-read %s: new policy in force", path)
            except UsageError as e:
                self._error(f"keeping the previous policy: {e}")

    async def _rescan_loop(self) -> None:
        """A walk at start (what changed while the agent was down), then every rescan period."""
        while self.watcher is not None:
            try:
                for path, w in await asyncio.to_thread(self.watcher.changed, self._is_new):
                    self.settler.touch(path, w)
            except OSError as e:
                self._error(f"rescanning watched folders: {e}")
            await asyncio.sleep(self.config.rescan_seconds)

    # status

    async def _status_loop(self) -> None:
        swept = self.clock.monotonic()
        while True:
            if self.clock.monotonic() - swept >= SWEEP_SECONDS:
                swept = self.clock.monotonic()
                self._sweep_spool()
            self._check_repository()
            self._check_alerts()
            self._write_status()
            await asyncio.sleep(1.0)

    def _sweep_spool(self) -> None:
        """Drop temporary files no open association can still be writing: untouched for twice
        the idle timeout (after which the receiver aborts a silent association) and a minute."""
        idle = self.config.dicom.idle_seconds if self.config.dicom is not None else 0.0
        with contextlib.suppress(OSError):
            if dropped := self.inbox.drop_stale_temps(self.clock.time(), 2 * idle + 60):
                log.info("removed %d temporary files of receives cut short", dropped)

    def _check_repository(self) -> None:
        """An outage shows in the errors when it starts, not when the retries give up (the
        backend retries for minutes); the spool keeps everything meanwhile."""
        if self._repo is None:
            return
        backend = self._repo.backend
        failing = backend.last_error if isinstance(backend, RetryingBackend) else None
        if failing and not self._unreachable:
            self._error(f"repository unreachable, retrying (files wait in the spool): {failing}")
        elif self._unreachable and not failing:
            log.info("the repository answers again")
        self._unreachable = failing

    def _check_alerts(self) -> None:
        uploader = self._repo.uploader if self._repo else None
        stats = uploader.stats if uploader is not None else None
        door = self.receiver.door if self.receiver is not None else None
        alerts = agent_alerts(self.policy, self.spool_bytes(), stats, door, self.clock.time())
        if alerts and not self.alerts:
            for a in alerts:
                log.warning("ALERT: %s", a)
        if bool(alerts) != bool(self.alerts):
            self._heartbeat_now.set()  # tell the server now (raised or cleared), not later
        self.alerts = alerts

    def _error(self, message: str) -> None:
        log.error("%s", message)
        self.errors.append({"time": now_rfc3339(), "message": message})

    def spool_bytes(self) -> int:
        return self.inbox.held_bytes + self.packs_bytes()

    def packs_bytes(self) -> int:
        uploader = self._repo.uploader if self._repo else None
        return uploader.spool.bytes_pending() if uploader is not None else 0

    def bytes_pending(self) -> int:
        return self.queue.bytes + self.packs_bytes()

    def upload_rate(self) -> float:
        t, sent = self.clock.monotonic(), self._bytes_uploaded()
        self._uploaded.append((t, sent))
        while len(self._uploaded) > 1 and t - self._uploaded[0][0] > RATE_WINDOW:
            self._uploaded.popleft()
        t0, s0 = self._uploaded[0]
        return (sent - s0) / (t - t0) if t > t0 else 0.0

    def _bytes_uploaded(self) -> int:
        return self._repo.backend.bytes_uploaded if self._repo else 0

    def rate_limit(self) -> float | None:
        uploader = self._repo.uploader if self._repo else None
        return uploader.limiter.current_rate() if uploader is not None else None

    def status(self, state: str = "running") -> dict[str, Any]:
        """The status file's document (schema version 1, client/agent/status.py)."""
        rate, limit, pending = self.upload_rate(), self.rate_limit(), self.bytes_pending()
        speed = rate if rate > 0 else limit
        queued_instances = sum(1 for i in self.queue.items.values() if i.instance)
        return {
            "version": STATUS_VERSION,
            "agent": self.config.name,
            "pid": os.getpid(),
            "dicomvault": agent_version(),
            "state": state,
            "started": self.started,
            "updated": now_rfc3339(),
            "updated_unix": self.clock.time(),
            "repository": self._repo.backend.location if self._repo else None,
            "repository_unreachable_since": self.unreachable_since,
            "sources": self.config.sources(),
            "dicom_port": self.receiver.port if self.receiver else None,
            "queue": {
                "files": self.queue.files,
                "bytes": self.queue.bytes,
                "instances": queued_instances,
                "watched": self.queue.files - queued_instances,
                "settling": len(self.settler),
            },
            "spool": {
                "bytes": self.inbox.held_bytes,
                "packs_bytes": self.packs_bytes(),
                "max_bytes": self.policy.spool_max_bytes,
                "alert_bytes": self.policy.spool_alert_bytes,
                "held_for_peer": self.hold.instances,
            },
            "bytes_pending": pending,
            "mode": self.decision.mode,
            "window": self.decision.window,
            "upload": {
                "rate_bytes_per_s": round(rate),
                "limit_bytes_per_s": limit,
                "bytes_total": self._bytes_uploaded(),
            },
            "eta_seconds": round(pending / speed, 1)
            if pending and speed
            else (0 if not pending else None),
            "last_commit": self.last_commit.as_json() if self.last_commit else None,
            "received": self.receiver.received if self.receiver else 0,
            "refused": self.receiver.refused if self.receiver else 0,
            "invalid": self.receiver.invalid if self.receiver else 0,
            "associations_refused": self.receiver.door.refused if self.receiver else 0,
            "refusals": [r.as_json() for r in self.receiver.door.recent] if self.receiver else [],
            "commitments_pending": len(self.ledger.commitments()),
            "errors": list(self.errors),
            "alerts": list(self.alerts),
        }

    # the status page

    async def _page_loop(self, settings: PageSettings) -> None:
        """Serve the page; ask the server every PEER_POLL whether the peers hold the last commit."""
        self.page = StatusPage(self.page_figures, settings)
        try:
            await self.page.start()
            log.info("status page on http://%s:%d/", settings.host, self.page.port)
        except OSError as e:
            self._error(f"status page: cannot listen on {settings.host}:{settings.port}: {e}")
        try:
            while True:
                await self._ask_peers()
                await asyncio.sleep(PEER_POLL)
        finally:
            await self.page.close()

    async def _ask_peers(self) -> None:
        if self._repo is None:
            return
        backend = self._repo.backend
        try:
            doc = await backend.replication_status() if isinstance(backend, Replicated) else None
        except (DicomvaultError, OSError) as e:
            log.warning("cannot learn whether the peer sites hold the last commit: %s", e)
            return
        self.peer_holds_last = peer_holds(
            doc, self.last_commit.snapshot if self.last_commit else None
        )

    def page_figures(self) -> dict[str, Any]:
        assert self.page_settings is not None
        doc = {**self.status(), "drill": self.drills.summary() if self.drills else None}
        lag = self.clock.time() - self._committed_at
        return page_document(doc, self.peer_holds_last, lag, self.page_settings)

    def _write_status(self, state: str = "running") -> None:
        try:
            write_status(self.config.state_dir, self.status(state))
        except OSError as e:
            log.error("cannot write the status file: %s", e)


def _spawn(*named: tuple[str, Any]) -> list[asyncio.Task[None]]:
    return [asyncio.create_task(c, name=n) for n, c in named]


def _failure(cls: str, uid: str, conflicts: set[tuple[str, str]], queued: set[str]) -> int:
    """The Storage Commitment failure reason for an instance not committed."""
    if (cls, uid) in conflicts:
        return CLASS_INSTANCE_CONFLICT
    return PROCESSING_FAILURE if uid in queued else NO_SUCH_INSTANCE


def _mtime(path: Any) -> int | None:
    try:
        return os.stat(path).st_mtime_ns if path is not None else None
    except OSError:
        return None


_SUMMED = ("files", "bytes_read", "bytes_total", "chunks_new", "bytes_new", "bytes_stored",
           "packs", "bytes_uploaded")  # fmt: skip


def _summed(batches: list[Summary], errors: Any, seconds: float) -> dict[str, Any]:
    """One summary for a catch-up run, in the shape of `dicomvault backup --json`."""
    doc: dict[str, Any] = {k: sum(getattr(b, k) for b in batches) for k in _SUMMED}
    doc["snapshots"] = [b.snapshot for b in batches]
    doc["snapshot"] = batches[-1].snapshot if batches else ""
    doc["duration_s"] = round(seconds, 3)
    doc["errors"] = [e["message"] for e in errors]
    return doc
