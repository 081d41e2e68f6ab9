"""Repository keys: the master secret, its derived subkeys, and passphrase wrapping.

One random 32-byte master secret per repository. Subkeys are derived with BLAKE3's key-derivation
mode under fixed context strings, so each purpose has an independent key. The master secret is
wrapped with a key stretched from the passphrase by Argon2id and stored in the repository as a key
object, so the passphrase alone recovers everything. Does not touch storage.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from engine.errors import FormatError, WrongPassphrase
from engine.ids import ChunkId

KEY_FILE_VERSION = 1
SECRET_SIZE = 32  # bytes of master secret and of every subkey
SALT_SIZE = 16
NONCE_SIZE = 12
_HEADER_FIELDS = ("version", "kdf", "iterations", "lanes", "memory_kib", "salt")
_CONTEXT = "dicomvault 2026-11 {}"  # BLAKE3 derive_key contexts; changing one is a format change


@dataclass(frozen=True, slots=True)
class KdfParams:
    """Argon2id cost. The default follows RFC 9106's second recommended option (64 MiB, t=3)."""

    iterations: int = 3
    lanes: int = 4
    memory_kib: int = 64 * 1024


# Tests and fire drills use this through one helper; never use it for a real repository.
CHEAP_KDF = KdfParams(iterations=1, lanes=1, memory_kib=8)


def _derive(master: bytes, purpose: str) -> bytes:
    return blake3.blake3(master, derive_key_context=_CONTEXT.format(purpose)).digest()


class MasterKey:
    """The master secret and its subkeys; the only object that can name chunks or open blobs."""

    __slots__ = ("chunker_seed", "encryption_key", "id_key", "secret")

    def __init__(self, secret: bytes) -> None:
        if len(secret) != SECRET_SIZE:
            raise ValueError("master secret must be 32 bytes")
        self.secret = secret
        self.id_key = _derive(secret, "chunk id")
        self.encryption_key = _derive(secret, "blob encryption")
        # FastCDC's gear-table seed: keyed so chunk boundaries do not reveal content to the server.
        # 63 bits: pyfastcdc converts the seed through a signed 64-bit C integer.
        seed = int.from_bytes(_derive(secret, "chunker seed")[:8], "little")
        self.chunker_seed = seed & (2**63 - 1)

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(secrets.token_bytes(SECRET_SIZE))

    def chunk_id(self, data: bytes | memoryview) -> ChunkId:
        return ChunkId(blake3.blake3(data, key=self.id_key, max_threads=1).digest())


def _kek(passphrase: bytes, salt: bytes, kdf: KdfParams) -> bytes:
    return Argon2id(
        salt=salt,
        length=SECRET_SIZE,
        iterations=kdf.iterations,
        lanes=kdf.lanes,
        memory_cost=kdf.memory_kib,
    ).derive(passphrase)


def wrap(key: MasterKey, passphrase: bytes, kdf: KdfParams = KdfParams()) -> bytes:
    """Return a key object: JSON with the KDF parameters and the AES-GCM-wrapped secret."""
    salt, nonce = os.urandom(SALT_SIZE), os.urandom(NONCE_SIZE)
    header = {"version": KEY_FILE_VERSION, "kdf": "argon2id", **asdict(kdf), "salt": salt.hex()}
    aad = json.dumps(header, sort_keys=True).encode()
    wrapped = AESGCM(_kek(passphrase, salt, kdf)).encrypt(nonce, key.secret, aad)
    return json.dumps({**header, "nonce": nonce.hex(), "wrapped": wrapped.hex()}).encode()


def unwrap(key_object: bytes, passphrase: bytes) -> MasterKey:
    """Open a key object with `passphrase`; raise `WrongPassphrase` if it does not open."""
    try:
        doc = json.loads(key_object)
        header = {
            k: doc[k] for k in ("version", "kdf", "iterations", "lanes", "memory_kib", "salt")
        }
        if header["version"] != KEY_FILE_VERSION or header["kdf"] != "argon2id":
            raise FormatError(f"unsupported key object version {header['version']}")
        kdf = KdfParams(int(doc["iterations"]), int(doc["lanes"]), int(doc["memory_kib"]))
        salt, nonce = bytes.fromhex(doc["salt"]), bytes.fromhex(doc["nonce"])
        wrapped = bytes.fromhex(doc["wrapped"])
    except (ValueError, KeyError, TypeError) as e:
        raise FormatError(f"malformed key object: {e}") from None
    aad = json.dumps(header, sort_keys=True).encode()
    try:
        return MasterKey(AESGCM(_kek(passphrase, salt, kdf)).decrypt(nonce, wrapped, aad))
    except InvalidTag:
        raise WrongPassphrase() from None


def key_name(key_object: bytes) -> str:
    """Store name of a key object: content-addressed, so adding a key never overwrites one."""
    return blake3.blake3(key_object).hexdigest()[:32]
