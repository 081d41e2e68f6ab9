"""The whole story, played end to end: a modality sends studies to the practice's agent, which
backs them up to the primary site, replicated to the peer; the practice prints its recovery kit.
Then the building burns: the practice's machine (agent, spool, cache, passphrase file, config)
is gone and so is the primary site's data folder. The agent's silence reaches the practice's and
the provider's mailboxes (a real SMTP server) on its own, and on a new machine with nothing but
the printed kit (rasterised by `pdftoppm`, read back by its QR codes) and the passphrase typed
in, every study comes back from the peer, each instance identical to what the modality sent."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from server.alerts.settings import AlertSettings, RepoPolicy
from tests.client.agentloop import (
    agent_config,
    agent_port,
    ct_instance,
    practice_repository,
    running,
    send,
)
from tests.client.test_recovery_kit import fresh_machine, rasterise
from tests.helpers import PASSPHRASE, Vault
from tests.server.monitorkit import REPO, FakeClock, MailSink, start_site, wait_for

pytestmark = pytest.mark.slow
PRACTICE = ("dr.smith@clinic.test",)
PROVIDER = ("ops@provider.test",)


async def dicomvault(env: dict[str, str], *args: str, typed: str = "") -> tuple[int, str, str]:
    """The CLI in a subprocess, without blocking the in-process servers on this loop."""
    proc = await asyncio.create_subprocess_exec(
        *Vault(Path("/")).command(*args), env=env, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate(typed.encode())
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def studies(count: int, per_study: int) -> list[pydicom.Dataset]:
    out = []
    for _ in range(count):
        study, series = generate_uid(), generate_uid()
        for _ in range(per_study):
            ds = ct_instance(64)
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            out.append(ds)
    return out


async def test_the_day_the_building_burns(tmp_path: Path, smtp: MailSink) -> None:
    clock = FakeClock()
    alerts = AlertSettings(
        smtp_host="127.0.0.1", smtp_port=smtp.port, sender="dicomvault@provider.test",
        provider_recipients=PROVIDER, repeat_interval=3600.0, evaluate_interval=0.05,
        digest_time="00:00", disk_threshold=1.01,
    )  # fmt: skip
    policy = RepoPolicy(REPO, recipients=PRACTICE, heartbeat_timeout=60.0)
    b = await start_site(tmp_path, "site-b")
    peer = {"url": b.url, "token": b.replica_token("site-a"), "name": "site-b"}
    a = await start_site(tmp_path, "site-a", [peer], clock=clock, alerts=alerts, repos=(policy,))
    tokens = a.add_repo()
    practice = tmp_path / "practice-pc"
    config = agent_config(practice)
    sent = studies(3, 2)
    try:
        repo = await practice_repository(a, config)
        async with running(config, repo) as agent:
            statuses = await asyncio.to_thread(send, agent_port(agent), sent)
            assert statuses == [0] * len(sent)
            await wait_for(lambda: agent.last_commit and not agent.inbox.pending(),
                           timeout=60, what="every instance backed up")  # fmt: skip
            # While the machine stands, the practice prints its kit for the safe.
            (practice / "passphrase").write_bytes(PASSPHRASE + b"\n")
            env = {**fresh_machine(practice / "home"),
                   "DICOMVAULT_REPO": f"{a.url}/{REPO}", "DICOMVAULT_TOKEN": tokens["backup"],
                   "DICOMVAULT_PASSWORD_FILE": str(practice / "passphrase"),
                   "DICOMVAULT_CACHE_DIR": str(practice / "cache")}  # fmt: skip
            kit = tmp_path / "safe" / "kit.pdf"
            kit.parent.mkdir()
            rc, _, err = await dicomvault(
                env, "key", "kit", "--out", str(kit), "--site", f"{b.url}/{REPO}",
                "--restore-token", tokens["restore"],
            )  # fmt: skip
            assert rc == 0, err
            await wait_for(a.settled, timeout=60, what="replication to the peer")

        # The fire: the practice's machine is gone...
        shutil.rmtree(practice)
        clock.advance(180)  # ...and its agent falls silent: past the 60 s policy.
        mail = (await wait_for(lambda: smtp.events("alert", "silent"), what="the alert"))[0]
        assert set(mail.rcpt_tos) == set(PRACTICE + PROVIDER)
        assert "pc-1" in mail.subject
        # ...and so is the primary site's data folder.
        primary = f"{a.url}/{REPO}"
        await a.server.close()
        shutil.rmtree(a.config.data_dir)

        # A new machine: nothing but the printed kit and the passphrase, typed in.
        page = rasterise(kit)
        env = fresh_machine(tmp_path / "new-pc")
        rc, _, err = await dicomvault(env, "key", "import-kit", str(page))
        assert rc == 0, err
        target = tmp_path / "restored"
        rc, _, err = await dicomvault(env, "restore", "--as-of", "now", "--target",
                                        str(target), typed=PASSPHRASE.decode())  # fmt: skip
        assert rc == 0, err
        assert f"site {primary} does not answer" in err
        back = {}
        for path in (p for p in target.rglob("*") if p.is_file()):
            ds = pydicom.dcmread(path)
            back[ds.SOPInstanceUID] = ds
        assert sorted(back) == sorted(ds.SOPInstanceUID for ds in sent)
        for ds in sent:
            got = back[ds.SOPInstanceUID]
            assert got.PixelData == ds.PixelData
            assert [e for e in got if e.tag != 0x7FE00010] == [e for e in ds if e.tag != 0x7FE00010]
        assert {ds.StudyInstanceUID for ds in back.values()} == {d.StudyInstanceUID for d in sent}
    finally:
        await b.server.close()
        if not a.server.closed:
            await a.server.close()
