"""Alert settings: the `[alerts]` table and the per-practice `[repos.NAME]` tables of server.toml.

Owns parsing and validating recipients, webhooks, thresholds and SMTP settings, and the effective
policy of one repository (its own thresholds, else the provider's defaults). Must not do I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from engine.errors import UsageError

_HHMM = re.compile(r"^([01]?[0-9]|2[0-3]):([0-5][0-9])$")
_ADDRESS = re.compile(r"^[^@\s<>]+@[^@\s<>]+$")


@dataclass(frozen=True, slots=True)
class AlertSettings:
    """Provider-wide delivery and defaults (`[alerts]`)."""

    smtp_host: str | None = None  # None: no e-mail (webhooks only)
    smtp_port: int = 25
    smtp_starttls: bool = False
    smtp_user: str | None = None
    smtp_password: str | None = None
    sender: str = "dicomvault@localhost"  # `from` in TOML
    provider_recipients: tuple[str, ...] = ()
    webhooks: tuple[str, ...] = ()
    repeat_interval: float = 4 * 3600.0  # an open alert is sent again this often
    digest_time: str | None = "07:00"  # local HH:MM of the daily digest; "" turns it off
    evaluate_interval: float = 60.0  # seconds between evaluations of every condition
    disk_threshold: float = 0.90  # fraction of DATA's filesystem in use that raises an alert
    # A repository that schedules the deletion of more than this share of its snapshots (or of
    # its pack bytes) within 24 hours raises `mass_deletion` (docs/design.md §14).
    mass_deletion_share: float = 0.5
    peer_unreachable_grace: float = 900.0  # seconds a peer may fail before `peer_unreachable`
    # Defaults for every repository; `[repos.NAME]` may override each.
    heartbeat_timeout: float = 900.0
    commit_policy_hours: float = 26.0
    replication_lag_threshold: float = 6 * 3600.0

    def digest_minute(self) -> int | None:
        if not self.digest_time:
            return None
        m = _HHMM.match(self.digest_time)
        assert m is not None  # validated when parsed
        return int(m.group(1)) * 60 + int(m.group(2))


@dataclass(frozen=True, slots=True)
class RepoPolicy:
    """One practice's recipients and thresholds (`[repos.NAME]`); None: the provider default."""

    name: str
    recipients: tuple[str, ...] = ()
    webhooks: tuple[str, ...] = ()
    heartbeat_timeout: float | None = None
    commit_policy_hours: float | None = None
    replication_lag_threshold: float | None = None


