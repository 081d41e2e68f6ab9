"""Master key, derived subkeys and passphrase wrapping (Argon2id, cheap parameters in tests)."""

from __future__ import annotations

import json

import pytest

from engine.errors import FormatError, WrongPassphrase
from engine.keys import MasterKey, key_name, unwrap, wrap
from tests.helpers import cheap_kdf


def test_wrap_then_unwrap_recovers_the_master_secret() -> None:
    key = MasterKey.generate()
    unwrapped = unwrap(wrap(key, b"pass", cheap_kdf()), b"pass")
    assert unwrapped.secret == key.secret
    assert unwrapped.id_key == key.id_key
    assert unwrapped.encryption_key == key.encryption_key
    assert unwrapped.chunker_seed == key.chunker_seed


def test_wrong_passphrase_raises_wrong_passphrase() -> None:
    key_object = wrap(MasterKey.generate(), b"right", cheap_kdf())
    with pytest.raises(WrongPassphrase):
        unwrap(key_object, b"wrong")


def test_key_object_records_kdf_parameters_and_never_the_secret() -> None:
    key = MasterKey.generate()
    key_object = wrap(key, b"pass", cheap_kdf())
    doc = json.loads(key_object)
    assert doc["kdf"] == "argon2id"
    assert (doc["iterations"], doc["lanes"], doc["memory_kib"]) == (1, 1, 8)
    assert key.secret.hex() not in key_object.decode()


def test_wrapping_twice_gives_different_objects_and_names() -> None:
    key = MasterKey.generate()
    a, b = wrap(key, b"pass", cheap_kdf()), wrap(key, b"pass", cheap_kdf())
    assert a != b  # fresh salt and nonce
    assert key_name(a) != key_name(b)
    assert len(key_name(a)) == 32


def test_tampered_kdf_parameters_fail_like_a_wrong_passphrase() -> None:
    doc = json.loads(wrap(MasterKey.generate(), b"pass", cheap_kdf()))
    doc["iterations"] = 2  # authenticated as associated data
    with pytest.raises(WrongPassphrase):
        unwrap(json.dumps(doc).encode(), b"pass")


@pytest.mark.parametrize("mangle", ["not json", "{}", '{"version": 2}'])
def test_malformed_key_object_raises_format_error(mangle: str) -> None:
    with pytest.raises(FormatError):
        unwrap(mangle.encode(), b"pass")


def test_unsupported_key_object_version_raises_format_error() -> None:
    doc = json.loads(wrap(MasterKey.generate(), b"pass", cheap_kdf()))
    doc["version"] = 99
    with pytest.raises(FormatError, match="version"):
        unwrap(json.dumps(doc).encode(), b"pass")


def test_subkeys_are_distinct_and_derived_deterministically() -> None:
    key = MasterKey(bytes(range(32)))
    again = MasterKey(bytes(range(32)))
    subkeys = {key.secret, key.id_key, key.encryption_key}
    assert len(subkeys) == 3
    assert (again.id_key, again.encryption_key, again.chunker_seed) == (
        key.id_key,
        key.encryption_key,
        key.chunker_seed,
    )
    assert 0 <= key.chunker_seed < 2**63  # pyfastcdc takes a signed 64-bit seed


def test_chunk_ids_are_keyed_per_repository() -> None:
    a, b = MasterKey.generate(), MasterKey.generate()
    assert a.chunk_id(b"same data") == a.chunk_id(b"same data")
    assert a.chunk_id(b"same data") != b.chunk_id(b"same data")


def test_master_secret_must_be_32_bytes() -> None:
    with pytest.raises(ValueError):
        MasterKey(bytes(16))
