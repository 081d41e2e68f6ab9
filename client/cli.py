"""The `dicomvault` command line: builds the parser, runs one command, and maps every error to a
one-line message and an exit code in one place. The repository commands live here; `find` and
DICOM restore in `client.cli_dicom`, `agent`/`status`/`drill` in `client.cli_agent`, and the
shared plumbing (the only code that reads the environment) in `client.cli_common`.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import os
import sys
from argparse import SUPPRESS
from collections.abc import Callable, Coroutine
from datetime import datetime
from pathlib import Path
from select import POLLERR, POLLOUT, poll
from typing import Any

from client import audit
from client.archive import owners, shown_path, snapshot_where, union
from client.backup import Backup
from client.check import check
from client.cli_agent import agent_parsers, cmd_agent, cmd_drill, cmd_status, drill_parser
from client.cli_audit import audit_parser, cmd_audit
from client.cli_common import (
    EXIT_PARTIAL,
    as_of_option,
    emit,
    kdf_from_args,
    kdf_options,
    one_of_snapshot_or_as_of,
    open_backend,
    progress,
    read_passphrase,
    with_repo,
)
from client.cli_dicom import (
    cmd_find,
    dicom_restore_options,
    find_options,
    restore_selection,
    restore_to_pacs,
)
from client.cli_forget import cmd_forget, cmd_prune, cmd_stats, cmd_undelete, forget_parsers
from client.cli_key import cmd_key, key_parser
from client.cli_serve import cmd_dicom_serve, serve_parser
from client.find import (
    snapshot_holding,
)
from client.heap import bound_heap
from client.progress import Progress, scan_totals
from client.repository import Repository
from client.restore import RestoreIncomplete, Restorer, RestoreSummary, catalogue
from client.restore_target import Overwrite, check_target
from engine.backend import Replicated
from engine.blob import Codec
from engine.catalogue import Entry, SnapshotBody
from engine.errors import CheckFailed, DicomvaultError, NotFound, UsageError
from engine.ids import SnapshotId
from engine.repoconfig import init_repository

EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader of stdout went away

ENV_HELP = """environment:
  DICOMVAULT_REPO           repository: a local path or http(s)://host:port/NAME
  DICOMVAULT_PASSWORD_FILE  file whose first line is the passphrase
  DICOMVAULT_PASSWORD       the passphrase itself (prefer the file)
  DICOMVAULT_TOKEN          bearer token for a chunk server
  DICOMVAULT_CACHE_DIR      where the local index lives (default ~/.cache/dicomvault)
  DICOMVAULT_PROGRESS_INTERVAL  seconds between JSON progress lines on stderr, printed when
                            stderr is not a terminal or with --json (default 10)
  DICOMVAULT_TEST_CHEAP_KDF set to 1 to let `init` use Argon2id below the safe floor
                            (19 MiB, 2 passes): tests and benchmarks only

exit codes: 0 ok, 1 unexpected error, 2 usage, 3 backup done with files skipped,
  10 no repository, 11 repository exists, 12 wrong passphrase, 13 integrity error,
  14 storage error, 15 permission denied, 16 no such snapshot, 17 check found problems,
  18 a DICOM peer did not store every instance, or no agent is running (status),
  19 a fire drill found a mismatch, 20 restore completed but some files failed (listed on
  stderr and in --json errors), 21 escrow shares too few, mistyped or another repository's,
  22 recovery kit unreadable, damaged or another repository's, 130 interrupted (Ctrl-C),
  141 stdout's reader went away (e.g. `| head`), quietly"""


def _version() -> str:
    try:
        return importlib.metadata.version("dicomvault")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown (not installed)"


