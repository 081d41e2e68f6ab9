"""Connection caps, idle and slow-header timeouts and the descriptor limit, with real sockets on
loopback (issue 11, item 8). Idle sockets come from 127.0.0.2… so that the legitimate client
(127.0.0.1) is another address, as an attacker's would be."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from benchmarks.serverkit import ServerProcess, free_port
from engine.errors import ObjectNotFound
from engine.remote import RemoteBackend
from server.admin import create_repository_offline
from server.app import make_app
from server.config import ServerConfig
from server.listener import GuardedRunner, RepeatFilter, start
from tests.server.conftest import Harness, MiB, make_pack

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Serve = Callable[..., Awaitable[int]]


async def _open(port: int, source: str) -> Stream:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def _closed_by_server(stream: Stream, within: float) -> bool:
    try:
        return await asyncio.wait_for(stream[0].read(1), within) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True


async def _health(port: int) -> int:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/v1/health") as resp,
    ):
        return resp.status


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[int]]]:
    runners: list[GuardedRunner] = []

    async def run(**settings: Any) -> int:
        port = free_port()
        config = ServerConfig(
            data_dir=tmp_path / f"d{port}", port=port, index_map_size=64 * MiB, **settings
        )
        runner, _ = await start(make_app(config), config)
        runners.append(runner)
        return port

    yield run
    for runner in runners:
        await runner.cleanup()


async def test_connections_past_the_caps_are_reset_at_once(serve: Serve) -> None:
    port = await serve(max_connections=12, max_connections_per_address=5)
    streams = [await _open(port, "127.0.0.2") for _ in range(8)]
    closed = [await _closed_by_server(s, 0.3) for s in streams]
    assert closed.count(True) == 3 and closed[:5] == [False] * 5
    others = [await _open(port, "127.0.0.3") for _ in range(5)]
    others += [await _open(port, "127.0.0.4") for _ in range(5)]
    assert [await _closed_by_server(s, 0.3) for s in others].count(True) == 3  # 12 in all
    for _, writer in streams + others:
        writer.close()
    await asyncio.sleep(0.2)
    assert await _health(port) == 200  # closed connections gave their places back


async def test_idle_and_slow_header_connections_are_closed(serve: Serve) -> None:
    port = await serve(idle_timeout=0.5)
    idle = await _open(port, "127.0.0.2")
    slow = await _open(port, "127.0.0.2")
    slow[1].write(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n")

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            for i in range(40):
                slow[1].write(f"X-{i}: y\r\n".encode())
                await asyncio.sleep(0.1)

    task = asyncio.create_task(trickle())
    assert await _closed_by_server(idle, 3.0)
    assert await _closed_by_server(slow, 3.0)
    task.cancel()
    assert await _health(port) == 200


def test_repeated_log_lines_are_suppressed_then_counted() -> None:
    now = [0.0]
    flt = RepeatFilter(burst=2, window=60.0, clock=lambda: now[0])

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, msg, None, None)

    passed = [flt.filter(record("Too many open files")) for _ in range(1000)]
    assert passed.count(True) == 2
    assert flt.filter(record("another message"))
    now[0] = 61.0
    again = record("Too many open files")
    assert flt.filter(again) and "998 more like this suppressed" in again.getMessage()


def _limit_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


@pytest.fixture
def small_server(tmp_path: Path) -> Iterator[tuple[int, str, Path]]:
    """`dicomvault-server serve` with 256 descriptors (soft = hard), stderr to a file."""
    data = tmp_path / "data"
    tokens = create_repository_offline(ServerConfig(data, index_map_size=64 * MiB), "clinic")
    server = ServerProcess(
        data, log=tmp_path / "server.log", preexec=_limit_descriptors,
        serve_args=["--max-connections-per-address", "16"],
    )  # fmt: skip
    server.start()
    try:
        yield server.port, tokens["backup"], server.log
    finally:
        server.stop()


async def test_a_flood_of_idle_connections_leaves_backup_and_restore_working(
    small_server: tuple[int, str, Path],
) -> None:
    """600 idle sockets from four addresses against 256 descriptors: before the caps, accept
    failed with EMFILE (a log line each time) and an existing pack was answered 404."""
    port, token, log = small_server
    for _ in range(100):
        with contextlib.suppress(aiohttp.ClientError):
            if await _health(port) == 200:
                break
        await asyncio.sleep(0.1)
    flood = [await _open(port, f"127.0.0.{2 + i % 4}") for i in range(600)]
    await asyncio.sleep(0.5)
    backend = RemoteBackend(
        f"http://127.0.0.1:{port}/clinic", token, timeout=aiohttp.ClientTimeout(total=20)
    )
    try:
        for _ in range(5):
            pack_id, data, _ = make_pack(chunks=20, size=50_000)
            await backend.put_pack(pack_id, data)
            assert await backend.get_pack(pack_id) == data
        with pytest.raises(ObjectNotFound):
            await backend.get_pack(make_pack(chunks=1)[0])
    finally:
        await backend.close()
        for _, writer in flood:
            writer.close()
    assert log.stat().st_size < 64 * 1024
    assert "Too many open files" not in log.read_text()


@contextlib.contextmanager
def _no_descriptors_left() -> Iterator[None]:
    """Every descriptor of this process in use until the block ends (EMFILE on any open)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers = []
    resource.setrlimit(
        resource.RLIMIT_NOFILE, (max(map(int, os.listdir("/proc/self/fd"))) + 1, hard)
    )
    try:
        with contextlib.suppress(OSError):
            while True:
                fillers.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_an_existing_pack_is_never_404_when_descriptors_run_out(
    srv: Harness, http: aiohttp.ClientSession
) -> None:
    pack_id, data, _ = make_pack()
    url, headers = srv.url(f"packs/{pack_id.hex()}"), srv.headers()
    async with http.put(url, data=data, headers=headers) as resp:
        assert resp.status == 201
    async with http.get(url, headers=headers) as resp:  # read: the connection is kept alive
        assert resp.status == 200 and await resp.read() == data
    await asyncio.sleep(0.2)  # aiohttp closes the served file in a worker thread, later
    with _no_descriptors_left():
        async with http.get(url, headers=headers) as resp:
            status = resp.status
            await resp.read()
    assert status == 503
    async with http.get(url, headers=headers) as resp:
        assert resp.status == 200 and await resp.read() == data
