"""Fixtures: a real chunk server on loopback (real LMDB in tmp_path), three nodes' server indexes
(real LMDB, no server) and pack/commit builders."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from engine.clock import SYSTEM, Clock
from engine.commit import CommitRecord
from engine.ids import ChunkId, PackId
from engine.keys import CHEAP_KDF, MasterKey, wrap
from engine.pack import PackBuilder
from engine.remote import RemoteBackend
from server.admin import create_repository
from server.app import make_app
from server.config import ServerConfig
from server.index import ServerIndex
from server.state import CLOCK, INDEX, REPOS

MiB = 1024 * 1024
REPO = "clinic"


def make_pack(chunks: int = 8, size: int = 1000) -> tuple[PackId, bytes, list[ChunkId]]:
    """A pack of random blobs; the server is keyless, so blobs need not be real ciphertext."""
    builder = PackBuilder()
    ids = [ChunkId(os.urandom(32)) for _ in range(chunks)]
    for chunk_id in ids:
        builder.add(chunk_id, os.urandom(size))
    pack_id, data = builder.finish(sealed_header=os.urandom(64))
    return pack_id, data, ids


def make_key_object(passphrase: bytes = b"pw") -> bytes:
    """A real key object (cheap KDF): the server refuses malformed ones."""
    return wrap(MasterKey.generate(), passphrase, CHEAP_KDF)


def make_commit(refs: Sequence[ChunkId], agent: str = "pc-1", time: str = "") -> bytes:
    time = time or "2024-05-01T12:00:00Z"
    return CommitRecord(time, agent, None, tuple(refs), b"sealed").encode()


@dataclass
class Harness:
    app: web.Application
    server: TestServer
    config: ServerConfig
    tokens: dict[str, dict[str, str]] = field(default_factory=dict)
    backends: list[RemoteBackend] = field(default_factory=list)

    @property
    def base(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    def add_repo(self, name: str) -> dict[str, str]:
        self.tokens[name] = create_repository(
            self.app[REPOS], self.app[INDEX], name, self.app[CLOCK].time()
        )
        return self.tokens[name]

    def backend(self, role: str = "backup", repo: str = REPO, **kw: Any) -> RemoteBackend:
        backend = RemoteBackend(f"{self.base}/{repo}", self.tokens[repo][role], **kw)
        self.backends.append(backend)
        return backend

    def headers(self, role: str = "backup", repo: str = REPO) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[repo][role]}"}

    def url(self, path: str, repo: str = REPO) -> str:
        return f"{self.base}/v1/repos/{repo}/{path}"


ServerFactory = Callable[..., Any]


@pytest.fixture
async def make_server(tmp_path: Path) -> AsyncIterator[ServerFactory]:
    harnesses: list[Harness] = []

    async def start(ssl: Any = None, clock: Clock = SYSTEM, **settings: Any) -> Harness:
        settings.setdefault("index_map_size", 256 * MiB)
        config = ServerConfig(data_dir=tmp_path / f"data{len(harnesses)}", **settings)
        app = make_app(config, clock=clock)
        server = TestServer(app)
        await server.start_server(ssl=ssl)
        harness = Harness(app, server, config)
        harness.add_repo(REPO)
        harnesses.append(harness)
        return harness

    yield start
    for h in harnesses:
        for b in h.backends:
            await b.close()
        await h.server.close()


@pytest.fixture
async def srv(make_server: ServerFactory) -> Harness:
    harness: Harness = await make_server()
    return harness


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def indexes(tmp_path: Path) -> Iterator[list[ServerIndex]]:
    """Three nodes' server indexes on real LMDB (64 MiB maps), closed afterwards."""
    opened = [ServerIndex(tmp_path / f"node{i}", 64 << 20) for i in range(3)]
    yield opened
    for index in opened:
        index.close()
