"""What only the S3 store has, against a real SeaweedFS: multipart streamed puts with bounded
parts completed only after verify has read their tail, folders as marker objects, a clear message
per start-up failure, transient errors while serving, and whether the store enforces S3 Object
Lock (docs/design.md records the finding; issue 14 builds on it)."""

from __future__ import annotations

import asyncio
import datetime
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import ClientError

from engine.errors import IntegrityError, ObjectLocked, ObjectNotFound, StoreError, TransientError
from engine.store.base import ObjectStat, Staged
from engine.store.s3 import PART, TAIL, Retention, S3Root, S3Settings, open_api
from tests.s3kit import SeaweedFS, locked_bucket, s3_settings


def _root(weed: SeaweedFS) -> S3Root:
    return S3Root(s3_settings(weed, f"s3t-{secrets.token_hex(6)}"))


async def _pieces(data: bytes, size: int = 1 << 20) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def test_a_streamed_put_larger_than_a_part_is_invisible_until_verified(
    seaweed: SeaweedFS,
) -> None:
    store = _root(seaweed).child("repos/clinic")
    data = os.urandom(2 * PART + 12345)  # three parts of a multipart upload
    seen: list[tuple[bool, bytes]] = []

    async def verify(staged: Staged) -> None:
        tail = await staged.read_range(len(data) - 9, 9)
        seen.append((await store.exists("packs/ab/big"), tail))

    assert await store.put_stream("packs/ab/big", _pieces(data), verify)
    assert seen == [(False, data[-9:])]  # verified from the tail, before it was visible
    assert await store.get("packs/ab/big") == data
    assert await store.get_range("packs/ab/big", PART - 3, 10) == data[PART - 3 : PART + 7]


async def test_verify_may_read_only_the_tail_of_a_streamed_put(seaweed: SeaweedFS) -> None:
    store = _root(seaweed).child("repos/clinic")
    data = os.urandom(TAIL + 2 * (1 << 20))

    async def head(staged: Staged) -> None:
        await staged.read_range(0, 10)

    with pytest.raises(IntegrityError, match="only the last"):
        await store.put_stream("packs/ab/p", _pieces(data), head)
    assert not await store.exists("packs/ab/p")


async def test_an_existing_object_is_verified_but_not_uploaded_again(seaweed: SeaweedFS) -> None:
    store = _root(seaweed).child("repos/clinic")
    await store.put("packs/ab/p", b"first", mtime=5.0)
    checked: list[int] = []

    async def verify(staged: Staged) -> None:
        checked.append(staged.size)

    assert not await store.put_stream("packs/ab/p", _pieces(b"first"), verify)
    assert checked == [5] and await store.stat("packs/ab/p") == ObjectStat(5, 5.0)


def test_folders_are_marker_objects_listed_by_the_root(seaweed: SeaweedFS) -> None:
    root = _root(seaweed)
    assert root.folders("repos") == [] and not root.has_folder("repos/a")
    assert root.make_folder("repos/a") and root.make_folder("repos/b")
    assert not root.make_folder("repos/a")
    assert root.folders("repos") == ["a", "b"] and root.has_folder("repos/a")


def _dead_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # closed when we return: refused


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bucket": "no-such-bucket"}, "no such bucket"),
        ({"secret_access_key": "wrong"}, "credentials refused"),
        ({"endpoint": "dead"}, "endpoint unreachable"),
    ],
)
def test_the_start_up_check_names_what_is_wrong(
    seaweed: SeaweedFS, change: dict[str, str], message: str
) -> None:
    settings = s3_settings(seaweed)
    if change.get("endpoint") == "dead":
        change = {"endpoint": _dead_endpoint()}
    S3Root(settings).check()  # the good settings pass
    with pytest.raises(StoreError, match=message) as e:
        S3Root(replace(settings, **change)).check()  # type: ignore[arg-type]
    assert e.value.exit_code == 14


async def test_failures_while_serving_are_transient(seaweed: SeaweedFS) -> None:
    good = S3Root(s3_settings(seaweed, "s3t-serving"))
    await good.child("repos/clinic").put("config", b"c")
    bad: S3Settings = replace(s3_settings(seaweed, "s3t-serving"), secret_access_key="wrong")
    with pytest.raises(TransientError, match="credentials"):
        await S3Root(bad).child("repos/clinic").get("config")
    dead = replace(s3_settings(seaweed, "s3t-serving"), endpoint=_dead_endpoint())
    with pytest.raises(TransientError):
        await S3Root(dead).child("repos/clinic").put("config", b"c")


async def test_seaweedfs_enforces_object_lock_on_a_locked_version(seaweed: SeaweedFS) -> None:
    """The finding in docs/design.md ("S3 Object Lock on SeaweedFS"): a COMPLIANCE-locked
    version cannot be deleted before its date; a plain delete only adds a delete marker."""
    session = get_session()
    config = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1})
    settings = s3_settings(seaweed)
    async with session.create_client(
        "s3",
        endpoint_url=seaweed.endpoint,
        region_name="us-east-1",
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key,
        config=config,
    ) as s3:
        bucket = f"locked-{secrets.token_hex(4)}"
        await s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
        until = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
        put = await s3.put_object(
            Bucket=bucket,
            Key="packs/ab/p",
            Body=b"pack",
            ObjectLockMode="COMPLIANCE",
            ObjectLockRetainUntilDate=until,
        )
        version = put["VersionId"]
        with pytest.raises(ClientError, match="AccessDenied"):
            await s3.delete_object(Bucket=bucket, Key="packs/ab/p", VersionId=version)
        marker = await s3.delete_object(Bucket=bucket, Key="packs/ab/p")
        assert marker.get("DeleteMarker") is True
        kept = await s3.get_object(Bucket=bucket, Key="packs/ab/p", VersionId=version)
        assert await kept["Body"].read() == b"pack"


