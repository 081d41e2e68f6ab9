"""Server configuration: one frozen `ServerConfig`, loaded from TOML plus command-line overrides.

Owns the settings and their defaults. Only the CLI reads files and arguments; everything else
receives a `ServerConfig` and must not read the environment or the filesystem for settings.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from engine.errors import UsageError
from engine.rates import parse_rate
from engine.store.s3 import LOCK_MODES, S3Settings, parse_s3_url
from server.alerts.settings import (
    AlertSettings,
    AlertSite,
    RepoPolicy,
    alerts_from_dict,
    repos_from_dict,
)
from server.replication.settings import PeerConfig, ReplicationSettings, peers_from_list

MiB = 1024 * 1024
DEFAULT_PORT = 8420


DEFAULT_LOCK_DAYS = 30.0


@dataclass(frozen=True, slots=True)
class ObjectLockSettings:
    """`[object_lock]` (docs/design.md §14 "Object Lock"): packs, commit records, key objects
    and the config of every repository are put with this retention, `days` long, extended
    while they live; only with an S3 store whose bucket has Object Lock enabled."""

    mode: str = "COMPLIANCE"
    days: float = DEFAULT_LOCK_DAYS


OBJECT_LOCK_KEYS = ("mode", "days")
LOCK_MARGIN_DAYS = 2.0  # a live object keeps at least undelete_days + this of its lock


@dataclass(frozen=True, slots=True)
class ServerConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # A pack is ~16 MiB; 64 MiB leaves room for oversized packs and big first-backup commits.
    max_body_size: int = 64 * MiB
    # Connections (docs/server.example.toml): descriptors are bounded by the caps (lowered at
    # start to fit the process's descriptor limit); a connection with no complete request
    # for `idle_timeout` seconds is closed; a request body may take `body_grace` seconds plus
    # one second per `min_body_rate` bytes (16 KiB/s: a 16 MiB pack may take 17 minutes).
    max_connections: int = 4096
    max_connections_per_address: int = 256
    idle_timeout: float = 30.0
    min_body_rate: float = 16 * 1024.0
    body_grace: float = 30.0
    max_missing_ids: int = 100_000  # 3.2 MB of ids per query: one LMDB read txn stays short
    # LMDB maps this much address space (sparse on disk): ~100 bytes per chunk → ~10^8 chunks.
    index_map_size: int = 16 * 1024 * MiB
    # Stale upload temp files older than this are removed by the sweeper (live uploads are younger).
    incoming_max_age: float = 24 * 3600.0
    sweep_interval: float = 3600.0
    # With a shared store: how often this node publishes token hashes minted here (3.1.3).
    token_publish_interval: float = 5.0
    # ... and how often it re-checks a cached token, so a revocation through another node
    # reaches it (at most this late).
    token_recheck_interval: float = 60.0
    # Replication (docs/design.md "Replication"): this site's name, as clients see it in
    # `snapshots`, and the peers every pack, commit, key object and token hash is pushed to.
    site_name: str = "primary"
    peers: tuple[PeerConfig, ...] = ()
    # How often a replicator looks for work it was not woken for (items queued by another
    # process, a window opening) and the longest wait between retries of an unreachable peer.
    replication_poll_interval: float = 2.0
    replication_retry_max: float = 60.0
    # Scrub (docs/design.md "Scrub and healing"): every stored pack is re-hashed this often
    # (0: only on demand), at most `scrub_rate` bytes per second so uploads are not starved.
    scrub_interval: float = 7 * 24 * 3600.0
    scrub_rate: float | None = 50 * MiB
    # Deletions (docs/design.md §14): forget and prune only schedule; objects are destroyed
    # once `undelete_days` have passed (the provider's, at least 1), checked every
    # `purge_interval` seconds.
    undelete_days: float = 14.0
    purge_interval: float = 3600.0
    # Alerts (docs/design.md "Alerts", docs/server.example.toml): `[alerts]` and `[repos.NAME]`.
    alerts: AlertSettings = field(default_factory=AlertSettings)
    repos: tuple[RepoPolicy, ...] = ()
    # Where repositories live (docs/design.md 3.1.2): None for DATA/repos, else a bucket prefix
    # (`store = "s3://BUCKET/PREFIX"` or --store, with `[s3]` or the AWS_* variables). DATA
    # then holds only this node's index (a cache, 3.1.3).
    store: S3Settings | None = None
    # S3 Object Lock retention of what forget and prune could remove (`[object_lock]`).
    object_lock: ObjectLockSettings | None = None

    @property
    def index_path(self) -> Path:
        return self.data_dir / "index.lmdb"

    @property
    def repos_dir(self) -> Path:
        return self.data_dir / "repos"

    def replication_settings(self) -> ReplicationSettings:
        return ReplicationSettings(
            self.site_name,
            self.peers,
            self.replication_poll_interval,
            self.replication_retry_max,
            self.alerts.peer_unreachable_grace,
        )

    def alert_site(self) -> AlertSite:
        return AlertSite(self.site_name, self.data_dir, self.alerts, self.repos)


def parse_listen(text: str) -> tuple[str, int]:
    """Split `HOST:PORT` (IPv6 as `[::1]:PORT`)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"--listen must be HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _coerce(name: str, value: Any) -> Any:
    if name in ("data_dir", "tls_cert", "tls_key"):
        return Path(value) if value is not None else None
    if name == "listen":
        return parse_listen(str(value))
    if name == "peers":
        return peers_from_list(value)
    if name == "scrub_rate":
        return parse_rate(value)
    if name == "alerts":
        return alerts_from_dict(value)
    if name == "repos":
        return repos_from_dict(value)
    if name == "object_lock":
        return object_lock_from_dict(value)
    return value


