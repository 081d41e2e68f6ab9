"""Offline operations for proof and alarm, run by the CLI against DATA directly: a scrub pass,
the open alerts, minting the provider token. Safe while `serve` runs on the same folder: LMDB is
multi-process safe, a pack is quarantined by one atomic rename, and healing publishes packs
exactly as an upload does. Must not parse arguments or print.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from engine.clock import SYSTEM
from server.admin import open_index, publish_tokens_offline
from server.alerts.store import AlertStore
from server.config import ServerConfig
from server.provider import grant_heal, mint_provider_token
from server.repos import open_repositories
from server.scrub import Scrubber, ScrubReport


def scrub_offline(config: ServerConfig, only: list[str] | None = None) -> ScrubReport:
    """One scrub pass over every repository (or `only` these), healing from the config's peers."""
    with open_index(config) as index:
        repos = open_repositories(config)
        for name in only or []:
            repos.get(name)  # RepositoryNotFound before any work
        return asyncio.run(Scrubber(config, index, repos, SYSTEM).run_pass(only))


def open_alerts_offline(config: ServerConfig) -> list[dict[str, Any]]:
    with open_index(config) as index:
        return AlertStore(index).open_alerts()


def create_provider_token_offline(config: ServerConfig, label: str) -> str:
    with open_index(config) as index:
        token = mint_provider_token(index, label, SYSTEM.time())
        publish_tokens_offline(config, index)
        return token


def with_rate(config: ServerConfig, rate: float | None) -> ServerConfig:
    return replace(config, scrub_rate=rate) if rate is not None else config


def grant_heal_offline(config: ServerConfig, token: str) -> None:
    with open_index(config) as index:
        grant_heal(index, token)
        publish_tokens_offline(config, index)
