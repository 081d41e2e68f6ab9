"""`dicomvault-server`: the provider's command line (serve, repo, peer-token, reindex, scrub,
alerts, provider-token).

Owns argument parsing, reading the TOML config, printing, and the one place where engine errors
become a one-line message and an exit code. Must not hold server logic: it calls `server.app`
and `server.admin`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import os
import ssl
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from engine.errors import DicomvaultError, InvalidName, UsageError
from server.auth import REPO_NAME_RULE
from server.cli_audit import audit_parser, cmd_audit
from server.cli_failover import cmd_promote, promote_parser
from server.cli_token import cmd_token, token_parser
from server.config import ServerConfig, load_config


def _cli_peers(args: argparse.Namespace) -> list[dict[str, Any]]:
    urls, tokens = getattr(args, "peer", None) or [], getattr(args, "peer_token", None) or []
    if len(urls) != len(tokens):
        raise UsageError("give one --peer-token for each --peer, in the same order")
    cas = getattr(args, "peer_ca", None) or [None] * len(urls)
    if len(cas) != len(urls):
        raise UsageError("give one --peer-ca for each --peer (or none), in the same order")
    return [
        {**_peer_arg(u), "token": t, "mode": "continuous", "ca_file": ca}
        for u, t, ca in zip(urls, tokens, cas, strict=True)
    ]


def _peer_arg(text: str) -> dict[str, str]:
    """`--peer NAME=URL` labels the peer with its site name; a bare URL is labelled host:port."""
    name, sep, url = text.partition("=")
    if sep and "://" not in name:
        return {"name": name, "url": url}
    return {"url": text}


def _existing(config: ServerConfig) -> ServerConfig:
    """For commands that read a server's data: a mistyped --data must not create a new one.
    With an S3 store DATA holds only this node's index, which a new node builds."""
    if config.store is not None:
        config.data_dir.mkdir(parents=True, exist_ok=True)
    elif not config.data_dir.is_dir():
        raise UsageError(f"no server data folder at {config.data_dir}")
    return config


def _config(args: argparse.Namespace) -> ServerConfig:
    return load_config(
        getattr(args, "config", None),
        add_peers=_cli_peers(args),
        site_name=getattr(args, "site_name", None),
        data_dir=args.data,
        listen=getattr(args, "listen", None),
        tls_cert=getattr(args, "tls_cert", None),
        tls_key=getattr(args, "tls_key", None),
        max_body_size=getattr(args, "max_body_size", None),
        max_connections=getattr(args, "max_connections", None),
        max_connections_per_address=getattr(args, "max_connections_per_address", None),
        idle_timeout=getattr(args, "idle_timeout", None),
        store=getattr(args, "store", None),
        s3_env=_s3_env(),
    )


# The standard AWS variables, by the [s3] setting each fills (the first one set wins).
_AWS_ENV = {
    "endpoint": ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
    "region": ("AWS_REGION", "AWS_DEFAULT_REGION"),
    "access_key_id": ("AWS_ACCESS_KEY_ID",),
    "secret_access_key": ("AWS_SECRET_ACCESS_KEY",),
    "session_token": ("AWS_SESSION_TOKEN",),
}


def _s3_env() -> dict[str, str]:
    found = {
        k: next((os.environ[v] for v in vs if os.environ.get(v)), "") for k, vs in _AWS_ENV.items()
    }
    return {k: v for k, v in found.items() if v}


def _ssl_context(config: ServerConfig) -> ssl.SSLContext | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as e:
        raise UsageError(f"cannot load TLS certificate/key: {e}") from None
    return ctx


def cmd_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from server.app import make_app
    from server.listener import configure_logging, serve

    config = _config(args)
    configure_logging()
    ssl_context = _ssl_context(config)
    try:
        with contextlib.suppress(web.GracefulExit):  # SIGTERM or SIGINT
            asyncio.run(serve(make_app(config), config, ssl_context))
    except OSError as e:  # binding happens inside serve: the OSErrors an operator causes
        if e.errno not in _BIND_ERRORS:
            raise
        raise UsageError(
            f"cannot listen on {config.host}:{config.port}: {_BIND_ERRORS[e.errno]}"
        ) from None
    return 0


