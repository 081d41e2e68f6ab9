"""When to seal what has arrived into a snapshot: real-time windows versus after-hours batches.

Owns the pending queue (what arrived, how big, since when) and the pure decision `due()`. Inside
a real-time window a batch starts as soon as arrivals pause for `quiet_seconds`, and never later
than half of `max_delay_seconds` after the oldest arrival, leaving the other half to seal and
send. Outside, arrivals wait for `batch_interval_seconds`, a full batch, or spool pressure.
Time is injected; nothing here reads a clock or touches files.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from client.agent.config import Policy
from client.agent.inbox import Instance
from client.ratelimit import Window

_DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(slots=True)
class Item:
    """One file waiting to be backed up: a spooled instance or a settled watched file."""

    path: str
    size: int
    arrived: float  # monotonic
    instance: Instance | None = None
    mtime_ns: int = 0
    not_before: float = 0.0  # after a failure: wait until then
    in_batch: bool = False


class Queue:
    def __init__(self) -> None:
        self.items: dict[str, Item] = {}
        self.last_arrival = 0.0

    def add(self, item: Item) -> None:
        if item.path not in self.items or not self.items[item.path].in_batch:
            self.items[item.path] = item
        self.last_arrival = max(self.last_arrival, item.arrived)

    def waiting(self, now: float) -> list[Item]:
        """Items that may go into the next batch, oldest first."""
        out = [i for i in self.items.values() if not i.in_batch and i.not_before <= now]
        return sorted(out, key=lambda i: (i.arrived, i.path))

    @property
    def files(self) -> int:
        return len(self.items)

    @property
    def bytes(self) -> int:
        return sum(i.size for i in self.items.values())

    def uids(self) -> set[str]:
        return {i.instance.sop_instance_uid for i in self.items.values() if i.instance}


@dataclass(frozen=True, slots=True)
class Decision:
    due: bool
    mode: str  # "realtime" or "batch"
    window: str | None = None  # the real-time window in force, described


def due(
    policy: Policy,
    when: datetime,
    now: float,
    waiting: list[Item],
    last_arrival: float,
    spool_bytes: int,
) -> Decision:
    """Whether to start a batch now with `waiting` (oldest first)."""
    rt = policy.realtime_at(when)
    mode = "realtime" if rt else "batch"
    window = describe(rt.window) if rt else None
    if not waiting:
        return Decision(False, mode, window)
    oldest = now - waiting[0].arrived
    full = (
        len(waiting) >= policy.batch_max_files
        or sum(i.size for i in waiting) >= policy.batch_max_bytes
    )
    if rt is not None:
        quiet = now - last_arrival >= policy.quiet_seconds
        return Decision(full or quiet or oldest >= rt.max_delay_seconds / 2, mode, window)
    pressure = policy.spool_alert_bytes is not None and spool_bytes >= policy.spool_alert_bytes
    return Decision(full or pressure or oldest >= policy.batch_interval_seconds, mode, window)


def take(waiting: list[Item], policy: Policy) -> list[Item]:
    """The next batch: oldest first, within the file and byte bounds (at least one item)."""
    out: list[Item] = []
    total = 0
    for item in waiting:
        over = len(out) >= policy.batch_max_files or total + item.size > policy.batch_max_bytes
        if out and over:
            break
        out.append(item)
        total += item.size
    return out


def describe(w: Window) -> str:
    days = ",".join(_DAY_NAMES[d] for d in sorted(w.days))
    return f"{days} {w.start:%H:%M}-{w.end:%H:%M}"
