"""Key object format, version 1: its fields, their sizes and the bounds on its KDF cost.

Keyless, so the server can refuse a malformed key object at upload and the client can skip one
before it spends a single Argon2id pass on it: a key object is written by whoever holds a token,
and its KDF parameters decide how much memory and time the next unlock costs. Holds no secrets
and does no cryptography (that is `engine.keys`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from engine.errors import FormatError

KEY_FILE_VERSION = 1
SALT_SIZE = 16
NONCE_SIZE = 12
WRAPPED_SIZE = 32 + 16  # the 32-byte master secret and its AES-GCM tag
MAX_KEY_OBJECT_SIZE = 4096  # bytes; a real one is about 300
# Upper bounds on what a key object may ask of an unlock. Generous for real parameters (the
# default is t=3, p=4, 64 MiB), and low enough that a planted key object cannot hang or exhaust
# a client: at most 64 passes over at most 4 GiB.
MAX_ITERATIONS = 64
MAX_LANES = 64
MAX_MEMORY_KIB = 4 * 1024 * 1024
MIN_MEMORY_KIB_PER_LANE = 8  # Argon2's own minimum
# The least `init` accepts for a real repository: OWASP's minimum Argon2id configuration
# (19 MiB, t=2). Below it only in test mode (the CLI's DICOMVAULT_TEST_CHEAP_KDF=1).
SAFE_MIN_MEMORY_KIB = 19 * 1024
SAFE_MIN_ITERATIONS = 2


@dataclass(frozen=True, slots=True)
class KdfParams:
    """Argon2id cost. The default follows RFC 9106's second recommended option (64 MiB, t=3)."""

    iterations: int = 3
    lanes: int = 4
    memory_kib: int = 64 * 1024

    def check(self) -> KdfParams:
        """Return self if within bounds (`FormatError` otherwise)."""
        if not 1 <= self.iterations <= MAX_ITERATIONS:
            raise FormatError(f"KDF iterations {self.iterations} outside 1..{MAX_ITERATIONS}")
        if not 1 <= self.lanes <= MAX_LANES:
            raise FormatError(f"KDF lanes {self.lanes} outside 1..{MAX_LANES}")
        low = MIN_MEMORY_KIB_PER_LANE * self.lanes
        if not low <= self.memory_kib <= MAX_MEMORY_KIB:
            raise FormatError(f"KDF memory {self.memory_kib} KiB outside {low}..{MAX_MEMORY_KIB}")
        return self

    def check_safe(self) -> KdfParams:
        """Return self if at least the safe floor for a real repository (`FormatError` if not)."""
        if self.memory_kib < SAFE_MIN_MEMORY_KIB or self.iterations < SAFE_MIN_ITERATIONS:
            raise FormatError(
                f"Argon2id below the safe floor of {SAFE_MIN_MEMORY_KIB // 1024} MiB and "
                f"{SAFE_MIN_ITERATIONS} iterations"
            )
        return self.check()


@dataclass(frozen=True, slots=True)
class KeyObject:
    kdf: KdfParams
    salt: bytes
    nonce: bytes
    wrapped: bytes

    def header(self) -> dict[str, Any]:
        kdf = self.kdf
        return {
            "version": KEY_FILE_VERSION,
            "kdf": "argon2id",
            "iterations": kdf.iterations,
            "lanes": kdf.lanes,
            "memory_kib": kdf.memory_kib,
            "salt": self.salt.hex(),
        }

    def aad(self) -> bytes:
        """The AEAD's associated data: the canonical JSON of the header fields."""
        return json.dumps(self.header(), sort_keys=True).encode()

    def encode(self) -> bytes:
        doc = {**self.header(), "nonce": self.nonce.hex(), "wrapped": self.wrapped.hex()}
        return json.dumps(doc).encode()

    @classmethod
    def decode(cls, data: bytes) -> KeyObject:
        """Parse and bound-check a key object; `FormatError` says what is wrong with it."""
        if len(data) > MAX_KEY_OBJECT_SIZE:
            raise FormatError(f"key object larger than {MAX_KEY_OBJECT_SIZE} bytes")
        try:
            doc = json.loads(data)
            if doc["version"] != KEY_FILE_VERSION or doc["kdf"] != "argon2id":
                raise FormatError(f"unsupported key object version {doc['version']!r}")
            kdf = KdfParams(_int(doc["iterations"]), _int(doc["lanes"]), _int(doc["memory_kib"]))
            obj = cls(kdf.check(), _hex(doc["salt"]), _hex(doc["nonce"]), _hex(doc["wrapped"]))
        except FormatError as e:
            raise FormatError(f"malformed key object: {e}") from None
        except (ValueError, KeyError, TypeError) as e:
            raise FormatError(f"malformed key object: {type(e).__name__}: {e}") from None
        sizes = (len(obj.salt), len(obj.nonce), len(obj.wrapped))
        if sizes != (SALT_SIZE, NONCE_SIZE, WRAPPED_SIZE):
            raise FormatError(f"malformed key object: field sizes {sizes}")
        return obj


def _int(value: Any) -> int:
    # bool is an int in Python, and a float would be truncated silently: both are malformed.
    if type(value) is not int:
        raise TypeError(f"{value!r} is not an integer")
    return value


def _hex(value: Any) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a hex string")
    return bytes.fromhex(value)
