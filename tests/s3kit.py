"""S3 settings for the session's SeaweedFS (`seaweed` fixture in tests/conftest.py)."""

from __future__ import annotations

from benchmarks.seaweed import ACCESS_KEY, BUCKET, SECRET_KEY, SeaweedFS
from engine.store.s3 import S3Settings

__all__ = ["SeaweedFS", "s3_settings"]


def s3_settings(weed: SeaweedFS, prefix: str = "", bucket: str = BUCKET) -> S3Settings:
    return S3Settings(
        bucket=bucket,
        prefix=prefix,
        endpoint=weed.endpoint,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        timeout=10.0,
        retries=0,
    )
