"""A chunk server whose repositories live in a real SeaweedFS bucket (`--store s3://...`): a
backup, `check --read-data` and a bit-exact restore through it, nothing of the repository in
DATA but the index, and the CLI's start-up check with its exit code."""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

import obstore

from benchmarks.serverkit import cli, server_env
from client.check import check
from client.restore import Restorer
from engine.ids import SnapshotId
from engine.store.s3 import S3Root
from tests.helpers import restored, tree_state
from tests.s3kit import SeaweedFS, s3_settings
from tests.server.monitorkit import REPO, backup, init_practice, make_tree, start_site


async def test_backup_check_and_restore_through_a_server_on_seaweedfs(
    seaweed: SeaweedFS, tmp_path: Path
) -> None:
    settings = s3_settings(seaweed, f"srv-{secrets.token_hex(6)}")
    site = await start_site(tmp_path, "site-a", store=settings)
    try:
        site.add_repo()
        repo = await init_practice(site, tmp_path / "cache")
        tree = make_tree(tmp_path, files=8, size=1_500_000)
        try:
            snapshot = await backup(repo, tree)
            report = await check(repo, read_data=True)
            assert report.problems == [] and report.packs > 0
            await Restorer(repo, tmp_path / "out").run(SnapshotId.parse(snapshot))
        finally:
            await repo.close()
        assert tree_state(restored(tmp_path / "out", tree)) == tree_state(tree)
        # The packs are objects in the bucket; DATA holds no repository folder.
        root = S3Root(settings)
        keys = [m["path"] for b in obstore.list(root.bucket, settings.prefix) for m in b]
        assert any(f"/repos/{REPO}/packs/" in k for k in keys)
        assert not (site.config.data_dir / "repos").exists()
    finally:
        await site.server.close()


def _server(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return cli(*args, env=server_env(env))


def test_the_cli_creates_a_repository_in_the_bucket_and_names_a_wrong_bucket(
    seaweed: SeaweedFS, tmp_path: Path
) -> None:
    settings = s3_settings(seaweed, f"cli-{secrets.token_hex(6)}")
    store = f"s3://{settings.bucket}/{settings.prefix}"
    data = ["--data", str(tmp_path / "data")]
    done = _server("repo", "create", "clinic", *data, "--store", store, env=seaweed.env)
    assert done.returncode == 0, done.stderr
    assert S3Root(settings).folders("repos") == ["clinic"]
    again = _server("repo", "create", "clinic", *data, "--store", store, env=seaweed.env)
    assert again.returncode == 11  # RepositoryExists: the bucket, not DATA, knows it
    wrong = _server("reindex", *data, "--store", "s3://no-such-bucket/x", env=seaweed.env)
    assert wrong.returncode == 14 and "no such bucket" in wrong.stderr
    bad_env = {**seaweed.env, "AWS_SECRET_ACCESS_KEY": "wrong"}
    refused = _server("scrub", *data, "--store", store, env=bad_env)
    assert refused.returncode == 14 and "credentials refused" in refused.stderr
