"""`RemoteBackend.put_pack` holds no more than the caller's copy of a pack: it sends the caller's
bytes in pieces, not joined with the headers into another copy that the socket then keeps. A
real chunk server on loopback in this process (its intake counts too), measured with
tracemalloc."""

from __future__ import annotations

import os
import tracemalloc

from engine.ids import ChunkId, PackId
from engine.pack import PackBuilder
from tests.server.conftest import Harness, MiB


def _pack() -> tuple[PackId, bytes]:
    builder = PackBuilder()
    for _ in range(16):
        builder.add(ChunkId(os.urandom(32)), os.urandom(MiB))
    return builder.finish(sealed_header=os.urandom(64))


async def test_put_pack_holds_no_second_copy_of_a_16_mib_pack(srv: Harness) -> None:
    pack_id, data = _pack()
    backend = srv.backend()
    tracemalloc.start()
    try:
        await backend.put_pack(pack_id, data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert await backend.get_pack(pack_id) == data
    print(f"put_pack of {len(data) / MiB:.1f} MiB: tracemalloc peak {peak / MiB:.1f} MiB")
    assert peak < 0.5 * len(data), f"peak {peak / MiB:.1f} MiB (before: 28)"
