"""First contact fails fast, over real sockets: a closed port, a name that does not resolve,
plain HTTP to a TLS port and an untrusted certificate each fail in one call (no retries) with
their cause in one line. (An established backup's patience: tests/client/test_remote.py's
server restart test.)"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest

from engine.errors import StoreError, TransientError, Unreachable
from engine.remote import RemoteBackend
from engine.retry import RetryingBackend, with_retries
from tests.server.conftest import ServerFactory
from tests.server.test_tls import self_signed


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def first_contact(url: str, **kw: str) -> tuple[RetryingBackend, Exception]:
    """The error of the first call to `url` through the CLI's retrying wrapper."""
    backend = with_retries(RemoteBackend(url, "token", **kw))
    try:
        await backend.get_config()
    except StoreError as e:
        return backend, e
    finally:
        await backend.close()
    raise AssertionError("no error")


async def tls_server(make_server: ServerFactory, tmp_path: Path) -> tuple[str, Path]:
    cert, key = self_signed(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return (await make_server(ssl=ctx)).base, cert


async def test_a_closed_port_fails_at_once_saying_refused() -> None:
    backend, e = await first_contact(f"http://127.0.0.1:{closed_port()}/clinic")
    assert isinstance(e, Unreachable) and backend.retries == 0
    assert "connection refused" in str(e) and "\n" not in str(e)


async def test_an_unresolvable_host_fails_at_once_saying_not_resolved() -> None:
    backend, e = await first_contact("http://no-such-host.invalid:8443/clinic")
    assert isinstance(e, Unreachable) and backend.retries == 0
    assert "no-such-host.invalid" in str(e) and "not resolved" in str(e)


async def test_plain_http_to_a_tls_port_says_use_https(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    base, _ = await tls_server(make_server, tmp_path)
    backend, e = await first_contact(base.replace("https://", "http://") + "/clinic")
    assert backend.retries == 0
    assert str(e).endswith("speaks TLS: use https://")


async def test_an_untrusted_certificate_says_use_cacert(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    base, _ = await tls_server(make_server, tmp_path)
    backend, e = await first_contact(base + "/clinic")
    assert not isinstance(e, TransientError) and backend.retries == 0
    assert "not trusted" in str(e) and str(e).endswith("use --cacert FILE")


async def test_with_the_ca_file_the_same_server_answers(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    base, cert = await tls_server(make_server, tmp_path)
    backend = with_retries(RemoteBackend(base + "/clinic", "wrong", ca_file=str(cert)))
    with pytest.raises(StoreError) as refused:  # an answer: the token is refused, not retried
        await backend.get_config()
    assert not isinstance(refused.value, Unreachable)
    await backend.close()
