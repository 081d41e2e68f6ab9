"""`dicomvault forget`, `undelete`, `prune` and `stats`: retention and space.

Owns the options (restic's `--keep-*`, `--group-by`, `--dry-run`), turning snapshots into the
policy's input, and the report (kept and removed, each with its reasons). The policy is
`engine.forget_policy`; scheduling, the undelete window and destroying are the backend's (a chunk
server's `server.deletion`, or a local repository's trash folder). Must not decide retention
itself or delete anything but through the backend.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from client.cli_common import emit, open_backend, with_repo
from client.repository import Repository
from client.retention import protect
from engine.backend import StatsReceiver
from engine.catalogue import SnapshotBody
from engine.errors import NotFound, ObjectNotFound, UsageError
from engine.forget_policy import (
    Decision,
    KeepPolicy,
    SnapshotInfo,
    apply_policy,
    parse_group_by,
    parse_keep_within,
)
from engine.ids import SnapshotId
from engine.prune_plan import parse_max_unused
from engine.retention import RetentionPolicy, load_policy

RULES = ("last", "hourly", "daily", "weekly", "monthly", "yearly")


def forget_parsers(cmd: Callable[[str, str], argparse.ArgumentParser]) -> None:
    c = cmd(
        "forget",
        "remove snapshots by id or by a keep policy (as restic's); with a chunk server the "
        "removal is only scheduled (admin token) and can be undone with `undelete` until the "
        "server's undelete window (default 14 days) has passed",
    )
    c.add_argument("snapshots", nargs="*", metavar="SNAPSHOT", help="snapshot id or prefix")
    for rule in RULES:
        what = "N newest snapshots" if rule == "last" else f"newest of each of N {rule} periods"
        c.add_argument(
            f"--keep-{rule}", type=int, default=0, metavar="N", help=f"keep the {what} (-1: all)"
        )
    c.add_argument(
        "--keep-within",
        metavar="DURATION",
        help="keep snapshots younger than DURATION (e.g. 1y6m, 30d, 12h) before the newest one",
    )
    c.add_argument(
        "--keep-tag", action="append", default=[], metavar="TAG", help="keep tagged snapshots"
    )
    c.add_argument(
        "--group-by",
        default="host,paths",
        metavar="FIELDS",
        help="apply the policy per group of host, paths, tags (default host,paths; '' for one)",
    )
    c.add_argument(
        "--policy",
        metavar="TOML",
        help="clinical retention policy ([retention] default_years, [retention.modality] MG = "
        "10, [retention.minors] until_age, plus_years): instances still under retention that "
        "only removed snapshots hold are first kept in a retention snapshot",
    )
    c.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    c = cmd(
        "undelete",
        "bring back snapshots that forget removed, while the undelete window lasts; with no "
        "SNAPSHOT, list what can be brought back",
    )
    c.add_argument("snapshots", nargs="*", metavar="SNAPSHOT", help="snapshot id or prefix")
    c.add_argument("--all", action="store_true", help="bring back every scheduled snapshot")
    c = cmd(
        "prune",
        "reclaim the space of chunks no snapshot references: delete packs without a live "
        "chunk, repack the ones with most unused bytes (admin token on a chunk server; safe "
        "while other machines back up; resumable; one prune at a time; a pack the server "
        "lost is reported absent)",
    )
    c.add_argument(
        "--max-unused",
        default="5%",
        metavar="LIMIT",
        help="unused bytes to tolerate after the prune: a share of the live bytes (5%%, the "
        "default; 0%% repacks every pack with anything unused), a size (200M) or unlimited "
        "(delete whole dead packs only)",
    )
    c.add_argument("--dry-run", action="store_true", help="only say what would be done")
    cmd(
        "stats",
        "what the repository holds: file and unique raw bytes, stored bytes, deduplication "
        "ratio, bytes per DICOM modality, reclaimable by prune, pending deletion (on a chunk "
        "server also reported for the provider's /metrics and status page)",
    )


def policy_from(args: argparse.Namespace) -> KeepPolicy:
    within = parse_keep_within(args.keep_within) if args.keep_within else None
    counts = {rule: getattr(args, f"keep_{rule}") for rule in RULES}
    return KeepPolicy(**counts, within=within, tags=tuple(args.keep_tag))


def info(sid: SnapshotId, body: SnapshotBody) -> SnapshotInfo:
    when = datetime.fromisoformat(body.time).astimezone(UTC).replace(tzinfo=None)
    return SnapshotInfo(sid.hex(), when, body.host, tuple(body.paths), tuple(body.tags))


def _row(d: Decision) -> dict[str, Any]:
    s = d.snapshot
    reasons = d.reasons or ["matched no keep rule"]
    return {"id": s.id, "time": s.time.isoformat() + "Z", "host": s.host, "paths": list(s.paths),
            "tags": list(s.tags), "reasons": reasons}  # fmt: skip


async def decide(args: argparse.Namespace, repo: Repository) -> list[Decision]:
    """Every snapshot's fate: by the names given, else by the policy."""
    policy = policy_from(args)
    snaps = await repo.snapshots()
    if args.snapshots:
        if not policy.empty():
            raise UsageError("name snapshots or give a --keep-* policy, not both")
        named = {await repo.resolve(name) for name in args.snapshots}  # NotFound: exit 16
        return [
            Decision(info(sid, body), sid not in named,
                     [] if sid not in named else ["named on the command line"])
            for sid, _, body in snaps
        ]  # fmt: skip
    return apply_policy([info(sid, body) for sid, _, body in snaps], policy,
                        parse_group_by(args.group_by))  # fmt: skip


