"""Harness for the scrub, alert and status-page tests: real chunk servers on loopback (in
process, injectable clock), a real client repository backed up through them, a real SMTP server
(aiosmtpd) and a real webhook receiver. Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from client.backup import Backup
from client.repository import Repository
from engine.clock import SYSTEM, Clock, SystemClock
from engine.remote import RemoteBackend
from engine.repoconfig import init_repository
from server.admin import create_repository
from server.alerts.conditions import DiskUsageFn
from server.app import make_app
from server.auth import mint_replica_token
from server.config import ServerConfig
from server.provider import grant_heal, mint_provider_token
from server.replication.settings import peer_from_dict
from server.state import CLOCK, INDEX, REPLICATION, REPOS
from tests.helpers import PASSPHRASE, cheap_kdf, write_pattern_file

MiB = 1024 * 1024
REPO = "clinic"


class FakeClock(SystemClock):
    """Wall-clock time plus an offset the test moves forward: the replicators' retries and
    backoff still see time pass, as they would on a site whose clock jumped ahead."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return super().time() + self.offset

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.time())

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@dataclass
class Site:
    app: web.Application
    server: TestServer
    config: ServerConfig
    tokens: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    def replica_token(
        self, primary: str = "site-a", heal: bool = True, repos: Sequence[str] = (REPO,)
    ) -> str:
        """A replica token for `primary`, the `repos` names bound to it (when still free)."""
        for name in repos:
            self.app[REPLICATION].state.claim_replica(name, primary, self.app[CLOCK].time())
        token = mint_replica_token(self.app[INDEX], primary, self.app[CLOCK].time())
        if heal:
            grant_heal(self.app[INDEX], token)
        return token

    def provider_token(self) -> str:
        return mint_provider_token(self.app[INDEX], "test", self.app[CLOCK].time())

    def add_repo(self, name: str = REPO) -> dict[str, str]:
        self.tokens[name] = create_repository(
            self.app[REPOS], self.app[INDEX], name, self.app[CLOCK].time()
        )
        return self.tokens[name]

    def repo_dir(self, repo: str = REPO) -> Path:
        return self.config.repos_dir / repo

    def settled(self) -> bool:
        status = self.app[REPLICATION].repo_status(REPO)
        return all(p["pending_items"] == 0 for p in status["peers"])


SiteFactory = Callable[..., Awaitable[Site]]


def site_config(root: Path, name: str, peers: Sequence[dict[str, Any]], **kw: Any) -> ServerConfig:
    kw.setdefault("index_map_size", 64 * MiB)
    kw.setdefault("replication_poll_interval", 0.05)
    kw.setdefault("replication_retry_max", 0.5)
    kw.setdefault("scrub_interval", 0.0)  # passes on demand only, unless a test asks
    kw.setdefault("scrub_rate", None)
    return ServerConfig(
        data_dir=root / name,
        site_name=name,
        peers=tuple(peer_from_dict(p) for p in peers),
        **kw,
    )


async def start_site(
    root: Path,
    name: str,
    peers: Sequence[dict[str, Any]] = (),
    clock: Clock = SYSTEM,
    disk_usage: DiskUsageFn = shutil.disk_usage,
    ssl: Any = None,
    **kw: Any,
) -> Site:
    config = site_config(root, name, peers, **kw)
    app = make_app(config, clock=clock, disk_usage=disk_usage)
    server = TestServer(app, scheme="https" if ssl else "http")
    await server.start_server(ssl=ssl)
    return Site(app, server, config)


async def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        await asyncio.sleep(0.05)


# -- a practice: a real client repository on a site -----------------------------------------------


async def wait_token(site: Site, role: str = "backup", status: int = 200) -> None:
    """Until `site` answers `status` to the `role` token of REPO: 200 once a token minted on
    another node has reached it (published every token_publish_interval), 401 once a token
    revoked elsewhere has left it."""
    headers = {"Authorization": f"Bearer {site.tokens[REPO][role]}"}
    async with aiohttp.ClientSession(headers=headers) as http:

        async def answered() -> bool:
            async with http.get(f"{site.url}/v1/repos/{REPO}/snapshots") as r:
                return r.status == status

        await wait_for(answered, what=f"{site.config.site_name} to answer {status} to {role}")


def make_tree(root: Path, files: int = 6, size: int = 300_000) -> Path:
    tree = root / "tree"
    tree.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        write_pattern_file(tree / f"file{i}.bin", size + i * 1000, seed=i, random_every=2)
    return tree


async def open_practice(site: Site, cache: Path, role: str = "backup") -> Repository:
    backend = RemoteBackend(f"{site.url}/{REPO}", site.tokens[REPO][role])
    return await Repository.open(backend, PASSPHRASE, cache)


async def init_practice(site: Site, cache: Path) -> Repository:
    backend = RemoteBackend(f"{site.url}/{REPO}", site.tokens[REPO]["backup"])
    try:
        await init_repository(backend, PASSPHRASE, cheap_kdf())
    finally:
        await backend.close()
    return await open_practice(site, cache)


@asynccontextmanager
async def practice(site: Site, cache: Path) -> AsyncIterator[Repository]:
    """A practice repository initialised on `site`, opened with `cache`, closed on the way out."""
    repo = await init_practice(site, cache)
    try:
        yield repo
    finally:
        await repo.close()


async def backup(repo: Repository, *paths: Path) -> str:
    summary = await Backup(repo).run([str(p) for p in paths], [])
    assert not summary.errors, summary.errors
    return summary.snapshot


def pack_files(site: Site, repo: str = REPO) -> list[Path]:
    folder = site.repo_dir(repo) / "packs"
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def flip_byte(path: Path, offset: int = 100) -> None:
    """Flip one byte in place, keeping size and mtime (what bit rot looks like)."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


# -- what the alerts reach: a real SMTP server and a real webhook receiver ------------------------


@dataclass
class Mail:
    rcpt_tos: list[str]
    message: Message

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def event(self) -> str:
        return str(self.message["X-Dicomvault-Event"])


class MailSink:
    """aiosmtpd handler: keeps every message with its envelope recipients."""

    def __init__(self) -> None:
        self.mails: list[Mail] = []
        self.port = 0  # set by the test once its Controller listens

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.mails.append(Mail(list(envelope.rcpt_tos), message_from_bytes(envelope.content)))
        return "250 Message accepted for delivery"

    def events(self, event: str, needle: str = "") -> list[Mail]:
        return [m for m in self.mails if m.event == event and needle in m.subject]


class Webhook:
    """A real aiohttp server that records the JSON documents POSTed to it."""

    def __init__(self) -> None:
        self.docs: list[dict[str, Any]] = []
        app = web.Application()
        app.router.add_post("/hook", self._receive)
        self.server = TestServer(app)

    async def _receive(self, request: web.Request) -> web.Response:
        self.docs.append(await request.json())
        return web.json_response({"ok": True})

    @property
    def url(self) -> str:
        return str(self.server.make_url("/hook"))

    def events(self, event: str, needle: str = "") -> list[dict[str, Any]]:
        return [d for d in self.docs if d["event"] == event and needle in str(d.get("message", ""))]
