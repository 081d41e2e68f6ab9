"""What is wrong right now: facts gathered from the index, replication, scrub and drill records,
and the pure rules that turn them into conditions.

Owns `gather` (blocking reads: call it in a worker thread) and `evaluate` (pure, so tests and the
status page see exactly what the alert service sees). A condition's `key` is stable while the
same thing stays wrong, so the store can repeat and resolve it. Must not deliver or store alerts.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from engine.errors import ObjectNotFound, RepositoryNotFound
from server.alerts.settings import AlertSite, Effective, effective
from server.deletion import DAY, Deletions
from server.drills import DrillRecords
from server.index import ServerIndex
from server.replication.state import ReplicationState
from server.repos import Repositories
from server.scrubstate import ScrubState

PAGE = 10_000

AGENT_SILENT = "agent_silent"
AGENT_ALERT = "agent_alert"
NO_COMMIT = "no_commit"
REPLICATION_LAG = "replication_lag"
SCRUB_FAILED = "scrub_failed"
DRILL_FAILED = "drill_failed"
DISK_FULL = "disk_full"
PEER_UNREACHABLE = "peer_unreachable"
MASS_DELETION = "mass_deletion"
# A write refused for want of space keeps the disk alert open this long, even when the failed
# upload's temp file, once removed, leaves the disk under its threshold again.
FULL_HOLD = 3600.0


class DiskUsage(Protocol):
    """What `shutil.disk_usage` returns (bytes)."""

    @property
    def total(self) -> int: ...
    @property
    def free(self) -> int: ...


DiskUsageFn = Callable[[Path], DiskUsage]  # `shutil.disk_usage`, or a test's stand-in


class HasReplicators(Protocol):
    """What `gather` needs of `server.replication.service.Replication`."""

    state: ReplicationState

    @property
    def replicators(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class Condition:
    key: str  # stable identity: repo/kind[/subject]
    repo: str | None  # None: server-wide, the provider's business only
    kind: str
    message: str


@dataclass
class RepoFacts:
    name: str
    policy: Effective
    heartbeats: list[dict[str, Any]] = field(default_factory=list)
    last_commit: float | None = None  # receive time of the newest snapshot
    initialised: float | None = None  # the practice's `init` (config written)
    snapshots: int = 0
    packs: int = 0
    stored_bytes: int = 0
    lag: dict[str, dict[str, Any]] = field(default_factory=dict)  # peer → lag
    replica_of: str | None = None
    scrub: dict[str, Any] | None = None
    unhealed: list[dict[str, Any]] = field(default_factory=list)
    drills: list[dict[str, Any]] = field(default_factory=list)
    scheduled_day: int = 0  # snapshots scheduled for deletion in the last 24 hours
    scheduled_day_bytes: int = 0  # bytes of the packs scheduled in the last 24 hours
    pending_deletion_bytes: int = 0
    space: dict[str, Any] | None = None  # the practice's last `dicomvault stats` report
    mass_deletion_share: float = 0.5


@dataclass(frozen=True)
class PeerFacts:
    """A replication peer this site cannot reach or trust (`PeerStatus` while it is down)."""

    name: str
    down_since: float
    reason: str
    last_error: str


@dataclass
class Facts:
    now: float
    site: str
    repos: list[RepoFacts]
    disk_total: int
    disk_used: int
    disk_threshold: float
    scrub_progress: dict[str, Any] | None
    storage_full_at: float | None = None  # the last write that failed with ENOSPC
    peers_down: list[PeerFacts] = field(default_factory=list)
    peer_grace: float = 900.0

    @property
    def disk_fraction(self) -> float:
        return self.disk_used / self.disk_total if self.disk_total else 0.0


# -- gathering ----------------------------------------------------------------------------------


def gather(
    config: AlertSite,
    index: ServerIndex,
    repos: Repositories,
    replication: HasReplicators | None,
    now: float,
    disk_usage: DiskUsageFn = shutil.disk_usage,
    initialised: Mapping[str, float | None] | None = None,
) -> Facts:
    """Facts for the alert conditions; `initialised` is each repository's config time
    (`initialised_times`, read from its store before this runs in a worker thread)."""
    scrub, drills = ScrubState(index), DrillRecords(index)
    disk = disk_usage(config.data_dir)
    inits = initialised or {}
    rows = [
        _repo_facts(config, index, replication, scrub, drills, name, now, inits.get(name))
        for name in repos.names()
    ]
    return Facts(
        now,
        config.site_name,
        rows,
        disk.total,
        disk.total - disk.free,
        config.alerts.disk_threshold,
        scrub.progress(),
        peers_down=_peers_down(replication),
        peer_grace=config.alerts.peer_unreachable_grace,
    )


async def initialised_times(repos: Repositories) -> dict[str, float | None]:
    """When each repository's config was stored (None: not initialised yet)."""
    times: dict[str, float | None] = {}
    for name in await asyncio.to_thread(repos.names):
        try:
            times[name] = (await repos.get(name).store.stat("config")).mtime
        except (ObjectNotFound, RepositoryNotFound):
            times[name] = None
    return times


