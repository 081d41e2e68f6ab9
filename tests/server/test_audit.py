"""The server's audit trail: every authenticated request is one hash-chained line, and
`dicomvault-server audit` shows it and finds a changed, a deleted or a cut-off line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import blake3

from benchmarks.serverkit import cli
from engine.keys import key_name
from server.audit import verify
from server.auth import hash_token
from server.state import AUDIT
from tests.server.conftest import REPO, Harness, make_key_object, make_pack


async def traffic(srv: Harness, http: aiohttp.ClientSession) -> None:
    """A key object, a pack, reads with two roles, a refusal, and an unknown token."""
    backend = srv.backend("backup")
    key_object = make_key_object()
    await backend.put_key(key_name(key_object), key_object)
    pack_id, data, _ = make_pack()
    await backend.put_pack(pack_id, data)
    await srv.backend("restore").get_pack(pack_id)
    async with http.put(srv.url("config"), data=b"{}", headers=srv.headers("restore")) as r:
        assert r.status == 403
    bad = {"Authorization": "Bearer dv_not-a-token"}
    async with http.get(srv.url("keys"), headers=bad) as r:
        assert r.status == 401
    srv.app[AUDIT].flush()  # as shutdown does


def records(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "audit.jsonl").read_text().splitlines()]


async def test_every_authenticated_request_is_one_chained_line(
    srv: Harness, http: aiohttp.ClientSession
) -> None:
    await traffic(srv, http)
    folder = srv.config.data_dir / "audit"
    rows = records(folder)
    tokens = srv.tokens[REPO]
    ids = {role: hash_token(t).hex()[:12] for role, t in tokens.items()}
    seen = [(r["role"], r["method"], r["status"]) for r in rows]
    assert ("backup", "PUT", 201) in seen  # the key object
    assert ("restore", "GET", 200) in seen  # the pack
    assert ("restore", "PUT", 403) in seen  # refused, still recorded
    assert all(r["token"] in ids.values() for r in rows)  # never the unknown token
    assert all(t not in (folder / "audit.jsonl").read_text() for t in tokens.values())
    pack = next(r for r in rows if r["method"] == "PUT" and "packs" in r["route"])
    assert pack["repo"] == REPO and pack["bytes_in"] > 0 and pack["object"]
    got = next(r for r in rows if r["method"] == "GET" and "packs" in r["route"])
    assert got["bytes_out"] == pack["bytes_in"] and got["remote"] == "127.0.0.1"
    checked = verify(folder)
    assert checked.problems == [] and checked.lines == len(rows)


async def test_a_changed_a_deleted_and_a_cut_line_are_found(
    srv: Harness, http: aiohttp.ClientSession
) -> None:
    await traffic(srv, http)
    folder = srv.config.data_dir / "audit"
    path = folder / "audit.jsonl"
    original = path.read_bytes()
    lines = original.splitlines(keepends=True)
    assert len(lines) >= 4

    changed = json.loads(lines[1])
    changed["remote"] = "10.9.9.9"
    path.write_bytes(b"".join([lines[0], json.dumps(changed).encode() + b"\n", *lines[2:]]))
    assert any("line 2: changed" in p for p in verify(folder).problems)

    path.write_bytes(b"".join([lines[0], *lines[2:]]))
    assert any("line 2: lines missing" in p for p in verify(folder).problems)

    path.write_bytes(b"".join(lines[:-1]))
    assert any("cut" in p for p in verify(folder).problems)

    path.write_bytes(original)
    assert verify(folder).problems == []


async def test_the_audit_command_shows_filters_and_verifies(
    srv: Harness, http: aiohttp.ClientSession
) -> None:
    await traffic(srv, http)
    data = str(srv.config.data_dir)
    ok = cli("audit", "--data", data, "--repo", REPO, "--json")
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["problems"] == [] and {r["repo"] for r in doc["records"]} == {REPO}
    assert (
        json.loads(cli("audit", "--data", data, "--repo", "other", "--json").stdout)["records"]
        == []
    )
    assert (
        json.loads(cli("audit", "--data", data, "--since", "2999-01-01", "--json").stdout)[
            "records"
        ]
        == []
    )
    text = cli("audit", "--data", data)
    assert text.returncode == 0 and "verified" in text.stderr and "PUT" in text.stdout
    path = srv.config.data_dir / "audit" / "audit.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join([lines[0], *lines[2:]]))
    broken = cli("audit", "--data", data)
    assert broken.returncode == 13 and "lines missing" in broken.stderr


async def test_audit_events_are_write_once_content_named_and_open_to_restore_tokens(
    srv: Harness, http: aiohttp.ClientSession
) -> None:
    sealed = b"\x01" + bytes(range(60))
    name = blake3.blake3(sealed).hexdigest()[:32]
    restore = srv.backend("restore")
    await restore.put_event(name, sealed)
    await restore.put_event(name, sealed)  # again: the same bytes, 200
    assert await srv.backend("backup").list_events() == [name]
    assert await restore.get_event(name) == sealed
    other = "0" * 32
    async with http.put(
        srv.url(f"events/{other}"), data=sealed, headers=srv.headers("restore")
    ) as r:
        assert r.status == 422
    big = b"x" * (64 * 1024 + 1)
    big_name = blake3.blake3(big).hexdigest()[:32]
    async with http.put(srv.url(f"events/{big_name}"), data=big, headers=srv.headers()) as r:
        assert r.status == 413
    assert await restore.list_events() == [name]