def _global_options(p: argparse._ActionsContainer, default: Any = None) -> None:
    """The options every command takes, before or after its name (`snapshots -r X`, as restic).
    A subcommand's copy defaults to SUPPRESS so it never hides a value given before the name."""
    p.add_argument(
        "-r", "--repo", default=default, help="repository location (env DICOMVAULT_REPO)"
    )
    p.add_argument(
        "-p",
        "--password-file",
        default=default,
        help="passphrase file (env DICOMVAULT_PASSWORD_FILE)",
    )
    p.add_argument(
        "--token",
        default=default,
        metavar="TOKEN",
        help="chunk-server token (env DICOMVAULT_TOKEN); write --token=TOKEN: tokens minted "
        "before the dv_ prefix may start with '-'",
    )
    p.add_argument(
        "--cacert", default=default, help="CA certificate to trust for an https repository"
    )
    p.add_argument(
        "--retry-for",
        default=default,
        metavar="DURATION",
        help="how long a call to a chunk server that has answered once is retried through an "
        "outage, e.g. 30s, 5m (default 5m; 0: fail at once); a server that never answered "
        "fails at once with the cause",
    )
    p.add_argument(
        "--cache-dir", default=default, help="local index folder (env DICOMVAULT_CACHE_DIR)"
    )
    p.add_argument(
        "--limit-upload",
        default=default,
        metavar="RATE",
        help="upload limit to a chunk server, e.g. 4Mbit, 500KiB (default: unlimited)",
    )
    p.add_argument(
        "--upload-schedule",
        default=default,
        metavar="TOML",
        help="file with an [upload] table: rate and [[upload.windows]] (days, start, end, "
        "rate); re-read while running, so edits apply without a restart",
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dicomvault",
        description="Deduplicating, encrypted backup for medical imaging.",
        epilog=ENV_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    _global_options(p)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, help: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help, description=help)
        c.add_argument("--json", action="store_true", help="print one JSON document")
        _global_options(c.add_argument_group("global options"), argparse.SUPPRESS)
        return c

    kdf_options(cmd("init", "create a repository"))
    c = cmd("backup", "back up files and folders into a new snapshot")
    c.add_argument("paths", nargs="+", metavar="PATH")
    c.add_argument("--tag", action="append", default=[], help="tag the snapshot (repeatable)")
    c.add_argument("--host", help="host name recorded in the snapshot")
    c.add_argument(
        "--image-codec",
        choices=["auto", "jpegls", "jpegxl", "none"],
        default="auto",
        help="lossless codec for native DICOM pixel data (auto: JPEG-XL for 8-bit colour, "
        "JPEG-LS for the rest; none: zstd)",
    )
    cmd("snapshots", "list snapshots (an agent's by the sources its batch came from)")
    c = cmd("ls", "list the files in a snapshot, or in the whole archive as of a time")
    c.add_argument("snapshot", nargs="?", help="snapshot id, unique prefix, or 'latest'")
    as_of_option(c, "list every path of every snapshot up to TIME (newest version each)")
    c = cmd("restore", "restore a snapshot into a folder, or one study into a folder or a PACS")
    c.add_argument(
        "snapshot",
        nargs="?",
        help="snapshot id, unique prefix, or 'latest' (with --study or --series, default: the "
        "newest snapshot holding it)",
    )
    c.add_argument(
        "--target", help="folder to restore into (nothing is written outside it or through a link)"
    )
    c.add_argument("--include", action="append", default=[], help="restore only this path")
    c.add_argument(
        "--overwrite",
        choices=[o.value for o in Overwrite],
        default=Overwrite.ALWAYS.value,
        help="a file already in the target: always replace it (default, as restic), if-changed "
        "(keep it when size and mtime match), if-newer (only by a newer one), never",
    )
    c.add_argument(
        "--delete",
        action="store_true",
        help="remove files and folders in the target (within --include) that the snapshot "
        "does not hold",
    )
    as_of_option(c, "restore every path of every snapshot up to TIME (newest version each)")
    dicom_restore_options(c)
    c = cmd("find", "search the snapshots' DICOM catalogue for studies")
    find_options(c)
    c = cmd(
        "check",
        "verify the repository's structure (and with --read-data, every byte); with several "
        "sites, an object one site lost that another served is a problem too (exit 17)",
    )
    c.add_argument("--read-data", action="store_true", help="read and verify every pack")
    cmd("repair-index", "rebuild the local index from the packs")
    c = cmd(
        "quarantine",
        "with an admin token: move a planted or damaged pack, snapshot or key object out of a "
        "chunk-server repository (the server keeps it in its quarantine folder and logs it)",
    )
    c.add_argument("kind", choices=["pack", "snapshot", "key"])
    c.add_argument("id", help="pack id, snapshot id or key object name (as a warning names it)")
    c.add_argument("--reason", default="", help="why, for the server's quarantine log")
    drill_parser(cmd)
    agent_parsers(cmd)
    serve_parser(cmd)
    key_parser(cmd, lambda k: _global_options(k.add_argument_group("global options"), SUPPRESS))
    audit_parser(cmd)
    forget_parsers(cmd)
    return p


