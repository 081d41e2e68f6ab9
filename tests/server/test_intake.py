"""Pack intake overlaps its steps: the body is received while the journal row is committed."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from pathlib import Path

from server.admin import create_repository
from server.config import ServerConfig
from server.index import ServerIndex
from server.intake import receive_pack
from server.repos import open_repositories
from tests.server.conftest import REPO, MiB, make_pack


async def test_the_body_is_received_while_the_journal_row_waits_for_the_index(
    tmp_path: Path,
) -> None:
    """Another LMDB writer holds the index until the whole body has been read: an intake that
    committed its journal row before reading the body would wait for the hold to time out."""
    config = ServerConfig(data_dir=tmp_path, index_map_size=64 * MiB)
    repos, index = open_repositories(config), ServerIndex(config.index_path, 64 * MiB)
    create_repository(repos, index, REPO, 0.0)
    pack_id, data, _ = make_pack(chunks=8, size=1000)
    holding, released, held = threading.Event(), threading.Event(), []

    def hold_the_index() -> None:
        with index.env.begin(write=True):
            holding.set()
            held.append(released.wait(3.0))

    holder = threading.Thread(target=hold_the_index)
    holder.start()
    holding.wait()

    async def body() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 1000):
            yield data[i : i + 1000]
        released.set()

    try:
        result = await receive_pack(repos.get(REPO), index, pack_id, body(), 64 * MiB)
    finally:
        released.set()
        holder.join()
    assert held == [True]  # released by the end of the body, not by the timeout
    assert result.created and index.has_pack(REPO, pack_id)
    assert index.intakes() == []
    index.close()
