"""`dicomvault key …`: several passphrases per repository, and escrow of the master key.

Owns the `key` subcommands: `list`, `add`, `remove`, `passwd` (each a key object, Argon2id as
`init`: a passphrase is added, changed or revoked without re-encrypting any data), `split` and
`recover` (SLIP-39 shares through `engine.escrow`), `kit` and `import-kit` (the printed
recovery kit, `client.kit`, which sets up a fresh machine's `client.siteconfig`). Must not
keep a passphrase or the master key beyond one command, nor write anything before every check
has passed ("nothing changed" on every refusal).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from client import siteconfig
from client.cli_common import (
    config_path,
    emit,
    kdf_from_args,
    kdf_options,
    open_backend,
    read_passphrase,
    repository_sites,
    repository_token,
    stdin_line,
)
from client.kit import Kit, from_payloads, read_payloads, render_pdf
from engine import blob, escrow
from engine.backend import Backend
from engine.clock import SYSTEM
from engine.commit import verify_commit
from engine.errors import (
    EscrowError,
    FormatError,
    IntegrityError,
    KitError,
    NotFound,
    ObjectNotFound,
    UsageError,
)
from engine.keyobject import KeyObject
from engine.keys import MasterKey, key_name, wrap
from engine.repoconfig import RepoConfig, unlock_named

Adder = Callable[[str, str], argparse.ArgumentParser]


def key_parser(cmd: Adder, global_options: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register `key` and its subcommands through the CLI's `cmd` factory; each subcommand
    takes the global options too (`dicomvault key list -r REPO`)."""
    c = cmd("key", "manage the repository's passphrases, escrow and recovery kit")
    sub = c.add_subparsers(dest="key_command", required=True, metavar="KEY_COMMAND")

    def kcmd(name: str, help: str) -> argparse.ArgumentParser:
        k = sub.add_parser(name, help=help, description=help)
        k.add_argument("--json", action="store_true", help="print one JSON document")
        global_options(k)
        return k

    kcmd("list", "list the key objects; * marks the one your passphrase opens")
    k = kcmd("add", "add a passphrase (admin token on a chunk server)")
    _new_passphrase_option(k)
    kdf_options(k)
    k = kcmd("remove", "remove a key object (not the one you opened with, never the last)")
    k.add_argument("name", help="key object name or unique prefix (from `key list`)")
    k = kcmd("passwd", "change your passphrase: add the new key, remove the old one")
    _new_passphrase_option(k)
    kdf_options(k)
    k = kcmd("split", "print SLIP-39 mnemonic shares of the master key for escrow")
    k.add_argument("--shares", type=int, required=True, metavar="N", help="how many shares")
    k.add_argument(
        "--threshold", type=int, required=True, metavar="K", help="how many rebuild the key"
    )
    k = kcmd("recover", "rebuild access from K escrow shares: sets a new passphrase")
    k.add_argument(
        "--shares-file",
        metavar="FILE",
        help="file with one share per line (default: stdin, one per line, then an empty line)",
    )
    _new_passphrase_option(k)
    kdf_options(k)
    k = kcmd("kit", "write the one-page recovery kit (PDF) for the practice's safe")
    k.add_argument("--out", required=True, metavar="PDF", help="where to write the kit")
    k.add_argument(
        "--site",
        action="append",
        default=[],
        metavar="URL",
        help="another site of the repository, e.g. the peer (repeatable; the sites in use are "
        "always listed)",
    )
    k.add_argument(
        "--restore-token",
        metavar="TOKEN",
        help="the practice's restore token to print (default: the token in use)",
    )
    k = kcmd("import-kit", "set up this machine from a recovery kit: a photo, scan or the PDF")
    k.add_argument("kit", metavar="IMAGE_OR_PDF")
    k.add_argument(
        "--force",
        action="store_true",
        help="replace a configuration of another repository on this machine",
    )


def _new_passphrase_option(k: argparse.ArgumentParser) -> None:
    k.add_argument(
        "--new-password-file",
        metavar="FILE",
        help="file whose first line is the new passphrase (default: asked twice on a terminal, "
        "or the next line of stdin)",
    )