async def cmd_init(args: argparse.Namespace) -> int:
    kdf = kdf_from_args(args)
    backend = open_backend(args)
    try:
        config = await init_repository(backend, read_passphrase(args), kdf)
    finally:
        await backend.close()
    emit(
        args,
        {"id": config.repo_id, "repo": backend.location},
        f"created repository {config.repo_id} at {backend.location}",
    )
    return 0


async def cmd_backup(args: argparse.Namespace) -> int:
    codec = {"auto": None, "jpegls": Codec.JPEGLS, "jpegxl": Codec.JPEGXL, "none": Codec.ZSTD}[
        args.image_codec
    ]
    for path in args.paths:
        if not os.path.lexists(path):
            raise UsageError(f"{path}: no such file or folder")

    async def run(repo: Repository) -> int:
        with progress(args, "backup") as shown:
            scan_totals(args.paths, shown)
            backup = Backup(
                repo, image_codec=codec, host=args.host,
                progress=lambda s, path: shown.update(s.files, s.bytes_total, path),
            )  # fmt: skip
            summary = await backup.run(args.paths, args.tag)
        for err in summary.errors:
            print(f"warning: {err}", file=sys.stderr)
        s = summary
        emit(
            args,
            s.as_json(),
            f"snapshot {s.snapshot[:8]} saved: {s.files} files, {s.bytes_total:,} bytes; "
            f"read {s.bytes_read:,}, new {s.chunks_new} chunks / {s.bytes_new:,} bytes, "
            f"stored {s.bytes_stored:,} bytes in {s.packs} packs"
            + (f", uploaded {s.bytes_uploaded:,} bytes" if s.bytes_uploaded else "")
            + f", {s.duration_s:.1f} s",
        )
        return EXIT_PARTIAL if s.errors else 0

    return await with_repo(args, run)


async def cmd_snapshots(args: argparse.Namespace) -> int:
    async def run(repo: Repository) -> int:
        rows = [
            {
                "id": sid.hex(),
                "time": body.time,
                "host": body.host,
                "paths": body.paths,
                "sources": body.sources,
                "where": snapshot_where(body),
                "tags": body.tags,
                **body.stats,
            }
            for sid, _, body in await repo.snapshots()
        ]
        # Per site (this server and each replication peer): is the snapshot complete there?
        backend = repo.backend
        sites = await backend.snapshot_sites() if isinstance(backend, Replicated) else None
        for r in rows:
            if sites is not None:
                r["sites"] = sites.get(SnapshotId.parse(r["id"]), {})
        lines = [
            f"{r['id'][:8]}  {r['time']}  {r['host']}  {r['files']} files  {r['where']}"
            + "".join(f"  {s}:{'yes' if ok else 'no'}" for s, ok in r.get("sites", {}).items())
            for r in rows
        ]
        down: list[str] = []
        if isinstance(backend, Replicated) and sites is not None:
            down = unreachable_peers(await backend.replication_status())
        for warning in down:
            print(f"dicomvault: warning: {warning}", file=sys.stderr)
        emit(
            args, {"snapshots": rows, "unreachable_peers": down}, "\n".join(lines) or "no snapshots"
        )
        return 0

    return await with_repo(args, run)


def unreachable_peers(status: dict[str, Any] | None) -> list[str]:
    """One sentence per peer the server has failed to reach or trust past its alert grace
    (the server's `peer_unreachable`): its `no` markers may be stale, not just pending."""
    out = []
    for peer in (status or {}).get("peers", []):
        if peer.get("unreachable"):
            since = datetime.fromtimestamp(float(peer["down_since"])).astimezone()
            out.append(
                f"{peer['name']}:unreachable since {since.isoformat(timespec='minutes')} "
                f"({peer.get('reason')}): the provider has been alerted"
            )
    return out


async def cmd_ls(args: argparse.Namespace) -> int:
    when = one_of_snapshot_or_as_of(args)

    async def run(repo: Repository) -> int:
        if when is not None:
            rows = [_ls_row(e, body, sid) async for sid, body, e in union(repo, when)]
        else:
            _, body = await repo.load_snapshot(await repo.resolve(args.snapshot))
            rows = [_ls_row(e, body) async for e in catalogue(repo, body)]
        emit(
            args,
            {"entries": rows},
            "\n".join(f"{r['type'][0]} {r['size']:>12} /{r['shown']}" for r in rows),
        )
        return 0

    return await with_repo(args, run)


def _ls_row(entry: Entry, body: SnapshotBody, snapshot: SnapshotId | None = None) -> dict[str, Any]:
    """An entry as `ls` shows it: without chunks, with its readable name (and, in an as-of
    listing, the snapshot it comes from)."""
    row = entry.to_json()
    row.pop("chunks", None)
    row["shown"] = shown_path(entry, body)
    if snapshot is not None:
        row["snapshot"] = snapshot.hex()
    return row


