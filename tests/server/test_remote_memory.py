"""`RemoteBackend.get_pack` holds one copy of a pack: the body is read into one buffer of its
Content-Length, not gathered in pieces and joined into a second copy. A real chunk server on
loopback in this process (its streaming of the file counts too), measured with tracemalloc."""

from __future__ import annotations

import os
import tracemalloc

from engine.ids import ChunkId
from engine.pack import PackBuilder
from tests.server.conftest import Harness, MiB


async def test_get_pack_holds_about_one_copy_of_a_16_mib_pack(srv: Harness) -> None:
    builder = PackBuilder()
    for _ in range(16):
        builder.add(ChunkId(os.urandom(32)), os.urandom(MiB))
    pack_id, data = builder.finish(sealed_header=os.urandom(64))
    backend = srv.backend()
    await backend.put_pack(pack_id, data)
    size = len(data)
    del data, builder

    tracemalloc.start()
    try:
        got = await backend.get_pack(pack_id)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(got) == size
    print(f"get_pack of {size / MiB:.1f} MiB: tracemalloc peak {peak / MiB:.1f} MiB")
    assert peak < 1.5 * size, f"peak {peak / MiB:.1f} MiB for a {size / MiB:.1f} MiB pack"
