"""Fire drills: restore a random sample of backed-up files and prove they come back right.

Owns choosing the sample (each file of every snapshot with probability `sample_percent`, from a
seeded RNG, plus every file of the snapshots of the last `recent_hours` — the day's studies), the
restore of each sampled file in memory (chunk by chunk: every chunk is decrypted and re-hashed
against its keyed id by `Repository.read_chunk`), the comparison with the source file when it is
still there and unchanged (same size and mtime: then its bytes must match exactly), the report,
and its durable record (`<state dir>/drills.jsonl`, one JSON line per drill, fsynced). Memory
stays bounded: one chunk per file in flight, and the sample is streamed, never the catalogue.
Must not know schedules (client/agent/drills.py) or arguments (client/cli.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import blake3

from client.repository import Repository
from client.restore import catalogue
from engine.backend import Backend, DrillReceiver
from engine.catalogue import Entry
from engine.errors import CheckFailed, DicomvaultError
from engine.ids import SnapshotId
from engine.index import LocalIndex

FILES_IN_FLIGHT = 4
SOURCE_PIECE = 1024 * 1024
KEEP_PROBLEMS = 200  # lines in a report; the counts are always complete
DRILLS_FILE = "drills.jsonl"


class DrillFailed(CheckFailed):
    """A fire drill found files that do not come back as they were backed up."""

    exit_code = 19


@dataclass(frozen=True, slots=True)
class DrillSettings:
    sample_percent: float = 1.0  # of every snapshot's files: all are covered over ~100 drills
    recent_hours: float = 24.0  # every file of snapshots this recent (the last day's studies)
    max_files: int | None = None  # a cap on the sample, e.g. on a slow link


@dataclass
class DrillReport:
    agent: str
    site: str
    time: str = ""
    sample_percent: float = 0.0
    snapshots: int = 0
    files: int = 0
    bytes: int = 0
    compared_with_source: int = 0
    verified_by_chunks: int = 0
    mismatches: int = 0
    errors: int = 0
    duration_s: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.mismatches == 0 and self.errors == 0

    def as_json(self) -> dict[str, Any]:
        return {**self.__dict__, "ok": self.ok}

    def problem(self, text: str) -> None:
        if len(self.problems) < KEEP_PROBLEMS:
            self.problems.append(text)


# -- the sample ---------------------------------------------------------------------------------


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _parse_time(text: str) -> float:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


async def sample(
    repo: Repository, settings: DrillSettings, rng: random.Random, now: float
) -> AsyncIterator[tuple[SnapshotId, Entry]]:
    """Newest snapshots first: every file of recent ones, a random share of the others."""
    chosen = 0
    share = settings.sample_percent / 100.0
    for sid, _, body in reversed(await repo.snapshots()):
        recent = now - _parse_time(body.time) <= settings.recent_hours * 3600
        async for entry in catalogue(repo, body):
            if entry.type != "file" or not (recent or rng.random() < share):
                continue
            if settings.max_files is not None and chosen >= settings.max_files:
                return
            chosen += 1
            yield sid, entry


# -- one file -----------------------------------------------------------------------------------


async def _restored_digest(repo: Repository, entry: Entry) -> tuple[int, bytes]:
    hasher, size = blake3.blake3(), 0
    for chunk_id, _ in entry.chunks:
        data = await repo.read_chunk(chunk_id)  # decrypted and checked against its keyed id
        hasher.update(data)
        size += len(data)
    return size, hasher.digest()


def _source_digest(path: Path, entry: Entry) -> bytes | None:
    """The source's hash if it is still the file that was backed up (size and mtime), else None."""
    try:
        st = path.stat()
    except OSError:
        return None
    if st.st_size != entry.size or st.st_mtime_ns != entry.mtime_ns:
        return None
    hasher = blake3.blake3()
    with open(path, "rb") as f:
        while piece := f.read(SOURCE_PIECE):
            hasher.update(piece)
    return hasher.digest()


