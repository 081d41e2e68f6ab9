"""Failover on a site of two `serve --store s3://` nodes sharing one SeaweedFS bucket behind a
real haproxy (docs/design.md §17, "Several nodes"): promotion, fences and replica bindings made
through one node hold at the other, and two promotions at once cannot both win."""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.serverkit import ServerProcess, server_command, wait_for
from engine.protocol.routes import PRIMARY_GENERATION_HEADER
from tests.s3kit import Balancer, SeaweedFS, balanced_nodes

REPO = "clinic"
KEY_OBJECT = (Path(__file__).parent.parent / "fixtures" / "key-v1.json").read_bytes()
PRIMARY = "site-a"  # the replica label of the lost primary whose replica this site holds
Cluster = tuple[list[ServerProcess], Balancer]


@pytest.fixture
def cluster(seaweed: SeaweedFS, tmp_path: Path) -> Iterator[Cluster]:
    with balanced_nodes(seaweed, tmp_path, "failover") as made:
        yield made


def _put(base: str, path: str, token: str, generation: int = 0) -> tuple[int, int]:
    """PUT a key object (any name takes it); (status, the generation the node answered)."""
    headers = {"Authorization": f"Bearer {token}"}
    if generation:
        headers[PRIMARY_GENERATION_HEADER] = str(generation)
    req = urllib.request.Request(f"{base}{path}", KEY_OBJECT, headers, method="PUT")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, answered = r.status, r.headers.get(PRIMARY_GENERATION_HEADER, "0")
    except urllib.error.HTTPError as e:
        status, answered = e.code, e.headers.get(PRIMARY_GENERATION_HEADER, "0")
    return status, int(answered)


def _replica_here(nodes: list[ServerProcess]) -> str:
    """Bind REPO to PRIMARY through node 0 and push a first object there; the replica token."""
    token: str = nodes[0].cli_json("peer-token", "create", "--name", PRIMARY, "--repo", REPO)[
        "token"
    ]
    assert _put(nodes[0].url, f"/v1/replica/repos/{REPO}/keys/first", token)[0] in (200, 201)
    return token


def _admin_token(node: ServerProcess) -> str:
    doc = node.cli_json("token", "create", REPO, "--role", "admin")
    return str(doc["token"])


def _key(n: int) -> str:
    return f"/v1/repos/{REPO}/keys/k{n}"


def test_a_replica_binding_made_on_one_node_takes_the_peers_pushes_at_the_other(
    cluster: Cluster,
) -> None:
    nodes, balancer = cluster
    token = nodes[0].cli_json("peer-token", "create", "--name", PRIMARY, "--repo", REPO)["token"]
    # the binding is the site's: node 1 refuses a practice of its own taking the name
    taken = nodes[1].cli("repo", "create", REPO)
    assert taken.returncode == 11 and f"reserved for replicas from '{PRIMARY}'" in taken.stderr
    for n in range(4):  # straight to node 1, and through the balancer to both
        for base in (nodes[1].url, balancer.url):
            status, _ = _put(base, f"/v1/replica/repos/{REPO}/keys/r{n}", token)
            assert status in (200, 201), f"push {n} through {base}: {status}"


def test_promote_through_one_node_makes_the_other_primary_and_a_fence_reaches_both(
    cluster: Cluster,
) -> None:
    nodes, balancer = cluster
    _replica_here(nodes)
    admin = _admin_token(nodes[0])
    assert _put(nodes[1].url, _key(0), admin)[0] == 403  # a replica, at both nodes
    promoted = nodes[0].cli_json("promote", REPO, "--force")
    assert promoted["generation"] == 2
    # node 1 takes the practice's writes at once, as primary at generation 2, also from a
    # client that still carries generation 1
    assert _put(nodes[1].url, _key(1), admin) == (201, 2)
    assert _put(nodes[1].url, _key(2), admin, generation=1) == (201, 2)
    for n in range(3, 7):
        assert _put(balancer.url, _key(n), admin, generation=2) == (201, 2)
    # a client carrying generation 3 (another site promoted since) fences node 0 ...
    assert _put(nodes[0].url, _key(7), admin, generation=3) == (403, 3)
    # ... and node 1 hears it: it refuses a write carrying no generation at all
    wait_for("node 1 fenced", lambda: _put(nodes[1].url, _key(8), admin) == (403, 3), 30)
    assert [_put(balancer.url, _key(9), admin)[0] for _ in range(4)] == [403] * 4


def test_two_promotions_at_once_through_the_two_nodes_one_wins(cluster: Cluster) -> None:
    nodes, _ = cluster
    _replica_here(nodes)
    runs = [
        subprocess.Popen(
            server_command(
                "promote", REPO, "--force", "--json", "--data", str(n.data), "--store", str(n.store)
            ),
            env=n.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in nodes
    ]
    results = [(*p.communicate(timeout=120), p.returncode) for p in runs]
    results = [(rc, out, err) for out, err, rc in results]
    won = [r for r in results if r[0] == 0]
    assert len(won) == 1, results
    lost = next(r for r in results if r[0] != 0)
    assert lost[0] in (2, 23), lost  # refused: the race itself (23), or already primary (2)
    admin = _admin_token(nodes[0])
    for node in nodes:  # one primary, at generation 2, not 3
        assert _put(node.url, _key(node.port), admin) == (201, 2)
