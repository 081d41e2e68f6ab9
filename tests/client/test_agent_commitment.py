"""Storage Commitment when the modality does not wait: it releases its association right after the
N-ACTION, and the agent delivers the N-EVENT-REPORT on a new association to the modality's
address from `[dicom.peers]`, proposing the SCP role (PS3.4 J.3.3). The modality is a pynetdicom
AE that also listens, accepting that role for the Push Model. Agent and chunk server run in
process."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from benchmarks.serverkit import free_port
from tests.client.agentloop import (
    MODALITY_AET,
    Reports,
    agent_config,
    agent_port,
    commitment_request,
    ct_instance,
    practice_repository,
    running,
    store_and_commit,
)
from tests.server.monitorkit import start_site, wait_for


@pytest.fixture
def modality_listener() -> Iterator[tuple[int, Reports]]:
    """The modality's own DICOM listener, taking N-EVENT-REPORTs from the agent as SCP."""
    reports, port = Reports(), free_port()
    ae = AE(MODALITY_AET)
    # The agent, as requestor, proposes to be the SCP of the Push Model (it sends the report);
    # the modality accepts that role and stays the SCU.
    ae.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
    handlers: list[Any] = [(evt.EVT_N_EVENT_REPORT, reports.handler)]
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
    yield port, reports
    server.shutdown()


async def test_report_goes_on_a_new_association_once_the_modality_has_released(
    tmp_path: Path, modality_listener: tuple[int, Reports]
) -> None:
    port, listener = modality_listener
    site = await start_site(tmp_path, "site-a")
    site.add_repo()
    # quiet_seconds: the batch starts well after the modality released its association.
    config = agent_config(tmp_path, peers={MODALITY_AET: ("127.0.0.1", port)}, quiet_seconds=1.0)
    ds, asking = ct_instance(64), Reports()
    request = commitment_request([ds])
    try:
        async with running(config, await practice_repository(site, config)) as agent:
            await asyncio.to_thread(store_and_commit, agent_port(agent), ds, request, asking)
            await wait_for(lambda: listener.received, what="the N-EVENT-REPORT at the modality")
            await wait_for(lambda: not agent.ledger.commitments(), what="the request settled")
    finally:
        await site.server.close()
    assert asking.received == []  # the asking association was gone: nothing arrived there
    event_type, info = listener.received[0]
    assert event_type == 1 and info.TransactionUID == request.TransactionUID
    assert [r.ReferencedSOPInstanceUID for r in info.ReferencedSOPSequence] == [ds.SOPInstanceUID]
    assert "FailedSOPSequence" not in info
