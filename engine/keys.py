"""Repository keys: the master secret, its derived subkeys, and passphrase wrapping.

One random 32-byte master secret per repository. Subkeys are derived with BLAKE3's key-derivation
mode under fixed context strings, so each purpose has an independent key. The master secret is
wrapped with a key stretched from the passphrase by Argon2id and stored in the repository as a key
object, so the passphrase alone recovers everything. Does not touch storage.
"""

from __future__ import annotations

import os
import secrets

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from engine.errors import WrongPassphrase
from engine.ids import ChunkId
from engine.keyobject import NONCE_SIZE, SALT_SIZE, KdfParams, KeyObject

__all__ = ["CHEAP_KDF", "KdfParams", "MasterKey", "key_name", "unwrap", "wrap"]

SECRET_SIZE = 32  # bytes of master secret and of every subkey
_CONTEXT = "dicomvault 2026-11 {}"  # BLAKE3 derive_key contexts; changing one is a format change

# Tests and fire drills use this through one helper; never use it for a real repository.
CHEAP_KDF = KdfParams(iterations=1, lanes=1, memory_kib=8)
DEFAULT_KDF = KdfParams()


def _derive(master: bytes, purpose: str) -> bytes:
    return blake3.blake3(master, derive_key_context=_CONTEXT.format(purpose)).digest()


class MasterKey:
    """The master secret and its subkeys; the only object that can name chunks or open blobs."""

    __slots__ = ("cache_key", "chunker_seed", "encryption_key", "id_key", "secret", "serve_key")

    def __init__(self, secret: bytes) -> None:
        if len(secret) != SECRET_SIZE:
            raise ValueError("master secret must be 32 bytes")
        self.secret = secret
        self.id_key = _derive(secret, "chunk id")
        self.encryption_key = _derive(secret, "blob encryption")
        # Seals the client's files cache (engine.index), which holds paths and DICOM attributes.
        self.cache_key = _derive(secret, "client cache")
        # Seals dicom-serve's catalogue index on disk (client.dicomserve.index).
        self.serve_key = _derive(secret, "dicom-serve index")
        # FastCDC's gear-table seed: keyed so chunk boundaries do not reveal content to the server.
        # 63 bits: pyfastcdc converts the seed through a signed 64-bit C integer.
        seed = int.from_bytes(_derive(secret, "chunker seed")[:8], "little")
        self.chunker_seed = seed & (2**63 - 1)

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(secrets.token_bytes(SECRET_SIZE))

    def chunk_id(self, data: bytes | bytearray | memoryview) -> ChunkId:
        return ChunkId(blake3.blake3(data, key=self.id_key, max_threads=1).digest())


def _kek(passphrase: bytes, salt: bytes, kdf: KdfParams) -> bytes:
    return Argon2id(
        salt=salt,
        length=SECRET_SIZE,
        iterations=kdf.iterations,
        lanes=kdf.lanes,
        memory_cost=kdf.memory_kib,
    ).derive(passphrase)


def wrap(key: MasterKey, passphrase: bytes, kdf: KdfParams = DEFAULT_KDF) -> bytes:
    """Return a key object: JSON with the KDF parameters and the AES-GCM-wrapped secret."""
    salt, nonce = os.urandom(SALT_SIZE), os.urandom(NONCE_SIZE)
    unsealed = KeyObject(kdf.check(), salt, nonce, b"")
    wrapped = AESGCM(_kek(passphrase, salt, kdf)).encrypt(nonce, key.secret, unsealed.aad())
    return KeyObject(kdf, salt, nonce, wrapped).encode()


def unwrap(key_object: bytes, passphrase: bytes) -> MasterKey:
    """Open a key object with `passphrase`.

    Raises `FormatError` before any KDF work if the object is malformed or asks for a cost out
    of bounds (`engine.keyobject`), and `WrongPassphrase` if it does not open: the passphrase is
    wrong, or the object was altered (an edited header fails the tag exactly like a wrong key).
    """
    obj = KeyObject.decode(key_object)
    try:
        secret = AESGCM(_kek(passphrase, obj.salt, obj.kdf)).decrypt(
            obj.nonce, obj.wrapped, obj.aad()
        )
    except InvalidTag:
        raise WrongPassphrase() from None
    return MasterKey(secret)


def key_name(key_object: bytes) -> str:
    """Store name of a key object: content-addressed, so adding a key never overwrites one."""
    return blake3.blake3(key_object).hexdigest()[:32]
