"""The agent-side commands of `dicomvault`: `agent`, `status` and `drill` — their options, and
thin wrappers that import the agent (and pynetdicom) only when one of them runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from client.cli_common import cache_root, emit, with_repo
from client.repository import Repository
from engine.errors import DicomvaultError, UsageError


def agent_parsers(cmd: Callable[[str, str], argparse.ArgumentParser]) -> None:
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
        "--allow-sender",
        metavar="AET[@HOST]",
        action="append",
        default=[],
        help="accept associations from this calling AE title, optionally only from HOST "
        "(an address or network); repeatable, adds to [[dicom.senders]]. With no sender "
        "allowed, every association is refused",
    )
    c.add_argument(
        "--accept-any-sender",
        action="store_true",
        help="accept any calling AE title from any host (the called AE title must still be ours)",
    )
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


def drill_parser(cmd: Callable[[str, str], argparse.ArgumentParser]) -> None:
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


async def cmd_drill(args: argparse.Namespace) -> int:
    import random
    import socket

    from client import drill

    if not 0 <= args.sample_percent <= 100:
        raise UsageError("--sample-percent must be between 0 and 100")
    settings = drill.DrillSettings(args.sample_percent, args.recent_hours, args.max_files)

    async def run(repo: Repository) -> int:
        from client import audit

        await audit.record(repo, "drill", detail=f"sample {args.sample_percent}%")
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

    return await with_repo(args, run)


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


class AgentNotRunning(DicomvaultError):
    """No agent is running with that state folder."""

    exit_code = 18  # the README's "status found no running agent", as when one has stopped


async def cmd_status(args: argparse.Namespace) -> int:
    from client.agent.cli import show_status, status_dir
    from client.agent.status import read_status

    folder = status_dir(args)
    if read_status(folder) is None:
        raise AgentNotRunning(f"no agent has run with the state folder {folder}")
    return show_status(args)
