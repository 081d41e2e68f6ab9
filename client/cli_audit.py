"""`dicomvault audit`: who opened which studies and series of the repository, and when.

Owns the command's options and output; events are `client.audit`'s. Needs the passphrase: the
events are sealed with the repository's key, so the provider cannot run it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from client import audit
from client.archive import parse_as_of
from client.cli_common import emit, with_repo
from client.repository import Repository


def audit_parser(cmd: Callable[[str, str], argparse.ArgumentParser]) -> None:
    c = cmd("audit", "show the repository's audit events: restores, finds, drills, dicom-serve")
    c.add_argument("--since", metavar="TIME", help="only events from TIME (YYYY-MM-DD or ISO 8601)")
    c.add_argument("--study", metavar="UID", help="only events that opened this study")


async def cmd_audit(args: argparse.Namespace) -> int:
    since = parse_as_of(args.since) if args.since else None
    if since is not None and len(args.since) == 10:  # a date: from its start
        since = since.replace(hour=0, minute=0, second=0, microsecond=0)

    async def run(repo: Repository) -> int:
        rows = await audit.events(repo, since)
        if args.study:
            rows = [r for r in rows if args.study in r.get("studies", [])]
        lines = [
            f"{r['time']}  {r['user']}@{r['host']}  {r['action']}"
            + (f"  snapshot {r['snapshot'][:8]}" if r.get("snapshot") else "")
            + "".join(f"  study {u}" for u in r.get("studies", []))
            + "".join(f"  series {u}" for u in r.get("series", []))
            + (f"  {r['detail']}" if r.get("detail") else "")
            for r in rows
        ]
        emit(args, {"events": rows}, "\n".join(lines) or "no audit events")
        return 0

    return await with_repo(args, run)
