"""Snapshot catalogue and snapshot body formats, version 1.

The catalogue is a stream of JSON lines, one per file, sorted by path; the client stores it as
chunks (content-defined, so an unchanged stretch of the tree dedupes against the last snapshot).
The snapshot body names the catalogue's chunks and is sealed into the commit record. Formats only:
no storage, no keys beyond the sealing helpers in `engine.blob`.

Catalogue line: {"path", "type" ("file"|"dir"|"symlink"), "mode", "mtime_ns", "size",
"chunks": [[chunk id hex, raw length], ...], "target" (symlinks), "dicom": {attr: value}}
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from engine.errors import FormatError
from engine.ids import ChunkId

VERSION = 1
SNAPSHOT_AD = bytes(32)  # associated-data "chunk id" of a sealed snapshot body
PACK_HEADER_AD = b"\x01" * 32  # associated-data "chunk id" of a sealed pack header


@dataclass(slots=True)
class Entry:
    path: str
    type: str
    mode: int
    mtime_ns: int
    size: int = 0
    chunks: list[tuple[ChunkId, int]] = field(default_factory=list)
    target: str | None = None
    dicom: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "path": self.path,
            "type": self.type,
            "mode": self.mode,
            "mtime_ns": self.mtime_ns,
            "size": self.size,
        }
        if self.chunks:
            doc["chunks"] = [[c.hex(), n] for c, n in self.chunks]
        if self.target is not None:
            doc["target"] = self.target
        if self.dicom:
            doc["dicom"] = self.dicom
        return doc

    def encode(self) -> bytes:
        return (
            json.dumps(self.to_json(), separators=(",", ":"), ensure_ascii=False).encode(
                "utf-8", "surrogateescape"
            )
            + b"\n"
        )

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Entry:
        return cls(
            path=doc["path"],
            type=doc["type"],
            mode=doc["mode"],
            mtime_ns=doc["mtime_ns"],
            size=doc.get("size", 0),
            chunks=[(ChunkId.parse(c), n) for c, n in doc.get("chunks", [])],
            target=doc.get("target"),
            dicom=doc.get("dicom"),
        )


def parse_lines(lines: Iterator[bytes]) -> Iterator[Entry]:
    for line in lines:
        if line.strip():
            yield Entry.from_json(json.loads(line.decode("utf-8", "surrogateescape")))


@dataclass(slots=True)
class SnapshotBody:
    time: str
    host: str
    paths: list[str]
    tree: list[tuple[ChunkId, int]]  # catalogue chunks, in order
    stats: dict[str, Any]
    tags: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # where an agent batch came from (3.7)

    def encode(self) -> bytes:
        doc = {
            "version": VERSION,
            "time": self.time,
            "host": self.host,
            "paths": self.paths,
            "tree": [[c.hex(), n] for c, n in self.tree],
            "stats": self.stats,
            "tags": self.tags,
        }
        if self.sources:  # only when set: a body without it is byte-for-byte as before
            doc["sources"] = self.sources
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> SnapshotBody:
        try:
            doc = json.loads(data)
            if doc.get("version") != VERSION:
                raise FormatError(f"unsupported snapshot version {doc.get('version')}")
            return cls(
                time=doc["time"],
                host=doc["host"],
                paths=doc["paths"],
                tree=[(ChunkId.parse(c), n) for c, n in doc["tree"]],
                stats=doc["stats"],
                tags=doc.get("tags", []),
                sources=doc.get("sources", []),
            )
        except FormatError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise FormatError(f"malformed snapshot body: {e}") from None