# -- Object Lock retention and versioned deletes (docs/design.md 3.1.2, §14 "Object Lock") --------


def _locking_root(weed: SeaweedFS, seconds: float = 30.0) -> tuple[S3Root, Retention]:
    retention = Retention("COMPLIANCE", seconds, lambda prefix, name: name.startswith("packs/"))
    root = S3Root(locked_bucket(weed, f"ol-{secrets.token_hex(4)}"), retention=retention)
    root.check()
    return root, retention


def _versions(root: S3Root, key: str) -> list[str]:
    page = api_client(root).list_object_versions(Bucket=root.settings.bucket, Prefix=key)
    return [v["VersionId"] for v in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]]


def api_client(root: S3Root) -> Any:
    return open_api(root.settings)


async def test_covered_objects_are_locked_before_their_put_returns(seaweed: SeaweedFS) -> None:
    root, retention = _locking_root(seaweed)
    store = root.child("repos/clinic")
    before = time.time()
    assert await store.put("packs/ab/p", b"pack")
    assert await store.put_stream("packs/ab/q", _pieces(os.urandom(3 << 20)))
    assert not await store.put_stream("packs/ab/q", _pieces(b"again"))  # sent again: still locked
    await store.put("heartbeats/h", b"{}")  # not covered
    for name in ("packs/ab/p", "packs/ab/q"):
        until = await store.retention_of(name)
        assert until is not None and before + 29 < until < time.time() + 31
    assert await store.retention_of("heartbeats/h") is None
    assert [n for _, n, _ in retention.drain()] == ["packs/ab/p", "packs/ab/q", "packs/ab/q"]
    doc = api_client(root).get_object_retention(
        Bucket=root.settings.bucket, Key=f"{store.prefix}/packs/ab/p"
    )
    assert doc["Retention"]["Mode"] == "COMPLIANCE"


async def test_a_versioned_delete_destroys_every_version_or_says_until_when(
    seaweed: SeaweedFS,
) -> None:
    root, _ = _locking_root(seaweed, seconds=4.0)
    store = root.child("repos/clinic")
    await store.put("heartbeats/h", b"{}")
    await store.delete("heartbeats/h")  # unlocked: no noncurrent version, no marker left
    assert _versions(root, f"{store.prefix}/heartbeats/h") == []
    await store.put("packs/ab/p", b"pack")
    with pytest.raises(ObjectLocked) as locked:
        await store.delete("packs/ab/p")
    assert locked.value.until > time.time() and not await store.exists("packs/ab/p")  # hidden
    assert len(_versions(root, f"{store.prefix}/packs/ab/p")) == 2  # the locked one and a marker
    await asyncio.sleep(max(0.0, locked.value.until - time.time()) + 1.5)
    await store.delete("packs/ab/p")  # its date has passed: destroyed for real
    assert _versions(root, f"{store.prefix}/packs/ab/p") == []
    with pytest.raises(ObjectNotFound):
        await store.delete("packs/ab/p")


def test_the_start_up_check_refuses_a_retention_the_bucket_cannot_keep(
    seaweed: SeaweedFS,
) -> None:
    retention = Retention("COMPLIANCE", 60.0, lambda prefix, name: True)
    with pytest.raises(StoreError, match="no Object Lock enabled") as e:
        S3Root(s3_settings(seaweed), retention=retention).check()
    assert e.value.exit_code == 14


async def test_deletes_in_a_versioned_bucket_leave_no_noncurrent_version(
    seaweed: SeaweedFS,
) -> None:
    settings = replace(s3_settings(seaweed, "v"), bucket=f"versioned-{secrets.token_hex(4)}")
    client = open_api(settings)
    client.create_bucket(Bucket=settings.bucket)
    client.put_bucket_versioning(
        Bucket=settings.bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    root = S3Root(settings)
    root.check()  # learns that the bucket keeps versions
    store = root.child("repos/clinic")
    await store.put("heartbeats/h", b"{}")
    await store.move("heartbeats/h", root.child("quarantine/clinic"), "h")
    await store.put("packs/ab/p", b"pack")
    await store.delete("packs/ab/p")
    for key in ("v/repos/clinic/heartbeats/h", "v/repos/clinic/packs/ab/p"):
        assert _versions(root, key) == []


async def test_a_locked_object_moved_to_quarantine_is_hidden_and_copied(
    seaweed: SeaweedFS,
) -> None:
    root, _ = _locking_root(seaweed)
    store, quarantine = root.child("repos/clinic"), root.child("quarantine/clinic")
    await store.put("packs/ab/p", b"planted")
    assert await store.move("packs/ab/p", quarantine, "p")
    assert not await store.exists("packs/ab/p") and await quarantine.get("p") == b"planted"
    # The locked version stays, behind a marker, until its date.
    assert len(_versions(root, f"{store.prefix}/packs/ab/p")) == 2
