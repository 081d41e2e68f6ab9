"""Deletions that can be undone (server.deletion, server.handlers_deletion): forget only
schedules, undelete brings back, and objects are destroyed only after the undelete window on
the app's clock. A real server on loopback with a SimulatedClock; nothing sleeps for days."""

from __future__ import annotations

import asyncio

import pytest

from engine.clock import SimulatedClock
from engine.commit import snapshot_name
from engine.errors import ObjectNotFound, PermissionDenied, UsageError
from engine.ids import SnapshotId
from engine.protocol.errors import PruneLocked
from server.alerts.conditions import MASS_DELETION, RepoFacts, _deletion_conditions
from server.alerts.settings import AlertSettings, effective
from server.config import load_config
from server.deletion import Deletions
from server.reindex import reindex_repository
from server.state import ALERTS, INDEX, REPOS
from tests.server.conftest import REPO, Harness, ServerFactory, make_commit

DAY = 86_400.0
START = 1_900_000_000.0


async def _snapshots(srv: Harness, n: int) -> list[SnapshotId]:
    backend = srv.backend()
    return [
        await backend.commit(make_commit([], time=f"2026-01-0{i + 1}T00:00:00Z")) for i in range(n)
    ]


def _stored(srv: Harness, sid: SnapshotId) -> bool:
    return (srv.config.data_dir / "repos" / REPO / snapshot_name(sid)).is_file()


async def test_a_backup_or_restore_token_cannot_schedule_a_deletion(
    make_server: ServerFactory,
) -> None:
    srv = await make_server(clock=SimulatedClock(START))
    (sid,) = await _snapshots(srv, 1)
    for role in ("backup", "restore"):
        with pytest.raises(PermissionDenied):
            await srv.backend(role).forget([sid])
        with pytest.raises(PermissionDenied):
            await srv.backend(role).undelete(None)
    assert await srv.backend().list_snapshots() == [sid]
    assert await srv.backend().pending_deletions() == []


async def test_forget_schedules_undelete_restores_and_only_the_window_destroys(
    make_server: ServerFactory,
) -> None:
    clock = SimulatedClock(START)
    srv = await make_server(clock=clock)
    a, b = await _snapshots(srv, 2)
    admin, reader = srv.backend("admin"), srv.backend("restore")
    (doc,) = await admin.forget([a])
    assert doc["purge_after"] == START + 14 * DAY
    assert await reader.list_snapshots() == [b]
    with pytest.raises(ObjectNotFound, match="scheduled for deletion"):
        await reader.get_snapshot(a)
    assert _stored(srv, a)  # nothing destroyed
    assert [d["id"] for d in await reader.pending_deletions()] == [a.hex()]

    assert [d["id"] for d in await admin.undelete([a.hex()[:8]])] == [a.hex()]
    assert sorted(await reader.list_snapshots()) == sorted([a, b])
    await reader.get_snapshot(a)

    await admin.forget([a, b])
    deletions = Deletions(srv.app[INDEX])
    clock.advance(14 * DAY - 1)
    assert await deletions.purge_due(srv.app[REPOS], clock.time()) == []
    assert _stored(srv, a) and _stored(srv, b)
    clock.advance(2)
    purged = await deletions.purge_due(srv.app[REPOS], clock.time())
    assert sorted(d["id"] for d in purged) == sorted([a.hex(), b.hex()])
    assert not _stored(srv, a) and not _stored(srv, b)
    assert await reader.pending_deletions() == []
    with pytest.raises(ObjectNotFound):  # 404 on the wire; the CLI says exit 16
        await admin.undelete([a.hex()])


async def test_forget_is_all_or_none_and_repeats_are_harmless(make_server: ServerFactory) -> None:
    srv = await make_server(clock=SimulatedClock(START))
    a, b = await _snapshots(srv, 2)
    admin = srv.backend("admin")
    with pytest.raises(ObjectNotFound):
        await admin.forget([a, SnapshotId(b"\x01" * 32)])
    assert sorted(await admin.list_snapshots()) == sorted([a, b])
    first = await admin.forget([a])
    assert await admin.forget([a]) == first  # the first schedule stands


async def test_reindex_keeps_a_scheduled_snapshot_out_of_listings(
    make_server: ServerFactory,
) -> None:
    srv = await make_server(clock=SimulatedClock(START))
    a, b = await _snapshots(srv, 2)
    await srv.backend("admin").forget([a])
    await reindex_repository(srv.app[REPOS].get(REPO), srv.app[INDEX])
    assert await srv.backend().list_snapshots() == [b]
    await srv.backend("admin").undelete(None)
    assert sorted(await srv.backend().list_snapshots()) == sorted([a, b])