async def verify_file(
    repo: Repository, sid: SnapshotId, entry: Entry, source_root: Path | None, report: DrillReport
) -> None:
    where = f"/{entry.path} (snapshot {sid.short()})"
    try:
        size, digest = await _restored_digest(repo, entry)
    except DicomvaultError as e:
        report.errors += 1
        report.problem(f"{where}: cannot restore: {e}")
        return
    report.files += 1
    report.bytes += size
    if size != entry.size:
        report.mismatches += 1
        report.problem(f"{where}: restored {size} bytes, the catalogue says {entry.size}")
        return
    source = source_root / entry.path if source_root is not None else None
    expected = await asyncio.to_thread(_source_digest, source, entry) if source else None
    if expected is None:
        report.verified_by_chunks += 1  # source gone or changed: the chunk ids are the record
        return
    report.compared_with_source += 1
    if expected != digest:
        report.mismatches += 1
        report.problem(f"{where}: restored bytes differ from the unchanged source file")


# -- a drill ------------------------------------------------------------------------------------


async def run_drill(
    repo: Repository,
    settings: DrillSettings,
    *,
    agent: str,
    site: str,
    rng: random.Random | None = None,
    now: float | None = None,
    source_root: Path | None = Path("/"),
) -> DrillReport:
    """Restore the sample from `repo` (whichever site its backend points at) and compare.
    `now` (default: the system clock) is the drill's time: its record and the recent window."""
    start = time.monotonic()
    when = time.time() if now is None else now
    report = DrillReport(agent, site, _rfc3339(when), settings.sample_percent)
    chosen = sample(repo, settings, rng or random.Random(), when)
    snapshots: set[SnapshotId] = set()
    pending: set[asyncio.Task[None]] = set()
    try:
        async for sid, entry in chosen:
            snapshots.add(sid)
            if len(pending) >= FILES_IN_FLIGHT:  # bounded: a few files' chunks in memory
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
            pending.add(asyncio.create_task(verify_file(repo, sid, entry, source_root, report)))
        await asyncio.gather(*pending)
    except DicomvaultError as e:
        report.errors += 1
        report.problem(f"cannot read the snapshots: {e}")
    finally:
        for task in pending:
            task.cancel()
    report.snapshots = len(snapshots)
    report.duration_s = round(time.monotonic() - start, 3)
    return report


def site_repository(repo: Repository, backend: Any, cache_dir: Path) -> Repository:
    """The same repository read through another site's backend, with its own local index (the
    primary's index may be open in this process; LMDB allows one handle per environment)."""
    index = LocalIndex(cache_dir / repo.config.repo_id / "drill-site-index")
    return Repository(backend, repo.config, repo.key, index)


# -- records ------------------------------------------------------------------------------------


def record(state_dir: Path, report: DrillReport) -> None:
    """Append the report to `<state dir>/drills.jsonl` durably (one line, fsynced)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    line = json.dumps(report.as_json(), separators=(",", ":")) + "\n"
    with open(state_dir / DRILLS_FILE, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def history(state_dir: Path, last: int = 20) -> list[dict[str, Any]]:
    try:
        lines = (state_dir / DRILLS_FILE).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    out = []
    for line in lines[-last:]:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a torn last line after a crash
    return out


def server_report(report: DrillReport) -> dict[str, Any]:
    """What the server keeps (docs/api.md `POST …/drills`): counts and the first problems."""
    keys = ("agent", "site", "ok", "time", "files", "bytes", "mismatches", "errors")
    doc = {k: report.as_json()[k] for k in keys}
    doc["problems"] = report.problems[:20]
    return doc


async def report_to_server(backend: Backend, report: DrillReport) -> bool:
    """POST the report to a chunk server (a `DrillReceiver`); False for a local repository."""
    if not isinstance(backend, DrillReceiver):
        return False
    await backend.report_drill(server_report(report))
    return True


def render(report: DrillReport) -> str:
    verdict = "PASSED" if report.ok else "FAILED"
    lines = [
        f"fire drill {verdict} against {report.site}: {report.files} files "
        f"({report.bytes:,} bytes) from {report.snapshots} snapshots in {report.duration_s:.1f} s",
        f"  {report.compared_with_source} compared with the source, "
        f"{report.verified_by_chunks} verified by chunk ids; "
        f"{report.mismatches} mismatches, {report.errors} errors",
    ]
    lines += [f"  problem: {p}" for p in report.problems]
    return "\n".join(lines)
