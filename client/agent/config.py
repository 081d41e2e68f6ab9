"""The agent's configuration: a frozen `AgentConfig` built from a TOML file and command-line flags.

Owns the TOML schema (documented in `docs/agent.example.toml`), its validation, and the split
between settings read once at start (repository, sources, folders) and the `Policy` that the
daemon re-reads while running (real-time windows, batching, spool thresholds, heartbeat). Does
not read the environment: the CLI passes what it found there as overrides.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import socket
import tomllib
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from client.ratelimit import Schedule, Window
from engine.errors import UsageError
from engine.rates import parse_rate

DEFAULT_AE_TITLE = "DICOMVAULT"
DEFAULT_PORT = 11112
DEFAULT_IGNORE = (".*", "*.tmp", "*.part", "*.partial", "~*")
DELETE_AFTER = ("commit", "peer")  # [spool] delete_after: when a spooled instance may go


def parse_size(value: str | int | float | None) -> int | None:
    """'50GB' → 50_000_000_000; 'unlimited', 0 or None → None."""
    rate = parse_rate(value)
    return int(rate) if rate is not None else None


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise UsageError(f"not HOST:PORT: {text!r} (try 0.0.0.0:11112)")
    return host.strip("[]") or "0.0.0.0", int(port)


@dataclass(frozen=True, slots=True)
class RepositorySettings:
    """Where snapshots go; each field may instead come from the usual environment variables."""

    url: str | None = None
    password_file: str | None = None
    token: str | None = None
    token_file: str | None = None
    cache_dir: str | None = None
    cacert: str | None = None
    retry_for: str | None = None  # how long an established connection is retried (e.g. "30m")


@dataclass(frozen=True, slots=True)
class Sender:
    """One allow-listed modality: its calling AE title and, optionally, the hosts it calls from
    (addresses or networks such as 192.168.10.0/24; none: any host)."""

    ae_title: str
    hosts: tuple[str, ...] = ()

    def allows(self, host: str) -> bool:
        return not self.hosts or any(_in_network(host, net) for net in self.hosts)

    def __str__(self) -> str:
        return self.ae_title + (f"@{','.join(self.hosts)}" if self.hosts else "")


def _in_network(host: str, network: str) -> bool:
    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network(network, strict=False)
    except ValueError:
        return False


def parse_sender(text: str) -> Sender:
    """`--allow-sender CT1` or `CT1@192.168.10.21` (or `@192.168.10.0/24`)."""
    title, _, host = text.partition("@")
    return _sender({"ae_title": title, "hosts": [host] if host else []})


def _sender(doc: dict[str, Any]) -> Sender:
    title = str(doc["ae_title"]).strip()
    _check_ae_title(title)
    hosts = tuple(str(h) for h in doc.get("hosts", []))
    for h in hosts:
        try:
            ipaddress.ip_network(h, strict=False)
        except ValueError:
            raise UsageError(f"sender {title}: not an address or network: {h!r}") from None
    return Sender(title, hosts)


@dataclass(frozen=True, slots=True)
class DicomSettings:
    ae_title: str = DEFAULT_AE_TITLE
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    max_pdu: int = 1 << 20  # the largest PDU a peer may send us (0: any size, unbounded memory)
    # Storage Commitment: where to send a late report when the asking association has closed.
    peers: dict[str, tuple[str, int]] = field(default_factory=dict)
    # Who may send (client/agent/door.py): the allow-list, or anyone with accept_any.
    senders: tuple[Sender, ...] = ()
    accept_any: bool = False
    max_associations: int = 32  # connections at once, all hosts together
    max_per_host: int = 8  # connections at once from one address
    reserved: int = 8  # slots only hosts named in [[dicom.senders]] may use
    artim_seconds: float = 10.0  # a connection has this long to ask for an association
    idle_seconds: float = 60.0  # an association silent this long is aborted
    dimse_seconds: float = 30.0  # waiting for a DIMSE message part (e.g. a report's answer)

    def sender(self, ae_title: str) -> Sender | None:
        return next((s for s in self.senders if s.ae_title == ae_title), None)

    def door_summary(self) -> str:
        """What the start-up log says about who may send."""
        if self.accept_any:
            listed = f" ({len(self.senders)} listed)" if self.senders else ""
            return f"accepting ANY calling AE title from any host{listed}"
        if not self.senders:
            return "no senders allowed: every association will be refused"
        return "accepting " + ", ".join(map(str, self.senders))


@dataclass(frozen=True, slots=True)
class WatchSettings:
    path: Path
    recursive: bool = True
    settle_seconds: float = 5.0
    ignore: tuple[str, ...] = DEFAULT_IGNORE

    def ignores(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.ignore)


@dataclass(frozen=True, slots=True)
class RealtimeWindow:
    """A time of day in which arrivals are sealed and sent within `max_delay_seconds`."""

    window: Window
    max_delay_seconds: float


ALL_DAY = RealtimeWindow(Window.from_config({"start": "00:00", "end": "24:00"}), 30.0)


@dataclass(frozen=True, slots=True)
class Policy:
    """Settings the running agent re-reads whenever the config file changes."""

    realtime: tuple[RealtimeWindow, ...] = ()
    batch_interval_seconds: float = 900.0  # outside real-time windows: at least this often
    batch_max_files: int = 2000  # a batch (one snapshot) holds at most this many files
    batch_max_bytes: int = 2 * 10**9
    quiet_seconds: float = 1.0  # real time: a study's stream is batched once it pauses this long
    spool_max_bytes: int | None = None  # over this, C-STORE answers "out of resources"
    spool_alert_bytes: int | None = None
    heartbeat_seconds: float = 60.0
    commitment_timeout_seconds: float = 86400.0  # unknown instances fail after this long
    # "commit": delete a spooled instance once the primary committed its snapshot; "peer": only
    # once every peer site holds that snapshot too (and Storage Commitment waits as long).
    delete_after: str = "commit"
    upload_failures_alert: int = 5  # failed pack uploads in a row that raise an alert (0: never)

    def realtime_at(self, when: datetime) -> RealtimeWindow | None:
        for w in self.realtime:
            if w.window.contains(when):
                return w
        return None


@dataclass(frozen=True, slots=True)
class AgentConfig:
    name: str
    spool_dir: Path
    state_dir: Path
    repository: RepositorySettings = RepositorySettings()
    dicom: DicomSettings | None = None
    watch: tuple[WatchSettings, ...] = ()
    upload: Schedule = field(default_factory=Schedule)
    policy: Policy = Policy()
    rescan_seconds: float = 300.0  # watched folders are walked this often, as a safety net
    config_file: Path | None = None

    @property
    def instances_dir(self) -> Path:
        return self.spool_dir / "instances"

    @property
    def packs_dir(self) -> Path:
        return self.spool_dir / "packs"

    def sources(self) -> list[str]:
        out = []
        if self.dicom is not None:
            d = self.dicom
            out.append(f"dicom {d.ae_title}@{d.host}:{d.port}")
        out.extend(f"watch {w.path}" for w in self.watch)
        return out


@dataclass(frozen=True, slots=True)
class Overrides:
    """Command-line flags; each one set wins over the file."""

    spool_dir: str | None = None
    state_dir: str | None = None
    listen: str | None = None
    ae_title: str | None = None
    allow_senders: tuple[str, ...] = ()
    accept_any_sender: bool = False
    watch: tuple[str, ...] = ()
    name: str | None = None
    repository: RepositorySettings = RepositorySettings()


def load(
    path: Path | None, overrides: Overrides = Overrides(), default_state: Path | None = None
) -> AgentConfig:
    """Read `path` (may be None: flags only) and apply `overrides`."""
    doc = read_toml(path) if path is not None else {}
    config = _apply(from_doc(doc, default_state), overrides)
    if path is None:  # flags only: a quick start, so real time all day
        config = replace(config, policy=replace(config.policy, realtime=(ALL_DAY,)))
    if not (overrides.state_dir or doc.get("agent", {}).get("state_dir") or default_state):
        config = replace(config, state_dir=config.spool_dir.parent / "agent")
    if config.dicom is None and not config.watch:
        raise UsageError(
            "the agent has no source: configure [dicom] or [[watch]] (or --dicom-listen / --watch)"
        )
    return replace(config, config_file=path)


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except OSError as e:
        raise UsageError(f"cannot read agent config {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"agent config {path}: {e}") from None


def from_doc(doc: dict[str, Any], default_state: Path | None = None) -> AgentConfig:
    try:
        agent = doc.get("agent", {})
        spool = doc.get("spool", {})
        spool_dir = Path(spool.get("dir", "/var/lib/dicomvault/spool"))
        state = agent.get("state_dir") or default_state or spool_dir.parent / "agent"
        return AgentConfig(
            name=str(agent.get("name") or socket.gethostname()),
            spool_dir=spool_dir,
            state_dir=Path(state),
            repository=_repository(doc.get("repository", {})),
            dicom=_dicom(doc["dicom"]) if "dicom" in doc else None,
            watch=tuple(_watch(w) for w in doc.get("watch", [])),
            upload=Schedule.from_config(doc.get("upload", {})),
            policy=policy_from_doc(doc),
            rescan_seconds=float(agent.get("rescan_seconds", 300)),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise UsageError(f"agent config: bad or missing setting: {e}") from None


def policy_from_doc(doc: dict[str, Any]) -> Policy:
    batch, spool = doc.get("batch", {}), doc.get("spool", {})
    base = Policy()
    delete_after = str(spool.get("delete_after", base.delete_after))
    if delete_after not in DELETE_AFTER:
        raise ValueError(f"spool.delete_after must be one of {DELETE_AFTER}, got {delete_after!r}")
    return Policy(
        realtime=tuple(_realtime(w) for w in doc.get("realtime", [])),
        batch_interval_seconds=float(batch.get("interval_seconds", base.batch_interval_seconds)),
        batch_max_files=int(batch.get("max_files", base.batch_max_files)),
        batch_max_bytes=parse_size(batch.get("max_bytes")) or base.batch_max_bytes,
        quiet_seconds=float(batch.get("quiet_seconds", base.quiet_seconds)),
        spool_max_bytes=parse_size(spool.get("max_bytes")),
        spool_alert_bytes=parse_size(spool.get("alert_bytes")),
        heartbeat_seconds=float(doc.get("heartbeat", {}).get("interval_seconds", 60)),
        commitment_timeout_seconds=float(
            doc.get("dicom", {}).get("commitment_timeout_seconds", 86400)
        ),
        delete_after=delete_after,
        upload_failures_alert=int(
            doc.get("alerts", {}).get("upload_failures", base.upload_failures_alert)
        ),
    )


def load_policy(path: Path) -> Policy:
    """The live part of the config file (raises UsageError if it does not parse)."""
    try:
        return policy_from_doc(read_toml(path))
    except (KeyError, TypeError, ValueError) as e:
        raise UsageError(f"agent config: bad setting: {e}") from None


def _repository(doc: dict[str, Any]) -> RepositorySettings:
    return RepositorySettings(
        url=doc.get("url"),
        password_file=doc.get("password_file"),
        token=doc.get("token"),
        token_file=doc.get("token_file"),
        cache_dir=doc.get("cache_dir"),
        cacert=doc.get("cacert"),
        retry_for=doc.get("retry_for"),
    )


def _dicom(doc: dict[str, Any]) -> DicomSettings:
    host, port = parse_listen(str(doc.get("listen", f"0.0.0.0:{DEFAULT_PORT}")))
    ae_title = str(doc.get("ae_title", DEFAULT_AE_TITLE))
    _check_ae_title(ae_title)
    peers = {str(ae): parse_listen(str(addr)) for ae, addr in doc.get("peers", {}).items()}
    base = DicomSettings()
    return DicomSettings(
        ae_title,
        host,
        port,
        int(doc.get("max_pdu", base.max_pdu)),
        peers,
        senders=tuple(_sender(s) for s in doc.get("senders", [])),
        accept_any=bool(doc.get("accept_any", False)),
        max_associations=int(doc.get("max_associations", base.max_associations)),
        max_per_host=int(doc.get("max_per_host", base.max_per_host)),
        reserved=int(doc.get("reserved_for_senders", base.reserved)),
        artim_seconds=float(doc.get("artim_seconds", base.artim_seconds)),
        idle_seconds=float(doc.get("idle_seconds", base.idle_seconds)),
        dimse_seconds=float(doc.get("dimse_seconds", base.dimse_seconds)),
    )


def _check_ae_title(title: str) -> None:
    if not 0 < len(title) <= 16 or not title.isascii() or "\\" in title:
        raise UsageError(f"AE title must be 1-16 ASCII characters without '\\': {title!r}")


def _apply_dicom(dicom: DicomSettings, o: Overrides) -> DicomSettings:
    if o.listen:
        host, port = parse_listen(o.listen)
        dicom = replace(dicom, host=host, port=port)
    if o.ae_title:
        _check_ae_title(o.ae_title)
        dicom = replace(dicom, ae_title=o.ae_title)
    extra = tuple(parse_sender(s) for s in o.allow_senders)
    return replace(
        dicom, senders=dicom.senders + extra, accept_any=dicom.accept_any or o.accept_any_sender
    )


def _watch(doc: dict[str, Any]) -> WatchSettings:
    return WatchSettings(
        path=Path(doc["path"]),
        recursive=bool(doc.get("recursive", True)),
        settle_seconds=float(doc.get("settle_seconds", 5)),
        ignore=tuple(doc.get("ignore", DEFAULT_IGNORE)),
    )


def _realtime(doc: dict[str, Any]) -> RealtimeWindow:
    return RealtimeWindow(Window.from_config(doc), float(doc.get("max_delay_seconds", 30)))


def _apply(config: AgentConfig, o: Overrides) -> AgentConfig:
    if o.spool_dir:
        config = replace(config, spool_dir=Path(o.spool_dir))
    if o.state_dir:
        config = replace(config, state_dir=Path(o.state_dir))
    if o.name:
        config = replace(config, name=o.name)
    if o.listen or o.ae_title or o.allow_senders or o.accept_any_sender:
        config = replace(config, dicom=_apply_dicom(config.dicom or DicomSettings(), o))
    if o.watch:
        extra = tuple(WatchSettings(Path(p)) for p in o.watch)
        config = replace(config, watch=config.watch + extra)
    r, f = o.repository, config.repository
    merged = RepositorySettings(
        *(
            getattr(r, name) if getattr(r, name) is not None else getattr(f, name)
            for name in RepositorySettings.__dataclass_fields__
        )
    )
    return replace(config, repository=merged)
