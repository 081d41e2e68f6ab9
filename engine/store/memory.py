"""In-memory `Store` for tests and as the reference behaviour of the contract."""

from __future__ import annotations

from collections.abc import AsyncIterator

from engine.clock import SYSTEM, Clock
from engine.errors import ObjectNotFound
from engine.store.base import ObjectStat, Store, validate_name


class MemoryStore(Store):
    def __init__(self, clock: Clock = SYSTEM) -> None:
        self.objects: dict[str, bytes] = {}
        self.mtimes: dict[str, float] = {}
        self.clock = clock

    async def put(self, name: str, data: bytes | memoryview, *, mtime: float | None = None) -> bool:
        if validate_name(name) in self.objects:
            return False
        self.objects[name] = bytes(data)
        self.mtimes[name] = self.clock.time() if mtime is None else mtime
        return True

    async def get(self, name: str) -> bytes:
        try:
            return self.objects[validate_name(name)]
        except KeyError:
            raise ObjectNotFound(f"object not found: {name}") from None

    async def get_range(self, name: str, offset: int, length: int) -> bytes:
        return (await self.get(name))[offset : offset + length]

    async def stat(self, name: str) -> ObjectStat:
        return ObjectStat(len(await self.get(name)), self.mtimes[name])

    async def list(self, prefix: str = "", start_after: str | None = None) -> AsyncIterator[str]:
        folder = validate_name(prefix) + "/" if prefix else ""
        for name in sorted(self.objects):
            if name.startswith(folder) and (start_after is None or name > start_after):
                yield name

    async def delete(self, name: str) -> None:
        if self.objects.pop(validate_name(name), None) is None:
            raise ObjectNotFound(f"object not found: {name}")
        del self.mtimes[name]
