"""The server reads time only from the `Clock` given to `make_app`: tokens and the temp-file
sweep follow a `SimulatedClock` the test moves, not the wall clock."""

from __future__ import annotations

import asyncio
import time

from engine.clock import SimulatedClock
from engine.store.local import INCOMING, TMP_PREFIX
from server.state import INDEX
from tests.server.conftest import REPO, ServerFactory

LONG_AGO = 1_000_000_000.0  # 2001: far from any wall-clock time a test runs at


async def test_tokens_are_stamped_with_the_apps_clock(make_server: ServerFactory) -> None:
    srv = await make_server(clock=SimulatedClock(LONG_AGO))
    created = {doc["created"] for _, doc in srv.app[INDEX].tokens()}
    assert created == {LONG_AGO}


async def test_the_temp_file_sweep_ages_files_by_the_apps_clock(
    make_server: ServerFactory,
) -> None:
    clock = SimulatedClock(time.time())
    srv = await make_server(clock=clock, sweep_interval=0.02, incoming_max_age=3600.0)
    leftover = srv.config.repos_dir / REPO / INCOMING / f"{TMP_PREFIX}leftover"
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"half an upload")
    await asyncio.sleep(0.1)  # several sweeps: an hour has not passed on the app's clock
    assert leftover.exists()
    clock.advance(2 * 3600)
    for _ in range(100):
        if not leftover.exists():
            break
        await asyncio.sleep(0.02)
    assert not leftover.exists()
