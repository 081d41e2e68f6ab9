"""A real PACS in front of the agent: Orthanc with a Lua auto-route forwards every stored
instance to the agent, which commits it. Orthanc comes from Debian (make setup-system)."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from benchmarks.agentkit import AGENT_AET, AgentSite, ChunkServer, allow
from benchmarks.serverkit import free_port, wait_for
from tests.helpers import ct_small

pytestmark = pytest.mark.slow
ORTHANC = "/usr/sbin/Orthanc"
ROUTE = """
function OnStoredInstance(instanceId, tags, metadata, origin)
  SendToModality(instanceId, 'agent')
end
"""


def start_orthanc(root: Path, agent_port: int) -> tuple[subprocess.Popen[bytes], int]:
    assert Path(ORTHANC).is_file(), (
        f"{ORTHANC} is missing: install the Debian package 'orthanc' (make setup-system)"
    )
    root.mkdir()
    http_port, dicom_port = free_port(), free_port()
    (root / "route.lua").write_text(ROUTE)
    config = {
        "Name": "test-pacs", "StorageDirectory": str(root / "db"),
        "IndexDirectory": str(root / "db"), "HttpPort": http_port, "DicomPort": dicom_port,
        "DicomAet": "ORTHANC", "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "HttpServerEnabled": True, "DicomServerEnabled": True, "Plugins": [],
        "LuaScripts": [str(root / "route.lua")],
        "DicomModalities": {"agent": [AGENT_AET, "127.0.0.1", agent_port]},
    }  # fmt: skip
    (root / "orthanc.json").write_text(json.dumps(config))
    log = open(root / "orthanc.log", "wb")  # noqa: SIM115 - lives as long as Orthanc
    proc = subprocess.Popen(
        [ORTHANC, str(root / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT
    )
    wait_for("Orthanc's REST API", lambda: _get(http_port, "/system"), timeout=60)
    return proc, http_port


def _get(port: int, path: str) -> bytes | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
            return bytes(resp.read())
    except OSError:
        return None


@pytest.fixture
def site(tmp_path: Path) -> Iterator[AgentSite]:
    server = ChunkServer(tmp_path).start()
    s = AgentSite(tmp_path / "site", server).init()
    yield s
    s.stop()
    server.stop()


def test_orthanc_auto_route_reaches_the_agent_and_is_committed(
    site: AgentSite, tmp_path: Path
) -> None:
    site.start("--dicom-listen", "127.0.0.1:0", "--ae-title", AGENT_AET, *allow("ORTHANC"))
    orthanc, http_port = start_orthanc(tmp_path / "orthanc", site.dicom_port)
    try:
        upload = urllib.request.Request(
            f"http://127.0.0.1:{http_port}/instances", data=ct_small().read_bytes(), method="POST"
        )
        with urllib.request.urlopen(upload, timeout=30) as resp:
            assert json.loads(resp.read())["Status"] in ("Success", "AlreadyStored")
        wait_for(
            "the routed instance committed",
            lambda: site.snapshots() and not site.spooled(),
            timeout=60,
        )
    finally:
        orthanc.terminate()
        orthanc.wait(timeout=30)
    restored = site.restore_all(tmp_path / "restore")
    assert len(restored) == 1
    original, got = pydicom.dcmread(ct_small()), pydicom.dcmread(restored[0])
    assert got.SOPInstanceUID == original.SOPInstanceUID
    assert got.PixelData == original.PixelData
