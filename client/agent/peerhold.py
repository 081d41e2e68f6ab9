"""Spooled instances that wait for the peer sites (`[spool] delete_after = "peer"`): a batch
committed at the primary is held here, durably in the ledger's `held` table, until the server's
replication status says every peer acknowledged its snapshot.

Owns that wait and the release, in the agent's deletion order: ledger `instances` rows (from
then on Storage Commitment reports the instances committed), unlink, forget the hold. Must not
back anything up or speak DICOM; it reads only the backend's `replication_status()`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from client.agent.inbox import Inbox, Instance, instance_of
from client.agent.ledger import Ledger
from engine.backend import Replicated
from engine.clock import SYSTEM, Clock


class PeerHold:
    def __init__(self, ledger: Ledger, inbox: Inbox, clock: Clock = SYSTEM) -> None:
        self.ledger, self.inbox, self.clock = ledger, inbox, clock
        self.waiting: dict[str, list[Instance]] = {
            snapshot: [
                instance_of(Path(path), size) or Instance(Path(path), uid, size)
                for path, uid, size in rows
            ]
            for snapshot, rows in ledger.held().items()
        }

    @property
    def instances(self) -> int:
        return sum(len(held) for held in self.waiting.values())

    def paths(self) -> set[str]:
        return {str(i.path) for held in self.waiting.values() for i in held}

    def uids(self) -> set[str]:
        return {i.sop_instance_uid for held in self.waiting.values() for i in held}

    def hold(self, snapshot: str, instances: list[Instance]) -> None:
        """`instances` are committed at the primary in `snapshot`; keep them until the peers are."""
        if not instances:
            return
        rows = [(str(i.path), i.sop_instance_uid, i.size) for i in instances]
        self.ledger.hold(rows, snapshot)
        self.waiting.setdefault(snapshot, []).extend(instances)

    async def release_ready(self, backend: Any, wait_for_peers: bool) -> list[str]:
        """Release every snapshot the peers hold (all of them once `wait_for_peers` is off, e.g.
        after the policy changed back to "commit"); return the released snapshot ids."""
        if not self.waiting:
            return []
        if wait_for_peers:
            doc = await backend.replication_status() if isinstance(backend, Replicated) else None
            ready = held_by_every_peer(doc, list(self.waiting))
        else:
            ready = list(self.waiting)
        for snapshot in ready:
            self.release(snapshot)
        return ready

    def release(self, snapshot: str) -> None:
        instances = self.waiting.pop(snapshot)
        self.ledger.record_instances(committed_rows(instances), snapshot, self.clock.time())
        self.inbox.remove(instances)
        self.ledger.release(snapshot)


def committed_rows(instances: list[Instance]) -> list[tuple[str, str, str]]:
    """The ledger's rows for `instances`: (class UID, instance UID, dataset's own UID or '')."""
    return [(i.sop_class_uid, i.sop_instance_uid, i.dataset_uid) for i in instances]


def peer_holds(status: dict[str, Any] | None, snapshot: str | None) -> bool | None:
    """Whether every peer holds `snapshot` (True with none to hold); None with no peers."""
    peers = (status or {}).get("peers") or []
    if not peers:
        return None
    return snapshot is None or bool(held_by_every_peer(status, [snapshot]))


def held_by_every_peer(status: dict[str, Any] | None, snapshots: list[str]) -> list[str]:
    """The snapshots every peer has acknowledged. None without a replicating server or with no
    peers configured: "the peer holds it" cannot be shown, so nothing is deleted."""
    peers = (status or {}).get("peers") or []
    if not peers:
        return []
    return [s for s in snapshots if all(p.get("snapshots", {}).get(s) is True for p in peers)]
