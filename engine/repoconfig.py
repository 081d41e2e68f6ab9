"""A repository's config (version 1), and creating and unlocking a repository.

The config is JSON `{"version": 1, "id": <32 hex digits>}`; the id names the client's cache
folder. Creating a repository writes the key object before the config (a config without a key
would be a repository nobody can open); unlocking tries each key object in turn. Works on any
`Backend`; knows nothing of caches, spools or agents.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from engine.backend import Backend
from engine.errors import (
    FormatError,
    ObjectNotFound,
    RepositoryExists,
    RepositoryNotFound,
    WrongPassphrase,
)
from engine.keys import KdfParams, MasterKey, key_name, unwrap, wrap

CONFIG_VERSION = 1


@dataclass(frozen=True, slots=True)
class RepoConfig:
    version: int
    repo_id: str

    def encode(self) -> bytes:
        return json.dumps({"version": self.version, "id": self.repo_id}).encode()

    @classmethod
    def decode(cls, data: bytes) -> RepoConfig:
        try:
            doc = json.loads(data)
            if doc["version"] != CONFIG_VERSION:
                raise FormatError(f"unsupported repository version {doc['version']}")
            return cls(doc["version"], str(doc["id"]))
        except (ValueError, KeyError, TypeError) as e:
            raise FormatError(f"malformed repository config: {e}") from None


async def init_repository(backend: Backend, passphrase: bytes, kdf: KdfParams) -> RepoConfig:
    try:
        await backend.get_config()
    except (RepositoryNotFound, ObjectNotFound):
        pass
    else:
        raise RepositoryExists(f"a repository already exists at {backend.location}")
    config = RepoConfig(CONFIG_VERSION, secrets.token_hex(16))
    key_object = wrap(MasterKey.generate(), passphrase, kdf)
    await backend.put_key(key_name(key_object), key_object)
    await backend.put_config(config.encode())
    return config


async def unlock(
    backend: Backend, passphrase: bytes, warnings: list[str], spare: Sequence[bytes] = ()
) -> MasterKey:
    """Try each key object in turn; a malformed one (or one asking for a KDF cost out of
    bounds, `engine.keyobject`) is skipped with a warning before any KDF work is spent on it.
    `spare` key objects (a recovery kit's) are tried after the repository's own."""
    return (await unlock_named(backend, passphrase, warnings, spare))[1]


async def unlock_named(
    backend: Backend, passphrase: bytes, warnings: list[str], spare: Sequence[bytes] = ()
) -> tuple[str, MasterKey]:
    """As `unlock`, and the name of the key object that opened (`dicomvault key`)."""
    for name in await backend.list_keys():
        try:
            return name, await asyncio.to_thread(unwrap, await backend.get_key(name), passphrase)
        except WrongPassphrase:
            continue
        except (FormatError, ObjectNotFound) as e:  # not found: quarantined since listed
            warnings.append(f"skipped key object {name}: {e}")
    for key_object in spare:
        try:
            return key_name(key_object), await asyncio.to_thread(unwrap, key_object, passphrase)
        except WrongPassphrase:
            continue
        except FormatError as e:
            warnings.append(f"skipped the recovery kit's key object: {e}")
    if warnings:
        raise WrongPassphrase(f"{WrongPassphrase.__doc__} ({'; '.join(warnings)})")
    raise WrongPassphrase()
