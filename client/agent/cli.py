"""`dicomvault agent` and `dicomvault status`: from arguments and environment to a running agent.

Owns the agent's precedence rules (flag > config file > environment), the upload limiter it
gets (the config file's `[upload]` table, re-read while running), logging set-up and the signal
handlers (SIGTERM and SIGINT stop the agent cleanly). Shares the repository plumbing of
`client.cli_common`; holds no agent logic.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
from pathlib import Path
from typing import Any

from client.agent.config import AgentConfig, Overrides, RepositorySettings, load, read_toml
from client.agent.daemon import Agent, Opener
from client.agent.status import read_status, render
from client.cli_common import (
    EXIT_PARTIAL,
    cache_root,
    emit,
    open_backend,
    rate_limiter,
    read_passphrase,
)
from client.ratelimit import RateLimiter, Schedule, ScheduleFile
from client.repository import Repository
from engine.errors import TransientError, UsageError
from engine.rates import parse_rate

DEFAULT_STATE_DIR = Path("/var/lib/dicomvault/agent")
EXIT_NOT_RUNNING = 18


def _env_state_dir() -> Path | None:
    path = os.environ.get("DICOMVAULT_STATE_DIR")
    return Path(path) if path else None


def agent_config(args: argparse.Namespace) -> AgentConfig:
    overrides = Overrides(
        spool_dir=args.spool,
        state_dir=args.state_dir,
        listen=args.dicom_listen,
        ae_title=args.ae_title,
        allow_senders=tuple(args.allow_sender),
        accept_any_sender=args.accept_any_sender,
        watch=tuple(args.watch),
        name=args.name,
    )
    path = Path(args.config) if args.config else None
    return load(path, overrides, default_state=_env_state_dir())


def _fill_repository_args(args: argparse.Namespace, repo: RepositorySettings) -> None:
    """A flag wins over the config file, which wins over the environment (client.cli_common)."""
    args.repo = args.repo or repo.url
    args.password_file = args.password_file or repo.password_file
    args.cache_dir = args.cache_dir or repo.cache_dir
    args.cacert = args.cacert or repo.cacert
    args.retry_for = args.retry_for or repo.retry_for
    token = args.token or repo.token
    if not token and repo.token_file:
        try:
            token = Path(repo.token_file).read_text().strip()
        except OSError as e:
            raise UsageError(f"cannot read token file {repo.token_file}: {e.strerror}") from None
    args.token = token


def _limiter(args: argparse.Namespace, config: AgentConfig) -> RateLimiter:
    if config.config_file is None or args.upload_schedule:
        return rate_limiter(args)
    base = Schedule(parse_rate(args.limit_upload), config.upload.windows)
    return RateLimiter(ScheduleFile(config.config_file, base))


async def run_agent(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=str(args.log_level).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    config = agent_config(args)
    _fill_repository_args(args, config.repository)
    backend = open_backend(args)
    passphrase, limiter = read_passphrase(args), _limiter(args, config)

    async def open_repository() -> Repository:
        return await Repository.open(
            backend, passphrase, cache_root(args), limiter=limiter, spool_dir=config.packs_dir
        )

    try:
        repo: Repository | Opener = await open_repository()
    except TransientError as e:
        if args.once:
            await backend.close()
            raise
        # The door opens anyway: the agent keeps trying (client/agent/daemon.py).
        logging.getLogger(__name__).error("repository unreachable, retrying: %s", e)
        repo = open_repository
    except BaseException:
        await backend.close()
        raise
    agent = Agent(config, repo)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.request_stop)
    try:
        if args.once:
            return _report_once(args, await agent.run_once())
        await agent.run()
    finally:
        await (agent.repo.close() if agent.opened else backend.close())
    return 0


def _report_once(args: argparse.Namespace, doc: dict[str, Any]) -> int:
    emit(
        args,
        doc,
        f"caught up: {len(doc['snapshots'])} snapshots, {doc['files']} files, "
        f"{doc['bytes_new']:,} new bytes, {doc['bytes_uploaded']:,} bytes uploaded, "
        f"{doc['duration_s']:.1f} s",
    )
    return EXIT_PARTIAL if doc["errors"] else 0


def status_dir(args: argparse.Namespace) -> Path:
    if args.state_dir:
        return Path(args.state_dir)
    if args.config:
        doc = read_toml(Path(args.config))
        if doc.get("agent", {}).get("state_dir"):
            return Path(doc["agent"]["state_dir"])
        if env := _env_state_dir():
            return env
        spool = Path(doc.get("spool", {}).get("dir", "/var/lib/dicomvault/spool"))
        return spool.parent / "agent"
    return _env_state_dir() or DEFAULT_STATE_DIR


def show_status(args: argparse.Namespace) -> int:
    folder = status_dir(args)
    doc = read_status(folder)
    if doc is None:
        raise UsageError(f"no agent status in {folder} (is the agent running with that state dir?)")
    print(json.dumps(doc) if args.json else render(doc))
    return 0 if doc["running"] else EXIT_NOT_RUNNING
