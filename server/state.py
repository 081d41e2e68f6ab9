"""Typed keys for the objects an application holds (aiohttp `AppKey`s).

Owns only the names; `server.app` fills them and handlers read them. Must not create anything.
"""

from __future__ import annotations

from aiohttp import web

from engine.clock import Clock
from server.alerts.conditions import DiskUsageFn
from server.alerts.service import AlertService
from server.audit import AuditTrail
from server.catchup import CatchUp
from server.config import ServerConfig
from server.deletion import Deletions
from server.deletion_shared import SharedDeletions
from server.index import ServerIndex
from server.metrics import Metrics
from server.replication.service import Replication
from server.replication.state import Generation
from server.repos import Repositories
from server.scrub import Scrubber

CONFIG = web.AppKey("config", ServerConfig)
INDEX = web.AppKey("index", ServerIndex)
REPOS = web.AppKey("repos", Repositories)
METRICS = web.AppKey("metrics", Metrics)
CLOCK: web.AppKey[Clock] = web.AppKey("clock")
KNOWN_TOKEN = web.RequestKey("known_token", bool)  # a shared store's node holds the bearer token
DISK_USAGE: web.AppKey[DiskUsageFn] = web.AppKey("disk_usage")
REPLICATION = web.AppKey("replication", Replication)
SCRUB = web.AppKey("scrub", Scrubber)
ALERTS = web.AppKey("alerts", AlertService)
AUDIT = web.AppKey("audit", AuditTrail)
CATCHUP = web.AppKey("catchup", CatchUp)
# On a shared store: when this node last checked each token hash against the site store.
TOKEN_CHECKS: web.AppKey[dict[bytes, float]] = web.AppKey("token_checks")
DELETIONS = web.AppKey("deletions", Deletions)
# On a shared store: when this node last read each repository's failover state, and what it read.
FAILOVER_CHECKS: web.AppKey[dict[str, tuple[float, Generation]]] = web.AppKey("failover_checks")
# Schedules, revival and the prune log in the store too, for repositories several nodes serve.
SHARED_DELETIONS = web.AppKey("shared_deletions", SharedDeletions)
