"""The status page at the practice: a page a receptionist can read, served by the agent.

Owns the `[status_page]` table of the agent config (read from the config file, as `[drill]` is;
docs/agent.example.toml), the verdict (one green or red line, and whom to call) and the small
aiohttp app: `/` is `client/agent/assets/status.html` (inline CSS and JS, no external assets),
which polls `/status.json`. Loopback only unless a token file is set; the token comes in the URL
fragment (`/#token=…`, never sent to a server) and goes out only as an `Authorization` header.
Gets the agent's figures through a callable; knows no `Agent` and computes no figure itself.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from aiohttp import web

from client.agent.config import parse_listen, read_toml
from engine.errors import UsageError

PAGE_HTML = files("client.agent").joinpath("assets/status.html").read_text(encoding="utf-8")
DEFAULT_LISTEN = "127.0.0.1:8471"
DEFAULT_CONTACT = "your dicomvault provider"
Figures = Callable[[], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class PageSettings:
    host: str = "127.0.0.1"
    port: int = 8471
    token_file: Path | None = None  # None: loopback only
    contact: str = DEFAULT_CONTACT
    peer_grace_seconds: float = 900.0  # how long the second site may lag behind a commit

    @classmethod
    def from_file(cls, path: Path | None) -> PageSettings | None:
        """The `[status_page]` table; None when there is none (no page is served)."""
        doc = read_toml(path).get("status_page") if path is not None else None
        if doc is None:
            return None
        try:
            host, port = parse_listen(str(doc.get("listen", DEFAULT_LISTEN)))
            token = doc.get("token_file")
            settings = cls(
                host, port, Path(token) if token else None,
                str(doc.get("contact", DEFAULT_CONTACT)),
                float(doc.get("peer_grace_minutes", 15)) * 60,
            )  # fmt: skip
        except (TypeError, ValueError) as e:
            raise UsageError(f"agent config [status_page]: {e}") from None
        if settings.token_file is None and not _loopback(settings.host):
            raise UsageError("agent config [status_page]: listen off loopback needs token_file")
        return settings


def _loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def verdict(doc: dict[str, Any], peer: bool | None, lag: float, settings: PageSettings) -> str:
    """The one line: "" when all is well, else what is wrong. `peer` is whether the second site
    holds the last commit (None: no second site), `lag` how long ago that commit was made."""
    if doc.get("alerts"):
        return "; ".join(doc["alerts"])
    if since := doc.get("repository_unreachable_since"):
        return f"the backup server cannot be reached since {since} (images wait safely here)"
    drill = doc.get("drill")
    if drill and not drill.get("ok"):
        return f"the last restore test ({drill.get('time')}) failed"
    if peer is False and lag > settings.peer_grace_seconds:
        minutes = int(lag // 60)
        return f"the second site does not hold the last backup ({minutes} min since it was made)"
    return ""


def page_document(
    doc: dict[str, Any], peer: bool | None, lag: float, settings: PageSettings
) -> dict[str, Any]:
    """What the page shows: the agent's status document cut to what a receptionist reads."""
    wrong = verdict(doc, peer, lag, settings)
    q = doc["queue"]
    if wrong:
        line = f"Something is wrong: {wrong}. Please call {settings.contact}."
    elif q["files"]:
        line = f"Backups are on track: {q['files']} files still wait to be sent."
    elif peer is None:
        line = "All images of today are safe at the provider (no second site is set up)."
    else:
        line = "All images of today are safe at both sites."
    return {
        "ok": not wrong,
        "line": line,
        "contact": settings.contact,
        "agent": doc["agent"],
        "updated": doc["updated_unix"],
        "last_commit": doc.get("last_commit"),
        "peer": {None: "no second site", True: "yes", False: "not yet"}[peer],
        "drill": doc.get("drill"),
        "queue": {"files": q["files"], "bytes": doc["bytes_pending"], "eta": doc["eta_seconds"]},
        "alerts": list(doc.get("alerts", [])),
    }


def page_app(figures: Figures, settings: PageSettings) -> web.Application:
    """The page and its JSON; `figures()` returns the current `page_document`."""
    token = settings.token_file.read_text().strip() if settings.token_file else None

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE_HTML, content_type="text/html")

    async def status(request: web.Request) -> web.Response:
        if token is None and not _loopback(request.remote):
            raise web.HTTPForbidden(text="the status page answers on loopback only")
        given = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token is not None and not hmac.compare_digest(given.encode(), token.encode()):
            raise web.HTTPUnauthorized(text="open the page as /#token=TOKEN")
        return web.json_response(figures(), headers={"Cache-Control": "no-store"})

    app = web.Application()
    app.add_routes([web.get("/", page), web.get("/status.json", status)])
    return app


class StatusPage:
    """The page's listener, started and stopped by the daemon."""

    def __init__(self, figures: Figures, settings: PageSettings) -> None:
        self.runner = web.AppRunner(page_app(figures, settings), access_log=None)
        self.settings = settings
        self.port = 0

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.settings.host, self.settings.port)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def close(self) -> None:
        await self.runner.cleanup()
