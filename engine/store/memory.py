"""In-memory `Store` for tests and as the reference behaviour of the contract."""

from __future__ import annotations

from collections.abc import AsyncIterator

from engine.errors import ObjectNotFound
from engine.store.base import Store, validate_name


class MemoryStore(Store):
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    async def put(self, name: str, data: bytes | memoryview) -> None:
        self.objects.setdefault(validate_name(name), bytes(data))

    async def get(self, name: str) -> bytes:
        try:
            return self.objects[validate_name(name)]
        except KeyError:
            raise ObjectNotFound(f"object not found: {name}") from None

    async def get_range(self, name: str, offset: int, length: int) -> bytes:
        return (await self.get(name))[offset : offset + length]

    async def size(self, name: str) -> int:
        return len(await self.get(name))

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        folder = validate_name(prefix) + "/" if prefix else ""
        for name in list(self.objects):
            if name.startswith(folder):
                yield name

    async def delete(self, name: str) -> None:
        if self.objects.pop(validate_name(name), None) is None:
            raise ObjectNotFound(f"object not found: {name}")
