"""The status page at the practice (`[status_page]`), in a real headless browser as the
provider's page is tested (tests/server/test_status_page.py drives Debian's chromium over the
DevTools protocol): green when the last commit is safe at both sites, red with the reason and
whom to call when the peer does not hold it; the JSON answers loopback only, or with the token.
A primary and a peer chunk server run in process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from client.agent.daemon import Agent
from client.agent.page import PageSettings, StatusPage, page_document
from engine.errors import UsageError
from tests.client.agentloop import (
    agent_config,
    agent_port,
    ct_instance,
    practice_repository,
    running,
    send,
)
from tests.server import test_status_page as provider_page
from tests.server.monitorkit import Site, wait_for
from tests.server.test_status_page import Browser, _until

browser = provider_page.browser  # the chromium fixture, shared with the provider page
CONTACT = "Dr. Lee's IT desk, 555-0100"


def settings(**kw: object) -> PageSettings:
    return PageSettings(port=0, contact=CONTACT, peer_grace_seconds=0.0, **kw)  # type: ignore[arg-type]


async def test_the_page_is_green_when_both_sites_hold_it_and_red_when_the_peer_does_not(
    browser: Browser, sites: tuple[Site, Site], tmp_path: Path
) -> None:
    a, b = sites
    config = agent_config(tmp_path)
    repo = await practice_repository(a, config)

    def with_page(agent: Agent) -> None:
        agent.page_settings = settings()

    async with running(config, repo, setup=with_page) as agent:
        assert await asyncio.to_thread(send, agent_port(agent), [ct_instance()]) == [0]
        await wait_for(lambda: agent.page and agent.page.port, what="the status page")
        assert agent.page is not None
        await browser.call("Page.enable")
        await browser.call("Page.navigate", url=f"http://127.0.0.1:{agent.page.port}/")
        line = await _until(browser, "#verdict", lambda t: "both sites" in t)
        assert line == "All images of today are safe at both sites."
        assert await browser.text("#peer") == "yes"
        assert "1 files" in await browser.text("#commit")
        assert CONTACT in await browser.text("#contact")

        await b.server.close()  # the second site is gone: the next commit stays at the primary
        first = agent.last_commit
        assert await asyncio.to_thread(send, agent_port(agent), [ct_instance()]) == [0]
        await wait_for(lambda: agent.last_commit != first, what="the second commit")
        line = await _until(browser, "#verdict", lambda t: "wrong" in t)
        assert "the second site does not hold the last backup" in line and CONTACT in line
        colour = await browser.call(
            "Runtime.evaluate", expression="document.querySelector('#verdict').className",
            returnByValue=True,
        )  # fmt: skip
        assert colour["result"]["value"] == "red"
        assert await browser.text("#peer") == "not yet"


def status_doc(**kw: object) -> dict[str, object]:
    doc: dict[str, object] = {"agent": "pc-1", "updated_unix": 0.0, "bytes_pending": 0}
    doc.update(queue={"files": 0}, eta_seconds=0, alerts=[], last_commit=None, drill=None)
    return {**doc, **kw}


def test_an_open_alert_or_a_failed_drill_turns_the_line_red_and_names_whom_to_call() -> None:
    ok = page_document(status_doc(), True, 0.0, settings())
    assert ok["ok"] and ok["line"] == "All images of today are safe at both sites."
    alert = page_document(status_doc(alerts=["spool is 95 % full"]), True, 0.0, settings())
    assert not alert["ok"] and "spool is 95 % full" in alert["line"] and CONTACT in alert["line"]
    drill = status_doc(drill={"ok": False, "time": "2026-11-30T03:00:00Z"})
    assert "restore test" in page_document(drill, True, 0.0, settings())["line"]
    lagging = PageSettings(peer_grace_seconds=900.0)
    assert page_document(status_doc(), False, 899.0, lagging)["ok"]  # replication takes time
    assert not page_document(status_doc(), False, 901.0, lagging)["ok"]
    assert "no second site" in page_document(status_doc(), None, 0.0, settings())["line"]


def test_a_repository_not_yet_reachable_turns_the_line_red() -> None:
    down = status_doc(repository_unreachable_since="2026-11-30T07:00:00Z")
    doc = page_document(down, None, 0.0, settings())
    assert not doc["ok"] and "cannot be reached since 2026-11-30T07:00:00Z" in doc["line"]


async def test_the_json_needs_the_token_from_a_token_file(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cret\n")
    page = StatusPage(lambda: {"ok": True}, settings(token_file=tmp_path / "token"))
    await page.start()
    try:
        url = f"http://127.0.0.1:{page.port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/") as resp:
                html = await resp.text()
                assert resp.status == 200 and "src=" not in html and "<link" not in html
            async with http.get(f"{url}/status.json") as resp:
                assert resp.status == 401
            auth = {"Authorization": "Bearer s3cret"}
            async with http.get(f"{url}/status.json", headers=auth) as resp:
                assert resp.status == 200 and await resp.json() == {"ok": True}
    finally:
        await page.close()


def test_the_page_listens_off_loopback_only_with_a_token_file(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[status_page]\nlisten = "0.0.0.0:8471"\n')
    with pytest.raises(UsageError, match="token_file"):
        PageSettings.from_file(config)
    config.write_text('[status_page]\ncontact = "Sam, 555-0199"\n')
    page = PageSettings.from_file(config)
    assert page is not None and (page.host, page.port, page.contact) == (
        "127.0.0.1",
        8471,
        "Sam, 555-0199",
    )
    config.write_text("")
    assert PageSettings.from_file(config) is None


@pytest.mark.parametrize("listen", ["127.0.0.1:99999", "127.0.0.1", "127.0.0.1:http"])
def test_a_listen_address_that_is_not_host_port_is_refused_at_load(
    tmp_path: Path, listen: str
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(f'[status_page]\nlisten = "{listen}"\n')
    with pytest.raises(UsageError, match="HOST:PORT"):
        PageSettings.from_file(config)
