"""The middleware that writes the audit trail (`server.audit`): one line for every request whose
bearer token the index knows, refused or not, with the token's id and role, repository, route,
object, status, bytes in and out and the remote address. Must not log a token (only the first
12 hex digits of its BLAKE3 hash, the index's key for it) or a body, and must not fail a request
because the trail could not be written (that is logged).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from server.audit import AuditTrail
from server.auth import hash_token, token_id
from server.state import AUDIT, CLOCK, CONFIG, INDEX

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_OBJECT_KEYS = ("id", "key", "event")  # match_info names that identify an object


@web.middleware
async def audit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One line for every request carrying a bearer token the index knows, refused or not."""
    status = 500
    response: web.StreamResponse | None = None
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as e:
        status = e.status
        raise
    finally:
        _record(request, response, status)


def _record(request: web.Request, response: web.StreamResponse | None, status: int) -> None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return
    digest = hash_token(token.strip())
    try:
        doc = request.app[INDEX].get_token(digest)
    except Exception:  # the index closed at shutdown: nothing to attribute
        return
    if doc is None:
        return
    info = request.match_info
    resource = info.route.resource
    fields = {
        "token": token_id(digest),
        "role": doc.get("role", ""),
        "repo": info.get("name", doc.get("repo", "")),
        "method": request.method,
        "route": resource.canonical if resource is not None else request.path,
        "object": next((info[k] for k in _OBJECT_KEYS if k in info), ""),
        "status": status,
        "bytes_in": request.content_length or 0,
        "bytes_out": _bytes_out(response),
        "remote": request.remote or "",
    }
    try:
        request.app[AUDIT].append(fields)
    except OSError as e:
        log.error("audit trail not written: %s", e)


async def audit_ctx(app: web.Application) -> AsyncIterator[None]:
    app[AUDIT] = AuditTrail(app[CONFIG].data_dir / "audit", app[CLOCK])
    yield
    app[AUDIT].close()


def _bytes_out(response: web.StreamResponse | None) -> int:
    """A streamed response has sent its body by now; a plain one is sent after the middleware."""
    if response is None:
        return 0
    return response.body_length or response.content_length or 0
