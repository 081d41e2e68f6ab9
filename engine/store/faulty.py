"""A fault-injecting `Store` wrapper for crash, corruption and retry tests.

Rules are checked in order on every call; the first that matches raises its error (or corrupts the
result). Production code never uses this module.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass, field

from engine.errors import StoreError, TransientError
from engine.store.base import ObjectStat, Store, Verify


@dataclass
class Fault:
    op: str  # "put", "get", "get_range", "stat", "list", "delete" or "*" (size and
    # get_stream go through stat and get_range)
    match: Callable[[str], bool] = lambda name: True
    times: int = 1  # how many calls fail; -1 for every call
    error: type[StoreError] = TransientError
    corrupt: bool = False  # instead of raising, flip a byte in what `get`/`get_range` return


@dataclass
class FaultyStore(Store):
    inner: Store
    faults: list[Fault] = field(default_factory=list)
    calls: list[tuple[str, str]] = field(default_factory=list)

    def _fault(self, op: str, name: str) -> Fault | None:
        self.calls.append((op, name))
        for fault in self.faults:
            if fault.op in (op, "*") and fault.times != 0 and fault.match(name):
                if fault.times > 0:
                    fault.times -= 1
                if not fault.corrupt:
                    raise fault.error(f"injected {op} fault on {name}")
                return fault
        return None

    @staticmethod
    def _flip(data: bytes) -> bytes:
        if not data:
            return data
        mid = len(data) // 2
        return data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1 :]

    async def put(self, name: str, data: bytes | memoryview, *, mtime: float | None = None) -> bool:
        self._fault("put", name)
        return await self.inner.put(name, data, mtime=mtime)

    async def put_stream(
        self,
        name: str,
        pieces: AsyncIterable[bytes],
        verify: Verify | None = None,
        *,
        mtime: float | None = None,
    ) -> bool:
        self._fault("put", name)
        return await self.inner.put_stream(name, pieces, verify, mtime=mtime)

    async def get(self, name: str) -> bytes:
        fault = self._fault("get", name)
        data = await self.inner.get(name)
        return self._flip(data) if fault else data

    async def get_range(self, name: str, offset: int, length: int) -> bytes:
        fault = self._fault("get_range", name)
        data = await self.inner.get_range(name, offset, length)
        return self._flip(data) if fault else data

    async def stat(self, name: str) -> ObjectStat:
        self._fault("stat", name)
        return await self.inner.stat(name)

    async def list(self, prefix: str = "", start_after: str | None = None) -> AsyncIterator[str]:
        self._fault("list", prefix)
        async for name in self.inner.list(prefix, start_after):
            yield name

    async def delete(self, name: str) -> None:
        self._fault("delete", name)
        await self.inner.delete(name)
