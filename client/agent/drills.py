"""The agent's fire-drill schedule: every `interval_hours`, a drill against the primary — and every
`peer_every`-th one against the peer site — recorded in `<state dir>/drills.jsonl`, reported to
the server (which raises the alert on failure) and summarised in the heartbeat.

Owns the `[drill]` table of the agent config (read here from the config file, so the agent's
own config module is untouched; docs/agent.example.toml) and the timing (the last recorded drill
decides when the next is due, so restarts neither skip nor repeat drills). The daemon's hook is
one task and one heartbeat field; it passes its config, repository and clock, never itself.
Must not restore anything itself (`client.drill` does).
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client import drill
from client.agent.config import AgentConfig, read_toml
from client.repository import Repository
from engine.clock import SYSTEM, Clock
from engine.errors import DicomvaultError, UsageError

log = logging.getLogger(__name__)
FIRST_DELAY = 300.0  # seconds after start before a first drill: let the agent settle


@dataclass(frozen=True, slots=True)
class DrillSchedule:
    interval_hours: float = 0.0  # 0: no scheduled drills
    sample_percent: float = 1.0
    recent_hours: float = 24.0
    max_files: int | None = None
    peer_every: int = 0  # every Nth drill restores from the peer (0: never)
    peer_url: str | None = None  # the repository URL at the peer site
    peer_token: str | None = None  # default: the agent's own token (its hash is replicated)
    first_delay: float = FIRST_DELAY

    @property
    def settings(self) -> drill.DrillSettings:
        return drill.DrillSettings(self.sample_percent, self.recent_hours, self.max_files)

    @classmethod
    def from_file(cls, path: Path | None) -> DrillSchedule:
        if path is None:
            return cls()
        doc = read_toml(path).get("drill", {})
        try:
            schedule = cls(
                interval_hours=float(doc.get("interval_hours", 0)),
                sample_percent=float(doc.get("sample_percent", 1.0)),
                recent_hours=float(doc.get("recent_hours", 24.0)),
                max_files=int(doc["max_files"]) if "max_files" in doc else None,
                peer_every=int(doc.get("peer_every", 0)),
                peer_url=doc.get("peer_url"),
                peer_token=doc.get("peer_token"),
                first_delay=float(doc.get("first_delay_seconds", FIRST_DELAY)),
            )
        except (TypeError, ValueError) as e:
            raise UsageError(f"agent config [drill]: {e}") from None
        if schedule.peer_every and not schedule.peer_url:
            raise UsageError("agent config [drill]: peer_every needs peer_url")
        return schedule


class DrillScheduler:
    def __init__(
        self,
        config: AgentConfig,
        repo: Repository,
        schedule: DrillSchedule | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        self.config, self.repo = config, repo
        self.schedule = schedule or DrillSchedule.from_file(config.config_file)
        self.clock = clock
        self.last: dict[str, Any] | None = None
        past = drill.history(config.state_dir, last=1)
        self.last = past[-1] if past else None
        self.count = len(drill.history(config.state_dir, last=10_000))

    def summary(self) -> dict[str, Any] | None:
        """The last drill, for the heartbeat."""
        if self.last is None:
            return None
        keys = ("time", "site", "ok", "files", "mismatches", "errors")
        return {k: self.last.get(k) for k in keys}

    async def run(self) -> None:
        if self.schedule.interval_hours <= 0:
            return
        await self.clock.sleep(self.schedule.first_delay)
        while True:
            wait = self._due_in()
            if wait > 0:
                await self.clock.sleep(min(wait, 3600.0))
                continue
            try:
                await self.drill_once()
            except (DicomvaultError, OSError) as e:
                log.error("fire drill could not run: %s", e)
                await self.clock.sleep(min(3600.0, self.schedule.interval_hours * 3600))

    def _due_in(self) -> float:
        if self.last is None:
            return 0.0
        last = drill._parse_time(str(self.last.get("time", "")))
        return last + self.schedule.interval_hours * 3600 - self.clock.time()

    async def drill_once(self) -> drill.DrillReport:
        """One drill now (against the peer when its turn has come), recorded and reported."""
        self.count += 1
        peer = bool(self.schedule.peer_every) and self.count % self.schedule.peer_every == 0
        repo = self._peer_repository() if peer else self.repo
        site = self.schedule.peer_url if peer else self.repo.backend.location
        try:
            report = await drill.run_drill(
                repo, self.schedule.settings, agent=self.config.name, site=str(site),
                rng=random.Random(), now=self.clock.time(),
            )  # fmt: skip
        finally:
            if repo is not self.repo:
                await repo.close()
        await asyncio.to_thread(drill.record, self.config.state_dir, report)
        self.last = report.as_json()
        log.log(logging.INFO if report.ok else logging.ERROR, "%s", drill.render(report))
        try:
            await drill.report_to_server(self.repo.backend, report)
        except DicomvaultError as e:
            log.error("drill report not delivered to the server: %s", e)
        return report

    def _peer_repository(self) -> Repository:
        from engine.remote import RemoteBackend

        s = self.config.repository
        token = self.schedule.peer_token or s.token or ""
        if not token and s.token_file:
            token = Path(s.token_file).read_text().strip()
        assert self.schedule.peer_url is not None
        backend = RemoteBackend(self.schedule.peer_url, token, ca_file=s.cacert)
        cache = Path(s.cache_dir) if s.cache_dir else self.config.state_dir / "drill-cache"
        return drill.site_repository(self.repo, backend, cache)