_BIND_ERRORS = {
    errno.EADDRINUSE: "the port is in use (another server running? choose another with --listen)",
    errno.EACCES: "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)",
    errno.EADDRNOTAVAIL: "this machine has no such address (check the host in --listen)",
}


def cmd_repo_create(args: argparse.Namespace) -> int:
    from server.admin import create_repository_offline

    try:
        tokens = create_repository_offline(_config(args), args.name)
    except InvalidName as e:  # the operator's typo, not a storage failure
        raise UsageError(str(e)) from None
    if args.json:
        print(json.dumps({"repository": args.name, "tokens": tokens}))
    else:
        print(f"created repository {args.name}; tokens are shown once, store them now:")
        for role, token in tokens.items():
            print(f"  {role:8} {token}")
    return 0


def cmd_reindex(args: argparse.Namespace) -> int:
    from server.admin import reindex_offline

    report = reindex_offline(_existing(_config(args)), verify=args.verify)
    if args.json:
        print(json.dumps(asdict(report)))
    else:
        print(
            f"reindexed {report.repositories} repositories: {report.packs} packs, "
            f"{report.chunks} chunks, {report.snapshots} snapshots, {report.bad} unreadable"
        )
    return 17 if report.bad else 0  # CheckFailed's exit code: something needs a look


def cmd_peer_token_create(args: argparse.Namespace) -> int:
    from server.admin import create_peer_token_offline

    token = create_peer_token_offline(_config(args), args.name, args.repo)
    if args.heal:
        from server.monitor_admin import grant_heal_offline

        grant_heal_offline(_config(args), token)
    if args.json:
        doc = {"peer": args.name, "role": "replica", "token": token, "heal": args.heal}
        print(json.dumps({**doc, "repositories": args.repo}))
    else:
        print(f"replica token for primary site {args.name!r} (shown once, store it now):")
        print(f"  {token}")
        print(f"it may fill these repositories here: {', '.join(args.repo)}")
        if args.heal:
            print("it may push replicas to this server and read back packs of its own replicas")
            print("(scrub healing); it cannot read other data or delete anything")
        else:
            print("it may push replicas to this server; it cannot read packs or delete anything")
    return 0


def cmd_repo_promote(args: argparse.Namespace) -> int:
    from server.admin import promote_replica_offline

    changed = promote_replica_offline(_existing(_config(args)), args.name)
    if args.json:
        print(json.dumps({"repository": args.name, "promoted": changed}))
    elif changed:
        print(f"{args.name} is no longer a replica: its practice may back up to this site")
    else:
        print(f"{args.name} was not a replica; nothing changed")
    return 0


def cmd_repo_quarantine(args: argparse.Namespace) -> int:
    from server.admin import quarantine_offline

    entry = quarantine_offline(_existing(_config(args)), args.name, args.kind, args.id, args.reason)
    if args.json:
        print(json.dumps(entry))
    else:
        print(f"moved {args.name}/{entry['object']} to quarantine/{args.name}/{entry['to']}")
    return 0


def cmd_scrub(args: argparse.Namespace) -> int:
    from engine.rates import parse_rate
    from server.monitor_admin import scrub_offline, with_rate

    config = with_rate(_existing(_config(args)), parse_rate(args.rate) if args.rate else None)
    report = scrub_offline(config, args.repo or None)
    if args.json:
        print(json.dumps(report.as_json()))
    else:
        for bad in report.bad:
            fate = f"healed from {bad.healed_from}" if bad.healed_from else "NOT HEALED"
            print(f"BAD {bad.repo} {bad.pack}: {bad.reason}; {fate}")
            for error in bad.errors if not bad.healed_from else []:
                print(f"    {error}")
        print(
            f"scrubbed {report.repositories} repositories: {report.packs_checked} packs, "
            f"{report.bytes_checked:,} bytes; {len(report.bad)} bad, "
            f"{len(report.unhealed)} not healed"
        )
    return 17 if report.unhealed else 0  # CheckFailed's exit code


