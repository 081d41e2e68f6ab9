"""The `dicomvault` command line: parses arguments and the environment, runs one command, and
maps every error to a one-line message and an exit code in one place.

Only this module (and `__main__`) reads the environment; everything below takes explicit values.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from client.backup import Backup
from client.check import check
from client.find import (
    DateRange,
    Query,
    find,
    parse_attr,
    render_text,
    snapshot_holding,
    study_selector,
)
from client.progress import Progress
from client.ratelimit import RateLimiter, Schedule, ScheduleFile, parse_rate
from client.repository import Repository, init_repository
from client.restore import Restorer, catalogue
from engine.backend import Backend, LocalBackend
from engine.blob import Codec
from engine.catalogue import Entry
from engine.errors import CheckFailed, DicomvaultError, NotFound, UsageError
from engine.ids import SnapshotId
from engine.keys import KdfParams
from engine.store.local import LocalStore

if TYPE_CHECKING:  # pydicom and pynetdicom cost ~0.5 s at start-up: loaded only to send a study
    from client.topacs import InstanceResult, Peer

EXIT_INTERRUPTED = 130

ENV_HELP = """environment:
  DICOMVAULT_REPO           repository: a local path or http(s)://host:port/NAME
  DICOMVAULT_PASSWORD_FILE  file whose first line is the passphrase
  DICOMVAULT_PASSWORD       the passphrase itself (prefer the file)
  DICOMVAULT_TOKEN          bearer token for a chunk server
  DICOMVAULT_CACHE_DIR      where the local index lives (default ~/.cache/dicomvault)

