"""Typed identifiers: fixed size, text round trip, distinct types."""

from __future__ import annotations

import pytest

from engine.ids import ChunkId, PackId, SnapshotId


@pytest.mark.parametrize("kind", [ChunkId, PackId, SnapshotId])
def test_id_round_trips_through_hex(kind: type[ChunkId]) -> None:
    raw = bytes(range(32))
    ident = kind(raw)
    assert ident.hex() == raw.hex() == str(ident)
    assert kind.parse(ident.hex()) == ident
    assert isinstance(kind.parse(ident.hex()), kind)
    assert ident.short() == raw.hex()[:8]
    assert ident.short() in repr(ident) and kind.__name__ in repr(ident)


@pytest.mark.parametrize("raw", [b"", bytes(31), bytes(33)])
def test_id_must_be_32_bytes(raw: bytes) -> None:
    with pytest.raises(ValueError):
        ChunkId(raw)


@pytest.mark.parametrize("text", ["", "zz" * 32, "ab" * 31, "ab" * 33, "not hex"])
def test_parse_refuses_malformed_text(text: str) -> None:
    with pytest.raises(ValueError, match="chunk id"):
        ChunkId.parse(text)


def test_ids_are_hashable_and_usable_as_bytes() -> None:
    a, b = ChunkId(bytes(32)), ChunkId(bytes(32))
    assert {a, b} == {a}
    assert bytes(a) == bytes(32)
