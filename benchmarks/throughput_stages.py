"""Stage micro-benchmarks: each step of the backup and restore pipelines alone, single-threaded,
in memory, on the bytes of a corpus (no disk except the two stages that say so).

    python -m benchmarks.throughput_stages --corpus DIR

Every chunk goes through `client.walk.pieces` with the default codec policy, as backup does; a
chunk that does not decode to its id aborts the run rather than report a speed for it. The sum
of a side's stage seconds is its one-thread bound. Measures the engine; changes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import corpus_files, mb_per_s, md_table
from client.walk import pieces
from engine import blob
from engine.blob import Hint
from engine.catalogue import PACK_HEADER_AD
from engine.chunker import Chunker, Piece
from engine.dicom import DicomLayout, segment
from engine.ids import ChunkId, PackId
from engine.keys import MasterKey
from engine.pack import HEADER_ENTRY_SIZE, TARGET_SIZE, PackBuilder, pack_name
from engine.store.local import LocalStore

Pack = tuple[PackId, bytes, list[int]]  # id, bytes, offset of each blob


class WrongRestore(RuntimeError):
    """A restore did not reproduce the corpus bit for bit; no speed is reported for it."""


@dataclass(frozen=True, slots=True)
class Stage:
    side: str  # "backup" or "restore"
    name: str
    input_bytes: int  # bytes this stage consumes (raw, encoded or sealed, as it sees them)
    seconds: float
    note: str

    def as_json(self, corpus_bytes: int) -> dict[str, Any]:
        return {
            **asdict(self),
            "mb_s": round(mb_per_s(self.input_bytes, self.seconds), 1),
            "corpus_mb_s": round(mb_per_s(corpus_bytes, self.seconds), 1),
        }


@dataclass
class _Chunk:
    piece: Piece
    hint: Hint
    chunk_id: ChunkId | None = None
    codec: int = 0
    payload: bytes = b""
    sealed: bytes = b""


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def _segment_all(files: list[bytes]) -> list[DicomLayout]:
    return [segment(data) for data in files]


def _chunk_all(chunker: Chunker, files: list[bytes], layouts: list[DicomLayout]) -> list[_Chunk]:
    out: list[_Chunk] = []
    for data, layout in zip(files, layouts, strict=True):
        f = io.BytesIO(data)
        out += [_Chunk(p, h) for p, h in pieces(chunker, f, layout, len(data))]
    return out


def _hash_all(key: MasterKey, chunks: list[_Chunk]) -> list[_Chunk]:
    """Name every chunk; return the first of each id, which is what backup goes on to seal."""
    unique: dict[ChunkId, _Chunk] = {}
    for c in chunks:
        c.chunk_id = key.chunk_id(c.piece.data)
        unique.setdefault(c.chunk_id, c)
    return list(unique.values())


def _encode_all(chunks: list[_Chunk]) -> None:
    for c in chunks:
        c.codec, c.payload = blob.encode(c.piece.data, c.hint)


def _plaintext(c: _Chunk) -> bytes:
    # Mirrors blob.seal: frame, then Padmé padding; blob._FRAME is the format's one definition.
    framed = blob._FRAME.pack(c.codec, len(c.piece.data), len(c.payload)) + c.payload
    return framed + bytes(blob.padme(len(framed)) - len(framed))


def _encrypt_all(key: MasterKey, chunks: list[_Chunk], plaintexts: list[bytes]) -> None:
    for c, plain in zip(chunks, plaintexts, strict=True):
        assert c.chunk_id is not None
        c.sealed = blob.seal_plaintext(key, c.chunk_id, plain)


def _pack_all(key: MasterKey, chunks: list[_Chunk]) -> list[Pack]:
    """Build ~16 MiB packs as `engine.packer.Packer` does; keep each blob's offset for reading."""
    packs: list[Pack] = []
    builder, offsets = PackBuilder(), []
    for i, c in enumerate(chunks):
        assert c.chunk_id is not None
        offsets.append(builder.add(c.chunk_id, c.sealed).offset)
        if builder.blob_bytes >= TARGET_SIZE or i == len(chunks) - 1:
            header = blob.seal_plaintext(
                key, PACK_HEADER_AD, bytes(HEADER_ENTRY_SIZE * len(builder))
            )
            pack_id, data = builder.finish(header)
            packs.append((pack_id, data, offsets))
            builder, offsets = PackBuilder(), []
    return packs


