"""The wire protocol's one error table, read in both directions (engine/protocol/errors.py)."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from engine.errors import (
    DicomvaultError,
    IntegrityError,
    NotFound,
    ObjectNotFound,
    PermissionDenied,
    StoreError,
    TransientError,
    Unreachable,
    UsageError,
)
from engine.protocol import routes
from engine.protocol.client import ProtocolClient
from engine.protocol.errors import TABLE, MissingChunks, error_for, http_status

# Where the client cannot tell classes apart, or must retry what the server called permanent.
CLIENT_READS_AS: dict[type[DicomvaultError], type[DicomvaultError]] = {
    NotFound: ObjectNotFound,  # same (404, "not_found") on the wire
    StoreError: TransientError,  # a 500 is the server's failure: worth another try
}


def an(cls: type[DicomvaultError]) -> DicomvaultError:
    return cls([]) if cls is MissingChunks else cls("boom")


@pytest.mark.parametrize("cls", [row[0] for row in TABLE], ids=lambda c: c.__name__)
def test_every_error_class_comes_back_as_itself(cls: type[DicomvaultError]) -> None:
    status, code = http_status(an(cls))
    back = error_for(status, code, "boom")
    assert type(back) is CLIENT_READS_AS.get(cls, cls)
    assert str(back) == "boom"


def test_each_wire_pair_has_one_meaning_and_the_exceptions_are_named() -> None:
    firsts: dict[tuple[int, str], type[DicomvaultError]] = {}
    for cls, status, code in TABLE:
        firsts.setdefault((status, code), cls)
    shared = {cls for cls, s, c in TABLE if firsts[(s, c)] is not cls}
    assert shared == {NotFound}
    assert {cls for cls, s, _ in TABLE if s >= 500 and not issubclass(cls, TransientError)} == {
        StoreError
    }


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (401, "", PermissionDenied),
        (404, "gone", ObjectNotFound),
        (409, "", IntegrityError),
        (400, "", UsageError),
        (500, "internal", TransientError),
        (502, "", TransientError),
        (418, "", StoreError),
    ],
)
def test_an_unknown_code_is_decoded_by_its_status(
    status: int, code: str, expected: type[DicomvaultError]
) -> None:
    assert type(error_for(status, code, "x")) is expected


def test_errors_the_server_meant_as_passing_are_retried_by_the_client() -> None:
    for status in (408, 500, 503, 507):
        assert isinstance(error_for(status, "", "x"), TransientError)
    assert not isinstance(error_for(422, "hash_mismatch", "x"), TransientError)


def test_routes_compose_with_a_proxy_prefix() -> None:
    assert routes.repo_url("https://h:1/dv/", "clinic") == "https://h:1/dv/v1/repos/clinic"
    assert routes.replica_repo_url("http://h", "c") == "http://h/v1/replica/repos/c"


async def test_the_client_base_on_a_real_server() -> None:
    """Against a real aiohttp server on loopback: decoded errors, a dead port, byte counts, and
    a caller's own OSError passing through unchanged while it reads a body."""

    async def pack(request: web.Request) -> web.Response:
        if request.match_info["id"] == "gone":
            return web.json_response({"error": "no pack", "code": "not_found"}, status=404)
        return web.Response(body=b"x" * 1000)

    app = web.Application()
    app.router.add_get(routes.REPO + "/packs/{id}", pack)
    async with TestServer(app, host="127.0.0.1") as server:
        base = str(server.make_url("")).rstrip("/")
        client = ProtocolClient("t")
        try:
            url = routes.repo_url(base, "clinic") + "/packs/"
            status, _, body = await client.fetch("GET", url + "ab", "pack ab", (200,))
            assert (status, body) == (200, b"x" * 1000)
            assert client.counter.sent > 0 and client.counter.received > 1000
            with pytest.raises(ObjectNotFound, match=r"^pack gone: no pack$"):
                await client.fetch("GET", url + "gone", "pack gone", (200,))
            with pytest.raises(OSError, match="disk"):
                async with client.response("GET", url + "ab", "pack ab", (200,)):
                    raise OSError("local disk failed")
        finally:
            await client.close()
    dead = ProtocolClient("t")
    with pytest.raises(Unreachable, match=r"^pack ab: connection refused by 127\.0\.0\.1:\d+"):
        await dead.fetch("GET", url + "ab", "pack ab", (200,))
    await dead.close()
