"""Two `dicomvault-server serve --store s3://...` processes on one real SeaweedFS bucket behind
a real haproxy: a node is killed (SIGKILL) during a backup through the balancer; the backup
completes through the other node, `check --read-data` is clean and the restore is bit-exact."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import obstore
import pytest

from benchmarks.serverkit import ServerProcess
from engine.store.s3 import S3Root
from tests.client.test_remote import agent, random_tree
from tests.helpers import CHEAP_KDF_ARGS, restored, tree_state
from tests.s3kit import Balancer, SeaweedFS, balanced_nodes, s3_settings

REPO = "clinic"


@pytest.fixture
def cluster(seaweed: SeaweedFS, tmp_path: Path) -> Iterator[tuple[list[ServerProcess], Balancer]]:
    with balanced_nodes(seaweed, tmp_path, "lb") as made:
        yield made


def _packs_in_bucket(settings_prefix: str, weed: SeaweedFS) -> int:
    root = S3Root(s3_settings(weed, settings_prefix))
    folder = f"{settings_prefix}/repos/{REPO}/packs"
    return sum(len(batch) for batch in obstore.list(root.bucket, folder))


def test_a_node_killed_during_a_backup_through_the_balancer_loses_nothing(
    cluster: tuple[list[ServerProcess], Balancer], seaweed: SeaweedFS, tmp_path: Path
) -> None:
    nodes, balancer = cluster
    tokens = nodes[0].create_repo(REPO)  # published to the bucket: node1 accepts them too
    pc = agent(tmp_path / "pc", f"{balancer.url}/{REPO}", tokens["backup"])
    pc.ok("init", *CHEAP_KDF_ARGS)
    tree = random_tree(tmp_path / "tree", [6.0] * 12)
    prefix = str(nodes[0].store).split("/", 3)[3]
    backup = pc.popen("backup", str(tree), "--json")
    deadline = time.monotonic() + 120
    while _packs_in_bucket(prefix, seaweed) < 1:  # mid-backup: a pack stored, more to come
        assert backup.poll() is None, backup.communicate()
        assert time.monotonic() < deadline, "no packs reached the bucket"
        time.sleep(0.05)
    assert backup.poll() is None  # the kill lands during the backup
    nodes[0].kill()
    _, err = backup.communicate(timeout=300)
    assert backup.returncode == 0, err
    assert pc.ok("check", "--read-data").rc == 0
    restorer = pc.with_token(tokens["restore"])
    restorer.ok("restore", "latest", "--target", str(tmp_path / "out"))
    assert tree_state(restored(tmp_path / "out", tree)) == tree_state(tree)