def read_new_passphrase(args: argparse.Namespace) -> bytes:
    if args.new_password_file:
        try:
            lines = Path(args.new_password_file).read_bytes().splitlines()
        except OSError as e:
            raise UsageError(f"cannot read {args.new_password_file}: {e.strerror}") from None
        if not lines or not lines[0]:
            raise UsageError(f"new password file {args.new_password_file} is empty")
        return lines[0]
    if sys.stdin.isatty():
        import getpass

        first = getpass.getpass("new passphrase: ").encode()
        if not first or first != getpass.getpass("again: ").encode():
            raise UsageError("the new passphrases are empty or differ: nothing changed")
        return first
    line = stdin_line()
    if not line:
        raise UsageError("no new passphrase: use --new-password-file")
    return line


async def cmd_key(args: argparse.Namespace) -> int:
    if args.key_command == "import-kit":  # a fresh machine: no repository to open yet
        return _import_kit(args)
    backend = open_backend(args)
    try:
        return await KEY_COMMANDS[args.key_command](args, backend)
    finally:
        await backend.close()


async def _open(args: argparse.Namespace, backend: Backend) -> tuple[str, MasterKey]:
    RepoConfig.decode(await backend.get_config())
    warnings: list[str] = []
    opened = await unlock_named(backend, read_passphrase(args), warnings)
    for warning in warnings:
        print(f"dicomvault: warning: {warning}", file=sys.stderr)
    return opened


async def _list(args: argparse.Namespace, backend: Backend) -> int:
    current, _ = await _open(args, backend)
    rows: list[dict[str, Any]] = []
    for name in await backend.list_keys():
        row: dict[str, Any] = {"name": name, "current": name == current}
        try:
            kdf = KeyObject.decode(await backend.get_key(name)).kdf
            row.update(iterations=kdf.iterations, lanes=kdf.lanes, memory_kib=kdf.memory_kib)
        except (FormatError, ObjectNotFound) as e:
            row["error"] = str(e)
        rows.append(row)
    lines = [
        f"{'*' if r['current'] else ' '} {r['name']}  "
        + (r.get("error") or f"argon2id m={r['memory_kib']} KiB t={r['iterations']} p={r['lanes']}")
        for r in rows
    ]
    emit(args, {"keys": rows}, "\n".join(lines))
    return 0


async def _add_key(args: argparse.Namespace, backend: Backend, key: MasterKey) -> str:
    kdf = kdf_from_args(args)
    key_object = wrap(key, read_new_passphrase(args), kdf)
    name = key_name(key_object)
    await backend.put_key(name, key_object)
    return name


async def _add(args: argparse.Namespace, backend: Backend) -> int:
    _, key = await _open(args, backend)
    name = await _add_key(args, backend, key)
    emit(args, {"added": name}, f"added key {name}")
    return 0


async def _remove(args: argparse.Namespace, backend: Backend) -> int:
    current, _ = await _open(args, backend)
    names = await backend.list_keys()
    matches = [n for n in names if n.startswith(args.name.lower())]
    if len(matches) != 1:
        raise NotFound(f"{len(matches)} key objects match {args.name!r}: nothing removed")
    name = matches[0]
    if name == current:
        raise UsageError(
            f"key {name} is the one your passphrase opens: remove it with another passphrase, "
            "or change it with `dicomvault key passwd`; nothing removed"
        )
    await backend.remove_key(name)  # never the last: the one you opened with remains
    emit(args, {"removed": name}, f"removed key {name}")
    return 0


async def _passwd(args: argparse.Namespace, backend: Backend) -> int:
    current, key = await _open(args, backend)
    name = await _add_key(args, backend, key)
    await backend.remove_key(current)
    emit(
        args,
        {"added": name, "removed": current},
        f"passphrase changed: key {name} replaces {current}",
    )
    return 0


async def _split(args: argparse.Namespace, backend: Backend) -> int:
    _, key = await _open(args, backend)
    shares = escrow.split(key, args.shares, args.threshold)
    text = [
        f"{args.threshold} of these {args.shares} shares rebuild the repository's master key "
        "(`dicomvault key recover`). Give each to a different keeper; fewer reveal nothing.",
        *(f"share {i}: {s}" for i, s in enumerate(shares, 1)),
    ]
    emit(args, {"threshold": args.threshold, "shares": shares}, "\n".join(text))
    return 0


