"""The agent's parts with an injected clock: config, real-time windows and batching, upload
limits per window, the settle rule, the instance spool, the ledger and the commitment report."""

from __future__ import annotations

import os
import tempfile
from datetime import datetime
from pathlib import Path

import pytest

from client.agent import batching
from client.agent.config import Overrides, Policy, load, load_policy
from client.agent.inbox import TMP_PREFIX, Inbox, Instance, instance_of
from client.agent.ledger import CommitmentRequest, Ledger
from client.agent.receiver import report_dataset
from client.agent.status import read_status, write_status
from client.agent.watcher import Settler, WatchSettings
from client.ratelimit import RateLimiter, ScheduleFile
from engine.clock import SimulatedClock
from engine.errors import UsageError

EXAMPLE = Path(__file__).parents[2] / "docs" / "agent.example.toml"
MONDAY_NOON = datetime(2026, 11, 23, 12, 0)  # a Monday
MONDAY_NIGHT = datetime(2026, 11, 23, 22, 0)
WINDOWS = """
[[realtime]]
days = "weekdays"
start = "07:00"
end = "19:00"
max_delay_seconds = 20

[batch]
interval_seconds = 600
max_files = 3
quiet_seconds = 1

[upload]
rate = "unlimited"
[[upload.windows]]
days = "weekdays"
start = "07:00"
end = "19:00"
rate = "4Mbit"
"""


class FakeTime:
    def __init__(self) -> None:
        self.t = 1000.0
        self.slept = 0.0

    def monotonic(self) -> float:
        return self.t

    async def sleep(self, s: float) -> None:
        s = max(s, 1e-6)  # a real sleep takes a little time; a float sum could absorb less
        self.t += s
        self.slept += s


def item(path: str, arrived: float, size: int = 100) -> batching.Item:
    return batching.Item(path, size, arrived)


def policy(tmp_path: Path) -> Policy:
    (tmp_path / "agent.toml").write_text(WINDOWS)
    return load_policy(tmp_path / "agent.toml")


def test_the_documented_example_config_loads() -> None:
    config = load(EXAMPLE)
    assert config.dicom is not None and config.dicom.ae_title
    assert config.watch and config.policy.realtime and config.upload.windows
    assert config.policy.spool_alert_bytes and config.policy.spool_max_bytes


