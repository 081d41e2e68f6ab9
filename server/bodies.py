"""Reading request bodies: counted against the route's limit, paced, and JSON bounded and typed.

Owns the one way a handler reads a body. A body is counted while it arrives, so a chunked body
(no Content-Length) meets the same limit as a declared one and is refused with 413 as soon as
it passes it; a body must keep up a minimum average rate after a grace period, so a client
trickling bytes cannot hold a connection and a temp file for hours; JSON is parsed with bounded
depth and without NaN or Infinity. Must not know routes, tokens or storage.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from engine.errors import UsageError
from server.errors import BodyTooLarge, SlowBody

MAX_JSON_DEPTH = 32  # our documents nest 3 deep; deeper is an attack on whoever reads it next
_TOO_DEEP = object()


@dataclass(frozen=True, slots=True)
class Pace:
    """A body may take `grace` seconds plus one second per `min_rate` bytes received."""

    min_rate: float
    grace: float


async def paced(request: web.Request, pace: Pace) -> AsyncIterator[bytes]:
    """The body's pieces as they arrive; `SlowBody` when the sender falls behind `pace`."""
    loop = asyncio.get_running_loop()
    start, received = loop.time(), 0
    while True:
        deadline = start + pace.grace + received / pace.min_rate
        try:
            async with asyncio.timeout_at(deadline):
                piece = await request.content.readany()
        except TimeoutError:
            raise SlowBody(
                f"request body slower than {pace.min_rate:.0f} bytes/s after {pace.grace:.0f} s"
            ) from None
        if not piece:
            return
        received += len(piece)
        yield piece


async def read_body(request: web.Request, limit: int, pace: Pace) -> bytes:
    """The whole body, refused with 413 once it passes `limit` bytes, declared or not."""
    too_large = BodyTooLarge(f"body larger than {limit} bytes")
    if (request.content_length or 0) > limit:
        raise too_large
    pieces, size = [], 0
    async for piece in paced(request, pace):
        size += len(piece)
        if size > limit:
            raise too_large
        pieces.append(piece)
    return b"".join(pieces)


def parse_json(data: bytes, what: str) -> Any:
    """Strict JSON: finite numbers only and at most `MAX_JSON_DEPTH` levels, else 400."""
    try:
        doc = json.loads(data, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:  # the C parser recurses; Python's limit stops it, not our bound
        doc = _TOO_DEEP
    except ValueError as e:
        raise UsageError(f"{what} must be JSON: {e}") from None
    if doc is _TOO_DEEP or _deeper_than(doc, MAX_JSON_DEPTH):
        raise UsageError(f"{what}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return doc


def parse_json_object(data: bytes, what: str) -> dict[str, Any]:
    doc = parse_json(data, what)
    if not isinstance(doc, dict):
        raise UsageError(f"{what} must be a JSON object")
    return doc


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def _deeper_than(doc: Any, limit: int) -> bool:
    level: list[Any] = [doc]
    for _ in range(limit):
        level = [
            child
            for node in level
            if isinstance(node, (dict, list))
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, (dict, list))
        ]
        if not level:
            return False
    return True


def query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter in [low, high], else 400."""
    text = request.query.get(name)
    if text is None:
        return default
    if not text.isascii() or not text.isdigit() or not low <= int(text) <= high:
        raise UsageError(f"{name} must be an integer from {low} to {high}")
    return int(text)