async def test_the_purge_task_runs_on_the_apps_clock(make_server: ServerFactory) -> None:
    clock = SimulatedClock(START)
    srv = await make_server(clock=clock, purge_interval=0.02, undelete_days=1)
    (a,) = await _snapshots(srv, 1)
    await srv.backend("admin").forget([a])
    await asyncio.sleep(0.1)  # several purges: a day has not passed on the app's clock
    assert _stored(srv, a)
    clock.advance(DAY)
    for _ in range(200):
        if not _stored(srv, a):
            break
        await asyncio.sleep(0.02)
    assert not _stored(srv, a)


def test_the_window_cannot_be_set_below_a_day(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UsageError, match="undelete_days"):
        load_config(None, data_dir=str(tmp_path), undelete_days=0.5)
    assert load_config(None, data_dir=str(tmp_path)).undelete_days == 14.0


async def test_scheduling_most_snapshots_in_a_day_raises_an_alert(
    make_server: ServerFactory,
) -> None:
    clock = SimulatedClock(START)
    alerts = AlertSettings(
        evaluate_interval=0.02, digest_time=None, disk_threshold=1.01, mass_deletion_share=0.5
    )
    srv = await make_server(clock=clock, alerts=alerts)
    ids = await _snapshots(srv, 4)
    admin = srv.backend("admin")
    await admin.forget(ids[:2])  # half: not more than the share

    def open_kinds() -> list[str]:
        return [a["kind"] for a in srv.app[ALERTS].store.open_alerts()]

    await asyncio.sleep(0.1)
    assert MASS_DELETION not in open_kinds()
    await admin.forget(ids[2:3])
    for _ in range(200):
        if MASS_DELETION in open_kinds():
            break
        await asyncio.sleep(0.02)
    (alert,) = [a for a in srv.app[ALERTS].store.open_alerts() if a["kind"] == MASS_DELETION]
    assert "3 of 4 snapshots" in alert["message"]
    clock.advance(DAY + 1)  # the day has passed: the alert resolves
    for _ in range(200):
        if MASS_DELETION not in open_kinds():
            break
        await asyncio.sleep(0.02)
    assert MASS_DELETION not in open_kinds()


async def test_one_prune_lock_at_a_time_with_expiry_on_the_apps_clock(
    make_server: ServerFactory,
) -> None:
    clock = SimulatedClock(START)
    srv = await make_server(clock=clock)
    first, second = srv.backend("admin"), srv.backend("admin")
    taken = await first.prune_lock("machine-a", 600)
    assert taken["generation"] == 1 and taken["since"] == START
    with pytest.raises(PruneLocked, match="machine-a"):
        await second.prune_lock("machine-b", 600)
    with pytest.raises(PruneLocked):  # scheduling needs the lock
        await second.prune_schedule("machine-b", [])
    again = await first.prune_lock("machine-a", 600)  # its holder renews (or takes it over)
    assert again["since"] == START and again["generation"] == 2
    clock.advance(601)  # expired: another machine may prune
    assert (await second.prune_lock("machine-b", 600))["holder"] == "machine-b"
    with pytest.raises(PermissionDenied):
        await srv.backend("backup").prune_lock("thief", 600)
    await second.prune_release("machine-b")
    assert (await first.prune_lock("machine-a", 600))["holder"] == "machine-a"


def test_the_mass_deletion_rule_counts_snapshots_and_stored_bytes() -> None:
    policy = effective(AlertSettings(), (), REPO)

    def facts(**kw: int) -> RepoFacts:
        return RepoFacts(REPO, policy, mass_deletion_share=0.5, **kw)  # type: ignore[arg-type]

    def fires(**kw: int) -> list[str]:
        return [c.message for c in _deletion_conditions(facts(**kw))]

    assert fires(snapshots=2, scheduled_day=2, stored_bytes=100) == []  # half: not more
    assert "3 of 5 snapshots" in fires(snapshots=2, scheduled_day=3)[0]
    (message,) = fires(snapshots=10, stored_bytes=400_000, scheduled_day_bytes=600_000)
    assert "600.0 kB of 1.0 MB stored" in message  # a prune scheduling most of the bytes
    assert fires(snapshots=10, stored_bytes=600_000, scheduled_day_bytes=400_000) == []
