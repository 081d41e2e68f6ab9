"""S3 settings for the session's SeaweedFS (`seaweed` fixture in tests/conftest.py)."""

from __future__ import annotations

from benchmarks.seaweed import SeaweedFS
from benchmarks.seaweed import settings as s3_settings

__all__ = ["SeaweedFS", "s3_settings"]
