"""HTTP API behaviour: intake verification, limits, names, tokens, roles, commits, ranges."""

from __future__ import annotations

import os

import aiohttp
import pytest
from yarl import URL

from engine.errors import IntegrityError, PermissionDenied, RepositoryNotFound
from engine.ids import ChunkId
from engine.pack import pack_id_of
from tests.server.conftest import REPO, Harness, ServerFactory, make_commit, make_pack


async def _json(resp: aiohttp.ClientResponse) -> dict[str, object]:
    doc = await resp.json()
    assert isinstance(doc, dict)
    return doc


async def test_health_needs_no_token(srv: Harness, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{srv.base}/v1/health") as resp:
        assert resp.status == 200
        assert (await resp.json())["status"] == "ok"


async def test_upload_is_idempotent_and_indexed(srv: Harness, http: aiohttp.ClientSession) -> None:
    pack_id, data, ids = make_pack()
    url, headers = srv.url(f"packs/{pack_id.hex()}"), srv.headers()
    async with http.put(url, data=data, headers=headers) as resp:
        assert resp.status == 201
        assert (await resp.json())["chunks"] == len(ids)
    path = srv.config.repos_dir / REPO / "packs" / pack_id.hex()[:2] / pack_id.hex()
    inode = path.stat().st_ino
    async with http.put(url, data=data, headers=headers) as resp:
        assert resp.status == 200
        assert (await resp.json())["created"] is False
    assert path.stat().st_ino == inode  # not rewritten
    assert await srv.backend().missing(ids) == set()


async def test_wrong_hash_is_refused_with_json(srv: Harness, http: aiohttp.ClientSession) -> None:
    pack_id, data, _ = make_pack()
    corrupt = data[:-100] + bytes(100)
    async with http.put(
        srv.url(f"packs/{pack_id.hex()}"), data=corrupt, headers=srv.headers()
    ) as r:
        assert r.status == 422
        assert (await _json(r))["code"] == "hash_mismatch"
    assert not list((srv.config.repos_dir / REPO).glob("packs/*/*"))
    assert not list((srv.config.repos_dir / REPO / ".incoming").iterdir())


async def test_malformed_manifest_is_refused(srv: Harness, http: aiohttp.ClientSession) -> None:
    _, data, _ = make_pack()
    # Break the tiling: the first manifest entry's offset no longer starts at 0.
    manifest_at = data.rfind(b"DVPK") - 0  # trailer start
    count = int.from_bytes(data[manifest_at + 8 : manifest_at + 12], "little")
    first = manifest_at - count * 40
    bad = bytearray(data)
    bad[first + 32 : first + 36] = (7).to_bytes(4, "little")
    bad_id = pack_id_of(bytes(bad))
    async with http.put(
        srv.url(f"packs/{bad_id.hex()}"), data=bytes(bad), headers=srv.headers()
    ) as r:
        assert r.status == 422
        doc = await _json(r)
        assert doc["code"] == "malformed" and "tile" in str(doc["error"])
    garbage = os.urandom(5000)
    gid = pack_id_of(garbage)
    async with http.put(srv.url(f"packs/{gid.hex()}"), data=garbage, headers=srv.headers()) as r:
        assert r.status == 422


async def test_oversize_body_is_413(
    make_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    srv: Harness = await make_server(max_body_size=64 * 1024)
    pack_id, data, _ = make_pack(chunks=100, size=1000)
    async with http.put(srv.url(f"packs/{pack_id.hex()}"), data=data, headers=srv.headers()) as r:
        assert r.status == 413
        assert (await _json(r))["code"] == "too_large"

    async def chunked() -> object:  # no Content-Length: the limit is enforced while streaming
        for i in range(0, len(data), 8192):
            yield data[i : i + 8192]

    async with http.put(
        srv.url(f"packs/{pack_id.hex()}"), data=chunked(), headers=srv.headers()
    ) as r:
        assert r.status == 413
    assert not list((srv.config.repos_dir / REPO).glob("packs/*/*"))


@pytest.mark.parametrize(
    "name", ["Clinic", "%2e%2e", "%2E%2E%2Fother", "a.b", "-x", "x" * 65, "a%2Fb", "a%00b", ".."]
)
async def test_bad_repository_names_are_refused(
    srv: Harness, http: aiohttp.ClientSession, name: str
) -> None:
    # encoded=True: send the path exactly as written, without client-side normalisation.
    url = URL(f"{srv.base}/v1/repos/{name}/config", encoded=True)
    async with http.get(url, headers=srv.headers()) as resp:
        doc = await _json(resp)
        assert (resp.status, doc["code"]) == (400, "invalid_name")


async def test_missing_or_wrong_token_is_401(srv: Harness, http: aiohttp.ClientSession) -> None:
    async with http.get(srv.url("keys")) as resp:
        assert resp.status == 401
        assert (await _json(resp))["code"] == "unauthenticated"
    bad = {"Authorization": "Bearer " + "A" * 43}
    async with http.get(srv.url("keys"), headers=bad) as resp:
        assert resp.status == 401


async def test_restore_role_cannot_upload(srv: Harness) -> None:
    pack_id, data, _ = make_pack()
    restore = srv.backend("restore")
    with pytest.raises(PermissionDenied):
        await restore.put_pack(pack_id, data)
    with pytest.raises(PermissionDenied):
        await restore.commit(make_commit([]))
    with pytest.raises(PermissionDenied):
        await restore.put_key("k", b"x")
    assert await restore.list_keys() == []


async def test_backup_token_cannot_see_another_repository(
    srv: Harness, http: aiohttp.ClientSession
) -> None:
    srv.add_repo("other")
    pack_id, data, _ = make_pack()
    await srv.backend(repo="other").put_pack(pack_id, data)
    # A token for clinic asking about "other" (exists) and "ghost" (does not) sees the same 404.
    for repo in ("other", "ghost"):
        async with http.get(srv.url(f"packs/{pack_id.hex()}", repo), headers=srv.headers()) as r:
            assert r.status == 404
            assert (await _json(r))["code"] == "repo_not_found"
    with pytest.raises(RepositoryNotFound):
        await srv.backend("backup").get_config()


async def test_heartbeat_is_append_for_backup_and_readable_by_admin(srv: Harness) -> None:
    await srv.backend("backup").heartbeat({"agent": "pc-1", "queued": 3})
    await srv.backend("backup").heartbeat({"agent": "pc-1", "queued": 0})
    async with aiohttp.ClientSession() as http:
        async with http.get(srv.url("heartbeat"), headers=srv.headers("backup")) as r:
            assert r.status == 403
        async with http.get(srv.url("heartbeat"), headers=srv.headers("admin")) as r:
            beats = (await r.json())["heartbeats"]
    assert [b["info"]["queued"] for b in beats] == [0]  # the last one per agent


async def test_config_is_write_once(srv: Harness, http: aiohttp.ClientSession) -> None:
    backend = srv.backend()
    await backend.put_config(b"one")
    async with http.put(srv.url("config"), data=b"two", headers=srv.headers()) as r:
        assert r.status == 409
        assert (await _json(r))["code"] == "exists"
    assert await backend.get_config() == b"one"


async def test_commit_refused_until_chunks_uploaded(
    srv: Harness, http: aiohttp.ClientSession
) -> None:
    pack_id, data, ids = make_pack(chunks=150, size=100)
    record = make_commit(ids)
    async with http.post(srv.url("snapshots"), data=record, headers=srv.headers()) as r:
        assert r.status == 409
        doc = await _json(r)
        assert doc["code"] == "missing_chunks" and doc["missing_count"] == 150
        assert len(doc["missing"]) == 100  # type: ignore[arg-type]
        assert {ChunkId.parse(h) for h in doc["missing"]} <= set(ids)  # type: ignore[attr-defined]
    backend = srv.backend()
    with pytest.raises(IntegrityError, match="missing"):
        await backend.commit(record)
    assert await backend.list_snapshots() == []
    await backend.put_pack(pack_id, data)
    snapshot_id = await backend.commit(record)
    async with http.get(srv.url("snapshots"), headers=srv.headers("restore")) as r:
        (row,) = (await r.json())["snapshots"]
    assert row["id"] == snapshot_id.hex() and row["agent"] == "pc-1"


async def test_malformed_commit_is_422(srv: Harness, http: aiohttp.ClientSession) -> None:
    async with http.post(srv.url("snapshots"), data=b"{not json", headers=srv.headers()) as r:
        assert r.status == 422


async def test_range_reads_return_206(srv: Harness, http: aiohttp.ClientSession) -> None:
    pack_id, data, _ = make_pack()
    await srv.backend().put_pack(pack_id, data)
    headers = {**srv.headers("restore"), "Range": "bytes=100-199"}
    async with http.get(srv.url(f"packs/{pack_id.hex()}"), headers=headers) as r:
        assert r.status == 206
        assert await r.read() == data[100:200]
    assert await srv.backend("restore").get_pack_range(pack_id, 5, 10) == data[5:15]


async def test_range_forms_and_unsatisfiable_ranges(
    srv: Harness, http: aiohttp.ClientSession
) -> None:
    """Packs stream from the Store with the Range reading of aiohttp's FileResponse."""
    pack_id, data, _ = make_pack()
    await srv.backend().put_pack(pack_id, data)
    url, size = srv.url(f"packs/{pack_id.hex()}"), len(data)
    for spec, want in [("-100", data[-100:]), (f"{size - 5}-", data[-5:]), ("0-", data)]:
        headers = {**srv.headers("restore"), "Range": f"bytes={spec}"}
        async with http.get(url, headers=headers) as r:
            assert (r.status, await r.read()) == (206, want)
            start = size - len(want)
            assert r.headers["Content-Range"] == f"bytes {start}-{size - 1}/{size}"
    for spec in [f"{size}-", "x-y"]:
        headers = {**srv.headers("restore"), "Range": f"bytes={spec}"}
        async with http.get(url, headers=headers) as r:
            assert r.status == 416 and r.headers["Content-Range"] == f"bytes */{size}"
    async with http.head(url, headers=srv.headers("restore")) as r:
        assert r.status == 200 and r.headers["Content-Length"] == str(size)
        assert r.headers["Accept-Ranges"] == "bytes"


async def test_missing_query_rejects_ragged_bodies(
    srv: Harness, http: aiohttp.ClientSession
) -> None:
    async with http.post(srv.url("missing"), data=b"x" * 33, headers=srv.headers()) as r:
        assert r.status == 400
    _, _, ids = make_pack(chunks=3)
    many = [ChunkId(os.urandom(32)) for _ in range(25_000)]  # crosses the 10k client batch
    assert await srv.backend().missing(many + ids) == set(many + ids)


async def test_pack_listing_pages(srv: Harness, http: aiohttp.ClientSession) -> None:
    backend = srv.backend()
    packs = [make_pack(chunks=1, size=10) for _ in range(5)]
    for pack_id, data, _ in packs:
        await backend.put_pack(pack_id, data)
    async with http.get(srv.url("packs"), params={"limit": "2"}, headers=srv.headers()) as r:
        doc = await r.json()
    assert len(doc["packs"]) == 2 and doc["next"] == doc["packs"][1]["id"]
    assert sorted([p async for p in backend.list_packs()]) == sorted(p for p, _, _ in packs)


async def test_metrics_expose_counters_and_latency(
    srv: Harness, http: aiohttp.ClientSession
) -> None:
    pack_id, data, _ = make_pack()
    await srv.backend().put_pack(pack_id, data)
    async with http.get(f"{srv.base}/metrics") as r:
        text = await r.text()
    assert "dicomvault_packs_stored_total 1" in text
    assert f"dicomvault_bytes_received_total {len(data)}" in text
    assert "dicomvault_repositories 1" in text
    assert 'route="/v1/repos/{name}/packs/{id}"' in text


async def test_bytes_uploaded_counts_socket_bytes(srv: Harness) -> None:
    pack_id, data, _ = make_pack(chunks=50, size=2000)
    backend = srv.backend()
    await backend.put_pack(pack_id, data)
    sent = backend.bytes_uploaded
    # Body plus request line and headers (a few hundred bytes), nothing invented.
    assert len(data) < sent < len(data) + 2000
    await backend.put_pack(pack_id, data)
    assert backend.bytes_uploaded >= sent + len(data)
