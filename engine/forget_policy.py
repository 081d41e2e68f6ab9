"""Which snapshots a forget policy keeps: restic's `--keep-*` rules, as a pure function.

Owns the policy (`KeepPolicy`), its duration syntax (`parse_keep_within`), grouping and the
decision with a reason per snapshot (`apply_policy`). Same meaning as restic's `forget`:
snapshots are grouped (by host and paths unless told otherwise), each group is walked newest
first, and a snapshot is kept when any rule wants it: `last` keeps the N newest; `hourly`,
`daily`, `weekly` (ISO week), `monthly` and `yearly` keep the newest snapshot of each of the N
newest periods that hold one; `within` keeps every snapshot younger than the duration, counted
back from the group's newest snapshot (not from now, so a stopped backup never empties a
repository); `tags` keeps every snapshot carrying one of the tags. A count of -1 is unlimited.
Must not read a repository or the clock: the caller passes snapshots in and acts on the answer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from engine.errors import UsageError

GROUP_FIELDS = ("host", "paths", "tags")
_WITHIN = re.compile(r"(\d+)([ymdh])")


@dataclass(frozen=True, slots=True)
class Within:
    """A restic duration (`1y2m3d4h`): calendar years, months and days, then hours."""

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    def before(self, t: datetime) -> datetime:
        """`t` moved back by this duration (month ends clamp, as in calendar arithmetic)."""
        months = t.year * 12 + (t.month - 1) - (self.years * 12 + self.months)
        year, month = divmod(months, 12)
        day = min(t.day, _days_in_month(year, month + 1))
        moved = t.replace(year=year, month=month + 1, day=day)
        return moved - timedelta(days=self.days, hours=self.hours)

    def __str__(self) -> str:
        parts = zip((self.years, self.months, self.days, self.hours), "ymdh", strict=True)
        return "".join(f"{n}{u}" for n, u in parts if n) or "0h"


def _days_in_month(year: int, month: int) -> int:
    nxt = datetime(year + month // 12, month % 12 + 1, 1)
    return (nxt - timedelta(days=1)).day


def parse_keep_within(text: str) -> Within:
    """`1y6m`, `30d`, `12h`: digits and a unit (y, m, d, h), in any combination."""
    if not text or _WITHIN.sub("", text) != "":
        raise UsageError(f"--keep-within: {text!r} is not a duration like 1y6m, 30d or 12h")
    amounts = {"y": 0, "m": 0, "d": 0, "h": 0}
    for number, unit in _WITHIN.findall(text):
        amounts[unit] += int(number)
    return Within(amounts["y"], amounts["m"], amounts["d"], amounts["h"])


@dataclass(frozen=True, slots=True)
class KeepPolicy:
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: Within | None = None
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
            if getattr(self, name) < -1:
                raise UsageError(f"--keep-{name} must be a count, or -1 for unlimited")

    def empty(self) -> bool:
        counts = (self.last, self.hourly, self.daily, self.weekly, self.monthly, self.yearly)
        return not any(counts) and self.within is None and not self.tags


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """What the policy looks at: the id is opaque to it."""

    id: str
    time: datetime
    host: str = ""
    paths: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()


@dataclass(slots=True)
class Decision:
    snapshot: SnapshotInfo
    keep: bool
    reasons: list[str] = field(default_factory=list)
    group: dict[str, object] = field(default_factory=dict)


def parse_group_by(text: str) -> tuple[str, ...]:
    """`host,paths` (restic's default), any subset of host, paths, tags; '' for one group."""
    fields = tuple(f.strip() for f in text.split(",") if f.strip())
    for f in fields:
        if f not in GROUP_FIELDS:
            raise UsageError(f"--group-by: unknown field {f!r} (use host, paths, tags)")
    return fields


def group_key(s: SnapshotInfo, by: Sequence[str]) -> dict[str, object]:
    key: dict[str, object] = {}
    if "host" in by:
        key["host"] = s.host
    if "paths" in by:
        key["paths"] = sorted(s.paths)
    if "tags" in by:
        key["tags"] = sorted(s.tags)
    return key


_BUCKETS: tuple[tuple[str, str, Callable[[datetime], object]], ...] = (
    ("hourly", "hourly snapshot", lambda t: (t.year, t.month, t.day, t.hour)),
    ("daily", "daily snapshot", lambda t: (t.year, t.month, t.day)),
    ("weekly", "weekly snapshot", lambda t: t.isocalendar()[:2]),
    ("monthly", "monthly snapshot", lambda t: (t.year, t.month)),
    ("yearly", "yearly snapshot", lambda t: t.year),
)


def apply_policy(
    snapshots: Iterable[SnapshotInfo],
    policy: KeepPolicy,
    group_by: Sequence[str] = ("host", "paths"),
) -> list[Decision]:
    """A decision for every snapshot, groups in first-seen order, each group newest first."""
    if policy.empty():
        raise UsageError("no policy given: name snapshots or give at least one --keep-* option")
    groups: dict[str, list[SnapshotInfo]] = {}
    keys: dict[str, dict[str, object]] = {}
    for s in snapshots:
        key = group_key(s, group_by)
        name = repr(sorted(key.items()))
        groups.setdefault(name, []).append(s)
        keys[name] = key
    out: list[Decision] = []
    for name, members in groups.items():
        out.extend(_decide_group(members, policy, keys[name]))
    return out


def _decide_group(
    members: list[SnapshotInfo], policy: KeepPolicy, key: dict[str, object]
) -> list[Decision]:
    ordered = sorted(members, key=lambda s: (s.time, s.id), reverse=True)
    counts = {name: getattr(policy, name) for name, _, _ in _BUCKETS}
    last_seen: dict[str, object] = {}
    last_left = policy.last
    cutoff = policy.within.before(ordered[0].time) if policy.within and ordered else None
    out = []
    for s in ordered:
        reasons = []
        if last_left:
            reasons.append("last snapshot")
            last_left -= 1 if last_left > 0 else 0
        for name, reason, bucket in _BUCKETS:
            if not counts[name]:
                continue
            value = bucket(s.time)
            if name in last_seen and last_seen[name] == value:
                continue
            last_seen[name] = value
            reasons.append(reason)
            counts[name] -= 1 if counts[name] > 0 else 0
        if cutoff is not None and s.time > cutoff:
            reasons.append(f"within {policy.within}")
        held = sorted(set(policy.tags) & set(s.tags))
        if held:
            reasons.append(f"has tags {','.join(held)}")
        out.append(Decision(s, bool(reasons), reasons, key))
    return out