def _read_shares(args: argparse.Namespace) -> list[str]:
    if args.shares_file:
        try:
            return Path(args.shares_file).read_text().splitlines()
        except OSError as e:
            raise UsageError(f"cannot read {args.shares_file}: {e.strerror}") from None
    shares = []
    while line := stdin_line():
        shares.append(line.decode(errors="replace"))
    return shares


async def check_key_opens(backend: Backend, key: MasterKey) -> bool | None:
    """Whether `key` opens one of the repository's snapshots; None when it holds none."""
    snapshots = await backend.list_snapshots()
    for sid in snapshots:
        try:
            record = verify_commit(sid, await backend.get_snapshot(sid))
            blob.open_plaintext(key, record.body_ad(), record.sealed)
        except (IntegrityError, ObjectNotFound):
            continue
        return True
    return None if not snapshots else False


async def _recover(args: argparse.Namespace, backend: Backend) -> int:
    RepoConfig.decode(await backend.get_config())
    key = escrow.combine(_read_shares(args))
    opens = await check_key_opens(backend, key)
    if opens is False:
        raise EscrowError(
            "the shares rebuild a key that opens none of this repository's snapshots: shares "
            "of another repository? nothing changed"
        )
    if opens is None:
        print("dicomvault: warning: no snapshot to check the rebuilt key against", file=sys.stderr)
    name = await _add_key(args, backend, key)
    emit(args, {"added": name}, f"access rebuilt from the shares: added key {name}")
    return 0


async def _kit(args: argparse.Namespace, backend: Backend) -> int:
    config = RepoConfig.decode(await backend.get_config())
    current, _ = await _open(args, backend)
    sites = tuple(dict.fromkeys([*repository_sites(args), *(u.rstrip("/") for u in args.site)]))
    token = args.restore_token or repository_token(args)
    kit = Kit(config.repo_id, sites, token, await backend.get_key(current),
              SYSTEM.now().date().isoformat())  # fmt: skip
    render_pdf(kit, Path(args.out))
    emit(
        args,
        {"kit": args.out, "repository": kit.repository, "sites": list(sites), "key": current},
        f"wrote the recovery kit of repository {kit.repository} ({len(sites)} sites) to "
        f"{args.out}: print it, keep it apart from the passphrase",
    )
    return 0


def _import_kit(args: argparse.Namespace) -> int:
    kit = from_payloads(read_payloads(Path(args.kit)))
    path = config_path()
    existing = siteconfig.load(path)
    if existing is not None and existing.repository not in ("", kit.repository) and not args.force:
        raise KitError(
            f"this machine is set up for repository {existing.repository} ({path}); the kit is "
            f"for {kit.repository}: nothing changed (--force replaces it)"
        )
    held = {url: siteconfig.repository_at(url, kit.token)[0] for url in kit.sites}
    foreign = {url: rid for url, rid in held.items() if rid not in (None, kit.repository)}
    if foreign:
        site, other = next(iter(foreign.items()))
        raise KitError(
            f"the kit is for repository {kit.repository}, but {site} holds {other}: a kit of "
            "another repository? nothing changed"
        )
    for site in (u for u, rid in held.items() if rid is None):
        print(f"dicomvault: warning: site {site} does not answer now", file=sys.stderr)
    siteconfig.write(
        path, siteconfig.ClientConfig(kit.sites, kit.repository, kit.token, kit.key_object)
    )
    emit(
        args,
        {"config": str(path), "repository": kit.repository, "sites": list(kit.sites),
         "answering": [u for u, rid in held.items() if rid is not None]},
        f"set up for repository {kit.repository} (kit of {kit.created}, {len(kit.sites)} "
        f"sites) in {path}; now: dicomvault restore latest --target FOLDER",
    )  # fmt: skip
    return 0


KEY_COMMANDS = {
    "kit": _kit,
    "list": _list,
    "add": _add,
    "remove": _remove,
    "passwd": _passwd,
    "split": _split,
    "recover": _recover,
}
