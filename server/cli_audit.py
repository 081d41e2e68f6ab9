"""`dicomvault-server audit`: show the audit trail (`server.audit`) and verify its chain.

Owns the command's options, filters and output; the chain and its check are `server.audit`'s.
Reads the data folder only; works while the server runs (the trail is append-only).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from engine.errors import IntegrityError, UsageError
from server.audit import verify
from server.config import ServerConfig


def audit_parser(sub: Any, data_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "audit",
        help="show the audit trail of authenticated requests and verify its hash chain "
        "(exit 13 if a line was changed, deleted or cut off)",
    )
    data_arg(p)
    p.add_argument("--since", metavar="TIME", help="only lines from TIME (YYYY-MM-DD or ISO 8601)")
    p.add_argument("--repo", metavar="NAME", help="only this repository's lines")
    p.add_argument("--json", action="store_true", help="one JSON document")


def cmd_audit(args: argparse.Namespace, config: ServerConfig) -> int:
    since = _since(args.since)
    checked = verify(config.data_dir / "audit")
    shown = [
        r for r in checked.records
        if (args.repo is None or r.get("repo") == args.repo)
        and (since is None or _time(r["time"]) >= since)
    ]  # fmt: skip
    if args.json:
        print(json.dumps({"records": shown, "lines": checked.lines, "problems": checked.problems}))
    else:
        for r in shown:
            print(
                f"{r['time']}  {r['repo'] or '-'}  {r['role']}:{r['token']}  {r['remote']}  "
                f"{r['method']} {r['route']} {r['object']}  {r['status']}  "
                f"in {r['bytes_in']} out {r['bytes_out']}"
            )
        for problem in checked.problems:
            print(f"error: {problem}", file=sys.stderr)
    if checked.problems:
        raise IntegrityError(f"audit trail broken: {len(checked.problems)} problems")
    print(f"dicomvault-server: audit trail verified: {checked.lines} lines", file=sys.stderr)
    return 0


def _since(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--since: not a date or ISO 8601 time: {text!r}") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
