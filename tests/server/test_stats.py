"""Accounting (`client/stats.py`): the figures `dicomvault stats` counts, what prune and forget
change in them, and the same per repository in the server's /metrics and status JSON (a real
in-process chunk server, a real client repository, real DICOM files)."""

from __future__ import annotations

import shutil
from pathlib import Path

import aiohttp

from client.prune import prune
from client.stats import NOT_DICOM, stats
from engine.prune_plan import MaxUnused
from tests.helpers import ct_small, pydicom_test_files, write_pattern_file
from tests.server.monitorkit import REPO, backup, init_practice, open_practice, start_site


async def test_stats_count_and_reach_the_provider(tmp_path: Path) -> None:
    site = await start_site(tmp_path / "site", "site-a")
    site.add_repo()
    try:
        tree = tmp_path / "tree"
        tree.mkdir()
        shutil.copy(ct_small(), tree / "ct.dcm")
        mr = next(p for p in pydicom_test_files() if p.name == "MR_small.dcm")
        shutil.copy(mr, tree / "mr.dcm")
        write_pattern_file(tree / "other.bin", 200_000, seed=1, random_every=1)
        practice = await init_practice(site, tmp_path / "cache")
        await backup(practice, tree)
        shutil.copy(tree / "ct.dcm", tree / "ct-copy.dcm")  # a copy: files grow, raw does not
        (tree / "other.bin").unlink()
        await backup(practice, tree)
        s = await stats(practice)
        assert s.snapshots == 2 and s.files == 6
        sizes = {p.name: p.stat().st_size for p in tree.iterdir()}
        assert s.modalities["CT"] >= sizes["ct.dcm"] * 0.9  # pixels + header, once
        assert s.modalities["MR"] >= sizes["mr.dcm"] * 0.9
        assert s.modalities[NOT_DICOM] == 200_000
        assert (
            s.files_bytes
            == 2 * sizes["ct.dcm"] + 2 * sizes["mr.dcm"] + 200_000 + sizes["ct-copy.dcm"]
        )
        assert s.raw_bytes < s.files_bytes and s.dedup_ratio > 1
        assert s.reclaimable_bytes < 2000  # nothing forgotten: only stray copies, if any

        admin = await open_practice(site, tmp_path / "admin-cache", "admin")
        first = (await admin.snapshots())[0][0]
        await admin.backend.forget([first])
        after_forget = await stats(admin)
        assert after_forget.reclaimable_bytes >= 200_000  # other.bin is no longer needed
        await prune(admin, max_unused=MaxUnused(0.0))
        after = await stats(admin)
        assert after.reclaimable_bytes == 0
        assert after.pending_deletion_bytes >= 200_000
        assert after.stored_bytes < s.stored_bytes - 200_000 + 10_000
        await practice.backend.report_stats(after.as_json())  # a backup token may report

        async with aiohttp.ClientSession() as http:
            async with http.get(f"{site.url}/metrics") as resp:
                metrics = await resp.text()
            provider = {"Authorization": f"Bearer {site.provider_token()}"}
            async with http.get(f"{site.url}/status.json", headers=provider) as resp:
                status = await resp.json()
        assert f'dicomvault_repo_raw_bytes{{repo="{REPO}"}} {after.raw_bytes}' in metrics
        assert f'dicomvault_repo_modality_bytes{{repo="{REPO}",modality="CT"}}' in metrics
        pending = f'dicomvault_repo_pending_deletion_bytes{{repo="{REPO}"}} '
        assert pending + str(after.pending_deletion_bytes) in metrics
        (row,) = [r for r in status["repos"] if r["name"] == REPO]
        assert row["space"]["dedup_ratio"] == after.dedup_ratio
        assert row["pending_deletion_bytes"] == after.pending_deletion_bytes
        for repo in (practice, admin):
            await repo.close()
    finally:
        await site.server.close()
