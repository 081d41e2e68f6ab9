"""Forget and prune through a real haproxy over two `dicomvault-server serve --store s3://...`
processes on one SeaweedFS bucket (docs/design.md §14, several nodes), with the CLI as a
practice runs it: one machine keeps backing up while an admin forgets and prunes, every
request landing on either node. Both nodes then list the same snapshots, none forgotten; a
second prune is refused (exit 14) through the balancer and through either node while another
machine holds the lock; a fresh machine checks `--read-data` clean and restores every snapshot
left bit-exact. (The purge after the window is tested in process: tests/server/
test_prune_multinode.py; a server process has no clock to move.)"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.serverkit import ServerProcess
from tests.client.test_prune import _assert_all_restore, _snap_states, prune_while_backing_up
from tests.client.test_remote import agent
from tests.helpers import CHEAP_KDF_ARGS, assert_one_line_error
from tests.s3kit import Balancer, SeaweedFS, balanced_nodes

REPO = "clinic"


@pytest.fixture
def cluster(seaweed: SeaweedFS, tmp_path: Path) -> Iterator[tuple[list[ServerProcess], Balancer]]:
    with balanced_nodes(seaweed, tmp_path, "prune-lb") as made:
        yield made


def _call(method: str, url: str, token: str, body: dict[str, object] | None = None) -> object:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.loads(r.read())


def _listed(node: ServerProcess, token: str) -> set[str]:
    doc = _call("GET", f"{node.url}/v1/repos/{REPO}/snapshots", token)
    assert isinstance(doc, dict)
    return {s["id"] for s in doc["snapshots"]}


def test_forget_and_prune_through_the_balancer_while_a_machine_backs_up(
    cluster: tuple[list[ServerProcess], Balancer], tmp_path: Path
) -> None:
    nodes, balancer = cluster
    tokens = nodes[0].create_repo(REPO)  # published to the bucket: node1 accepts them too
    url = f"{balancer.url}/{REPO}"
    a = agent(tmp_path / "pc1", url, tokens["backup"])
    a.ok("init", *CHEAP_KDF_ARGS)
    admin = agent(tmp_path / "admin", url, tokens["admin"])
    tree_a = tmp_path / "tree-a"
    states = _snap_states(a, tree_a, 4, seed=3)
    b = agent(tmp_path / "pc2", url, tokens["backup"])
    b_states = prune_while_backing_up(a, admin, b, tree_a, tmp_path / "tree-b", states, 5)

    restore = tokens["restore"]
    listed = [_listed(node, restore) for node in nodes]
    assert listed[0] == listed[1]  # what one node forgot, the other no longer lists
    forgotten = (set(states) | set(b_states)) - listed[0]
    assert forgotten

    lock = f"{nodes[1].url}/v1/repos/{REPO}/prune/lock"
    _call("POST", lock, tokens["admin"], {"holder": "another-machine"})
    for where in (url, f"{nodes[0].url}/{REPO}", f"{nodes[1].url}/{REPO}"):
        assert_one_line_error(
            agent(tmp_path / "admin", where, tokens["admin"]).run("prune"),
            14,
            "another prune (another-machine)",
        )
    _call("DELETE", f"{lock}?holder=another-machine", tokens["admin"])

    reader = agent(tmp_path / "fresh", url, restore)
    reader.ok("check", "--read-data")
    _assert_all_restore(reader, tree_a, states, tmp_path / "ra")
    _assert_all_restore(reader, tmp_path / "tree-b", b_states, tmp_path / "rb")
    for node in nodes:  # scheduled, not destroyed: both nodes know
        doc = _call("GET", f"{node.url}/v1/repos/{REPO}/deletions", restore)
        assert isinstance(doc, dict)
        assert any(d["kind"] == "pack" for d in doc["pending"])