def _peers_down(replication: HasReplicators | None) -> list[PeerFacts]:
    if replication is None:
        return []
    return [
        PeerFacts(r.name, r.status.down_since, r.status.reason or "", r.status.last_error or "")
        for r in replication.replicators
        if r.status.down_since is not None
    ]


def _repo_facts(
    config: AlertSite,
    index: ServerIndex,
    replication: HasReplicators | None,
    scrub: ScrubState,
    drills: DrillRecords,
    name: str,
    now: float,
    initialised: float | None,
) -> RepoFacts:
    facts = RepoFacts(name, effective(config.alerts, config.repos, name))
    facts.heartbeats = index.heartbeats(name)
    snaps = [summary for _, summary in index.snapshots(name)]
    facts.snapshots = len(snaps)
    facts.last_commit = max((float(s.get("received", 0)) for s in snaps), default=None)
    facts.initialised = initialised
    facts.packs, facts.stored_bytes = _pack_totals(index, name)
    if replication is not None:
        facts.replica_of = replication.state.replica_owner(name)
        facts.lag = {
            r.name: _lag(replication.state, r.name, name, now) for r in replication.replicators
        }
    facts.scrub = scrub.run(name)
    facts.unhealed = scrub.unhealed(name)
    facts.drills = drills.latest(name)
    deletions = Deletions(index)
    facts.scheduled_day = deletions.scheduled_since(name, now - DAY)
    pending = deletions.pending(name)
    facts.pending_deletion_bytes = sum(int(d.get("size") or 0) for d in pending)
    facts.scheduled_day_bytes = sum(
        int(d.get("size") or 0) for d in pending if d["scheduled"] >= now - DAY
    )
    facts.space = deletions.stats(name)
    facts.mass_deletion_share = config.alerts.mass_deletion_share
    return facts


def _pack_totals(index: ServerIndex, repo: str) -> tuple[int, int]:
    count = size = 0
    after = None
    while True:
        page = index.packs(repo, after, PAGE)
        count += len(page)
        size += sum(r.size for r in page)
        if len(page) < PAGE:
            return count, size
        after = page[-1].pack_id


def _lag(state: ReplicationState, peer: str, repo: str, now: float) -> dict[str, Any]:
    lag = state.lag(peer, repo)
    age = max(0.0, now - lag.oldest_pack_time) if lag.oldest_pack_time is not None else None
    return {"pending_packs": lag.packs, "pending_bytes": lag.bytes, "oldest_age": age}


# -- rules ------------------------------------------------------------------------------------


def evaluate(facts: Facts) -> list[Condition]:
    out: list[Condition] = []
    for repo in facts.repos:
        out += _heartbeat_conditions(repo, facts.now)
        out += _commit_conditions(repo, facts.now)
        out += _lag_conditions(repo)
        out += _scrub_conditions(repo)
        out += _drill_conditions(repo)
        out += _deletion_conditions(repo)
    out += _disk_conditions(facts)
    out += _peer_conditions(facts)
    return out


def _peer_conditions(facts: Facts) -> list[Condition]:
    """Server-wide: one peer serves every practice replicated there."""
    out = []
    for peer in facts.peers_down:
        age = facts.now - peer.down_since
        if age > facts.peer_grace:
            message = f"replication to peer {peer.name} failing for {duration(age)}: "
            message += f"{peer.reason} ({peer.last_error})"
            key = f"{facts.site}/{PEER_UNREACHABLE}/{peer.name}"
            out.append(Condition(key, None, PEER_UNREACHABLE, message))
    return out


def _disk_conditions(facts: Facts) -> list[Condition]:
    free = _size(facts.disk_total - facts.disk_used)
    full_at = facts.storage_full_at
    if full_at is not None and facts.now - full_at < FULL_HOLD:
        message = f"server storage full: a write failed for want of space at {iso(full_at)} "
        message += f"({free} free now); backups cannot be stored"
    elif facts.disk_fraction >= facts.disk_threshold:
        message = f"server disk {facts.disk_fraction:.0%} full (threshold "
        message += f"{facts.disk_threshold:.0%}, {free} free)"
    else:
        return []
    return [Condition(f"{facts.site}/{DISK_FULL}", None, DISK_FULL, message)]


