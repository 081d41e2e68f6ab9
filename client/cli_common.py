"""Plumbing shared by the `dicomvault` commands: where the repository is, the passphrase, the
local cache, the upload limiter, output, and opening a repository for one command.

With `client.cli`, the only code that reads the environment; everything below takes values.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from client import siteconfig
from client.archive import parse_as_of
from client.progress import Progress, choose_style
from client.ratelimit import RateLimiter, Schedule, ScheduleFile
from client.repository import Repository
from client.siteconfig import ClientConfig
from engine.backend import Backend, LocalBackend
from engine.errors import FormatError, KitError, RepositoryNotFound, UsageError
from engine.keys import KdfParams
from engine.rates import parse_rate
from engine.store.local import LocalStore

EXIT_PARTIAL = 3  # done, but some files were skipped or left for the next run


def config_path() -> Path:
    """The client configuration (`client.siteconfig`): DICOMVAULT_CONFIG, else
    $XDG_CONFIG_HOME/dicomvault/config.toml (default ~/.config)."""
    if os.environ.get("DICOMVAULT_CONFIG"):
        return Path(os.environ["DICOMVAULT_CONFIG"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "dicomvault" / "config.toml"


def client_config(args: argparse.Namespace) -> ClientConfig | None:
    """The client configuration, when no repository is named on the command line or in the
    environment (those win)."""
    if args.repo or os.environ.get("DICOMVAULT_REPO"):
        return None
    return siteconfig.load(config_path())


def repository_sites(args: argparse.Namespace) -> tuple[str, ...]:
    """Every site of the repository, as given (command line, environment or configuration)."""
    config = client_config(args)
    if config is not None:
        return config.sites
    return siteconfig.split_locations(args.repo or os.environ.get("DICOMVAULT_REPO") or "")


def repository_token(args: argparse.Namespace) -> str:
    config = client_config(args)
    return args.token or os.environ.get("DICOMVAULT_TOKEN") or (config.token if config else "")


def open_backend(args: argparse.Namespace) -> Backend:
    """The repository's backend; with several sites (comma-separated URLs, or the client
    configuration's [[sites]]), the first that serves the repository."""
    config = client_config(args)
    location = args.repo or os.environ.get("DICOMVAULT_REPO") or ""
    if config is None and not location:
        raise UsageError(
            "no repository given: use --repo or DICOMVAULT_REPO, or set up this machine from "
            "the recovery kit (`dicomvault key import-kit`)"
        )
    sites = repository_sites(args)
    token = repository_token(args)
    choice = siteconfig.Choice(0, 0, [])
    if len(sites) > 1:
        expected = config.repository if config is not None else ""
        choice = siteconfig.choose_site(sites, token, expected, args.cacert)
        for warning in choice.skipped:
            print(f"dicomvault: warning: {warning}", file=sys.stderr)
    if not all(s.startswith(("http://", "https://")) for s in sites):
        location = sites[choice.index]  # local folders: the one chosen, no failover
        return LocalBackend(LocalStore(location), location)
    from engine.failover import FailoverBackend
    from engine.remote import RemoteBackend
    from engine.retry import RETRY_FOR, parse_duration, with_retries

    if not token:
        raise UsageError("a chunk-server repository needs --token or DICOMVAULT_TOKEN")
    deadline = parse_duration(args.retry_for) if args.retry_for else RETRY_FOR
    remotes = [
        with_retries(
            RemoteBackend(url, token, ca_file=args.cacert, primary_generation=choice.generation),
            deadline=deadline,
        )
        for url in sites
    ]
    return remotes[0] if len(remotes) == 1 else FailoverBackend(remotes, choice.index)


def read_passphrase(args: argparse.Namespace) -> bytes:
    path = args.password_file or os.environ.get("DICOMVAULT_PASSWORD_FILE")
    if path:
        try:
            # Bytes, not text: the passphrase is bytes to Argon2id, whatever its encoding.
            lines = Path(path).read_bytes().splitlines()
        except OSError as e:
            raise UsageError(f"cannot read password file {path}: {e.strerror}") from None
        if not lines or not lines[0]:
            raise UsageError(f"password file {path} is empty")
        return lines[0]
    if "DICOMVAULT_PASSWORD" in os.environ:
        return os.environ["DICOMVAULT_PASSWORD"].encode()
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass("passphrase: ").encode()
    line = stdin_line()  # typed or piped in: the recovery kit's way back (docs/design.md §15)
    if line:
        return line
    raise UsageError("no passphrase: use --password-file or DICOMVAULT_PASSWORD_FILE")


