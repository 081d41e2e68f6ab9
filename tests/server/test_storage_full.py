"""A full server disk (a real 4 MiB tmpfs under DATA/repos): 507 `storage_full`, the provider's
disk alert opens at once, and the client gets a retryable "server storage full" (issue 11, item 9).
Needs root for `mount -t tmpfs`; without it the test fails rather than skips."""

from __future__ import annotations

import asyncio
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from client.spool import Spool, Uploader
from engine.errors import TransientError
from server.alerts.conditions import DISK_FULL
from server.state import ALERTS
from tests.server.conftest import Harness, ServerFactory, make_pack


@pytest.fixture
def small_repos_disk(tmp_path: Path) -> Iterator[Path]:
    """DATA/repos of the first `make_server` server on a 4 MiB tmpfs (the index stays outside)."""
    repos = tmp_path / "data0" / "repos"
    repos.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(repos)], check=True)
    try:
        yield repos
    finally:
        subprocess.run(["umount", "-l", str(repos)], check=False)


async def _open_alert_kinds(srv: Harness) -> set[str]:
    for _ in range(100):
        kinds = {a["kind"] for a in await asyncio.to_thread(srv.app[ALERTS].store.open_alerts)}
        if kinds:
            return kinds
        await asyncio.sleep(0.1)
    return set()


async def test_a_full_disk_is_507_storage_full_and_alerts_at_once(
    small_repos_disk: Path,
    make_server: ServerFactory,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Alerts are evaluated every 60 s and the probed disk (DATA) is not full: only the ENOSPC
    # itself can open the alert within this test.
    srv: Harness = await make_server()
    pack_id, data, _ = make_pack(chunks=6, size=1024 * 1024)  # 6 MiB > 4 MiB of disk
    async with http.put(
        srv.url(f"packs/{pack_id.hex()}"), data=data, headers=srv.headers()
    ) as resp:
        assert resp.status == 507
        doc = await resp.json()
    assert doc["code"] == "storage_full" and "server storage full" in doc["error"]
    assert DISK_FULL in await _open_alert_kinds(srv)
    assert not list((small_repos_disk / "clinic" / ".incoming").iterdir())

    # The client's uploader keeps the pack in its spool, retries, and says why.
    spool = Spool(tmp_path / "spool")
    spool.put(pack_id, data)
    uploader = Uploader(srv.backend(), spool, sleep=_no_wait, max_attempts=3)
    with caplog.at_level(logging.WARNING), pytest.raises(TransientError, match="storage full"):
        await uploader.drain()
    assert uploader.stats.retries == 3 and "server storage full" in str(uploader.stats.last_error)
    assert "server storage full" in caplog.text and spool.pending() == [pack_id]
    small, small_data, _ = make_pack(chunks=2, size=1000)  # a small pack still fits
    await srv.backend().put_pack(small, small_data)


async def _no_wait(seconds: float) -> None:
    pass