def test_the_repository_table_carries_retry_for_to_the_connection(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(
        '[repository]\nurl = "http://127.0.0.1:1/x"\nretry_for = "30m"\n'
        '[dicom]\nlisten = "127.0.0.1:0"\n'
    )
    config = load(tmp_path / "a.toml", Overrides(spool_dir=str(tmp_path / "s")))
    assert config.repository.retry_for == "30m" and config.repository.url == "http://127.0.0.1:1/x"


def test_flags_alone_make_a_real_time_agent_and_win_over_the_file(tmp_path: Path) -> None:
    flags = load(
        None,
        Overrides(
            spool_dir=str(tmp_path / "s"),
            listen="127.0.0.1:104",
            ae_title="PACSBACKUP",
            watch=(str(tmp_path),),
        ),
    )
    assert flags.dicom is not None and (flags.dicom.port, flags.dicom.ae_title) == (
        104,
        "PACSBACKUP",
    )
    assert flags.state_dir == tmp_path / "agent" and flags.policy.realtime_at(MONDAY_NIGHT)
    (tmp_path / "a.toml").write_text('[dicom]\nlisten = "0.0.0.0:11112"\nae_title = "FILE"\n')
    both = load(tmp_path / "a.toml", Overrides(ae_title="FLAG"))
    assert both.dicom is not None and both.dicom.ae_title == "FLAG" and both.dicom.port == 11112


def test_an_agent_without_sources_or_with_a_bad_title_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no source"):
        load(None, Overrides(spool_dir=str(tmp_path)))
    with pytest.raises(UsageError, match="AE title"):
        load(None, Overrides(listen="0.0.0.0:1", ae_title="X" * 17))


def test_inside_a_real_time_window_a_batch_starts_once_arrivals_pause(tmp_path: Path) -> None:
    p = policy(tmp_path)
    waiting = [item("a", 100.0)]
    assert not batching.due(p, MONDAY_NOON, 100.5, waiting, 100.0, 0).due
    decision = batching.due(p, MONDAY_NOON, 101.0, waiting, 100.0, 0)
    assert (
        decision.due
        and decision.mode == "realtime"
        and decision.window == ("mon,tue,wed,thu,fri 07:00-19:00")
    )


def test_a_steady_stream_is_still_sent_within_half_the_maximum_delay(tmp_path: Path) -> None:
    p = policy(tmp_path)
    waiting = [item("a", 100.0), item("b", 109.9)]
    assert not batching.due(p, MONDAY_NOON, 109.9, waiting, 109.9, 0).due
    assert batching.due(p, MONDAY_NOON, 110.0, waiting, 109.9, 0).due  # 20 s / 2


def test_outside_the_windows_arrivals_wait_for_the_batch_interval(tmp_path: Path) -> None:
    p = policy(tmp_path)
    waiting = [item("a", 100.0)]
    decision = batching.due(p, MONDAY_NIGHT, 160.0, waiting, 100.0, 0)
    assert not decision.due and decision.mode == "batch" and decision.window is None
    assert batching.due(p, MONDAY_NIGHT, 700.0, waiting, 100.0, 0).due
    full = [item(str(i), 100.0) for i in range(3)]
    assert batching.due(p, MONDAY_NIGHT, 101.0, full, 100.0, 0).due  # max_files reached
    saturday_noon = datetime(2026, 11, 28, 12, 0)
    assert not batching.due(p, saturday_noon, 101.0, waiting, 100.0, 0).due


def test_spool_pressure_starts_a_batch_early(tmp_path: Path) -> None:
    (tmp_path / "agent.toml").write_text(WINDOWS + '[spool]\nalert_bytes = "1kB"\n')
    p = load_policy(tmp_path / "agent.toml")
    assert batching.due(p, MONDAY_NIGHT, 101.0, [item("a", 100.0)], 100.0, 1000).due


def test_a_batch_takes_the_oldest_files_within_its_bounds(tmp_path: Path) -> None:
    p = policy(tmp_path)
    waiting = [item(str(i), float(i)) for i in range(5)]
    assert [i.path for i in batching.take(waiting, p)] == ["0", "1", "2"]
    huge = [item("big", 0.0, size=p.batch_max_bytes * 2), item("next", 1.0)]
    assert [i.path for i in batching.take(huge, p)] == ["big"]  # never an empty batch


async def test_upload_limit_follows_the_window_in_the_agent_config(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(WINDOWS)
    clock = SimulatedClock(MONDAY_NOON.timestamp())
    limiter = RateLimiter(ScheduleFile(config, check_every=0), clock=clock)
    assert limiter.current_rate() == 500_000  # 4 Mbit/s in office hours
    for _ in range(10):
        await limiter.acquire(100_000)
    assert 1.7 <= clock.monotonic() <= 2.1  # 1 MB at 500 kB/s, less the burst
    clock.advance((MONDAY_NIGHT - MONDAY_NOON).total_seconds())
    before = clock.monotonic()
    await limiter.acquire(10**9)
    assert clock.monotonic() == before  # unlimited after hours


async def test_a_changed_upload_limit_applies_without_a_restart(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(WINDOWS)
    clock = SimulatedClock(MONDAY_NOON.timestamp())
    limiter = RateLimiter(ScheduleFile(config, check_every=0), clock=clock)
    assert limiter.current_rate() == 500_000
    config.write_text(WINDOWS.replace('"4Mbit"', '"8Mbit"'))
    os.utime(config, ns=(0, os.stat(config).st_mtime_ns + 10**9))
    assert limiter.current_rate() == 1_000_000


def test_a_file_settles_only_after_its_size_and_mtime_hold_still(tmp_path: Path) -> None:
    fake = FakeTime()
    settler = Settler(fake.monotonic)
    watch = WatchSettings(tmp_path, settle_seconds=5)
    path = tmp_path / "a.dcm"
    path.write_bytes(b"x" * 10)
    settler.touch(str(path), watch)
    fake.t += 4
    assert settler.ready() == []
    with open(path, "ab") as f:  # still being written
        f.write(b"y")
    fake.t += 2
    assert settler.ready() == []  # changed: the clock started again
    fake.t += 5
    ready = settler.ready()
    assert [(r.path, r.size) for r in ready] == [(str(path), 11)] and len(settler) == 0


def test_ignored_names_are_never_candidates(tmp_path: Path) -> None:
    watch = WatchSettings(tmp_path)
    assert watch.ignores(".hidden") and watch.ignores("x.part") and watch.ignores("a.tmp")
    assert not watch.ignores("IM0001") and not watch.ignores("a.dcm")


def received(inbox: Inbox, key: tuple[str, str], data: bytes) -> Instance:
    """As the receiver stores one: pynetdicom writes a temporary file in the spool, then it is
    adopted."""
    fd, tmp = tempfile.mkstemp(dir=inbox.folder, prefix=TMP_PREFIX)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return inbox.adopt(Path(tmp), key)


def test_the_inbox_names_instances_in_arrival_order_and_drops_strays(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path)
    a = received(inbox, ("1.2.840.10008.5.1.4.1.1.2", "1.2.3"), b"a" * 10)
    b = received(inbox, ("1.2.840.10008.5.1.4.1.1.7", "1.2.4"), b"b" * 5)
    with pytest.raises(ValueError):
        received(inbox, ("1.2.840.10008.5.1.4.1.1.7", "../../etc/x"), b"c")  # never a path
    (tmp_path / ".tmp-cut-short").write_bytes(b"partial")
    assert inbox.held_bytes == 15 and b.key == ("1.2.840.10008.5.1.4.1.1.7", "1.2.4")
    again = Inbox(tmp_path)  # a restart
    assert again.pending() == [a, b]
    assert again.held_bytes == 15 and not (tmp_path / ".tmp-cut-short").exists()
    again.remove([a])
    assert again.held_bytes == 5 and [i.path for i in again.pending()] == [b.path]
    assert instance_of(tmp_path / "notes.txt", 1) is None


def test_the_ledger_keeps_commitments_and_commits_across_a_restart(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    req = CommitmentRequest("1.9", "CT1", "10.0.0.5", (("1.2.840.10008.5.1.4.1.1.2", "1.5"),), 5.0)
    ledger.add_commitment(req)
    ledger.record_instances([("1.2.840.10008.5.1.4.1.1.2", "1.5", "")], "ab" * 32, 6.0)
    ledger.record_watched([("/p/a", 10, 99)], "cd" * 32, 6.0)
    ledger.close()
    ledger = Ledger(tmp_path / "l.sqlite")
    assert ledger.commitments() == [req]
    ct = "1.2.840.10008.5.1.4.1.1.2"
    assert ledger.committed([(ct, "1.5"), (ct, "1.6")]) == ({(ct, "1.5")}, set())
    assert ledger.watched_signature("/p/a") == (10, 99) and ledger.watched_signature("/x") is None
    ledger.remove_commitment("1.9")
    assert ledger.commitments() == []


def test_a_commitment_report_lists_successes_and_failures_with_reasons() -> None:
    ds = report_dataset("1.9", [("1.2", "1.5")], [("1.2", "1.6", 0x0112)])
    assert ds.TransactionUID == "1.9"
    assert ds.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == "1.5"
    assert ds.FailedSOPSequence[0].FailureReason == 0x0112
    assert "FailedSOPSequence" not in report_dataset("1.9", [("1.2", "1.5")], [])


def test_status_is_stale_on_the_clock_it_is_read_with(tmp_path: Path) -> None:
    """`running` needs a fresh file: fresh and stale are decided on the injected clock."""
    clock = SimulatedClock(start=1_800_000_000.0)
    doc = {"state": "running", "pid": os.getpid(), "updated_unix": clock.time()}
    write_status(tmp_path, doc)
    assert read_status(tmp_path, clock)["running"]  # type: ignore[index]
    clock.advance(60)
    stale = read_status(tmp_path, clock)
    assert stale is not None and not stale["running"] and stale["age_seconds"] == 60
