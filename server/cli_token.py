"""`dicomvault-server token list|create|revoke`: the provider's tokens on a data folder.

Owns the arguments and the printing; the work is `server.tokens_admin`'s. Revoke a token the
moment it may be stolen (a laptop lost, an agent machine given away, a name in the audit trail
that should not be there): its next request is refused (401).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

from server.auth import PRACTICE_ROLES
from server.config import ServerConfig


def token_parser(sub: Any, data_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    tok = sub.add_parser("token", help="list, add or revoke the tokens of this site")
    tok_sub = tok.add_subparsers(dest="token_command", required=True)
    ls = tok_sub.add_parser(
        "list", help="every token's id, repository, role and age (never a token)"
    )
    ls.add_argument("--repo", metavar="NAME", help="only this repository's tokens")
    create = tok_sub.add_parser(
        "create", help="mint one more token for a repository (e.g. the new half of a rotation)"
    )
    create.add_argument("repo", help="repository name")
    create.add_argument("--role", required=True, choices=[str(r) for r in PRACTICE_ROLES])
    create.add_argument("--label", default="", help="who holds it, shown by `token list`")
    rv = tok_sub.add_parser(
        "revoke", help="refuse a token from its next request on (ids from `token list` or audit)"
    )
    rv.add_argument("id", nargs="+", help="token id: at least 6 of its hex digits")
    for p in (ls, create, rv):
        data_arg(p)
        p.add_argument("--json", action="store_true", help="print JSON")


def cmd_token(args: argparse.Namespace, config: ServerConfig) -> int:
    from server import tokens_admin

    if args.token_command == "list":
        rows = tokens_admin.list_tokens(config, args.repo)
        if args.json:
            print(json.dumps({"tokens": rows}))
        for r in [] if args.json else rows:
            print(f"{r['id']}  {r['repo'] or '-':16} {r['role']:8} {_age(r)}  {_who(r)}".rstrip())
    elif args.token_command == "create":
        doc = tokens_admin.create_token(config, args.repo, args.role, args.label)
        if args.json:
            print(json.dumps(doc))
        else:
            print(f"{doc['role']} token {doc['id']} for {doc['repo']} (shown once, store it now):")
            print(f"  {doc['token']}")
    else:
        gone = tokens_admin.revoke_tokens(config, args.id)
        if args.json:
            print(json.dumps({"revoked": gone}))
        for r in [] if args.json else gone:
            print(f"revoked {r['id']} ({r['repo'] or '-'} {r['role']})")
    return 0


def _age(row: dict[str, Any]) -> str:
    created = row.get("created")
    if created is None:
        return "created ?"
    return "created " + time.strftime("%Y-%m-%d %H:%M", time.gmtime(float(created)))


def _who(row: dict[str, Any]) -> str:
    return str(row.get("label") or row.get("peer") or row.get("name") or "")
