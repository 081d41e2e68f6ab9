"""The replication service of one server: the queue, one replicator per peer, lag reporting.

Owns what the rest of the server sees of replication: `enqueue` and `wake` (called by handlers
when a pack, commit, key object or config lands), the per-repository status for
`GET .../replication`, the lag gauges for `/metrics`, and the replicator tasks' lifecycle
(started and cancelled by the app's `cleanup_ctx`). Must not serve HTTP routes itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any

from engine.clock import Clock
from server.index import ServerIndex
from server.replication.settings import ReplicationSettings
from server.replication.state import Item, Lag, ReplicationState
from server.replication.worker import Replicator
from server.repos import Repositories


class Replication:
    def __init__(
        self,
        config: ReplicationSettings,
        index: ServerIndex,
        repos: Repositories,
        clock: Clock,
    ) -> None:
        self.config, self.index, self.repos, self.clock = config, index, repos, clock
        self.state = ReplicationState(index)
        self.replicators = [
            Replicator(
                peer,
                self.state,
                index,
                repos,
                clock=clock,
                poll=config.replication_poll_interval,
                retry_max=config.replication_retry_max,
            )
            for peer in config.peers
        ]
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [asyncio.create_task(r.run(), name=f"replicate-{r.name}")
                       for r in self.replicators]  # fmt: skip

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- intake hooks -----------------------------------------------------------------------

    def enqueue(self, repo: str, items: Iterable[Item]) -> bool:
        """Queue `items` of `repo` for every peer (one LMDB transaction; blocking, so call it
        from a worker thread); True if the replicators should be woken. Replicas held here are
        not passed on, so two sites replicating to each other cannot loop."""
        if not self.replicators or self.state.replica_owner(repo) is not None:
            return False
        if self.state.generation(repo).fenced:  # what arrives now comes from the new primary
            return False
        names = [r.name for r in self.replicators]
        return self.state.enqueue(names, repo, items, self.clock.time()) > 0

    def wake(self) -> None:
        """Continuous peers push at once; scheduled ones look at their window. Loop thread only."""
        for r in self.replicators:
            r.wake.set()

    # -- reporting --------------------------------------------------------------------------

    def repo_status(self, repo: str) -> dict[str, Any]:
        """Per peer: the backlog of `repo` and which of its snapshots the peer holds."""
        now = self.clock.time()
        grace = self.config.peer_unreachable_grace
        snapshots = sorted(sid.hex() for sid, _ in self.index.snapshots(repo))
        peers = []
        for r in self.replicators:
            lag = self.state.lag(r.name, repo)
            held = self.state.acked_snapshots(r.name, repo)
            peers.append({
                "name": r.name,
                "mode": r.peer.mode,
                **_lag_doc(lag, now),
                "up": r.status.up,
                "last_success": r.status.last_success,
                "last_error": r.status.last_error,
                **_down_doc(r.status.down_since, r.status.reason, now, grace),
                "snapshots": {sid: sid in held for sid in snapshots},
            })  # fmt: skip
        owner = self.state.replica_owner(repo)
        return {"site": self.config.site_name, "replica_of": owner, "peers": peers}

    def render_metrics(self) -> str:
        """Prometheus lines: per (peer, repository) lag gauges, then per peer totals.

        Unlike the other series these carry repository names (the lag is per practice), so
        `/metrics` belongs behind the provider's firewall (docs/api.md).
        """
        now = self.clock.time()
        samples: dict[str, list[str]] = {key: [] for key in _GAUGES}
        for r in self.replicators:
            for repo in self.repos.names():
                lag = self.state.lag(r.name, repo)
                age = now - lag.oldest_pack_time if lag.oldest_pack_time is not None else 0.0
                values = {"packs": lag.packs, "bytes": lag.bytes, "items": lag.items,
                          "oldest_seconds": round(max(0.0, age), 3)}  # fmt: skip
                labels = f'{{peer="{r.name}",repo="{repo}"}}'
                for key, value in values.items():
                    samples[key].append(f"dicomvault_replication_lag_{key}{labels} {value}")
        lines: list[str] = []
        for key, help_text in _GAUGES.items():
            name = f"dicomvault_replication_lag_{key}"
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", *samples[key]]
        lines += self._render_peer_totals()
        return "\n".join(lines) + "\n"

    def _render_peer_totals(self) -> list[str]:
        lines: list[str] = []
        for field, kind, help_text in _PEER_SERIES:
            name = f"dicomvault_replication_{field}"
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
            for r in self.replicators:
                value = getattr(r.status, field.removesuffix("_total"))
                lines.append(f'{name}{{peer="{r.name}"}} {int(value)}')
        return lines


_GAUGES = {
    "packs": "Packs not yet acknowledged by the peer.",
    "bytes": "Bytes of packs not yet acknowledged by the peer.",
    "items": "Queued objects (packs, commits, keys, config, tokens) for the peer.",
    "oldest_seconds": "Age of the oldest pack not yet acknowledged by the peer (0: none).",
}
_PEER_SERIES = (
    ("up", "gauge", "1 if the last exchange with the peer succeeded."),
    ("packs_sent_total", "counter", "Packs the peer acknowledged."),
    ("bytes_sent_total", "counter", "Pack bytes sent to the peer."),
    ("commits_sent_total", "counter", "Commits the peer acknowledged."),
    ("refused_total", "counter", "Objects the peer refused."),
)


def _lag_doc(lag: Lag, now: float) -> dict[str, Any]:
    age = now - lag.oldest_pack_time if lag.oldest_pack_time is not None else None
    return {
        "pending_items": lag.items,
        "pending_packs": lag.packs,
        "pending_bytes": lag.bytes,
        "oldest_pending_age": max(0.0, age) if age is not None else None,
    }


def _down_doc(since: float | None, reason: str | None, now: float, grace: float) -> dict[str, Any]:
    """Since when and why the peer is down; `unreachable` once past the alert's grace (the
    `peer_unreachable` alert is open, and `dicomvault snapshots` warns)."""
    late = since is not None and now - since > grace
    return {"down_since": since, "reason": reason, "unreachable": late}
