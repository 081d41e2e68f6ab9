"""TLS: the server serves HTTPS with a configured certificate; the client trusts a CA file."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from engine.errors import StoreError, TransientError
from engine.remote import RemoteBackend
from tests.server.conftest import Harness, ServerFactory, make_pack


def self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dicomvault test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_tls_round_trip_with_ca_file(make_server: ServerFactory, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    srv: Harness = await make_server(ssl=ctx)
    assert srv.base.startswith("https://")
    backend = srv.backend(ca_file=str(cert))
    pack_id, data, ids = make_pack()
    await backend.put_pack(pack_id, data)
    assert await backend.missing(ids) == set()
    assert await backend.get_pack(pack_id) == data
    # Counted below the TLS layer: ciphertext records are a little larger than the body.
    assert backend.bytes_uploaded > len(data)

    untrusting = RemoteBackend(f"{srv.base}/clinic", srv.tokens["clinic"]["backup"])
    # Not transient: retrying cannot make an untrusted certificate trusted.
    with pytest.raises(StoreError, match=r"(?i)certificate") as refused:
        await untrusting.get_config()
    assert not isinstance(refused.value, TransientError)
    await untrusting.close()