def object_lock_from_dict(doc: Any) -> ObjectLockSettings:
    if not isinstance(doc, dict):
        raise UsageError("[object_lock] must be a table")
    unknown = sorted(set(doc) - set(OBJECT_LOCK_KEYS))
    if unknown:
        raise UsageError(f"unknown [object_lock] settings: {', '.join(unknown)}")
    mode = doc.get("mode", "COMPLIANCE")
    if mode not in LOCK_MODES:
        raise UsageError(f"object_lock.mode must be one of {', '.join(LOCK_MODES)}, got {mode!r}")
    days = doc.get("days", DEFAULT_LOCK_DAYS)
    if isinstance(days, bool) or not isinstance(days, int | float) or not 0 < days <= 36_500:
        raise UsageError(f"object_lock.days must be a number of days (up to 36500), got {days!r}")
    return ObjectLockSettings(mode, float(days))


def _check_object_lock(config: ServerConfig) -> None:
    lock = config.object_lock
    if lock is None:
        return
    if config.store is None:
        raise UsageError(
            '[object_lock] needs an S3 store (store = "s3://BUCKET/PREFIX"): a local folder '
            "store has no Object Lock"
        )
    least = config.undelete_days + LOCK_MARGIN_DAYS + 1
    if lock.days < least:
        raise UsageError(
            f"object_lock.days must be at least undelete_days + {LOCK_MARGIN_DAYS + 1:g} "
            f"({least:g}), got {lock.days:g}"
        )


S3_KEYS = ("endpoint", "region", "access_key_id", "secret_access_key", "session_token")


def store_settings(
    url: str | None, table: dict[str, Any], env: dict[str, str]
) -> S3Settings | None:
    """`store = "s3://BUCKET/PREFIX"` with its `[s3]` table; the AWS_* variables (`env`, read
    by the CLI) win over the table, as flags win over the file."""
    if url is None:
        if table:
            raise UsageError('[s3] settings need store = "s3://BUCKET/PREFIX" (or --store)')
        return None
    unknown = sorted(set(table) - set(S3_KEYS))
    if unknown:
        raise UsageError(f"unknown [s3] settings: {', '.join(unknown)}")
    bucket, prefix = parse_s3_url(url)
    values = {**table, **{k: v for k, v in env.items() if v}}
    given: dict[str, Any] = {k: str(values[k]) for k in S3_KEYS if k in values}
    return S3Settings(bucket, prefix, **given)


def load_config(
    path: Path | None = None,
    *,
    add_peers: list[dict[str, Any]] | None = None,
    s3_env: dict[str, str] | None = None,
    **overrides: Any,
) -> ServerConfig:
    """Read `path` (TOML, optional), then apply non-None `overrides` (CLI flags win);
    `add_peers` (from `--peer`/`--peer-token`) are appended to the file's `[[peers]]`;
    `s3_env` (the AWS_* variables) completes an S3 `store`."""
    doc: dict[str, Any] = {}
    if path is not None:
        try:
            doc = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise UsageError(f"cannot read config {path}: {e}") from None
    doc.update({k: v for k, v in overrides.items() if v is not None})
    doc["store"] = store_settings(doc.get("store"), doc.pop("s3", {}), s3_env or {})
    if add_peers:
        doc["peers"] = [*doc.get("peers", []), *add_peers]
    known = {f.name for f in fields(ServerConfig)} | {"listen"}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise UsageError(f"unknown server settings: {', '.join(unknown)}")
    values = {k: _coerce(k, v) for k, v in doc.items()}
    if "listen" in values:
        values["host"], values["port"] = values.pop("listen")
    if "data_dir" not in values:
        raise UsageError("the data folder is required (--data or data_dir in the config file)")
    config = ServerConfig(**values)
    if not config.undelete_days >= 1:
        raise UsageError(f"undelete_days must be at least 1, got {config.undelete_days!r}")
    _check_object_lock(config)
    if (config.tls_cert is None) != (config.tls_key is None):
        raise UsageError("TLS needs both a certificate and a key")
    return config