def _write_packs(store: LocalStore, packs: list[Pack]) -> None:
    async def put_all() -> None:
        for pack_id, data, _ in packs:
            await store.put(pack_name(pack_id), data)

    asyncio.run(put_all())


def _read_blobs(store: LocalStore, packs: list[Pack], chunks: list[_Chunk]) -> list[bytes]:
    """One range read per blob, as restore does."""

    async def read_all() -> list[bytes]:
        out: list[bytes] = []
        it = iter(chunks)
        for pack_id, _, offsets in packs:
            for offset in offsets:
                size = len(next(it).sealed)
                out.append(await store.get_range(pack_name(pack_id), offset, size))
        return out

    return asyncio.run(read_all())


def _decrypt_all(key: MasterKey, chunks: list[_Chunk], blobs: list[bytes]) -> list[bytes]:
    out = []
    for c, sealed in zip(chunks, blobs, strict=True):
        assert c.chunk_id is not None
        out.append(blob.open_plaintext(key, c.chunk_id, sealed))
    return out


def _decode_all(chunks: list[_Chunk]) -> list[bytes]:
    return [blob.decode(c.codec, c.payload, len(c.piece.data)) for c in chunks]


def _verify_all(key: MasterKey, chunks: list[_Chunk], decoded: list[bytes]) -> int:
    """Hash every decoded chunk as restore does; return how many do not match their id."""
    return sum(key.chunk_id(d) != c.chunk_id for c, d in zip(chunks, decoded, strict=True))


def _write_files(target: Path, files: list[bytes]) -> None:
    for i, data in enumerate(files):
        (target / f"{i:06d}.dcm").write_bytes(data)


@dataclass
class _StageRun:
    """What the stages hand each other, and the figures they produce."""

    key: MasterKey
    files: list[bytes]
    scratch: Path
    stages: list[Stage] = field(default_factory=list)

    def time(self, side: str, name: str, nbytes: int, note: str, fn: Callable[[], Any]) -> Any:
        result, seconds = _timed(fn)
        self.stages.append(Stage(side, name, nbytes, seconds, note))
        return result


def _backup_stages(run: _StageRun) -> tuple[list[_Chunk], list[Pack], LocalStore]:
    files, key, total = run.files, run.key, sum(map(len, run.files))
    layouts = run.time(
        "backup", "segment", total, "engine.dicom.segment per file", lambda: _segment_all(files)
    )
    chunks = run.time(
        "backup",
        "chunk",
        total,
        "client.walk.pieces: FastCDC + row bands",
        lambda: _chunk_all(Chunker(key.chunker_seed), files, layouts),
    )
    unique = run.time(
        "backup",
        "hash",
        total,
        "MasterKey.chunk_id (keyed BLAKE3, 1 thread)",
        lambda: _hash_all(key, chunks),
    )
    run.time(
        "backup",
        "encode",
        _raw_bytes(unique),
        "blob.encode with walk hints (default policy)",
        lambda: _encode_all(unique),
    )
    plaintexts = [_plaintext(c) for c in unique]
    run.time(
        "backup",
        "encrypt",
        sum(map(len, plaintexts)),
        "blob.seal_plaintext (AES-256-GCM)",
        lambda: _encrypt_all(key, unique, plaintexts),
    )
    packs = run.time(
        "backup",
        "pack",
        _sealed_bytes(unique),
        "PackBuilder.add/finish incl. pack-id BLAKE3",
        lambda: _pack_all(key, unique),
    )
    store = LocalStore(run.scratch / "stage-store")
    run.time(
        "backup",
        "write",
        sum(len(p[1]) for p in packs),
        "LocalStore.put (fsync) to the corpus disk",
        lambda: _write_packs(store, packs),
    )
    return unique, packs, store


