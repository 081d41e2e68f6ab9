"""In-process harness for agent tests that need to see inside: a real `Agent` on the test's event
loop (its DICOM listener on a free loopback port) against real in-process chunk servers
(tests/server/monitorkit.py), instances sent by a pynetdicom SCU from a worker thread.

Nothing is mocked; the agent, its repository and the servers are the production classes, wired
the way `dicomvault agent` wires them. Subprocess end-to-end tests use benchmarks/agentkit.py.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from client.agent.config import ALL_DAY, AgentConfig, DicomSettings, Policy, Sender
from client.agent.daemon import Agent
from client.repository import Repository
from engine.remote import RemoteBackend
from engine.repoconfig import init_repository
from engine.retry import with_retries
from tests.helpers import PASSPHRASE, cheap_kdf
from tests.server.monitorkit import REPO, Site, wait_for

AGENT_AET = "DVAGENT"
MODALITY_AET = "MODALITY"
COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"  # the well-known Push Model SOP Instance


def agent_config(
    root: Path,
    peers: dict[str, tuple[str, int]] | None = None,
    dicom: dict[str, Any] | None = None,
    **policy: Any,
) -> AgentConfig:
    """A DICOM-only agent that accepts MODALITY from loopback, real time all day, quick batches
    and heartbeats; `dicom` overrides the listener's settings."""
    policy.setdefault("quiet_seconds", 0.1)
    policy.setdefault("heartbeat_seconds", 0.3)
    settings = {"senders": (Sender(MODALITY_AET, ("127.0.0.1",)),), **(dicom or {})}
    return AgentConfig(
        name="pc-1",
        spool_dir=root / "spool",
        state_dir=root / "state",
        dicom=DicomSettings(AGENT_AET, "127.0.0.1", 0, peers=peers or {}, **settings),
        policy=Policy(realtime=(ALL_DAY,), **policy),
    )


async def practice_repository(
    site: Site, config: AgentConfig, url: str | None = None, *, init: bool = True
) -> Repository:
    """Initialise the practice's repository at `site` (unless `init` is off), then open it as
    the agent does (retrying backend, pack spool under the agent's spool folder), optionally
    through another URL."""
    token = site.tokens[REPO]["backup"]
    if init:
        direct = RemoteBackend(f"{site.url}/{REPO}", token)
        try:
            await init_repository(direct, PASSPHRASE, cheap_kdf())
        finally:
            await direct.close()
    backend = with_retries(RemoteBackend(url or f"{site.url}/{REPO}", token))
    cache = config.spool_dir.parent / "cache"
    return await Repository.open(backend, PASSPHRASE, cache, spool_dir=config.packs_dir)


@asynccontextmanager
async def running(
    config: AgentConfig, repo: Repository, setup: Callable[[Agent], None] | None = None
) -> AsyncIterator[Agent]:
    """The agent running on this loop until the block ends (then stopped as SIGTERM would);
    `setup` may swap its parts (e.g. a drill scheduler with a test clock) before it starts."""
    agent = Agent(config, repo)
    if setup is not None:
        setup(agent)
    task = asyncio.create_task(agent.run(), name="agent")
    await wait_for(lambda: agent.receiver is not None or task.done(), what="the DICOM listener")
    try:
        yield agent
    finally:
        agent.request_stop()
        await task
        await repo.close()


def agent_port(agent: Agent) -> int:
    assert agent.receiver is not None
    return agent.receiver.port


def ct_instance(pixels: int = 256) -> Dataset:
    """A CT instance with a fresh SOP Instance UID and `pixels`² random 16-bit pixels, which no
    codec can shrink (so its pack is about 2 × pixels² bytes)."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Rows = ds.Columns = pixels
    ds.PixelData = os.urandom(pixels * pixels * 2)
    return ds


def send(port: int, datasets: list[Dataset]) -> list[int]:
    """C-STORE `datasets` to the agent (blocking: call from a worker thread); the statuses."""
    ae = AE(MODALITY_AET)
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=AGENT_AET)
    assert assoc.is_established, "the agent refused the association"
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


async def server_alerts(site: Site, kind: str) -> list[dict[str, Any]]:
    """The open alerts of `kind` as the practice's admin sees them (GET …/alerts)."""
    url = f"{site.url}/v1/repos/{REPO}/alerts"
    headers = {"Authorization": f"Bearer {site.tokens[REPO]['admin']}"}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        doc = await resp.json()
    return [a for a in doc["alerts"] if a["kind"] == kind]


# Storage Commitment, the modality's side


@dataclass
class Reports:
    """N-EVENT-REPORTs a modality received: (event type, event information)."""

    received: list[tuple[int, Dataset]] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)

    def handler(self, event: Any) -> tuple[int, None]:
        self.received.append((int(event.event_type), event.event_information))
        self.arrived.set()
        return 0, None  # (status, Event Reply): pynetdicom wants both


def commitment_request(datasets: list[Dataset]) -> Dataset:
    request = Dataset()
    request.TransactionUID = generate_uid()
    request.ReferencedSOPSequence = [_ref(ds) for ds in datasets]
    return request


def _ref(ds: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    return item


def store_and_commit(
    port: int, ds: Dataset, request: Dataset, reports: Reports, wait: float = 0.0
) -> None:
    """C-STORE `ds`, send the N-ACTION, keep the association open up to `wait` seconds for the
    report (0: release at once), then release. Blocking: call from a worker thread."""
    ae = AE(MODALITY_AET)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    ae.add_requested_context(StorageCommitmentPushModel)
    handlers = [(evt.EVT_N_EVENT_REPORT, reports.handler)]
    assoc = ae.associate("127.0.0.1", port, ae_title=AGENT_AET, evt_handlers=handlers)
    assert assoc.is_established, "the agent refused the association"
    try:
        assert int(assoc.send_c_store(ds).Status) == 0
        status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel, COMMITMENT_INSTANCE)
        assert int(status.Status) == 0
        reports.arrived.wait(wait)
    finally:
        assoc.release()