def cmd_alerts(args: argparse.Namespace) -> int:
    from server.alerts.conditions import iso
    from server.monitor_admin import open_alerts_offline

    alerts = open_alerts_offline(_existing(_config(args)))
    if args.json:
        print(json.dumps({"alerts": alerts}))
        return 0
    for a in alerts:
        sent = f"sent {a['sends']}x" if a["sends"] else "not delivered yet"
        print(f"{iso(float(a['opened']))}  {a['kind']:16} {a['message']}  ({sent})")
    print(f"{len(alerts)} open alerts" if alerts else "no open alerts")
    return 0


def cmd_provider_token_create(args: argparse.Namespace) -> int:
    from server.monitor_admin import create_provider_token_offline

    token = create_provider_token_offline(_config(args), args.name)
    if args.json:
        print(json.dumps({"provider": args.name, "role": "provider", "token": token}))
    else:
        print(f"provider token {args.name!r} (shown once, store it now):")
        print(f"  {token}")
        print("it reads the status page (/status#token=…), every repository's scrub and drill")
        print("results and the open alerts; it cannot read any practice's data")
    return 0


def _monitor_parsers(sub: Any) -> None:
    sc = sub.add_parser(
        "scrub", help="re-hash every stored pack now; quarantine and heal bad ones from a peer"
    )
    _data_arg(sc)
    sc.add_argument("--repo", action="append", help="only this repository (repeatable)")
    sc.add_argument("--rate", help="hash at most this fast, e.g. 100MiB/s (default scrub_rate)")
    sc.add_argument("--json", action="store_true", help="print JSON")
    sc.set_defaults(func=cmd_scrub)

    al = sub.add_parser("alerts", help="list open alerts")
    _data_arg(al)
    al.add_argument("--json", action="store_true", help="print JSON")
    al.set_defaults(func=cmd_alerts)

    pt = sub.add_parser("provider-token", help="the provider's token for the status page")
    pt_sub = pt.add_subparsers(dest="provider_command", required=True)
    ptc = pt_sub.add_parser("create", help="mint a provider token (server-wide, read-only status)")
    _data_arg(ptc)
    ptc.add_argument("--name", default="provider", help="label of the token")
    ptc.add_argument("--json", action="store_true", help="print JSON")
    ptc.set_defaults(func=cmd_provider_token_create)


