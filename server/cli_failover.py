"""`dicomvault-server promote REPO`: make this site the primary of a repository it holds a
replica of, after the primary is lost (docs/design.md §17).

Owns the command's checks: the repository is here and not already primary; the old primary
(`--primary URL`) does not answer its health check, unless `--force`. The generation bump and
the binding are `ReplicationState.promote`'s (`SharedFailover.promote`'s on a store several
nodes share: of two promotions at once, one is refused). Works on the data folder, beside a
running server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from engine.errors import PrimaryAlive, UsageError
from server.admin import open_index, sync_failover
from server.config import ServerConfig
from server.replication.state import ReplicationState
from server.repos import open_repositories

PROBE_TIMEOUT = 5.0  # seconds the old primary has to answer before it counts as down


def promote_parser(sub: Any, data_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "promote",
        help="make this site the primary of a repository whose primary is lost: backups come "
        "here, the old primary is fenced when it returns and becomes a peer",
    )
    p.add_argument("name", help="repository name")
    data_arg(p)
    p.add_argument(
        "--primary",
        metavar="URL",
        help="the old primary's base URL: promote refuses (exit 23) while it answers",
    )
    p.add_argument(
        "--force", action="store_true", help="promote without checking the old primary is down"
    )
    p.add_argument("--json", action="store_true", help="print JSON")


def cmd_promote(args: argparse.Namespace, config: ServerConfig) -> int:
    with open_index(config) as index:
        repos = open_repositories(config)
        repos.get(args.name)
        state = ReplicationState(index)
        shared = sync_failover(repos, index, args.name)  # as every node of the site sees it
        owner, gen = state.replica_owner(args.name), state.generation(args.name)
        if owner is None and not gen.fenced:
            raise UsageError(
                f"{args.name} is already primary here (generation {gen.current}); nothing changed"
            )
        if not args.force:
            if not args.primary:
                raise UsageError("give --primary URL (checked to be down) or --force")
            if _answers(args.primary):
                raise PrimaryAlive(
                    f"the primary {args.primary} still answers: promoting now would make two "
                    "primaries; nothing changed (--force if you are sure it is being retired)"
                )
        new = asyncio.run(shared.promote(args.name)) if shared else state.promote(args.name)
    doc = {"repository": args.name, "generation": new.generation, "from": new.promoted_from}
    print(
        json.dumps(doc)
        if args.json
        else f"{args.name}: this site is primary at generation {new.generation}; the old "
        f"primary is fenced as soon as it hears of it"
    )
    return 0


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/v1/health", timeout=PROBE_TIMEOUT):
            return True
    except (urllib.error.URLError, OSError, ValueError):
        return False