def _policy(path: str | None) -> RetentionPolicy | None:
    if path is None:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read retention policy {path}: {e}") from None
    return load_policy(text, path)


async def cmd_forget(args: argparse.Namespace) -> int:
    retention = _policy(args.policy)  # a bad file fails before the repository is opened

    async def run(repo: Repository) -> int:
        decisions = await decide(args, repo)
        removed = [d for d in decisions if not d.keep]
        removed_ids = [SnapshotId.parse(d.snapshot.id) for d in removed]
        kept_ids = [SnapshotId.parse(d.snapshot.id) for d in decisions if d.keep]
        kept_back = None
        if retention is not None and removed:
            today = datetime.now(UTC).date()
            source = Path(args.policy).name
            kept_back = await protect(repo, removed_ids, kept_ids, retention, today,
                                      source=source, dry_run=args.dry_run)  # fmt: skip
        scheduled: list[dict[str, Any]] = []
        if removed and not args.dry_run:
            scheduled = await repo.backend.forget(removed_ids)
        doc = {
            "dry_run": args.dry_run,
            "kept": [_row(d) for d in decisions if d.keep],
            "removed": [_row(d) for d in removed],
            "scheduled": scheduled,
            "retention": kept_back.as_json() if kept_back is not None else None,
        }
        emit(args, doc, _text(doc))
        return 0

    return await with_repo(args, run)