def _heartbeat_conditions(repo: RepoFacts, now: float) -> list[Condition]:
    out = []
    for hb in repo.heartbeats:
        agent, seen = str(hb.get("agent")), float(hb.get("received", 0))
        age, allowed = now - seen, repo.policy.heartbeat_timeout
        if age > allowed:
            out.append(
                Condition(
                    f"{repo.name}/{AGENT_SILENT}/{agent}",
                    repo.name,
                    AGENT_SILENT,
                    f"{repo.name}: agent {agent} silent for {duration(age)} (last heartbeat "
                    f"{iso(seen)}, allowed {duration(allowed)})",
                )
            )
        reported = _agent_alerts(hb.get("info", {}))
        if reported:
            out.append(
                Condition(
                    f"{repo.name}/{AGENT_ALERT}/{agent}",
                    repo.name,
                    AGENT_ALERT,
                    f"{repo.name}: agent {agent} reports: {'; '.join(reported)}",
                )
            )
    return out


def _agent_alerts(info: Any) -> list[str]:
    alerts = info.get("alerts") if isinstance(info, dict) else None
    if not isinstance(alerts, list):
        return []
    return [str(a.get("message", a)) if isinstance(a, dict) else str(a) for a in alerts][:20]


def _commit_conditions(repo: RepoFacts, now: float) -> list[Condition]:
    since = repo.last_commit if repo.last_commit is not None else repo.initialised
    if since is None or repo.replica_of is not None:
        return []  # not initialised yet, or a replica (its primary is watched at its own site)
    age, allowed = now - since, repo.policy.commit_policy_seconds
    if age <= allowed:
        return []
    what = f"last commit {iso(since)}" if repo.last_commit is not None else "no commit ever"
    return [
        Condition(
            f"{repo.name}/{NO_COMMIT}",
            repo.name,
            NO_COMMIT,
            f"{repo.name}: no snapshot committed for {duration(age)} ({what}; policy "
            f"{duration(allowed)})",
        )
    ]


def _lag_conditions(repo: RepoFacts) -> list[Condition]:
    out = []
    for peer, lag in repo.lag.items():
        age = lag.get("oldest_age")
        if age is not None and age > repo.policy.replication_lag_threshold:
            out.append(
                Condition(
                    f"{repo.name}/{REPLICATION_LAG}/{peer}",
                    repo.name,
                    REPLICATION_LAG,
                    f"{repo.name}: replication to {peer} lags {duration(age)} "
                    f"({lag['pending_packs']} packs, {_size(lag['pending_bytes'])} pending; "
                    f"threshold {duration(repo.policy.replication_lag_threshold)})",
                )
            )
    return out


def _scrub_conditions(repo: RepoFacts) -> list[Condition]:
    if not repo.unhealed:
        return []
    ids = ", ".join(d["pack"][:16] for d in repo.unhealed[:5])
    return [
        Condition(
            f"{repo.name}/{SCRUB_FAILED}",
            repo.name,
            SCRUB_FAILED,
            f"{repo.name}: scrub found {len(repo.unhealed)} bad packs not yet healed ({ids})",
        )
    ]


def _drill_conditions(repo: RepoFacts) -> list[Condition]:
    out = []
    for d in repo.drills:
        if d.get("ok"):
            continue
        detail = "; ".join(d.get("problems", [])[:3])
        counts = f"{d['mismatches']} mismatches, {d['errors']} errors of {d['files']} files"
        out.append(
            Condition(
                f"{repo.name}/{DRILL_FAILED}/{d['agent']}/{d['site']}",
                repo.name,
                DRILL_FAILED,
                f"{repo.name}: fire drill by {d['agent']} against {d['site']} failed "
                f"at {d['time']}: {counts} ({detail})",
            )
        )
    return out


def _deletion_conditions(repo: RepoFacts) -> list[Condition]:
    """More than the set share of a repository's snapshots, or of its stored bytes (packs a
    prune scheduled), scheduled for deletion within a day: a stolen admin token at work, or a
    policy gone wrong. Clears once the day has passed or the objects are brought back."""
    share = repo.mass_deletion_share
    snapshots = repo.snapshots + repo.scheduled_day
    stored = repo.stored_bytes + repo.scheduled_day_bytes
    parts = []
    if snapshots and repo.scheduled_day / snapshots > share:
        parts.append(f"{repo.scheduled_day} of {snapshots} snapshots")
    if stored and repo.scheduled_day_bytes / stored > share:
        parts.append(f"{_size(repo.scheduled_day_bytes)} of {_size(stored)} stored")
    if not parts:
        return []
    return [
        Condition(
            f"{repo.name}/{MASS_DELETION}",
            repo.name,
            MASS_DELETION,
            f"{repo.name}: {' and '.join(parts)} scheduled for deletion in 24 hours "
            f"(threshold {share:.0%}); `dicomvault undelete` brings them back within the "
            "undelete window",
        )
    ]


def duration(seconds: float) -> str:
    s = int(max(0.0, seconds))
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600:02d}h"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s"


def iso(t: float) -> str:
    return datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds")


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"
