"""`dicomvault-server token list|create|revoke` against running servers: a revoked token is
refused at once by the server that revoked it and, once replicated, by its peer."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.server.test_process import cli
from tests.server.test_replication_process import REPO, Site, settled, sites, wait_until

__all__ = ["sites"]  # the fixture


def status(site: Site, token: str) -> int:
    req = urllib.request.Request(
        f"{site.url}/v1/repos/{REPO}/snapshots", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def tokens(site: Site) -> list[dict[str, str]]:
    out = cli("token", "list", "--data", str(site.data), "--repo", REPO, "--json")
    assert out.returncode == 0, out.stderr
    rows: list[dict[str, str]] = json.loads(out.stdout)["tokens"]
    return rows


def test_a_revoked_token_is_refused_at_once_and_then_by_the_peer(
    sites: Callable[..., Site],
) -> None:
    peer = sites("peer")
    primary = sites("primary", peers=[peer.peer_entry("primary")])
    made = primary.create_repo()
    peer.start()
    primary.start()
    wait_until(lambda: settled(primary, made["admin"]), what="tokens pushed to the peer")
    stolen = made["restore"]
    assert status(primary, stolen) == 200  # the thief's first read, in the audit trail
    wait_until(lambda: status(peer, stolen) == 200, what="the peer knows the restore token")

    out = cli("token", "create", REPO, "--role", "restore", "--label", "new laptop",
              "--config", str(primary.config), "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    fresh = json.loads(out.stdout)
    assert status(primary, fresh["token"]) == 200
    listed = {r["id"]: r for r in tokens(primary)}
    assert listed[fresh["id"]]["label"] == "new laptop" and len(listed) == 4
    assert not any(made[role][3:] in json.dumps(listed) for role in made)  # never a token

    old = next(
        r["id"] for r in tokens(primary) if r["role"] == "restore" and r["id"] != fresh["id"]
    )
    out = cli("token", "revoke", old[:8], "--config", str(primary.config))  # names its peers
    assert out.returncode == 0, out.stderr
    assert f"revoked {old}" in out.stdout
    assert status(primary, stolen) == 401  # the running server reads the index per request
    assert status(primary, fresh["token"]) == 200
    wait_until(lambda: status(peer, stolen) == 401, what="the peer refusing the revoked token")
    wait_until(lambda: status(peer, fresh["token"]) == 200, what="the peer taking the new token")
    assert status(peer, made["backup"]) == 200

    # The audit trail names a token by the same id `token list` shows.
    trail = cli("audit", "--data", str(primary.data), "--json")
    assert trail.returncode == 0, trail.stderr
    assert old in {r["token"] for r in json.loads(trail.stdout)["records"]}


def test_revoke_names_what_it_cannot_find_and_changes_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert cli("repo", "create", REPO, "--data", str(data)).returncode == 0
    before = cli("token", "list", "--data", str(data)).stdout
    some = before.split()[0]
    bad = cli("token", "revoke", some, "0f0f0f0f", "--data", str(data))
    assert bad.returncode == 16 and "no token with id '0f0f0f0f'" in bad.stderr
    short = cli("token", "revoke", "ab", "--data", str(data))
    assert short.returncode == 2 and "at least 6 hex digits" in short.stderr
    assert cli("token", "list", "--data", str(data)).stdout == before  # all or none
    unknown = cli("token", "create", "nosuch", "--role", "backup", "--data", str(data))
    assert unknown.returncode == 10, unknown.stderr