async def cmd_restore(args: argparse.Namespace) -> int:
    from client.topacs import Peer, check_aet

    select = restore_selection(args)
    peer = Peer.parse(args.to_pacs) if args.to_pacs else None
    check_aet(args.calling_aet)

    when = one_of_snapshot_or_as_of(args) if args.as_of is not None else None
    if when is not None and (select is not None or peer is not None or args.delete):
        raise UsageError("--as-of restores whole snapshots' files: not with --study, "
                         "--series, --to-pacs or --delete")  # fmt: skip

    async def run(repo: Repository) -> int:
        if when is not None:
            await audit.record(repo, "restore", snapshot=f"as of {when.isoformat()}",
                               detail=f"into {args.target}")  # fmt: skip
            return await _restore_as_of(args, repo, when)
        snapshot = await repo.resolve(args.snapshot) if args.snapshot else None
        if select is not None:
            snapshot = await snapshot_holding(repo, select, snapshot)
        assert snapshot is not None
        await audit_restore(args, repo, snapshot)
        if peer is not None and select is not None:
            return await restore_to_pacs(args, repo, snapshot, select, peer)
        return await _restore_files(args, repo, snapshot, select)

    return await with_repo(args, run)


async def audit_restore(args: argparse.Namespace, repo: Repository, snapshot: SnapshotId) -> None:
    """The audit event of a restore, recorded before anything is opened."""
    action = (
        "restore-to-pacs"
        if args.to_pacs
        else "restore-study"
        if args.study or args.series
        else "restore"
    )
    await audit.record(
        repo, action, snapshot=snapshot.hex(), studies=[args.study] if args.study else [],
        series=[args.series] if args.series else [],
        detail=f"to {args.to_pacs}" if args.to_pacs else f"into {args.target}",
    )  # fmt: skip


async def _restore_files(
    args: argparse.Namespace,
    repo: Repository,
    snapshot: SnapshotId,
    select: Callable[[Entry], bool] | None,
) -> int:
    check_target(Path(args.target))  # made only once the repository has opened
    with progress(args, "restore") as shown:
        restorer = Restorer(
            repo, Path(args.target), includes=args.include, select=select,
            progress=lambda s, path: shown.update(s.files, s.bytes_written, path),
            overwrite=Overwrite(args.overwrite), delete=args.delete,
        )  # fmt: skip
        totals = asyncio.create_task(_restore_totals(repo, restorer, snapshot, shown))
        try:
            s = await restorer.run(snapshot)
        finally:  # totals are a courtesy: their failure (the restore reports its own) is dropped
            totals.cancel()
            await asyncio.gather(totals, return_exceptions=True)
    if select is not None and s.files == 0 and not s.kept and not s.errors:
        raise NotFound(f"snapshot {snapshot.short()} holds no file of that study or series")
    return _report_restored(args, s)


async def _restore_as_of(args: argparse.Namespace, repo: Repository, when: datetime) -> int:
    """The archive as of `when`: each snapshot restores the paths it is the newest holder of."""
    check_target(Path(args.target))
    total = RestoreSummary(snapshot=f"as of {when.isoformat()}")
    with progress(args, "restore") as shown:
        for sid, select in (await owners(repo, when)).items():
            restorer = Restorer(
                repo, Path(args.target), includes=args.include, select=select,
                progress=lambda s, path: shown.update(
                    total.files + s.files, total.bytes_written + s.bytes_written, path
                ),
                overwrite=Overwrite(args.overwrite),
            )  # fmt: skip
            total.add(await restorer.run(sid))
    return _report_restored(args, total)


async def _restore_totals(
    repo: Repository, restorer: Restorer, snapshot: SnapshotId, shown: Progress
) -> None:
    """Totals for the progress display: a whole snapshot's from its stats, else by a catalogue
    pass alongside the restore (as restic's)."""
    if restorer.partial:
        shown.set_total(*await restorer.planned(snapshot))
    else:
        stats = (await repo.load_snapshot(snapshot))[1].stats
        shown.set_total(stats.get("files"), stats.get("bytes"))