def _data_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, help="server data folder (or data_dir in --config)")
    p.add_argument("--config", type=Path, help="server TOML config file")
    p.add_argument(
        "--store",
        metavar="s3://BUCKET/PREFIX",
        help="keep repositories in this S3 bucket prefix instead of DATA/repos (endpoint, "
        "region, credentials: AWS_* variables or [s3] in --config); DATA keeps the index",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dicomvault-server", description="dicomvault chunk server"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the chunk server")
    _data_arg(serve)
    serve.add_argument("--listen", help="HOST:PORT to listen on (default 127.0.0.1:8420)")
    serve.add_argument("--tls-cert", type=Path, help="PEM certificate chain")
    serve.add_argument("--tls-key", type=Path, help="PEM private key")
    serve.add_argument("--max-body-size", type=int, help="largest request body in bytes")
    serve.add_argument("--max-connections", type=int, help="open connections in all (default 4096)")
    serve.add_argument(
        "--max-connections-per-address",
        type=int,
        help="open connections from one IP address (default 256)",
    )
    serve.add_argument(
        "--idle-timeout",
        type=float,
        help="close a connection without a complete request after this many seconds (30)",
    )
    serve.add_argument("--site-name", help="this site's name in replication status")
    serve.add_argument(
        "--peer",
        action="append",
        metavar="[NAME=]URL",
        help="replicate to this peer server (continuous mode); NAME, e.g. its --site-name, "
        "labels it in snapshots and alerts (default: host:port)",
    )
    serve.add_argument(
        "--peer-token",
        action="append",
        metavar="TOKEN",
        help="replica token minted on the peer (one per --peer; write --peer-token=TOKEN)",
    )
    serve.add_argument(
        "--peer-ca",
        action="append",
        metavar="FILE",
        help="CA certificate (or the self-signed certificate) to trust for an https peer: one "
        "per --peer, in the same order, or none (the system's trust store)",
    )
    serve.set_defaults(func=cmd_serve)

    repo = sub.add_parser("repo", help="manage repositories")
    repo_sub = repo.add_subparsers(dest="repo_command", required=True)
    create = repo_sub.add_parser("create", help="create a repository and print its tokens")
    create.add_argument("name", help=f"repository name: {REPO_NAME_RULE}")
    _data_arg(create)
    create.add_argument("--json", action="store_true", help="print JSON")
    create.set_defaults(func=cmd_repo_create)
    promote = repo_sub.add_parser(
        "promote", help="make a replica held here writable (the primary site is gone for good)"
    )
    promote.add_argument("name", help="repository name")
    _data_arg(promote)
    promote.add_argument("--json", action="store_true", help="print JSON")
    promote.set_defaults(func=cmd_repo_promote)
    qo = repo_sub.add_parser(
        "quarantine",
        help="move a planted or damaged pack, snapshot or key object out of a repository "
        "(into its quarantine store, logged; undo: move it back and reindex)",
    )
    qo.add_argument("name", help="repository name")
    qo.add_argument("kind", choices=["pack", "snapshot", "key"])
    qo.add_argument("id", help="pack id, snapshot id or key object name")
    qo.add_argument("--reason", default="", help="why, for the quarantine log")
    _data_arg(qo)
    qo.add_argument("--json", action="store_true", help="print JSON")
    qo.set_defaults(func=cmd_repo_quarantine)

    peer = sub.add_parser("peer-token", help="tokens primary sites use to replicate here")
    peer_sub = peer.add_subparsers(dest="peer_command", required=True)
    ptc = peer_sub.add_parser("create", help="mint a replica token (push-only, server-wide)")
    _data_arg(ptc)
    ptc.add_argument("--name", default="primary", help="label of the primary site using it")
    ptc.add_argument(
        "--repo",
        action="append",
        default=[],
        metavar="NAME",
        help="a repository name this primary may fill here (repeatable; run again with the "
        "same --name to add names later). None: a token for a peer that may become primary "
        "of a repository of this site after a failover; name it as this site's [[peers]] "
        "entry for it (docs/design.md §17)",
    )
    ptc.add_argument(
        "--heal",
        action="store_true",
        help="also let it read back packs of its own replicas, so the primary's scrub can heal",
    )
    ptc.add_argument("--json", action="store_true", help="print JSON")
    ptc.set_defaults(func=cmd_peer_token_create)

    rx = sub.add_parser("reindex", help="rebuild the index from stored packs and snapshots")
    _data_arg(rx)
    rx.add_argument("--verify", action="store_true", help="also re-hash every pack")
    rx.add_argument("--json", action="store_true", help="print JSON")
    rx.set_defaults(func=cmd_reindex)
    _monitor_parsers(sub)
    audit_parser(sub, _data_arg)
    promote_parser(sub, _data_arg)
    token_parser(sub, _data_arg)
    sub.choices["token"].set_defaults(func=lambda a: cmd_token(a, _existing(_config(a))))
    sub.choices["promote"].set_defaults(func=lambda a: cmd_promote(a, _existing(_config(a))))
    sub.choices["audit"].set_defaults(func=lambda a: cmd_audit(a, _existing(_config(a))))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except DicomvaultError as e:
        print(f"dicomvault-server: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # one line for the operator, never a traceback
        print(f"dicomvault-server: unexpected error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return code
