"""The prune plan: dead packs deleted, the most unused repacked until within --max-unused."""

from __future__ import annotations

import pytest

from engine.errors import UsageError
from engine.ids import PackId
from engine.prune_plan import MaxUnused, PackUse, parse_max_unused, plan


def pid(n: int) -> PackId:
    return PackId(bytes([n]) * 32)


PACKS = [
    PackUse(pid(1), 1100, 1000, 0),  # dead
    PackUse(pid(2), 1100, 1000, 1000),  # all live
    PackUse(pid(3), 1100, 1000, 100),  # 900 unused
    PackUse(pid(4), 1100, 1000, 700),  # 300 unused
    PackUse(pid(5), 1100, 1000, 950),  # 50 unused
]


def test_dead_packs_are_deleted_and_the_most_unused_repacked_first() -> None:
    p = plan(PACKS, MaxUnused(0.0))
    assert p.delete == [pid(1)]
    assert p.repack == [pid(3), pid(4), pid(5)]
    assert p.bytes_live == 2750 and p.bytes_unused == 2250 and p.unused_after == 0
    assert p.bytes_deleted == 1100 and p.bytes_rewritten == 1750


def test_the_limit_stops_repacking_once_unused_bytes_are_within_it() -> None:
    # 5% of 2750 live bytes = 137.5: repacking pack 3 leaves 350, pack 4 then leaves 50.
    p = plan(PACKS, MaxUnused(0.05))
    assert p.repack == [pid(3), pid(4)] and p.unused_after == 50
    assert plan(PACKS, MaxUnused(None, 400)).repack == [pid(3)]
    unlimited = plan(PACKS, parse_max_unused("unlimited"))
    assert unlimited.delete == [pid(1)] and unlimited.repack == []


def test_max_unused_syntax() -> None:
    assert parse_max_unused("5%") == MaxUnused(0.05, None)
    assert parse_max_unused("0%") == MaxUnused(0.0, None)
    assert parse_max_unused("200M") == MaxUnused(None, 200 * 1024**2)
    assert parse_max_unused("1GiB") == MaxUnused(None, 1024**3)
    assert parse_max_unused("unlimited").limit(10) == float("inf")
    for bad in ("", "5", "-1%", "101%", "x%", "5 parsecs"):
        if bad == "5":
            assert parse_max_unused(bad) == MaxUnused(None, 5)  # bytes, as restic
            continue
        with pytest.raises(UsageError, match="max-unused"):
            parse_max_unused(bad)
