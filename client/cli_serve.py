"""`dicomvault dicom-serve`: its options, their checks, and running the server until a signal.

The server itself is `client.dicomserve`; this module only turns arguments (and the environment,
through `client.cli_common`) into a `ServeConfig`, the list of sites (read through one read-only
`engine.failover.FailoverBackend`) and a running process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from client.cli_common import (
    as_of_option,
    cache_root,
    read_passphrase,
    repository_sites,
    repository_token,
)
from client.repository import Repository, now_rfc3339
from engine.backend import Backend, LocalBackend
from engine.errors import UsageError
from engine.store.local import LocalStore

if TYPE_CHECKING:
    from client.dicomserve.service import Listening, ServeConfig

SITE_CONNECT_TIMEOUT = 5.0  # seconds before a site that does not answer is passed over


def serve_parser(cmd: Callable[[str, str], argparse.ArgumentParser]) -> None:
    c = cmd(
        "dicom-serve",
        "serve the backup's studies read-only over DICOM Q/R (C-FIND, C-GET, C-MOVE) and "
        "DICOMweb (QIDO-RS; WADO-RS instances, metadata, frames, bulk data, rendered images), "
        "fetching each instance on demand",
    )
    c.add_argument("--site", action="append", default=[], metavar="URL",
                   help="another place holding the repository (a peer chunk server or a local "
                        "copy), tried in order after --repo (repeatable)")  # fmt: skip
    c.add_argument("--ae-title", default="DICOMVAULT", metavar="AET",
                   help="our AE title (default DICOMVAULT)")  # fmt: skip
    c.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    c.add_argument(
        "--port", type=int, default=11112, metavar="PORT", help="DIMSE port (default 11112, 0: any)"
    )
    c.add_argument("--no-dimse", action="store_true", help="serve DICOMweb only")
    c.add_argument("--allow", action="append", default=[], metavar="AET[@HOST]",
                   help="calling AE title allowed to query and retrieve, optionally only from "
                        "HOST (repeatable)")  # fmt: skip
    c.add_argument("--accept-any", action="store_true", help="allow every calling AE title")
    c.add_argument("--move-dest", action="append", default=[], metavar="AET=HOST:PORT",
                   help="a C-MOVE destination (repeatable); no other AE is sent to")  # fmt: skip
    c.add_argument(
        "--web-port", type=int, metavar="PORT", help="serve DICOMweb on this port (0: any)"
    )
    c.add_argument("--web-token-file", metavar="FILE",
                   help="bearer tokens for DICOMweb, one `NAME TOKEN` per line (the name goes "
                        "into the audit trail); required with --web-port")  # fmt: skip
    as_of_option(c, "serve each instance from the newest snapshot at or before TIME")
    c.add_argument(
        "--cache-mib",
        type=float,
        default=512,
        metavar="MIB",
        help="in-memory cache of decrypted instances (default 512)",
    )
    c.add_argument("--refresh-seconds", type=float, default=300, metavar="SECONDS",
                   help="look for new snapshots this often (default 300)")  # fmt: skip
    c.add_argument("--prefetch-patient", action="store_true",
                   help="when a study is retrieved, read the patient's other studies into "
                        "the cache")  # fmt: skip
    c.add_argument(
        "--state-dir",
        metavar="DIR",
        help="catalogue index and audit.jsonl (default: CACHE_DIR/dicom-serve/REPO)",
    )


def serve_config(args: argparse.Namespace) -> ServeConfig:
    from client.archive import parse_as_of
    from client.dicomserve.index import index_time
    from client.dicomserve.service import Allowed, ServeConfig
    from client.topacs import Peer, check_aet

    if not args.no_dimse and not args.allow and not args.accept_any:
        raise UsageError("dicom-serve needs --allow AET[@HOST] (or --accept-any) for DIMSE")
    if args.web_port is not None and not args.web_token_file:
        raise UsageError("--web-port needs --web-token-file")
    if args.no_dimse and args.web_port is None:
        raise UsageError("--no-dimse needs --web-port: nothing would be served")
    if args.refresh_seconds < 0.1 or args.cache_mib < 0:
        raise UsageError("--refresh-seconds must be at least 0.1 and --cache-mib not negative")
    allowed = tuple(Allowed.parse(a) for a in args.allow)
    for a in allowed:
        check_aet(a.ae_title)
    dests = {}
    for text in args.move_dest:
        aet, sep, address = text.partition("=")
        if not sep:
            raise UsageError(f"bad --move-dest {text!r}: use AET=HOST:PORT")
        peer = Peer.parse(f"{aet}@{address}")
        dests[peer.ae_title] = (peer.host, peer.port)
    return ServeConfig(
        ae_title=check_aet(args.ae_title), host=args.host,
        dimse_port=None if args.no_dimse else args.port, web_port=args.web_port,
        allowed=allowed, accept_any=args.accept_any, move_destinations=dests,
        web_tokens=read_tokens(Path(args.web_token_file)) if args.web_token_file else {},
        as_of=index_time(parse_as_of(args.as_of)) if args.as_of else None,
        cache_bytes=int(args.cache_mib * (1 << 20)), refresh_s=args.refresh_seconds,
        prefetch_patient=args.prefetch_patient,
    )  # fmt: skip


def read_tokens(path: Path) -> dict[str, str]:
    """`NAME TOKEN` lines (a bare TOKEN is named `web`); blank lines and `#` comments skipped."""
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise UsageError(f"cannot read token file {path}: {e.strerror}") from None
    tokens = {}
    for line in lines:
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        name, token = (parts[0], parts[1]) if len(parts) > 1 else ("web", parts[0])
        tokens[token] = name
    if not tokens:
        raise UsageError(f"token file {path} holds no token")
    return tokens


def site_backends(args: argparse.Namespace) -> list[Backend]:
    """The repository's sites as every command finds them (`--repo`, `DICOMVAULT_REPO` with its
    comma-separated URLs, or the client configuration's [[sites]]), then each `--site`."""
    import aiohttp

    from engine.remote import RemoteBackend

    locations = [loc for loc in (*repository_sites(args), *args.site) if loc]
    if not locations:
        raise UsageError("no repository given: use --repo, DICOMVAULT_REPO or --site")
    token = repository_token(args)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=SITE_CONNECT_TIMEOUT, sock_read=120)
    out: list[Backend] = []
    for loc in locations:
        if loc.startswith(("http://", "https://")):
            if not token:
                raise UsageError("a chunk-server site needs --token or DICOMVAULT_TOKEN")
            out.append(RemoteBackend(loc, token, ca_file=args.cacert, timeout=timeout))
        else:
            out.append(LocalBackend(LocalStore(loc), loc))
    return out


