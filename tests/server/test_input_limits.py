"""Malformed, oversize, chunked and slow request bodies: 4xx with a code, never 500 (issue 11)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest

from engine.errors import TransientError
from engine.ids import ID_SIZE
from server.auth import mint_replica_token
from server.state import CLOCK, INDEX
from tests.server.conftest import Harness, ServerFactory, make_commit, make_pack

MiB = 1024 * 1024


async def test_chunked_body_is_refused_at_the_route_limit(
    make_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    """A chunked `missing` query meets the same limit as a declared one, while it arrives:
    the 413 comes before the client has sent 4 MiB (the route's limit is 32 KB)."""
    srv: Harness = await make_server(max_missing_ids=1000)
    url, headers = srv.url("missing"), srv.headers("restore")
    answered, sent = asyncio.Event(), 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        while sent < 16 * MiB:
            if sent == 4 * MiB:  # hold here until answered (or 5 s: the old server waits)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(answered.wait(), 5)
            yield b"\0" * 65536
            sent += 65536

    async with http.post(url, data=body(), headers=headers) as resp:
        sent_when_answered = sent
        answered.set()
        assert resp.status == 413
        assert (await resp.json())["code"] == "too_large"
    assert sent_when_answered <= 4 * MiB
    ok = b"\1" * ID_SIZE * 1000
    async with http.post(url, data=ok, headers=headers) as resp:
        assert resp.status == 200


@pytest.mark.parametrize(
    "body",
    [
        b'{"agent": "pc", "ok": true, "files": "many"}',
        b'{"agent": "pc", "ok": true, "files": 1e400}',
        b'{"agent": "pc", "ok": true, "files": [1]}',
        b'{"agent": "pc", "ok": true, "files": NaN}',
        b'{"agent": "pc", "ok": true, "bytes": -1}',
        b'{"agent": "pc", "ok": true, "errors": Infinity}',
        b"[" * 20_000 + b"]" * 20_000,
        b'{"a": ' * 50 + b"1" + b"}" * 50,
        b"\xff\xfe",
    ],
)
async def test_malformed_drill_reports_are_400(
    srv: Harness, http: aiohttp.ClientSession, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        async with http.post(srv.url("drills"), data=body, headers=srv.headers()) as resp:
            assert resp.status == 400
            assert (await resp.json())["code"] == "bad_request"
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize("path", ["heartbeat", "snapshots"])
async def test_deeply_nested_json_is_refused(
    srv: Harness, http: aiohttp.ClientSession, path: str
) -> None:
    body = b"[" * 30_000 + b"]" * 30_000  # under the heartbeat's 64 KiB
    async with http.post(srv.url(path), data=body, headers=srv.headers()) as resp:
        assert resp.status in (400, 422)
        assert "nested deeper" in (await resp.json())["error"]


async def test_deeply_nested_json_is_refused_on_replica_routes(
    srv: Harness, http: aiohttp.ClientSession
) -> None:
    token = mint_replica_token(srv.app[INDEX], "site-a", srv.app[CLOCK].time())
    body = b"[" * 100_000 + b"]" * 100_000
    headers = {"Authorization": f"Bearer {token}"}
    for method, path in (("PUT", "tokens"), ("POST", "snapshots")):
        url = f"{srv.base}/v1/replica/repos/replicated/{path}"
        async with http.request(method, url, data=body, headers=headers) as resp:
            assert 400 <= resp.status < 500, path


@pytest.mark.parametrize("limit", ["0", "abc", "1.5", "-1", "10001", "٣"])
async def test_bad_page_limits_are_400(
    srv: Harness, http: aiohttp.ClientSession, limit: str
) -> None:
    url = srv.url("packs")
    async with http.get(url, params={"limit": limit}, headers=srv.headers()) as resp:
        assert resp.status == 400
        assert (await resp.json())["code"] == "bad_request"
    async with http.get(url, params={"limit": "1"}, headers=srv.headers()) as resp:
        assert resp.status == 200


async def test_a_trickled_body_is_cut_off(
    make_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    """1 KiB every 0.5 s is far below 64 KiB/s: refused with 408 after the grace period."""
    srv: Harness = await make_server(min_body_rate=64 * 1024, body_grace=1.0)
    pack_id, data, _ = make_pack(chunks=4, size=64 * 1024)

    async def trickle() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 1024):
            yield data[i : i + 1024]
            await asyncio.sleep(0.5)

    url = srv.url(f"packs/{pack_id.hex()}")
    async with http.put(url, data=trickle(), headers=srv.headers()) as resp:
        assert resp.status == 408
        assert (await resp.json())["code"] == "too_slow"
    assert not list((srv.config.repos_dir / "clinic" / ".incoming").iterdir())
    with pytest.raises(TransientError, match="slower than"):  # the client retries later
        await srv.backend().put_pack(pack_id, data, body=trickle())


async def test_a_commit_at_a_fair_rate_is_accepted(srv: Harness) -> None:
    backend = srv.backend()
    pack_id, data, ids = make_pack()
    await backend.put_pack(pack_id, data)
    await backend.commit(make_commit(ids))