def stdin_line() -> bytes:
    """The next line of a stdin that is not a terminal, without its line end; b"" at its end or
    when there is no stdin to read."""
    try:
        return sys.stdin.buffer.readline().rstrip(b"\r\n")
    except (OSError, ValueError, AttributeError):
        return b""


def kdf_options(c: argparse.ArgumentParser) -> None:
    c.add_argument(
        "--kdf-memory-mib", type=float, default=64, help="Argon2id memory (MiB, 19 to 4096)"
    )
    c.add_argument("--kdf-iterations", type=int, default=3, help="Argon2id passes (2 to 64)")


def kdf_from_args(args: argparse.Namespace) -> KdfParams:
    """Argon2id cost from `--kdf-memory-mib/--kdf-iterations`: at least the safe floor
    (engine.keyobject), unless DICOMVAULT_TEST_CHEAP_KDF=1, where tests and drills use
    engine.keys.CHEAP_KDF's 8 KiB and one pass."""
    test_mode = os.environ.get("DICOMVAULT_TEST_CHEAP_KDF") == "1"
    memory_kib = int(args.kdf_memory_mib * 1024)
    # Argon2id needs 8 KiB per lane: tiny (test) memory costs get fewer lanes, not an error.
    lanes = max(1, min(KdfParams().lanes, memory_kib // 8))
    kdf = KdfParams(iterations=args.kdf_iterations, lanes=lanes, memory_kib=memory_kib)
    try:
        return kdf.check() if test_mode else kdf.check_safe()
    except FormatError as e:
        raise UsageError(f"--kdf-memory-mib/--kdf-iterations: {e}") from None


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


def progress(args: argparse.Namespace, command: str, unit: str = "files") -> Progress:
    """The command's progress display on stderr; DICOMVAULT_PROGRESS_INTERVAL sets the seconds
    between JSON progress lines (default 10)."""
    text = os.environ.get("DICOMVAULT_PROGRESS_INTERVAL", "10")
    try:
        interval = float(text)
    except ValueError:
        raise UsageError(f"DICOMVAULT_PROGRESS_INTERVAL must be seconds, not {text!r}") from None
    return Progress(command, unit, style=choose_style(args.json), interval=interval)


def as_of_option(c: argparse.ArgumentParser, help: str) -> None:
    c.add_argument(
        "--as-of", metavar="TIME", help=help + ": now, YYYY-MM-DD (to its end) or ISO 8601"
    )


def one_of_snapshot_or_as_of(args: argparse.Namespace) -> datetime | None:
    """`--as-of`'s time, or None when a snapshot is named; exactly one of the two is given."""
    if (args.snapshot is None) == (args.as_of is None):
        raise UsageError("name a snapshot or give --as-of TIME (one of the two)")
    return None if args.as_of is None else parse_as_of(args.as_of)


def emit(args: argparse.Namespace, doc: dict[str, Any], text: str) -> None:
    print(json.dumps(doc, indent=None if args.json else 2) if args.json else text)


async def with_repo(args: argparse.Namespace, fn: Callable[[Repository], Awaitable[int]]) -> int:
    backend = open_backend(args)
    config = client_config(args)
    spare = [config.key_object] if config is not None and config.key_object else []
    try:
        repo = await Repository.open(
            backend, read_passphrase(args), cache_root(args), limiter=rate_limiter(args),
            spare_keys=spare,
        )  # fmt: skip
    except RepositoryNotFound as e:  # what a new user meets right after `repo create`
        await backend.close()
        raise RepositoryNotFound(
            f"{e}: create it with `dicomvault init` (on a chunk server, after "
            "`dicomvault-server repo create`)"
        ) from None
    except BaseException:
        await backend.close()
        raise
    try:
        if config is not None and config.repository not in ("", repo.config.repo_id):
            raise KitError(
                f"{backend.location} holds repository {repo.config.repo_id}, not "
                f"{config.repository} of this machine's configuration ({config_path()})"
            )
        return await fn(repo)
    finally:
        for warning in repo.warnings:
            print(f"dicomvault: warning: {warning}", file=sys.stderr)
        await repo.close()
