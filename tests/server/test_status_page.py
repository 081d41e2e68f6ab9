"""The provider's status page in a real headless browser (Debian's `chromium`), driven over the
DevTools protocol (a websocket, with aiohttp): it lists the repositories, shows an open alert,
and shows the alert's resolution without a reload. A missing chromium fails, never skips.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import shutil
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from engine.remote import RemoteBackend
from server.alerts.settings import AlertSettings, RepoPolicy
from server.state import REPLICATION, SCRUB
from tests.server.monitorkit import (
    REPO,
    FakeClock,
    Site,
    init_practice,
    start_site,
    wait_for,
)
from tests.server.test_tls import self_signed

CHROMIUM = "chromium"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--window-size=1400,700")  # fmt: skip


class Browser:
    """One chromium process and a DevTools session on its first page."""

    def __init__(self, proc: asyncio.subprocess.Process, ws: aiohttp.ClientWebSocketResponse):
        self.proc, self.ws = proc, ws
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        n = next(self._ids)
        await self.ws.send_json({"id": n, "method": method, "params": params})
        while True:
            msg = await asyncio.wait_for(self.ws.receive_json(), 30)
            if msg.get("id") == n:
                assert "error" not in msg, msg
                return dict(msg.get("result", {}))

    async def text(self, selector: str) -> str:
        expr = f"(document.querySelector({selector!r}) || {{innerText: ''}}).innerText"
        result = await self.call("Runtime.evaluate", expression=expr, returnByValue=True)
        return str(result["result"].get("value", ""))


async def _devtools_port(profile: Path) -> int:
    marker = profile / "DevToolsActivePort"
    await wait_for(marker.is_file, 30, "chromium's DevTools port")
    return int(marker.read_text().splitlines()[0])


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Browser]:
    exe = shutil.which(CHROMIUM)
    assert exe, "chromium is missing: install the Debian package 'chromium' (make setup-system)"
    profile = tmp_path / "profile"
    proc = await asyncio.create_subprocess_exec(
        exe, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    session = aiohttp.ClientSession()
    try:
        port = await _devtools_port(profile)
        async with session.get(f"http://127.0.0.1:{port}/json/list") as resp:
            pages = [t for t in await resp.json() if t["type"] == "page"]
        ws = await session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
        yield Browser(proc, ws)
        await ws.close()
    finally:
        await session.close()
        proc.terminate()
        await proc.wait()


@pytest.fixture
async def provider_site(tmp_path: Path) -> AsyncIterator[tuple[Site, FakeClock]]:
    clock = FakeClock()
    alerts = AlertSettings(evaluate_interval=0.1, digest_time=None, disk_threshold=1.01)
    policy = RepoPolicy(REPO, heartbeat_timeout=60.0)
    site = await start_site(tmp_path, "site-a", clock=clock, alerts=alerts, repos=(policy,))
    site.add_repo()
    site.add_repo("dental")
    yield site, clock
    await site.server.close()


async def test_status_page_shows_repositories_an_open_alert_and_its_resolution_live(
    browser: Browser, provider_site: tuple[Site, FakeClock], tmp_path: Path
) -> None:
    site, clock = provider_site
    agent = RemoteBackend(f"{site.url}/{REPO}", site.tokens[REPO]["backup"])
    try:
        await agent.heartbeat({"agent": "reception-pc"})
        await site.app[SCRUB].run_pass()
        clock.advance(300)  # the agent went silent
        await browser.call("Page.enable")
        await browser.call("Page.navigate", url=f"{site.url}/status#token={site.provider_token()}")

        rows = await _until(browser, "#rows", lambda t: "silent" in t)
        assert REPO in rows and "dental" in rows and "ALERT" in rows
        assert "reception-pc" in rows and "0 packs, clean" in rows
        assert "(1)" in await browser.text("#alert-count")
        await _screenshot(browser, tmp_path / "status-alert.png")

        await agent.heartbeat({"agent": "reception-pc"})  # back: resolves at the next tick
        await _until(browser, "#alert-count", lambda t: "(0)" in t)
        rows = await browser.text("#rows")
        assert "silent" not in rows and "ALERT" not in rows
        history = await browser.call(
            "Runtime.evaluate", expression="performance.getEntriesByType('navigation').length",
            returnByValue=True,
        )  # fmt: skip
        assert history["result"]["value"] == 1  # the same page load: no reload happened
    finally:
        await agent.close()


async def test_status_page_shows_a_peer_this_site_cannot_trust(
    browser: Browser, tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    b = await start_site(tmp_path, "site-b", ssl=tls)
    peer = {"url": b.url, "token": b.replica_token("site-a"), "name": "site-b"}
    clock = FakeClock()
    alerts = AlertSettings(evaluate_interval=0.1, digest_time=None, disk_threshold=1.01,
                           peer_unreachable_grace=600.0)  # fmt: skip
    a = await start_site(tmp_path, "site-a", [peer], clock=clock, alerts=alerts)
    try:
        a.add_repo()
        await (await init_practice(a, tmp_path / "cache")).close()  # queues its config
        (r,) = a.app[REPLICATION].replicators
        await wait_for(lambda: r.status.down_since is not None, what="a failed push")
        clock.advance(601)
        await browser.call("Page.enable")
        await browser.call("Page.navigate", url=f"{a.url}/status#token={a.provider_token()}")
        peers = await _until(browser, "#peers", lambda t: "UNREACHABLE" in t)
        assert peers.startswith("site-b UNREACHABLE") and "certificate" in peers
        listed = await _until(browser, "#alerts", lambda t: "certificate" in t)
        assert "replication to peer site-b failing" in listed
    finally:
        await a.server.close()
        await b.server.close()


async def test_status_json_needs_the_provider_token(provider_site: tuple[Site, FakeClock]) -> None:
    site, _ = provider_site
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{site.url}/status") as resp:
            page = await resp.text()
            assert resp.status == 200 and "<script>" in page
            assert "src=" not in page and "<link" not in page and "@import" not in page
        practice = {"Authorization": f"Bearer {site.tokens[REPO]['admin']}"}
        async with http.get(f"{site.url}/status.json", headers=practice) as resp:
            assert resp.status == 403
        provider = {"Authorization": f"Bearer {site.provider_token()}"}
        async with http.get(f"{site.url}/status.json", headers=provider) as resp:
            doc = await resp.json()
            assert [r["name"] for r in doc["repos"]] == ["clinic", "dental"]
        async with http.get(f"{site.url}/v1/repos/{REPO}/config", headers=provider) as resp:
            assert resp.status == 404  # the provider token reads no practice's data


async def _until(browser: Browser, selector: str, ok: Any, timeout: float = 30.0) -> str:
    async def check() -> str | None:
        text = await browser.text(selector)
        return text if ok(text) else None

    return str(await wait_for(check, timeout, f"{selector} to change"))


async def _screenshot(browser: Browser, path: Path) -> None:
    shot = await browser.call("Page.captureScreenshot", format="png")
    path.write_bytes(base64.b64decode(shot["data"]))
    if keep := os.environ.get("DICOMVAULT_SCREENSHOT"):
        shutil.copyfile(path, keep)
