"""A real PACS in front of the agent: Orthanc with a Lua auto-route forwards every stored
instance to the agent, which commits it. Orthanc comes from Debian (make setup-system)."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from benchmarks.agentkit import AGENT_AET, AgentSite, agent_site, allow
from benchmarks.serverkit import wait_for
from tests.client.test_orthanc import run_orthanc
from tests.helpers import ct_small

pytestmark = pytest.mark.slow
ROUTE = """
function OnStoredInstance(instanceId, tags, metadata, origin)
  SendToModality(instanceId, 'agent')
end
"""


@pytest.fixture
def site(tmp_path: Path) -> Iterator[AgentSite]:
    with agent_site(tmp_path) as s:
        yield s


def test_orthanc_auto_route_reaches_the_agent_and_is_committed(
    site: AgentSite, tmp_path: Path
) -> None:
    site.start("--dicom-listen", "127.0.0.1:0", "--ae-title", AGENT_AET, *allow("ORTHANC"))
    root = tmp_path / "orthanc"
    root.mkdir()
    (root / "route.lua").write_text(ROUTE)
    routing = {
        "LuaScripts": [str(root / "route.lua")],
        "DicomModalities": {"agent": [AGENT_AET, "127.0.0.1", site.dicom_port]},
    }
    with run_orthanc(root, ["1.2.840.10008.1.*"], routing) as orthanc:
        upload = urllib.request.Request(
            f"http://127.0.0.1:{orthanc.http}/instances",
            data=ct_small().read_bytes(),
            method="POST",
        )
        with urllib.request.urlopen(upload, timeout=30) as resp:
            assert json.loads(resp.read())["Status"] in ("Success", "AlreadyStored")
        wait_for(
            "the routed instance committed",
            lambda: site.snapshots() and not site.spooled(),
            timeout=60,
        )
    restored = site.restore_all(tmp_path / "restore")
    assert len(restored) == 1
    original, got = pydicom.dcmread(ct_small()), pydicom.dcmread(restored[0])
    assert got.SOPInstanceUID == original.SOPInstanceUID
    assert got.PixelData == original.PixelData