def _text(doc: dict[str, Any]) -> str:
    kept_back = doc["retention"]
    lines = []
    if kept_back and kept_back["instances"]:
        where = (
            f"retention snapshot {kept_back['snapshot'][:8]}"
            if kept_back["snapshot"]
            else ("a retention snapshot (not written: dry run)")
        )
        lines.append(f"{kept_back['instances']} instances still under retention kept in {where}")
    lines += [f"keep   {r['id'][:8]}  {r['time']}  {', '.join(r['reasons'])}" for r in doc["kept"]]
    verb = "would remove" if doc["dry_run"] else "remove"
    lines += [f"{verb} {r['id'][:8]}  {r['time']}" for r in doc["removed"]]
    if doc["scheduled"]:
        until = max(s["purge_after"] for s in doc["scheduled"])
        lines.append(
            f"{len(doc['scheduled'])} snapshots scheduled for deletion; `dicomvault undelete` "
            f"brings them back until {_iso(until)}"
        )
    return "\n".join(lines) or "no snapshots"


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def pending_line(doc: dict[str, Any]) -> str:
    """One row of `undelete`'s listing; a row the purge met under Object Lock
    (`locked_until`) is purged already and says so."""
    head = f"{doc['id'][:8]}  scheduled {_iso(doc['scheduled'])}"
    if doc.get("locked_until") is not None:
        return (
            f"{head}  purged, can no longer be undone; Object Lock keeps it until "
            f"{_iso(doc['locked_until'])}"
        )
    return f"{head}  destroyed after {_iso(doc['purge_after'])}"


async def cmd_undelete(args: argparse.Namespace) -> int:
    backend = open_backend(args)  # no passphrase: the server acts on names alone
    try:
        if args.all or args.snapshots:
            try:
                docs = await backend.undelete(None if args.all else args.snapshots)
            except ObjectNotFound as e:  # the server's 404: no such scheduled snapshot
                raise NotFound(str(e)) from None
            text = "\n".join(f"restored {d['id'][:8]}" for d in docs) or "nothing to restore"
            emit(args, {"restored": docs}, text)
        else:
            docs = await backend.pending_deletions()
            text = "\n".join(pending_line(d) for d in docs)
            emit(args, {"pending": docs}, text or "nothing scheduled for deletion")
    finally:
        await backend.close()
    return 0


async def cmd_prune(args: argparse.Namespace) -> int:
    from client.prune import prune

    limit = parse_max_unused(args.max_unused)

    async def run(repo: Repository) -> int:
        report = await prune(repo, max_unused=limit, dry_run=args.dry_run)
        doc = report.as_json()
        verb = "would delete" if args.dry_run else "scheduled for deletion"
        text = (
            f"{doc['snapshots']} snapshots, {doc['chunks_live']} live chunks; {doc['packs']} "
            f"packs, {doc['bytes_total']:,} bytes, {doc['bytes_unused']:,} unused; {verb} "
            f"{doc['packs_deleted']} packs and repack {doc['packs_repacked']} "
            f"({doc['bytes_rewritten']:,} bytes rewritten)"
        )
        if not args.dry_run:
            text += f"; {doc['bytes_reclaimed']:,} bytes reclaimed once the undelete window ends"
        if report.kept:
            text += f"; {len(report.kept)} packs kept for backups that ran meanwhile"
        if report.absent:
            text += f"; {len(report.absent)} packs already gone at the server: " + ", ".join(
                report.absent
            )
        emit(args, doc, text)
        return 0

    return await with_repo(args, run)


async def cmd_stats(args: argparse.Namespace) -> int:
    from client.stats import stats

    async def run(repo: Repository) -> int:
        s = await stats(repo)
        doc = s.as_json()
        if isinstance(repo.backend, StatsReceiver):
            await repo.backend.report_stats(doc)
        lines = [
            f"snapshots:         {s.snapshots} ({s.files} files, {s.files_bytes:,} bytes)",
            f"raw (unique):      {s.raw_bytes:,} bytes in {s.chunks} chunks",
            f"stored:            {s.stored_bytes:,} bytes in {s.packs} packs",
            f"dedup ratio:       {s.dedup_ratio}",
            f"reclaimable:       {s.reclaimable_bytes:,} bytes (dicomvault prune --max-unused 0%)",
            f"pending deletion:  {s.pending_deletion_bytes:,} bytes "
            f"({s.pending_deletion_objects} objects)",
        ] + [f"  {m:<16} {n:,} bytes" for m, n in doc["modalities"].items()]
        emit(args, doc, "\n".join(lines))
        return 0

    return await with_repo(args, run)