@dataclass(frozen=True, slots=True)
class Effective:
    """The thresholds in force for one repository, and who hears about it."""

    recipients: tuple[str, ...]
    webhooks: tuple[str, ...]
    heartbeat_timeout: float
    commit_policy_seconds: float
    replication_lag_threshold: float
    practice_recipients: tuple[str, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class AlertSite:
    """What the alert service is given from server.toml (field names as there): the site's
    name, DATA (whose disk is watched), `[alerts]` and the `[repos.NAME]` policies."""

    site_name: str
    data_dir: Path
    alerts: AlertSettings
    repos: tuple[RepoPolicy, ...]


def effective(alerts: AlertSettings, policies: tuple[RepoPolicy, ...], repo: str) -> Effective:
    p = next((p for p in policies if p.name == repo), RepoPolicy(repo))
    return Effective(
        recipients=_unique(p.recipients + alerts.provider_recipients),
        webhooks=_unique(p.webhooks + alerts.webhooks),
        heartbeat_timeout=_pick(p.heartbeat_timeout, alerts.heartbeat_timeout),
        commit_policy_seconds=_pick(p.commit_policy_hours, alerts.commit_policy_hours) * 3600,
        replication_lag_threshold=_pick(
            p.replication_lag_threshold, alerts.replication_lag_threshold
        ),
        practice_recipients=p.recipients,
    )


def _pick(value: float | None, default: float) -> float:
    return default if value is None else value


def _unique(items: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


# -- parsing ---------------------------------------------------------------------------------

_ALERT_KEYS = {
    "smtp_host",
    "smtp_port",
    "smtp_starttls",
    "smtp_user",
    "smtp_password",
    "from",
    "provider_recipients",
    "webhooks",
    "repeat_interval",
    "digest_time",
    "evaluate_interval",
    "disk_threshold",
    "mass_deletion_share",
    "peer_unreachable_grace",
    "heartbeat_timeout",
    "commit_policy_hours",
    "replication_lag_threshold",
}
_REPO_KEYS = {
    "recipients",
    "webhooks",
    "heartbeat_timeout",
    "commit_policy_hours",
    "replication_lag_threshold",
}


def alerts_from_dict(doc: Any) -> AlertSettings:
    if isinstance(doc, AlertSettings):
        return doc
    if not isinstance(doc, dict):
        raise UsageError("[alerts] must be a table")
    _no_unknown("alerts", doc, _ALERT_KEYS)
    base = AlertSettings()
    digest = doc.get("digest_time", base.digest_time)
    if digest and not _HHMM.match(str(digest)):
        raise UsageError(f"alerts.digest_time must be HH:MM, got {digest!r}")
    settings = AlertSettings(
        smtp_host=doc.get("smtp_host"),
        smtp_port=int(doc.get("smtp_port", base.smtp_port)),
        smtp_starttls=bool(doc.get("smtp_starttls", False)),
        smtp_user=doc.get("smtp_user"),
        smtp_password=doc.get("smtp_password"),
        sender=_address(str(doc.get("from", base.sender))),
        provider_recipients=_addresses(doc.get("provider_recipients", [])),
        webhooks=_urls(doc.get("webhooks", [])),
        repeat_interval=_positive("repeat_interval", doc.get("repeat_interval", 4 * 3600.0)),
        digest_time=str(digest) if digest else None,
        evaluate_interval=_positive("evaluate_interval", doc.get("evaluate_interval", 60.0)),
        disk_threshold=float(doc.get("disk_threshold", base.disk_threshold)),
        mass_deletion_share=float(doc.get("mass_deletion_share", base.mass_deletion_share)),
        peer_unreachable_grace=_positive(
            "peer_unreachable_grace", doc.get("peer_unreachable_grace", 900.0)
        ),
        heartbeat_timeout=_positive("heartbeat_timeout", doc.get("heartbeat_timeout", 900.0)),
        commit_policy_hours=_positive("commit_policy_hours", doc.get("commit_policy_hours", 26.0)),
        replication_lag_threshold=_positive(
            "replication_lag_threshold", doc.get("replication_lag_threshold", 6 * 3600.0)
        ),
    )
    return settings


def repos_from_dict(doc: Any) -> tuple[RepoPolicy, ...]:
    if isinstance(doc, tuple | list) and all(isinstance(p, RepoPolicy) for p in doc):
        return tuple(doc)
    if not isinstance(doc, dict):
        raise UsageError("[repos.NAME] tables expected")
    return tuple(_repo_policy(str(name), table) for name, table in sorted(doc.items()))


def _repo_policy(name: str, doc: Any) -> RepoPolicy:
    if not isinstance(doc, dict):
        raise UsageError(f"[repos.{name}] must be a table")
    _no_unknown(f"repos.{name}", doc, _REPO_KEYS)

    def opt(key: str) -> float | None:
        return _positive(key, doc[key]) if key in doc else None

    return RepoPolicy(
        name=name,
        recipients=_addresses(doc.get("recipients", [])),
        webhooks=_urls(doc.get("webhooks", [])),
        heartbeat_timeout=opt("heartbeat_timeout"),
        commit_policy_hours=opt("commit_policy_hours"),
        replication_lag_threshold=opt("replication_lag_threshold"),
    )


def _no_unknown(table: str, doc: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(doc) - known)
    if unknown:
        raise UsageError(f"unknown settings in [{table}]: {', '.join(unknown)}")


def _positive(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be a number, got {value!r}") from None
    if number <= 0:
        raise UsageError(f"{name} must be positive, got {value!r}")
    return number


def _address(text: str) -> str:
    if not _ADDRESS.match(text):
        raise UsageError(f"not an e-mail address: {text!r}")
    return text


def _addresses(items: Any) -> tuple[str, ...]:
    if not isinstance(items, list | tuple):
        raise UsageError("recipients must be a list of e-mail addresses")
    return tuple(_address(str(a)) for a in items)


def _urls(items: Any) -> tuple[str, ...]:
    if not isinstance(items, list | tuple):
        raise UsageError("webhooks must be a list of http(s) URLs")
    out = []
    for url in items:
        parts = urlsplit(str(url))
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise UsageError(f"webhook must be an http(s) URL, got {url!r}")
        out.append(str(url))
    return tuple(out)