def _report_restored(args: argparse.Namespace, s: RestoreSummary) -> int:
    """Each failed entry on stderr, the summary on stdout, then exit 20 if any failed."""
    for err in s.errors:
        print(f"error: {err}", file=sys.stderr)
    emit(args, s.as_json(), _restored_text(s, args.target))
    if s.errors:
        raise RestoreIncomplete(f"restore completed, but {len(s.errors)} entries failed")
    return 0


def _restored_text(s: RestoreSummary, target: str) -> str:
    changes = [f"replaced {s.overwritten} existing"] if s.overwritten else []
    changes += [f"kept {s.kept} existing (--overwrite)"] if s.kept else []
    changes += [f"deleted {s.deleted} not in the snapshot"] if s.deleted else []
    return (
        f"restored {s.files} files, {s.bytes_written:,} bytes into {target}"
        + (f" ({', '.join(changes)})" if changes else "")
        + f" in {s.duration_s:.1f} s"
    )


async def cmd_check(args: argparse.Namespace) -> int:
    async def run(repo: Repository) -> int:
        with progress(args, "check", unit="packs") as shown:
            report = await check(repo, read_data=args.read_data, progress=shown)
        for problem in report.problems:
            print(f"error: {problem}", file=sys.stderr)
        emit(
            args,
            report.as_json(),
            f"checked {report.packs} packs, {report.snapshots} snapshots"
            + (f", {report.bytes_verified:,} bytes read" if args.read_data else "")
            + (f": {len(report.problems)} problems" if report.problems else ": no problems"),
        )
        if report.problems:
            raise CheckFailed(f"check found {len(report.problems)} problems")
        return 0

    return await with_repo(args, run)


async def cmd_repair_index(args: argparse.Namespace) -> int:
    async def run(repo: Repository) -> int:
        repo.index.clear()
        packs = await repo.sync_index()
        emit(
            args,
            {"packs": packs, "chunks": repo.index.chunk_count()},
            f"index rebuilt from {packs} packs: {repo.index.chunk_count()} chunks",
        )
        return 0

    return await with_repo(args, run)


async def cmd_quarantine(args: argparse.Namespace) -> int:
    backend = open_backend(args)  # no passphrase: the server acts on names alone
    try:
        entry = await backend.quarantine(args.kind, args.id, args.reason)
    finally:
        await backend.close()
    emit(args, entry, f"quarantined {entry.get('object', args.id)}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "init": cmd_init,
    "backup": cmd_backup,
    "snapshots": cmd_snapshots,
    "ls": cmd_ls,
    "restore": cmd_restore,
    "find": cmd_find,
    "check": cmd_check,
    "repair-index": cmd_repair_index,
    "quarantine": cmd_quarantine,
    "drill": cmd_drill,
    "agent": cmd_agent,
    "status": cmd_status,
    "dicom-serve": cmd_dicom_serve,
    "key": cmd_key,
    "audit": cmd_audit,
    "forget": cmd_forget,
    "undelete": cmd_undelete,
    "prune": cmd_prune,
    "stats": cmd_stats,
}


def main(argv: list[str] | None = None) -> int:
    bound_heap()  # large frames go back to the system when freed (client/heap.py)
    args = _parser().parse_args(argv)
    try:
        code = asyncio.run(COMMANDS[args.command](args))
        sys.stdout.flush()  # here, so a reader that went away is met below, not at exit
        return code
    except BrokenPipeError as e:  # stdout's reader left, or a socket broke (a real failure)
        return _reader_gone() if _stdout_reader_gone() else _internal_error(e)
    except DicomvaultError as e:
        print(f"dicomvault: {e}", file=sys.stderr)
        return e.exit_code
    except Exception as e:
        return _internal_error(e)
    except KeyboardInterrupt:
        print("\ndicomvault: interrupted", file=sys.stderr)  # never at the end of a progress line
        return EXIT_INTERRUPTED


def _internal_error(e: Exception) -> int:
    """A bug: still one line, with the traceback on request."""
    if os.environ.get("DICOMVAULT_DEBUG"):
        raise e
    print(
        f"dicomvault: internal error: {type(e).__name__}: {e} "
        "(set DICOMVAULT_DEBUG=1 for a traceback)",
        file=sys.stderr,
    )
    return 1


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe nobody reads any more (poll reports POLLERR on its write end)."""
    try:
        poller = poll()
        poller.register(sys.stdout.fileno(), POLLOUT)
        return any(events & POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError):
        return False


def _reader_gone() -> int:
    """stdout's reader closed the pipe (`dicomvault find | head`): stop quietly, as a Unix tool
    killed by SIGPIPE would, and point stdout at /dev/null so the exit flush cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
