"""The alert service: evaluate every condition periodically and drive each alert through
open → repeated every `repeat_interval` → resolved (one message), plus the daily digest.

Owns the state machine's transitions and who hears about what: a repository's alerts go to its
practice's recipients and webhooks and to the provider's; server-wide alerts (disk) and the full
digest go to the provider only; each practice with its own recipients gets a digest of its own
repository. Delivery is at least once: an alert is marked sent when any channel took it. On a
shared store (several nodes, §3.1.3) each evaluation first merges the heartbeats other nodes
published, and a transition (or a digest) is sent only by the node that claims it
(`server.alerts.shared`).
Started and cancelled by the app's `cleanup_ctx`; the clock is injected. Must not serve HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from datetime import datetime
from typing import Any

from engine.clock import Clock
from server.alerts.conditions import (
    Condition,
    DiskUsageFn,
    Facts,
    HasReplicators,
    evaluate,
    gather,
    initialised_times,
    iso,
)
from server.alerts.delivery import Message, Notifier, Outcome
from server.alerts.settings import AlertSite, effective
from server.alerts.shared import Claims, SharedHeartbeats
from server.alerts.store import AlertStore
from server.index import ServerIndex
from server.repos import Repositories

log = logging.getLogger(__name__)
SUBJECT = "[dicomvault {site}] {tag} {text}"


class AlertService:
    def __init__(
        self,
        config: AlertSite,
        index: ServerIndex,
        repos: Repositories,
        replication: HasReplicators | None,
        clock: Clock,
        notifier: Notifier | None = None,
        disk_usage: DiskUsageFn = shutil.disk_usage,
    ) -> None:
        self.config, self.index, self.repos = config, index, repos
        self.replication, self.clock = replication, clock
        self.disk_usage = disk_usage
        self.store = AlertStore(index)
        self.heartbeats = SharedHeartbeats(index)
        self.claims = Claims(repos.site, repos.root.shared)
        self.notifier = notifier or Notifier(config.alerts)
        self.last_facts: Facts | None = None
        self.last_tick: float | None = None
        self.storage_full_at: float | None = None
        self._wake = asyncio.Event()

    def storage_full(self) -> None:
        """A write failed with ENOSPC: open the disk alert now, not at the next evaluation."""
        self.storage_full_at = self.clock.time()
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # a bug or a full disk must not end alerting for good
                log.exception("alert evaluation failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.alerts.evaluate_interval)
            self._wake.clear()

    async def tick(self) -> list[Condition]:
        """One evaluation: open, repeat and resolve alerts, then the digest if due."""
        now = self.clock.time()
        inits = await initialised_times(self.repos)
        for name in inits:
            await self.heartbeats.merge(self.repos.get(name))
        facts = await asyncio.to_thread(
            gather,
            self.config,
            self.index,
            self.repos,
            self.replication,
            now,
            self.disk_usage,
            inits,
        )
        facts.storage_full_at = self.storage_full_at
        conditions = evaluate(facts)
        records = await asyncio.to_thread(self.store.all)
        for c in conditions:
            await self._hold(c, records.pop(c.key, None), now)
        for doc in records.values():
            await self._clear(doc, now)
        self.last_facts, self.last_tick = facts, now
        await self._digest(facts, now)
        return conditions

    # -- transitions ---------------------------------------------------------------------------

    async def _hold(self, c: Condition, doc: dict[str, Any] | None, now: float) -> None:
        if doc is None or doc.get("state") != "open":
            doc = {
                "key": c.key,
                "repo": c.repo,
                "kind": c.kind,
                "opened": now,
                "last_sent": None,
                "sends": 0,
                "state": "open",
                "resolved": None,
                "last_error": None,
            }
        doc["message"] = c.message
        last = doc["last_sent"]
        if last is None or now - float(last) >= self.config.alerts.repeat_interval:
            event = "alert" if doc["sends"] == 0 else "repeat"
            outcome, sent = await self._deliver(event, doc, now)
            doc["last_error"] = "; ".join(outcome.errors) or None
            if outcome.ok:
                doc["last_sent"], doc["sends"] = sent, doc["sends"] + 1
        await asyncio.to_thread(self.store.put, doc)

    async def _clear(self, doc: dict[str, Any], now: float) -> None:
        if not doc.get("sends"):
            await asyncio.to_thread(self.store.delete, doc["key"])  # nobody was told: no news
            return
        doc["state"], doc["resolved"] = "resolving", doc.get("resolved") or now
        outcome, _ = await self._deliver("resolved", doc, now)
        if outcome.ok:
            await asyncio.to_thread(self.store.delete, doc["key"])
        else:
            doc["last_error"] = "; ".join(outcome.errors)
            await asyncio.to_thread(self.store.put, doc)

    async def _deliver(self, event: str, doc: dict[str, Any], now: float) -> tuple[Outcome, float]:
        """Send `event` for the alert `doc` and say when it was sent. On a shared store, only
        if this node claims the transition first: when another node already sent it (an open
        alert within its repeat interval, or its resolution), adopt that node's times."""
        if not self.claims.shared:
            return await self._send(event, doc, now), now
        key, last = doc["key"], await self.claims.newest(doc["key"])
        is_open = last is not None and last.event != "resolved"
        if event != "resolved":
            if last is not None and is_open:
                doc["opened"] = last.opened
                if now - last.time < self.config.alerts.repeat_interval:
                    return Outcome(), last.time  # another node sent it this period
            event = "repeat" if is_open else "alert"
        elif last is not None and not is_open:
            return Outcome(), last.time  # another node announced the resolution
        seq = last.seq + 1 if last is not None else 0
        if not await self.claims.claim(key, seq, event, now, float(doc["opened"])):
            return Outcome(), now  # lost the race: the winner sends
        outcome = await self._send(event, doc, now)
        if not outcome.ok:
            await self.claims.release(key, seq)
        return outcome, now

    async def _send(self, event: str, doc: dict[str, Any], now: float) -> Outcome:
        tag = {"alert": "ALERT", "repeat": "STILL FAILING", "resolved": "RESOLVED"}[event]
        subject = SUBJECT.format(site=self.config.site_name, tag=tag, text=doc["message"])
        lines = [
            f"{tag}: {doc['message']}",
            "",
            f"since:    {iso(float(doc['opened']))}",
            f"site:     {self.config.site_name}",
            f"alert:    {doc['key']}",
        ]
        if event == "resolved":
            lines.append(f"resolved: {iso(float(doc['resolved']))}")
        elif event == "repeat":
            lines.append(
                f"repeated every {self.config.alerts.repeat_interval:.0f} s until it clears"
            )
        payload = {
            "event": event,
            "site": self.config.site_name,
            "time": now,
            **{k: doc[k] for k in ("key", "repo", "kind", "message", "opened", "resolved")},
        }
        recipients, webhooks = self._audience(doc.get("repo"))
        message = Message(event, subject[:200], "\n".join(lines) + "\n", payload)
        return await self.notifier.send(message, recipients, webhooks)

    def _audience(self, repo: str | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
        if repo is None:
            return self.config.alerts.provider_recipients, self.config.alerts.webhooks
        policy = effective(self.config.alerts, self.config.repos, repo)
        return policy.recipients, policy.webhooks

    # -- the daily digest ------------------------------------------------------------------------

    async def _digest(self, facts: Facts, now: float) -> None:
        minute = self.config.alerts.digest_minute()
        local = datetime.fromtimestamp(now)
        if minute is None or local.hour * 60 + local.minute < minute:
            return
        today = local.date().isoformat()
        last = await asyncio.to_thread(self.store.last_digest)
        if last is not None and last.get("date") == today:
            return
        if not await self.claims.claim_digest(today, now):  # another node sends today's
            await asyncio.to_thread(self.store.set_digest, today, now)
            return
        open_alerts = await asyncio.to_thread(self.store.open_alerts)
        outcome = await self._send_digest(facts, open_alerts, None, today, now)
        for repo in facts.repos:
            if repo.policy.practice_recipients or _own_webhooks(self.config, repo.name):
                await self._send_digest(facts, open_alerts, repo.name, today, now)
        if outcome.ok:
            await asyncio.to_thread(self.store.set_digest, today, now)
        else:
            await self.claims.release_digest(today)

    async def _send_digest(
        self, facts: Facts, alerts: list[dict[str, Any]], repo: str | None, today: str, now: float
    ) -> Outcome:
        names = [r.name for r in facts.repos if repo is None or r.name == repo]
        mine = [a for a in alerts if repo is None or a.get("repo") == repo]
        lines = digest_lines(names, mine)
        verdict = "all is well" if not mine else f"{len(mine)} open alerts"
        scope = repo or f"{len(names)} repositories"
        subject = SUBJECT.format(
            site=self.config.site_name, tag="DIGEST", text=f"{today}: {scope}, {verdict}"
        )
        payload = {
            "event": "digest",
            "site": self.config.site_name,
            "time": now,
            "date": today,
            "repo": repo,
            "ok": not mine,
            "repositories": names,
            "alerts": [{k: a[k] for k in ("key", "repo", "kind", "message")} for a in mine],
        }
        text = (
            f"Daily digest of {self.config.site_name}, {today}: {verdict}.\n"
            "A missing digest means the alerting itself is down.\n\n" + "\n".join(lines)
        )
        if repo is None:
            audience = (self.config.alerts.provider_recipients, self.config.alerts.webhooks)
        else:
            policy = effective(self.config.alerts, self.config.repos, repo)
            audience = (policy.practice_recipients, _own_webhooks(self.config, repo))
        return await self.notifier.send(Message("digest", subject, text + "\n", payload), *audience)


def _own_webhooks(config: AlertSite, repo: str) -> tuple[str, ...]:
    return next((p.webhooks for p in config.repos if p.name == repo), ())


def digest_lines(names: list[str], alerts: list[dict[str, Any]]) -> list[str]:
    out = []
    for name in names:
        mine = [a for a in alerts if a.get("repo") == name]
        out.append(f"{name}: OK" if not mine else f"{name}: {len(mine)} open alerts")
        out += [f"  - {a['message']}" for a in mine]
    out += [f"server: {a['message']}" for a in alerts if a.get("repo") is None]
    return out


async def cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
