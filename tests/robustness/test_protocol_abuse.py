"""Protocol abuse against every route of the app's router (a new route is covered without
editing this file) and every role: no token, a wrong token, another tenant's token, the replica
and provider tokens, traversal in names and ids, malformed, deep, non-finite and oversize
chunked bodies, packs that do not hash to their name. Every answer is < 500 without traceback
text, nothing is logged with a traceback, and afterwards a practice still backs up and restores.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from client.restore import Restorer
from engine.ids import SnapshotId
from server.state import INDEX
from tests.helpers import restored, tree_state
from tests.server.monitorkit import (
    REPO,
    Site,
    backup,
    init_practice,
    make_tree,
    open_practice,
    start_site,
)

pytestmark = pytest.mark.robustness
MiB = 1024 * 1024
WRITES = ("PUT", "POST", "DELETE", "PATCH")
NAMES = ["scratch", "%2e%2e", "..%2F..%2Fetc", "a%00b", "UPPER", "x" * 70]
IDS = [secrets.token_hex(32), "zz", "..%2F..%2Fconfig", "0" * 63]
BODIES: list[bytes] = [
    b"",
    b"{",
    b"[" * 100_000 + b"]" * 100_000,
    b'{"agent": "a", "ok": true, "files": NaN, "tokens": "x", "version": 1e400}',
    b'{"agent": [], "ok": "yes", "files": "1", "tokens": [{"hash": 5}]}',
    os.urandom(4096),
]


class _Format(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "x"


def route_templates(site: Site) -> list[tuple[str, str]]:
    """(method, path template) of every route the app serves, HEAD and OPTIONS included."""
    out = set()
    for route in site.app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        template = info.get("formatter") or info.get("path") or info.get("prefix")
        if template and route.method != "*":
            out.add((route.method, str(template)))
    assert len(out) > 20, out  # the enumeration found the API, not an empty router
    return sorted(out)


def fill(template: str, name: str = REPO, ident: str = IDS[0]) -> str:
    return template.format_map(_Format(name=name, id=ident, key="k1"))


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    site = await start_site(tmp_path, "site-b", max_body_size=1 * MiB)
    site.add_repo(REPO)
    site.add_repo("other")
    site.add_repo("scratch")
    yield site
    await site.server.close()


def tokens(site: Site) -> dict[str, str | None]:
    return {
        "none": None,
        "wrong": secrets.token_urlsafe(32),
        "other-tenant": site.tokens["other"]["admin"],
        "restore": site.tokens[REPO]["restore"],
        "replica": site.replica_token(repos=("replicated",)),
        "provider": site.provider_token(),
    }


async def _chunked(size: int) -> AsyncIterator[bytes]:
    for _ in range(size // 65536):
        yield b"\0" * 65536


class Abuser:
    def __init__(self, site: Site, http: aiohttp.ClientSession) -> None:
        self.site, self.http, self.requests = site, http, 0

    async def send(self, method: str, path: str, token: str | None, body: Any = None) -> int:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        url = self.site.url + path
        async with self.http.request(method, url, data=body, headers=headers) as resp:
            text = (await resp.read()).decode("utf-8", "replace")
        self.requests += 1
        where = f"{method} {path} ({len(body) if isinstance(body, bytes) else 'stream'})"
        assert resp.status < 500, f"{where}: {resp.status} {text[:300]}"
        assert "Traceback" not in text and 'File "' not in text, where
        return resp.status


async def test_every_route_and_role_refuses_abuse_and_the_practice_still_works(
    site: Site, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    practice = await init_practice(site, tmp_path / "cache")
    tree = make_tree(tmp_path, files=3)
    await backup(practice, tree)
    await practice.close()
    routes = route_templates(site)
    caplog.set_level(logging.ERROR)
    async with aiohttp.ClientSession() as http:
        abuser = Abuser(site, http)
        for method, template in routes:
            for role, token in tokens(site).items():
                status = await abuser.send(method, fill(template), token, b"{")
                if method in WRITES and "{name}" in template and role != "replica":
                    assert status >= 400, (method, template, role)
            for name in NAMES:
                await abuser.send(method, fill(template, name=name), site.tokens[REPO]["admin"])
            for ident in IDS:
                await abuser.send(method, fill(template, "scratch", ident), _backup(site))
            if method in WRITES:
                for body in BODIES:
                    await abuser.send(method, fill(template, "scratch"), _backup(site), body)
                big = _chunked(3 * MiB)  # over max_body_size, with no Content-Length
                await abuser.send(method, fill(template, "scratch"), _backup(site), big)
    assert abuser.requests > 500
    logged = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not logged, [r.getMessage()[:200] for r in logged]
    assert site.app[INDEX].snapshots(REPO)  # still readable

    # The practice still backs up and restores, bit for bit.
    practice = await open_practice(site, tmp_path / "cache")
    try:
        (tree / "new.bin").write_bytes(os.urandom(200_000))
        snapshot = await backup(practice, tree)
        target = tmp_path / "restored"
        await Restorer(practice, target).run(SnapshotId.parse(snapshot))
    finally:
        await practice.close()
    assert tree_state(restored(target, tree)) == tree_state(tree)


def _backup(site: Site) -> str:
    return site.tokens["scratch"]["backup"]