def ready_line(args: argparse.Namespace, up: Listening, config: ServeConfig) -> str:
    doc = {"dimse_port": up.dimse_port, "web_port": up.web_port, "ae_title": config.ae_title,
           "host": config.host, "snapshots": up.snapshots}  # fmt: skip
    if args.json:
        return json.dumps(doc)
    parts = [f"dicom-serve: {up.snapshots} snapshots indexed"]
    if up.dimse_port is not None:
        parts.append(f"AE {config.ae_title} on {config.host}:{up.dimse_port}")
    if up.web_port is not None:
        parts.append(f"DICOMweb on http://{config.host}:{up.web_port}/dicomweb")
    return "; ".join(parts)


async def cmd_dicom_serve(args: argparse.Namespace) -> int:
    from client.dicomserve.service import serve
    from engine.failover import FailoverBackend

    config = serve_config(args)
    logging.basicConfig(
        level=logging.WARNING, format="dicom-serve: %(levelname)s %(name)s: %(message)s"
    )
    backend = FailoverBackend(site_backends(args), read_only=True)  # design §13: no prune here
    try:
        repo = await Repository.open(backend, read_passphrase(args), cache_root(args))
    except BaseException:
        await backend.close()
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    state = Path(args.state_dir) if args.state_dir else (
        cache_root(args) / "dicom-serve" / repo.config.repo_id
    )  # fmt: skip
    try:
        await serve(repo, config, state, now_rfc3339,
                    lambda up: print(ready_line(args, up, config), flush=True), stop)  # fmt: skip
    finally:
        await repo.close()
    return 0