exit codes: 0 ok, 1 unexpected error, 2 usage, 3 backup done with files skipped,
  10 no repository, 11 repository exists, 12 wrong passphrase, 13 integrity error,
  14 storage error, 15 permission denied, 16 no such snapshot, 17 check found problems,
  18 a DICOM peer did not store every instance, 19 a fire drill found a mismatch"""

EXIT_PARTIAL = 3


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dicomvault",
        description="Deduplicating, encrypted backup for medical imaging.",
        epilog=ENV_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-r", "--repo", help="repository location (env DICOMVAULT_REPO)")
    p.add_argument("-p", "--password-file", help="passphrase file (env DICOMVAULT_PASSWORD_FILE)")
    p.add_argument("--token", help="chunk-server token (env DICOMVAULT_TOKEN)")
    p.add_argument("--cacert", help="CA certificate to trust for https repositories")
    p.add_argument("--cache-dir", help="local index folder (env DICOMVAULT_CACHE_DIR)")
    p.add_argument(
        "--limit-upload",
        metavar="RATE",
        help="upload limit to a chunk server, e.g. 4Mbit, 500KiB (default: unlimited)",
    )
    p.add_argument(
        "--upload-schedule",
        metavar="TOML",
        help="file with an [upload] table: rate and [[upload.windows]] (days, start, end, "
        "rate); re-read while running, so edits apply without a restart",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, help: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help, description=help)
        c.add_argument("--json", action="store_true", help="print one JSON document")
        return c

    c = cmd("init", "create a repository")
    c.add_argument("--kdf-memory-mib", type=float, default=64, help="Argon2id memory (MiB)")
    c.add_argument("--kdf-iterations", type=int, default=3, help="Argon2id passes")
    c = cmd("backup", "back up files and folders into a new snapshot")
    c.add_argument("paths", nargs="+", metavar="PATH")
    c.add_argument("--tag", action="append", default=[], help="tag the snapshot (repeatable)")
    c.add_argument("--host", help="host name recorded in the snapshot")
    c.add_argument(
        "--image-codec",
        choices=["jpegls", "jpegxl", "none"],
        default="jpegls",
        help="lossless codec for native DICOM pixel data (none: zstd)",
    )
    cmd("snapshots", "list snapshots")
    c = cmd("ls", "list the files in a snapshot")
    c.add_argument("snapshot", help="snapshot id, unique prefix, or 'latest'")
    c = cmd("restore", "restore a snapshot into a folder, or one study into a folder or a PACS")
    c.add_argument(
        "snapshot",
        nargs="?",
        help="snapshot id, unique prefix, or 'latest' (with --study or --series, default: the "
        "newest snapshot holding it)",
    )
    c.add_argument("--target", help="folder to restore into")
    c.add_argument("--include", action="append", default=[], help="restore only this path")
    _dicom_restore_options(c)
    c = cmd("find", "search the snapshots' DICOM catalogue for studies")
    _find_options(c)
    c = cmd("check", "verify the repository's structure (and with --read-data, every byte)")
    c.add_argument("--read-data", action="store_true", help="read and verify every pack")
    cmd("repair-index", "rebuild the local index from the packs")
    _drill_parser(cmd)
    _agent_parsers(cmd)
    return p


def _agent_parsers(cmd: Callable[[str, str], argparse.ArgumentParser]) -> None:
    c = cmd("agent", "run the practice agent: receive DICOM, watch folders, back up what arrives")
    c.add_argument(
        "--config",
        metavar="TOML",
        help="agent config (see docs/agent.example.toml); "
        "re-read while running for windows, limits and spool thresholds",
    )
    c.add_argument("--spool", metavar="DIR", help="spool folder for received instances and packs")
    c.add_argument(
        "--state-dir",
        metavar="DIR",
        help="ledger and status file folder (env DICOMVAULT_STATE_DIR)",
    )
    c.add_argument("--dicom-listen", metavar="HOST:PORT", help="run a DICOM C-STORE receiver")
    c.add_argument("--ae-title", metavar="AET", help="the receiver's AE title")
    c.add_argument(
        "--watch",
        metavar="DIR",
        action="append",
        default=[],
        help="watch a folder for new and changed files (repeatable)",
    )
    c.add_argument("--name", help="agent name in snapshots and heartbeats (default: host name)")
    c.add_argument(
        "--once",
        action="store_true",
        help="catch up and exit: back up the spool and every new or changed file in the "
        "watched folders as they are now (no listener, no settle wait)",
    )
    c.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    c = cmd("status", "show a running agent's sources, queue, rate, last commit and errors")
    c.add_argument(
        "--state-dir", metavar="DIR", help="the agent's state folder (env DICOMVAULT_STATE_DIR)"
    )
    c.add_argument("--config", metavar="TOML", help="take the state folder from this agent config")


def _drill_parser(cmd: Callable[[str, str], argparse.ArgumentParser]) -> None:
    c = cmd(
        "drill",
        "fire drill: restore a random sample (and every file of the last day) in memory and "
        "compare it with the source files or the recorded chunk ids",
    )
    c.add_argument("--sample-percent", type=float, default=1.0, help="share of files (default 1)")
    c.add_argument("--recent-hours", type=float, default=24.0, help="all files this recent")
    c.add_argument("--max-files", type=int, help="restore at most this many files")
    c.add_argument("--seed", type=int, help="random seed (default: fresh each run)")
    c.add_argument(
        "--site", metavar="URL", help="restore from this site instead, e.g. the peer's repo URL"
    )
    c.add_argument("--site-token", help="token at --site (default: --token; it is replicated)")
    c.add_argument("--agent", help="name in the report (default: the host name)")
    c.add_argument("--state-dir", metavar="DIR", help="append the report to DIR/drills.jsonl")
    c.add_argument("--no-source", action="store_true", help="do not compare with source files")


def open_backend(args: argparse.Namespace) -> Backend:
    location = args.repo or os.environ.get("DICOMVAULT_REPO")
    if not location:
        raise UsageError("no repository given: use --repo or DICOMVAULT_REPO")
    if location.startswith(("http://", "https://")):
        from engine.remote import RemoteBackend
        from engine.retry import RetryingBackend

        token = args.token or os.environ.get("DICOMVAULT_TOKEN")
        if not token:
            raise UsageError("a chunk-server repository needs --token or DICOMVAULT_TOKEN")
        return RetryingBackend(RemoteBackend(location, token, ca_file=args.cacert))
    return LocalBackend(LocalStore(location), location)


def read_passphrase(args: argparse.Namespace) -> bytes:
    path = args.password_file or os.environ.get("DICOMVAULT_PASSWORD_FILE")
    if path:
        try:
            text = Path(path).read_text().splitlines()
        except OSError as e:
            raise UsageError(f"cannot read password file {path}: {e.strerror}") from None
        if not text or not text[0]:
            raise UsageError(f"password file {path} is empty")
        return text[0].encode()
    if "DICOMVAULT_PASSWORD" in os.environ:
        return os.environ["DICOMVAULT_PASSWORD"].encode()
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass("passphrase: ").encode()
    raise UsageError("no passphrase: use --password-file or DICOMVAULT_PASSWORD_FILE")


def cache_root(args: argparse.Namespace) -> Path:
    path = args.cache_dir or os.environ.get("DICOMVAULT_CACHE_DIR")
    return Path(path) if path else Path.home() / ".cache" / "dicomvault"


def rate_limiter(args: argparse.Namespace) -> RateLimiter:
    base = Schedule(default=parse_rate(args.limit_upload))
    if args.upload_schedule:
        path = Path(args.upload_schedule)
        if not path.is_file():
            raise UsageError(f"upload schedule {path} does not exist")
        return RateLimiter(ScheduleFile(path, base))
    return RateLimiter(base)


def emit(args: argparse.Namespace, doc: dict[str, Any], text: str) -> None:
    print(json.dumps(doc, indent=None if args.json else 2) if args.json else text)


async def _with_repo(args: argparse.Namespace, fn: Callable[[Repository], Awaitable[int]]) -> int:
    backend = open_backend(args)
    try:
        repo = await Repository.open(
            backend, read_passphrase(args), cache_root(args), limiter=rate_limiter(args)
        )
    except BaseException:
        await backend.close()
        raise
    try:
        return await fn(repo)
    finally:
        await repo.close()


async def cmd_init(args: argparse.Namespace) -> int:
    memory_kib = int(args.kdf_memory_mib * 1024)
    if memory_kib < 8 or args.kdf_iterations < 1:
        raise UsageError("Argon2id needs --kdf-memory-mib of at least 8 KiB and 1 iteration")
    # Argon2id needs 8 KiB per lane: tiny (test) memory costs get fewer lanes, not an error.
    lanes = min(KdfParams().lanes, memory_kib // 8)
    kdf = KdfParams(iterations=args.kdf_iterations, lanes=lanes, memory_kib=memory_kib)
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
    codec = {"jpegls": Codec.JPEGLS, "jpegxl": Codec.JPEGXL, "none": Codec.ZSTD}[args.image_codec]
    for path in args.paths:
        if not os.path.lexists(path):
            raise UsageError(f"{path}: no such file or folder")

    async def run(repo: Repository) -> int:
        progress = Progress(enabled=None if not args.json else False)
        summary = await Backup(repo, image_codec=codec, progress=progress, host=args.host).run(
            args.paths, args.tag
        )
        progress.done()
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

    return await _with_repo(args, run)


async def cmd_snapshots(args: argparse.Namespace) -> int:
    async def run(repo: Repository) -> int:
        rows = [
            {
                "id": sid.hex(),
                "time": body.time,
                "host": body.host,
                "paths": body.paths,
                "tags": body.tags,
                **body.stats,
            }
            for sid, _, body in await repo.snapshots()
        ]
        # Per site (this server and each replication peer): is the snapshot complete there?
        status = getattr(repo.backend, "snapshot_sites", None)
        sites = await status() if status is not None else None
        for r in rows:
            if sites is not None:
                r["sites"] = sites.get(SnapshotId.parse(r["id"]), {})
        lines = [
            f"{r['id'][:8]}  {r['time']}  {r['host']}  {r['files']} files  {' '.join(r['paths'])}"
            + "".join(f"  {s}:{'yes' if ok else 'no'}" for s, ok in r.get("sites", {}).items())
            for r in rows
        ]
        emit(args, {"snapshots": rows}, "\n".join(lines) or "no snapshots")
        return 0

    return await _with_repo(args, run)


async def cmd_ls(args: argparse.Namespace) -> int:
    async def run(repo: Repository) -> int:
        _, body = await repo.load_snapshot(await repo.resolve(args.snapshot))
        rows = [e.to_json() async for e in catalogue(repo, body)]
        for r in rows:
            r.pop("chunks", None)
        emit(
            args,
            {"entries": rows},
            "\n".join(f"{r['type'][0]} {r['size']:>12} /{r['path']}" for r in rows),
        )
        return 0

    return await _with_repo(args, run)


async def cmd_restore(args: argparse.Namespace) -> int:
    from client.topacs import Peer, check_aet

    select = _restore_selection(args)
    peer = Peer.parse(args.to_pacs) if args.to_pacs else None
    check_aet(args.calling_aet)

    async def run(repo: Repository) -> int:
        snapshot = await repo.resolve(args.snapshot) if args.snapshot else None
        if select is not None:
            snapshot = await snapshot_holding(repo, select, snapshot)
        assert snapshot is not None
        if peer is not None and select is not None:
            return await _restore_to_pacs(args, repo, snapshot, select, peer)
        progress = Progress(enabled=None if not args.json else False)
        restorer = Restorer(
            repo, Path(args.target), includes=args.include, select=select, progress=progress
        )
        s = await restorer.run(snapshot)
        progress.done()
        if select is not None and s.files == 0:
            raise NotFound(f"snapshot {snapshot.short()} holds no file of that study or series")
        emit(
            args,
            s.as_json(),
            f"restored {s.files} files, {s.bytes_written:,} bytes "
            f"into {args.target} in {s.duration_s:.1f} s",
        )
        return 0

    return await _with_repo(args, run)


# DICOM restore and find: the options, their checks, and the two runners.


def _dicom_restore_options(c: argparse.ArgumentParser) -> None:
    c.add_argument("--study", metavar="UID", help="restore only this study's files")
    c.add_argument("--series", metavar="UID", help="restore only this series' files")
    c.add_argument(
        "--to-pacs",
        metavar="AET@HOST:PORT",
        help="send the study by C-STORE, in each instance's own transfer syntax, instead of "
        "writing files",
    )
    c.add_argument("--calling-aet", default="DICOMVAULT", help="our AE title (default DICOMVAULT)")
    c.add_argument("--dicom-timeout", type=float, default=30.0, help="seconds to wait for the peer")


def _restore_selection(args: argparse.Namespace) -> Callable[[Entry], bool] | None:
    """Check the restore arguments; the study/series filter, or None for a plain restore."""
    dicom = bool(args.study or args.series)
    if args.to_pacs and not dicom:
        raise UsageError("--to-pacs needs --study or --series")
    if args.to_pacs and args.target:
        raise UsageError("give either --target or --to-pacs, not both")
    if not args.to_pacs and not args.target:
        raise UsageError("restore needs --target (or --to-pacs with --study)")
    if not dicom and not args.snapshot:
        raise UsageError("restore needs a snapshot (or --study/--series)")
    return study_selector(args.study, args.series) if dicom else None


async def _restore_to_pacs(
    args: argparse.Namespace,
    repo: Repository,
    snapshot: SnapshotId,
    select: Callable[[Entry], bool],
    peer: Peer,
) -> int:
    from client.topacs import SendFailed, send_study

    def report(r: InstanceResult) -> None:
        if not args.json:
            print(f"{'ok    ' if r.ok else 'FAILED'} /{r.path}  {r.sop_instance}  {r.message}")

    s = await send_study(
        repo, snapshot, select, peer, args.calling_aet, timeout=args.dicom_timeout, report=report
    )
    emit(
        args,
        s.as_json(),
        f"sent {s.sent} of {s.instances} instances ({s.bytes_sent:,} bytes) "
        f"to {peer} in {s.duration_s:.1f} s",
    )
    if s.failed:
        raise SendFailed(f"{s.failed} of {s.instances} instances were not stored by {peer}")
    return 0


def _find_options(c: argparse.ArgumentParser) -> None:
    c.add_argument("--patient-name", metavar="PATTERN", help="wildcards * and ?, e.g. 'DOE^J*'")
    c.add_argument("--patient-id", metavar="ID")
    c.add_argument("--birth-date", metavar="YYYYMMDD", help="PatientBirthDate, exact")
    c.add_argument("--study-date", metavar="RANGE", help="YYYYMMDD, or a range A-B, A- or -B")
    c.add_argument("--modality", metavar="MOD", help="e.g. CT, MR (series modality)")
    c.add_argument("--accession", metavar="NUMBER")
    c.add_argument("--study", metavar="UID", help="StudyInstanceUID")
    c.add_argument("--series", metavar="UID", help="SeriesInstanceUID")
    c.add_argument(
        "--attr",
        action="append",
        default=[],
        metavar="KEYWORD=VALUE",
        help="any catalogue attribute, exact (repeatable), e.g. SOPInstanceUID=1.2.3",
    )
    c.add_argument("--snapshot", help="search only this snapshot (default: all)")


_FIND_FLAGS = {
    "patient_id": "PatientID",
    "birth_date": "PatientBirthDate",
    "modality": "Modality",
    "accession": "AccessionNumber",
    "study": "StudyInstanceUID",
    "series": "SeriesInstanceUID",
}


async def cmd_find(args: argparse.Namespace) -> int:
    exact = dict(parse_attr(a) for a in args.attr)
    for flag, keyword in _FIND_FLAGS.items():
        if getattr(args, flag) is not None:
            exact[keyword] = getattr(args, flag)
    date = DateRange.parse(args.study_date) if args.study_date else None
    query = Query(exact, args.patient_name, date)

    async def run(repo: Repository) -> int:
        only = await repo.resolve(args.snapshot) if args.snapshot else None
        result = await find(repo, query, only)
        emit(args, result.as_json(), render_text(result))
        return 0

    return await _with_repo(args, run)


async def cmd_check(args: argparse.Namespace) -> int:
    async def run(repo: Repository) -> int:
        report = await check(repo, read_data=args.read_data)
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

    return await _with_repo(args, run)


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

    return await _with_repo(args, run)


async def cmd_drill(args: argparse.Namespace) -> int:
    import random
    import socket

    from client import drill

    if not 0 <= args.sample_percent <= 100:
        raise UsageError("--sample-percent must be between 0 and 100")
    settings = drill.DrillSettings(args.sample_percent, args.recent_hours, args.max_files)

    async def run(repo: Repository) -> int:
        target, site = repo, _site_name(repo.backend.location)
        if args.site:
            from engine.remote import RemoteBackend

            token = args.site_token or args.token or os.environ.get("DICOMVAULT_TOKEN") or ""
            backend = RemoteBackend(args.site, token, ca_file=args.cacert)
            target, site = drill.site_repository(repo, backend, cache_root(args)), args.site
        try:
            report = await drill.run_drill(
                target, settings, agent=args.agent or socket.gethostname(), site=site,
                rng=random.Random(args.seed), source_root=None if args.no_source else Path("/"),
            )  # fmt: skip
        finally:
            if target is not repo:
                await target.close()
        return await _drill_done(args, repo, report)

    return await _with_repo(args, run)


def _site_name(location: str) -> str:
    return location if location.startswith(("http://", "https://")) else "local"


async def _drill_done(args: argparse.Namespace, repo: Repository, report: Any) -> int:
    from client import drill

    if args.state_dir:
        drill.record(Path(args.state_dir), report)
    try:
        await drill.report_to_server(repo.backend, report)
    except DicomvaultError as e:  # the drill itself is the result; the report is a courtesy
        print(f"warning: drill result not reported to the server: {e}", file=sys.stderr)
    emit(args, report.as_json(), drill.render(report))
    if not report.ok:
        raise drill.DrillFailed(
            f"fire drill failed: {report.mismatches} mismatches, {report.errors} errors"
        )
    return 0


async def cmd_agent(args: argparse.Namespace) -> int:
    from client.agent.cli import run_agent

    return await run_agent(args)


async def cmd_status(args: argparse.Namespace) -> int:
    from client.agent.cli import show_status

    return show_status(args)


COMMANDS: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "init": cmd_init,
    "backup": cmd_backup,
    "snapshots": cmd_snapshots,
    "ls": cmd_ls,
    "restore": cmd_restore,
    "find": cmd_find,
    "check": cmd_check,
    "repair-index": cmd_repair_index,
    "drill": cmd_drill,
    "agent": cmd_agent,
    "status": cmd_status,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return asyncio.run(COMMANDS[args.command](args))
    except DicomvaultError as e:
        print(f"dicomvault: {e}", file=sys.stderr)
        return e.exit_code
    except Exception as e:  # a bug: still one line, with the traceback on request
        if os.environ.get("DICOMVAULT_DEBUG"):
            raise
        print(
            f"dicomvault: internal error: {type(e).__name__}: {e} "
            "(set DICOMVAULT_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("dicomvault: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
