"""S3 object-store `Store` (SeaweedFS, MinIO, Ceph RGW, AWS S3, B2) through obstore.

Owns the mapping of object names to keys under a bucket prefix, the write-once put (a
conditional `If-None-Match: *` PUT), the verified streamed put (a multipart upload to the final key
completed only after `verify` has read the object's tail, so nothing unverified is ever
visible), ranged and streamed gets, and translating obstore's errors into `engine.errors`:
a missing object is `ObjectNotFound`; anything else the store or the network does is a
`TransientError` (503 on the server, retried by the client). `S3Root` hands out one store per
repository prefix and checks the bucket at start. Must not read the environment: the CLI builds
`S3Settings`.

Object Lock and versions (docs/design.md 3.1.2, §14): obstore cannot send object-lock headers
nor name a version, so those few calls go through botocore (blocking, run in worker threads):
a store given a `Retention` puts a retain-until on every object its `covers` selects before its
put returns (so nothing is acknowledged unlocked), and in a versioned bucket `delete` destroys
every version of a key, raising `ObjectLocked` (after hiding the object behind a delete marker)
while a version is still under retention.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import urlparse

import botocore.session
import obstore
from botocore import UNSIGNED
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError
from obstore.exceptions import (
    AlreadyExistsError,
    BaseError,
    NotFoundError,
    PermissionDeniedError,
    PreconditionError,
    UnauthenticatedError,
)
from obstore.store import S3Store as _Bucket

from engine.clock import SYSTEM, Clock
from engine.errors import (
    IntegrityError,
    ObjectLocked,
    ObjectNotFound,
    StoreError,
    TransientError,
    UsageError,
)
from engine.store.base import PIECE, ObjectStat, Staged, Store, StoreRoot, Verify, validate_name

T = TypeVar("T")
MTIME = "mtime"  # user metadata (x-amz-meta-mtime): the time `stat` reports
PART = 16 * 1024 * 1024  # multipart part size, and the largest object sent in one PUT
PARTS_IN_FLIGHT = 4  # bounded memory per streamed put: PART x PARTS_IN_FLIGHT, plus TAIL
TAIL = 8 * 1024 * 1024  # what `verify` may read of a streamed put: a pack's manifest and trailer


@dataclass(frozen=True)
class S3Settings:
    """Where the bucket is and how to sign; from `s3://BUCKET/PREFIX`, `[s3]` in server.toml
    and the standard AWS_* variables (read by the CLI, never here)."""

    bucket: str
    prefix: str = ""
    endpoint: str | None = None
    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    timeout: float = 30.0
    retries: int = 2  # obstore's own retries of one request before we call it transient

    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")


LOCK_MODES = ("COMPLIANCE", "GOVERNANCE")


@dataclass
class VersionSweep:
    """What `S3Store.sweep_versions` did: requests sent, versions removed, versions still
    locked (left for a later sweep)."""

    requests: int = 0
    removed: int = 0
    locked: int = 0

    def __iadd__(self, other: VersionSweep) -> VersionSweep:
        self.requests += other.requests
        self.removed += other.removed
        self.locked += other.locked
        return self


@dataclass(frozen=True)
class Retention:
    """Object Lock retention for the objects `covers(store prefix, name)` selects (the store
    prefix is relative to the root, e.g. "repos/clinic"): each gets `mode` with a retain-until
    of `clock.time() + seconds` before its put returns. What it locked is remembered in
    `recent` (bounded; losing some costs only a request later) for whoever records dates."""

    mode: str
    seconds: float
    covers: Callable[[str, str], bool]
    clock: Clock = SYSTEM
    recent: deque[tuple[str, str, float]] = field(default_factory=lambda: deque(maxlen=100_000))

    def drain(self) -> builtins.list[tuple[str, str, float]]:
        out = []
        while self.recent:
            out.append(self.recent.popleft())
        return out


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://BUCKET/PREFIX` -> (bucket, prefix); the prefix may be empty."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise UsageError(f"--store must be s3://BUCKET[/PREFIX], got {url!r}")
    prefix = parsed.path.strip("/")
    for part in prefix.split("/") if prefix else []:
        try:
            validate_name(part)  # same rules as object names: no dots, no upper case
        except StoreError as e:
            raise UsageError(f"--store {url!r}: {e}") from None
    return parsed.netloc, prefix


def open_bucket(settings: S3Settings) -> _Bucket:
    options: dict[str, Any] = {"timeout": timedelta(seconds=settings.timeout)}
    options["connect_timeout"] = timedelta(seconds=min(settings.timeout, 5.0))
    if settings.endpoint and settings.endpoint.startswith("http://"):
        options["allow_http"] = True
    config: dict[str, Any] = {"region": settings.region}
    if settings.endpoint:
        config["endpoint"] = settings.endpoint
        config["virtual_hosted_style_request"] = False  # path style: any endpoint, any bucket
    if settings.access_key_id:
        config["access_key_id"] = settings.access_key_id
        config["secret_access_key"] = settings.secret_access_key or ""
    if settings.session_token:
        config["session_token"] = settings.session_token
    retry = {"max_retries": settings.retries, "retry_timeout": timedelta(seconds=settings.timeout)}
    return _Bucket(
        settings.bucket,
        config=config,  # type: ignore[arg-type]
        client_options=options,  # type: ignore[arg-type]
        retry_config=retry,  # type: ignore[arg-type]
        skip_signature=not settings.access_key_id,
    )


def open_api(settings: S3Settings) -> Any:
    """A botocore S3 client for what obstore does not expose (Object Lock, versions)."""
    config = BotoConfig(
        s3={"addressing_style": "path"} if settings.endpoint else {},
        retries={"max_attempts": settings.retries + 1, "mode": "standard"},
        connect_timeout=min(settings.timeout, 5.0),
        read_timeout=settings.timeout,
        signature_version=None if settings.access_key_id else UNSIGNED,
    )
    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=settings.endpoint,
        region_name=settings.region,
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key if settings.access_key_id else None,
        aws_session_token=settings.session_token,
        config=config,
    )


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


class _Api:
    """The botocore calls of one bucket; blocking, so the store runs them in worker threads."""

    def __init__(self, client: Any, bucket: str) -> None:
        self.client, self.bucket = client, bucket

    def retain(self, key: str, mode: str, until: float, version: str | None = None) -> None:
        """Put (or extend) a retention; a later date already held is kept (a lock is never
        shortened, and S3 refuses to), anything else refused is an error."""
        date = datetime.fromtimestamp(until, UTC)
        extra = {"VersionId": version} if version else {}
        try:
            self.client.put_object_retention(
                Bucket=self.bucket,
                Key=key,
                Retention={"Mode": mode, "RetainUntilDate": date},
                **extra,
            )
        except ClientError as e:
            held = self.retention(key, version) if _code(e) == "AccessDenied" else None
            if held is None or held < until - 1.0:
                raise
        return None

    def extend(self, key: str, mode: str, until: float) -> None:
        """Retain every data version of `key` until `until`, named by version id: a request
        without one would reach only the newest version, which may be a delete marker someone
        put to hide the object (SeaweedFS then answers 200 and locks nothing)."""
        found = [v for v, marker in self.versions(key) if not marker]
        if not found:
            raise ObjectNotFound(f"object not found: {key}")
        for version in found:
            self.retain(key, mode, until, version)

    def retention(self, key: str, version: str | None = None) -> float | None:
        """The retain-until of a version (the latest without `version`), None if it has none."""
        extra = {"VersionId": version} if version else {}
        try:
            doc = self.client.get_object_retention(Bucket=self.bucket, Key=key, **extra)
        except ClientError as e:
            if _code(e) in (
                "ObjectLockConfigurationNotFoundError",
                "NoSuchObjectLockConfiguration",
            ):
                return None
            raise
        return float(doc["Retention"]["RetainUntilDate"].timestamp())

    def versions(self, key: str) -> builtins.list[tuple[str, bool]]:
        """(version id, is a delete marker) of every version of exactly `key`."""
        out: builtins.list[tuple[str, bool]] = []
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": key}
        while True:
            page = self.client.list_object_versions(**kwargs)
            for v in page.get("Versions", []):
                if v["Key"] == key:
                    out.append((v["VersionId"], False))
            for m in page.get("DeleteMarkers", []):
                if m["Key"] == key:
                    out.append((m["VersionId"], True))
            if not page.get("IsTruncated"):
                return out
            kwargs["KeyMarker"] = page["NextKeyMarker"]
            kwargs["VersionIdMarker"] = page["NextVersionIdMarker"]

    def destroy(self, key: str) -> float | None:
        """Delete every version of `key`. None when none is left; else the object is hidden
        behind a delete marker and the latest retain-until of what stays is returned. Raises
        `ObjectNotFound` when the key has no data version at all (markers are removed)."""
        versions = self.versions(key)
        locked: builtins.list[str] = []
        for version, _ in versions:
            try:
                self.client.delete_object(Bucket=self.bucket, Key=key, VersionId=version)
            except ClientError as e:
                if _code(e) != "AccessDenied":
                    raise
                locked.append(version)
        if not any(not marker for _, marker in versions):
            raise ObjectNotFound(f"object not found: {key}")
        if not locked:
            return None
        self.client.delete_object(Bucket=self.bucket, Key=key)  # a marker: hidden meanwhile
        dates = [self.retention(key, v) for v in locked]
        if not any(d is not None for d in dates):
            raise TransientError(f"object store refused to delete {key}: check the credentials")
        return max(d for d in dates if d is not None)

    def sweep(self, prefix: str, now: float, keep_newest: Callable[[str], bool]) -> VersionSweep:
        """Delete what a versioned bucket keeps under `prefix` but nobody reads: noncurrent
        delete markers, noncurrent data versions whose retain-until is before `now` (none, or
        passed), and a current delete marker left with no data version behind it. For a key
        `keep_newest` names (live or scheduled), its newest data version stays even when
        noncurrent (hidden by someone's marker: the purge or the extension owns it). One
        listing per thousand versions, one retention read per noncurrent data version, one
        DELETE per version removed."""
        report = VersionSweep()
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        held: dict[str, builtins.list[dict[str, Any]]] = {}
        while True:
            page = self.client.list_object_versions(**kwargs)
            report.requests += 1
            for v in page.get("Versions", []):
                held.setdefault(v["Key"], []).append({**v, "marker": False})
            for m in page.get("DeleteMarkers", []):
                held.setdefault(m["Key"], []).append({**m, "marker": True})
            open_key = page.get("NextKeyMarker") if page.get("IsTruncated") else None
            for key in [k for k in held if k != open_key]:  # complete: sweep it
                self._sweep_key(key, held.pop(key), now, keep_newest(key), report)
            if open_key is None:
                return report
            kwargs["KeyMarker"] = page["NextKeyMarker"]
            kwargs["VersionIdMarker"] = page["NextVersionIdMarker"]

    def _sweep_key(self, key: str, versions: builtins.list[dict[str, Any]], now: float,
                   keep: bool, report: VersionSweep) -> None:  # fmt: skip
        versions.sort(key=lambda v: v["LastModified"], reverse=True)
        data = [v for v in versions if not v["marker"]]
        newest = data[0]["VersionId"] if data else None
        left = len(data)
        for v in versions:
            if v["IsLatest"] or (keep and v["VersionId"] == newest):
                continue
            if not v["marker"]:
                until = self.retention(key, v["VersionId"])
                report.requests += 1
                if until is not None and until >= now:
                    report.locked += 1
                    continue
            if self._delete_version(key, v["VersionId"], report):
                left -= 0 if v["marker"] else 1
        latest = next((v for v in versions if v["IsLatest"]), None)
        if latest is not None and latest["marker"] and left == 0:
            self._delete_version(key, latest["VersionId"], report)

    def _delete_version(self, key: str, version: str, report: VersionSweep) -> bool:
        report.requests += 1
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key, VersionId=version)
        except ClientError as e:
            if _code(e) != "AccessDenied":  # the store's clock says it is still locked
                raise
            report.locked += 1
            return False
        report.removed += 1
        return True

    def lock_enabled(self) -> bool:
        try:
            doc = self.client.get_object_lock_configuration(Bucket=self.bucket)
        except ClientError as e:
            if "ObjectLockConfiguration" in _code(e):
                return False
            raise
        return bool(doc.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled")

    def versioned(self) -> bool:
        try:
            status = self.client.get_bucket_versioning(Bucket=self.bucket).get("Status")
        except ClientError as e:
            if _code(e) in ("NotImplemented", "MethodNotAllowed"):
                return False  # a store without versions
            raise
        return status in ("Enabled", "Suspended")


async def _api_call(what: str, fn: Callable[[], T]) -> T:
    try:
        return await asyncio.to_thread(fn)
    except ClientError as e:
        if _code(e) in ("NoSuchKey", "NoSuchVersion", "404"):
            raise ObjectNotFound(f"object not found: {what}") from None
        raise TransientError(f"object store failed on {what}: {_first_line(e)}") from None
    except BotoCoreError as e:
        raise TransientError(f"object store failed on {what}: {_first_line(e)}") from None


def _translate(e: BaseException, what: str) -> StoreError:
    if isinstance(e, (FileNotFoundError, NotFoundError)):
        return ObjectNotFound(f"object not found: {what}")
    if isinstance(e, (PermissionDeniedError, UnauthenticatedError)):
        return TransientError(f"object store refused {what}: check the credentials")
    return TransientError(f"object store failed on {what}: {_first_line(e)}")


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


async def _call(what: str, fn: Callable[[], Awaitable[T]]) -> T:
    try:
        return await fn()
    except (BaseError, OSError) as e:
        raise _translate(e, what) from None


def _is_range_past_end(e: BaseException) -> bool:
    text = str(e)
    return "InvalidRange" in text or "416" in text or "Range" in type(e).__name__


class _Tail(Staged):
    """The last `TAIL` bytes of a streamed object, which is all `verify` may read: a pack's
    trailer and manifest lie at its end."""

    def __init__(self) -> None:
        self.pieces: deque[bytes] = deque()
        self.size = self.held = 0

    def add(self, piece: bytes) -> None:
        self.pieces.append(piece)
        self.size += len(piece)
        self.held += len(piece)
        while self.held - len(self.pieces[0]) >= TAIL:
            self.held -= len(self.pieces.popleft())

    async def read_range(self, offset: int, length: int) -> bytes:
        start = self.size - self.held
        if offset < start:
            raise IntegrityError(
                f"verify read byte {offset} of {self.size}: only the last {TAIL} are kept"
            )
        data = b"".join(self.pieces)
        return data[offset - start : offset - start + length]


class S3Store(Store):
    """One prefix of one bucket. `clock` stamps objects put without an `mtime`. With `api` (a
    versioned bucket) `delete` destroys every version; with `retention` too (and `relative`,
    the prefix below the root that `retention.covers` is asked about) covered objects are
    locked before their put returns."""

    def __init__(
        self,
        bucket: _Bucket,
        prefix: str = "",
        clock: Clock = SYSTEM,
        *,
        api: _Api | None = None,
        retention: Retention | None = None,
        relative: str = "",
    ) -> None:
        self.bucket, self.prefix, self.clock = bucket, prefix.strip("/"), clock
        self.api, self.retention, self.relative = api, retention, relative

    async def _retain(self, name: str, key: str, version: str | None = None) -> None:
        """Lock what was just put (or sent again) before the put returns: a failure is an
        error, so nothing unlocked is acknowledged."""
        r, api = self.retention, self.api
        if r is None or api is None or not r.covers(self.relative, name):
            return
        until = r.clock.time() + r.seconds
        if version is not None:  # the version this put created
            await _api_call(name, functools.partial(api.retain, key, r.mode, until, version))
        else:
            await _api_call(name, functools.partial(api.extend, key, r.mode, until))
        r.recent.append((self.relative, name, until))

    async def retain(self, name: str, until: float) -> None:
        """Extend the retention of every version of a covered object to `until` (never
        shortens one), hidden or not: `ObjectNotFound` only when no version is left."""
        r, api = self.retention, self.api
        if r is None or api is None:
            raise StoreError("this store has no Object Lock retention configured")
        await _api_call(name, functools.partial(api.extend, self._key(name), r.mode, until))

    async def sweep_versions(
        self, prefix: str, now: float, keep_newest: Callable[[str], bool]
    ) -> VersionSweep:
        """Remove the versions nobody reads under `prefix` once their lock has passed at `now`
        (`_Api.sweep`); `keep_newest(name)` keeps a live object's newest data version. A
        store without versions has none."""
        if self.api is None:
            return VersionSweep()

        def keep(key: str) -> bool:
            name = self._name(key)
            return name is None or keep_newest(name)

        call = functools.partial(self.api.sweep, self._key(prefix) + "/", now, keep)
        return await _api_call(f"versions of {prefix}", call)

    async def retention_of(self, name: str) -> float | None:
        """The retain-until of the object's current version, None if it has none."""
        if self.api is None:
            return None
        return await _api_call(name, functools.partial(self.api.retention, self._key(name)))

    def _key(self, name: str) -> str:
        validate_name(name)
        return f"{self.prefix}/{name}" if self.prefix else name

    def _name(self, key: str) -> str | None:
        name = key[len(self.prefix) + 1 :] if self.prefix else key
        try:
            return validate_name(name)
        except StoreError:
            return None  # folder markers, foreign keys: never listed

    def _attributes(self, mtime: float | None) -> dict[str, str]:
        return {MTIME: repr(self.clock.time() if mtime is None else mtime)}

    async def put(self, name: str, data: bytes | memoryview, *, mtime: float | None = None) -> bool:
        key = self._key(name)
        try:
            result = await obstore.put_async(
                self.bucket, key, bytes(data), mode="create", attributes=self._attributes(mtime)
            )
        except (AlreadyExistsError, PreconditionError):
            await self._retain(name, key)  # sent again: it is live, and may be unlocked
            return False
        except (BaseError, OSError) as e:
            raise _translate(e, name) from None
        await self._retain(name, key, result.get("version"))
        return True

    async def put_stream(
        self,
        name: str,
        pieces: AsyncIterable[bytes],
        verify: Verify | None = None,
        *,
        mtime: float | None = None,
    ) -> bool:
        """Upload straight to the final key (multipart, bounded parts), keeping the object's
        last `TAIL` bytes for `verify`; complete the upload only after `verify` returns, so
        nothing unverified is ever visible and nothing is acknowledged before S3 stored it.
        An object that exists already is not uploaded again (only verified)."""
        key = self._key(name)
        writer = None
        if not await self.exists(name):
            attributes = self._attributes(mtime)
            writer = obstore.open_writer_async(
                self.bucket,
                key,
                attributes=attributes,
                buffer_size=PART,
                max_concurrency=PARTS_IN_FLIGHT,
            )
        tail = _Tail()
        async for piece in pieces:
            tail.add(piece)
            if writer is not None:
                await _call(name, functools.partial(writer.write, piece))
        # A failed stream or verify leaves the upload uncompleted: invisible, and its parts
        # are the bucket lifecycle rule's (AbortIncompleteMultipartUpload).
        if verify is not None:
            await verify(tail)
        if writer is not None:
            await _call(name, writer.close)
        await self._retain(name, key)
        return writer is not None

    async def get(self, name: str) -> bytes:
        key = self._key(name)

        async def read() -> bytes:
            result = await obstore.get_async(self.bucket, key)
            return bytes(await result.bytes_async())

        return await _call(name, read)

    async def get_range(self, name: str, offset: int, length: int) -> bytes:
        return await self._range_key(self._key(name), offset, length, name)

    async def _range_key(self, key: str, offset: int, length: int, name: str = "") -> bytes:
        if length <= 0:
            await self._head(key, name or key)
            return b""
        try:
            data = await obstore.get_range_async(self.bucket, key, start=offset, length=length)
        except (BaseError, OSError) as e:
            if _is_range_past_end(e) and not isinstance(e, (FileNotFoundError, NotFoundError)):
                await self._head(key, name or key)  # past the end of an existing object
                return b""
            raise _translate(e, name or key) from None
        return bytes(data)

    async def _head(self, key: str, what: str) -> ObjectStat:
        async def head() -> ObjectStat:
            result = await obstore.get_async(self.bucket, key, options={"head": True})
            mtime = result.attributes.get(MTIME)
            stored = result.meta["last_modified"].timestamp()
            return ObjectStat(int(result.meta["size"]), float(mtime) if mtime else stored)

        return await _call(what, head)

    async def stat(self, name: str) -> ObjectStat:
        return await self._head(self._key(name), name)

    async def get_stream(
        self, name: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        """One ranged GET streamed in pieces of at most `PIECE` bytes."""
        key = self._key(name)
        size = (await self.stat(name)).size
        end = size if length is None else min(size, offset + length)
        if offset >= end:
            return
        result = await _call(
            name, lambda: obstore.get_async(self.bucket, key, options={"range": (offset, end)})
        )
        try:
            async for chunk in result.stream(min_chunk_size=PIECE):
                view = memoryview(bytes(chunk))
                for start in range(0, len(view), PIECE):
                    yield bytes(view[start : start + PIECE])
        except (BaseError, OSError) as e:
            raise _translate(e, name) from None

    async def list(self, prefix: str = "", start_after: str | None = None) -> AsyncIterator[str]:
        folder = self._key(validate_name(prefix)) if prefix else self.prefix or None
        offset = self._key(start_after) if start_after else None
        stream = obstore.list(self.bucket, folder, offset=offset, chunk_size=1000)
        try:
            async for batch in stream:
                for meta in batch:
                    name = self._name(meta["path"])
                    if name is not None:
                        yield name
        except (BaseError, OSError) as e:
            raise _translate(e, f"listing {prefix or '/'}") from None

    async def delete(self, name: str) -> None:
        """Destroy the object. In a versioned bucket every version goes (a plain DELETE would
        only add a delete marker); a version under retention raises `ObjectLocked` with its
        date, the object hidden meanwhile, and a later delete destroys what is left."""
        key = self._key(name)
        if self.api is not None:
            until = await _api_call(name, functools.partial(self.api.destroy, key))
            if until is not None:
                raise ObjectLocked(f"{name} is under Object Lock retention", until)
            return
        await self._head(key, name)  # S3 deletes a missing key silently; the contract does not
        await _call(name, lambda: obstore.delete_async(self.bucket, key))

    async def move(
        self, name: str, dest: Store, dest_name: str, *, mtime: float | None = None
    ) -> bool:
        """Within one bucket: a server-side copy (which keeps the time), then a delete."""
        if not isinstance(dest, S3Store) or dest.bucket is not self.bucket or mtime is not None:
            return await super().move(name, dest, dest_name, mtime=mtime)
        src, final = self._key(name), dest._key(dest_name)
        if await dest.exists(dest_name):
            return False
        await _call(name, lambda: obstore.copy_async(self.bucket, src, final))
        await dest._retain(dest_name, final)
        with contextlib.suppress(ObjectLocked):  # hidden; the locked version stays until its date
            await self.delete(name)
        return True


class S3Root(StoreRoot):
    """A bucket prefix whose folders are stores (`repos/NAME`, `quarantine/NAME`).

    A folder exists once its marker object `<folder>/.folder` does (S3 has no folders); the
    folder operations use obstore's blocking calls, which callers run off the event loop.
    """

    MARKER = ".folder"
    shared = True  # several server nodes serve one bucket

    def __init__(
        self, settings: S3Settings, clock: Clock = SYSTEM, retention: Retention | None = None
    ) -> None:
        self.settings, self.clock, self.retention = settings, clock, retention
        self.bucket = open_bucket(settings)
        self._client: _Api | None = None
        # Learnt by `check()`: deletes destroy every version where the bucket keeps them.
        self.versioned = retention is not None

    @property
    def _api(self) -> _Api:
        """The botocore client, made on first use (loading its models takes a moment)."""
        if self._client is None:
            self._client = _Api(open_api(self.settings), self.settings.bucket)
        return self._client

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.settings.prefix, *parts) if p)

    def child(self, prefix: str) -> S3Store:
        api = self._api if self.versioned else None
        return S3Store(
            self.bucket,
            self._key(validate_name(prefix)),
            self.clock,
            api=api,
            retention=self.retention,
            relative=prefix,
        )

    def folders(self, prefix: str) -> builtins.list[str]:
        try:
            listed = obstore.list_with_delimiter(self.bucket, self._key(validate_name(prefix)))
        except (BaseError, OSError) as e:
            raise _translate(e, f"listing {prefix}") from None
        return sorted(p.rsplit("/", 1)[-1] for p in listed["common_prefixes"])

    def make_folder(self, prefix: str) -> bool:
        key = self._key(validate_name(prefix), self.MARKER)
        try:
            obstore.put(self.bucket, key, b"", mode="create")
        except (AlreadyExistsError, PreconditionError):
            return False
        except (BaseError, OSError) as e:
            raise _translate(e, prefix) from None
        return True

    def has_folder(self, prefix: str) -> bool:
        try:
            obstore.head(self.bucket, self._key(validate_name(prefix), self.MARKER))
        except (FileNotFoundError, NotFoundError):
            return False
        except (BaseError, OSError) as e:
            raise _translate(e, prefix) from None
        return True

    def check(self) -> None:
        """Raise `StoreError` (exit 14) naming what is wrong: no such bucket, credentials
        refused, or no answer from the endpoint. Called once at start."""
        where = f"{self.settings.url()} at {self.settings.endpoint or 'AWS'}"
        try:
            obstore.list_with_delimiter(self.bucket, self.settings.prefix or None)
        except (PermissionDeniedError, UnauthenticatedError) as e:
            raise StoreError(f"{where}: credentials refused ({_first_line(e)})") from None
        except (FileNotFoundError, NotFoundError) as e:
            raise StoreError(f"{where}: no such bucket ({_first_line(e)})") from None
        except (BaseError, OSError) as e:
            raise StoreError(f"{where}: {_diagnose(e)}") from None
        if self.retention is None:
            self.versioned = self._versioning_known()
            return
        try:
            enabled = self._api.lock_enabled()
        except (ClientError, BotoCoreError) as e:
            raise StoreError(f"{where}: Object Lock configuration: {_diagnose(e)}") from None
        if not enabled:
            raise StoreError(
                f"{where}: [object_lock] is set but the bucket has no Object Lock enabled "
                "(create the bucket with Object Lock, e.g. ObjectLockEnabledForBucket): "
                "refusing to serve without the retention the configuration promises"
            )

    def _versioning_known(self) -> bool:
        """Whether the bucket keeps versions; a store (or a policy) that will not say counts
        as unversioned: deletes then stay plain DELETEs, as before."""
        try:
            return self._api.versioned()
        except (ClientError, BotoCoreError):
            return False

    def describe(self) -> str:
        return self.settings.url()


def _diagnose(e: BaseException) -> str:
    text = str(e)
    if "NoSuchBucket" in text or "404" in text:
        return "no such bucket"
    if "AccessDenied" in text or "SignatureDoesNotMatch" in text or "403" in text:
        return "credentials refused"
    if "InvalidAccessKeyId" in text:
        return "credentials refused (unknown access key)"
    if "error sending request" in text or "connect" in text.lower() or "timed out" in text:
        return f"endpoint unreachable ({_first_line(e)})"
    return _first_line(e)
