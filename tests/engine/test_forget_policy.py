"""The forget policy: restic's keep rules, grouping, reasons, durations and bad input."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import pytest

from engine.errors import UsageError
from engine.forget_policy import (
    KeepPolicy,
    SnapshotInfo,
    Within,
    apply_policy,
    parse_group_by,
    parse_keep_within,
)

T0 = datetime(2026, 1, 1, 12, 0)


def daily(n: int, host: str = "pacs", paths: tuple[str, ...] = ("/data",)) -> list[SnapshotInfo]:
    """One snapshot a day at noon for n days from T0, ids s000, s001, ..."""
    return [SnapshotInfo(f"s{i:03}", T0 + timedelta(days=i), host, paths) for i in range(n)]


def kept(decisions: list) -> list[str]:
    return sorted(d.snapshot.id for d in decisions if d.keep)


def test_keep_last_keeps_the_newest_n() -> None:
    out = apply_policy(daily(10), KeepPolicy(last=3))
    assert kept(out) == ["s007", "s008", "s009"]
    assert all(d.reasons == ["last snapshot"] for d in out if d.keep)
    assert all(not d.reasons for d in out if not d.keep)


def test_keep_daily_keeps_the_newest_of_each_day() -> None:
    snaps = [SnapshotInfo(f"x{i}", T0 + timedelta(hours=6 * i)) for i in range(12)]  # 4 a day
    out = apply_policy(snaps, KeepPolicy(daily=2), group_by=())
    # the newest of the two newest days: day 2 (x11) and day 1 (x7); hours 12,18,24.. from T0
    days = {d.snapshot.id: d.snapshot.time.date() for d in out if d.keep}
    assert len(days) == 2 and len(set(days.values())) == 2
    for d in out:
        if d.keep:
            same_day = [s for s in snaps if s.time.date() == d.snapshot.time.date()]
            assert d.snapshot.time == max(s.time for s in same_day)


def test_weekly_monthly_yearly_buckets() -> None:
    snaps = daily(800)
    out = apply_policy(snaps, KeepPolicy(weekly=4, monthly=6, yearly=3))
    reasons = {d.snapshot.id: d.reasons for d in out if d.keep}
    assert sum("weekly snapshot" in r for r in reasons.values()) == 4
    assert sum("monthly snapshot" in r for r in reasons.values()) == 6
    assert sum("yearly snapshot" in r for r in reasons.values()) == 3  # 2026, 2027, 2028
    newest = snaps[-1].id
    assert set(reasons[newest]) == {"weekly snapshot", "monthly snapshot", "yearly snapshot"}
    # the yearly keep of 2026 is its last day
    dec31 = next(s.id for s in snaps if s.time.date() == datetime(2026, 12, 31).date())
    assert "yearly snapshot" in reasons[dec31]


def test_unlimited_count_keeps_one_per_period_for_ever() -> None:
    out = apply_policy(daily(70), KeepPolicy(monthly=-1))
    assert len(kept(out)) == 3  # January, February, March 2026


def test_keep_within_counts_back_from_the_newest_snapshot_not_now() -> None:
    out = apply_policy(daily(40), KeepPolicy(within=parse_keep_within("7d")))
    assert kept(out) == [f"s{i:03}" for i in range(33, 40)]
    assert all(d.reasons == ["within 7d"] for d in out if d.keep)


def test_keep_tag_keeps_tagged_snapshots_only() -> None:
    snaps = [SnapshotInfo("a", T0, tags=("keep",)), SnapshotInfo("b", T0 + timedelta(1))]
    out = apply_policy(snaps, KeepPolicy(tags=("keep", "other")), group_by=())
    assert kept(out) == ["a"]
    assert next(d for d in out if d.keep).reasons == ["has tags keep"]


def test_groups_are_decided_separately() -> None:
    snaps = daily(5, host="a") + daily(5, host="b") + daily(5, host="a", paths=("/other",))
    out = apply_policy(snaps, KeepPolicy(last=1))
    assert sum(d.keep for d in out) == 3
    groups = [d.group for d in out if d.keep]
    assert {"host": "a", "paths": ["/data"]} in groups
    assert {"host": "b", "paths": ["/data"]} in groups
    assert {"host": "a", "paths": ["/other"]} in groups
    assert sum(d.keep for d in apply_policy(snaps, KeepPolicy(last=1), group_by=())) == 1
    by_host = apply_policy(snaps, KeepPolicy(last=1), group_by=parse_group_by("host"))
    assert sum(d.keep for d in by_host) == 2


def test_several_rules_union_and_list_every_reason() -> None:
    out = apply_policy(daily(10), KeepPolicy(last=1, daily=2))
    by_id = {d.snapshot.id: d.reasons for d in out if d.keep}
    assert by_id == {"s009": ["last snapshot", "daily snapshot"], "s008": ["daily snapshot"]}


def test_matches_a_brute_force_reading_of_the_rules() -> None:
    """Random histories: each kept snapshot is the newest of its day among the N newest days
    holding snapshots (daily) or among the M newest (last), and nothing else is kept."""
    rng = random.Random(7)
    for _ in range(50):
        snaps = sorted(
            {
                SnapshotInfo(f"r{i}", T0 + timedelta(minutes=rng.randrange(60 * 24 * 30)))
                for i in range(40)
            },
            key=lambda s: s.time,
        )
        n, m = rng.randrange(0, 6), rng.randrange(0, 4)
        if not n and not m:
            continue
        days = sorted({s.time.date() for s in snaps}, reverse=True)[:n]
        want = {
            max((s for s in snaps if s.time.date() == d), key=lambda s: s.time).id for d in days
        }
        want |= (
            {s.id for s in sorted(snaps, key=lambda s: s.time)[len(snaps) - m :]} if m else set()
        )
        assert set(kept(apply_policy(snaps, KeepPolicy(last=m, daily=n), group_by=()))) == want


def test_durations() -> None:
    assert parse_keep_within("1y6m") == Within(years=1, months=6)
    assert parse_keep_within("2d12h") == Within(days=2, hours=12)
    assert str(parse_keep_within("1y2m3d4h")) == "1y2m3d4h"
    assert Within(months=1).before(datetime(2026, 3, 31)) == datetime(2026, 2, 28)
    assert Within(years=1).before(datetime(2028, 2, 29)) == datetime(2027, 2, 28)
    for bad in ("", "7", "7w", "d", "-1d", "1d 2h"):
        with pytest.raises(UsageError, match="keep-within"):
            parse_keep_within(bad)


def test_bad_input_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="no policy"):
        apply_policy(daily(3), KeepPolicy())
    with pytest.raises(UsageError, match="keep-daily"):
        KeepPolicy(daily=-2)
    with pytest.raises(UsageError, match="unknown field 'size'"):
        parse_group_by("host,size")
    assert parse_group_by("") == ()