def _restore_stages(
    run: _StageRun, unique: list[_Chunk], packs: list[Pack], store: LocalStore
) -> None:
    key, sealed = run.key, _sealed_bytes(unique)
    blobs = run.time(
        "restore",
        "read",
        sealed,
        "LocalStore.get_range per blob (page cache)",
        lambda: _read_blobs(store, packs, unique),
    )
    plain = run.time(
        "restore",
        "decrypt",
        sealed,
        "blob.open_plaintext",
        lambda: _decrypt_all(key, unique, blobs),
    )
    blobs.clear()
    decoded = run.time(
        "restore",
        "decode",
        sum(map(len, plain)),
        "blob.decode (JPEG-LS/JPEG-XL/zstd)",
        lambda: _decode_all(unique),
    )
    plain.clear()
    bad = run.time(
        "restore",
        "verify",
        _raw_bytes(unique),
        "MasterKey.chunk_id of each decoded chunk",
        lambda: _verify_all(key, unique, decoded),
    )
    if bad:
        raise WrongRestore(f"{bad} chunks did not decode to their id in the stage benchmark")
    decoded.clear()
    out = _fresh(run.scratch / "stage-files")
    run.time(
        "restore",
        "write",
        sum(map(len, run.files)),
        "plain file writes, no fsync (as restore)",
        lambda: _write_files(out, run.files),
    )


def _raw_bytes(chunks: list[_Chunk]) -> int:
    return sum(len(c.piece.data) for c in chunks)


def _sealed_bytes(chunks: list[_Chunk]) -> int:
    return sum(len(c.sealed) for c in chunks)


def stage_benchmarks(root: Path, scratch: Path) -> list[Stage]:
    """Time every stage alone, single-threaded, over the corpus under `root` held in memory."""
    files = [p.read_bytes() for p in corpus_files(root)]
    run = _StageRun(MasterKey.generate(), files, scratch)
    unique, packs, store = _backup_stages(run)
    _restore_stages(run, unique, packs, store)
    shutil.rmtree(scratch / "stage-files")
    shutil.rmtree(scratch / "stage-store")
    return run.stages


def serial_bound(stages: Sequence[Stage], side: str, corpus_bytes: int) -> float:
    """Corpus MB/s if one thread ran every stage of `side` back to back."""
    return mb_per_s(corpus_bytes, sum(s.seconds for s in stages if s.side == side))


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def md_stages(stages: list[dict[str, Any]], bounds: dict[str, float]) -> list[str]:
    rows: list[tuple[str, ...]] = []
    for side in ("backup", "restore"):
        side_s = sum(s["seconds"] for s in stages if s["side"] == side)
        rows += [
            (
                side,
                s["name"],
                f"{s['mb_s']:,.1f}",
                f"{s['corpus_mb_s']:,.1f}",
                f"{100 * s['seconds'] / side_s:.0f} %",
                s["note"],
            )
            for s in stages
            if s["side"] == side
        ]
        rows.append((side, "**all, one thread**", "", f"**{bounds[side]:,.1f}**", "100 %",
                     "corpus MB ÷ sum of stage seconds"))  # fmt: skip
    header = ("side", "stage", "MB/s (own input)", "MB/s (corpus)", "share of side", "what")
    return md_table(header, "llrrrl", rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.throughput_stages", description=__doc__)
    p.add_argument("--corpus", type=Path, required=True, help="a folder of DICOM files")
    p.add_argument("--scratch", type=Path, default=Path("/var/tmp"), help="for the two disk stages")
    args = p.parse_args(argv)
    root = args.corpus
    total = sum(len(p.read_bytes()) for p in corpus_files(root))
    stages = stage_benchmarks(root, args.scratch)
    rows = [s.as_json(total) for s in stages]
    bounds = {side: round(serial_bound(stages, side, total), 1) for side in ("backup", "restore")}
    print("\n".join(md_stages(rows, bounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
