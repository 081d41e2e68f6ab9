"""Fixtures shared across the test tiers: initialised repositories, a real DICOM tree, two
chunk servers replicating site-a → site-b, and what alerts reach (a real SMTP server and a real
webhook receiver)."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from benchmarks.seaweed import SeaweedFS, start_seaweedfs
from benchmarks.serverkit import free_port
from tests.helpers import Vault, pydicom_data_files, pydicom_test_files
from tests.server.monitorkit import MailSink, Site, Webhook, start_site


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One real SeaweedFS for the session (S3 on loopback); tests use their own key prefixes."""
    weed = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    yield weed
    weed.stop()


@pytest.fixture
def vault(tmp_path: Path) -> Vault:
    """A fresh repository with cheap KDF, driven through the CLI."""
    return Vault(tmp_path / "vault").init()


def build_dicom_tree(root: Path) -> Path:
    """Real DICOM (pydicom's test files and pydicom-data) plus non-DICOM files, empty files, a
    symlink and nested folders, with varied modes and nanosecond mtimes."""
    src = root / "tree"
    for i, path in enumerate(pydicom_test_files()):
        shutil.copyfile(path, _unique(src / "pydicom" / f"d{i % 4}", path.name))
    for path in pydicom_data_files():
        shutil.copyfile(path, _unique(src / "pydicom-data", path.name))
    nested = src / "notes" / "a" / "b" / "c"
    nested.mkdir(parents=True)
    (nested / "readme.txt").write_text("not DICOM\n" * 1000)
    (nested / "random.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (src / "notes" / "empty").write_bytes(b"")
    (nested / "also-empty.dcm").write_bytes(b"")
    (src / "notes" / "link").symlink_to("a/b/c/readme.txt")
    (src / "empty-folder").mkdir()
    os.chmod(nested / "random.bin", 0o600)
    os.chmod(nested / "readme.txt", 0o755)
    os.chmod(src / "empty-folder", 0o700)
    for n, path in enumerate(sorted(src.rglob("*"), reverse=True)):  # files before their folders
        if not path.is_symlink():
            os.utime(path, ns=(1_600_000_000_123_456_789 + n, 1_600_000_000_123_456_789 + n * 7))
    os.utime(src, ns=(1_500_000_000_000_000_001, 1_500_000_000_000_000_001))
    return src


def _unique(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path, n = folder / name, 0
    while path.exists():
        n += 1
        path = folder / f"{n}-{name}"
    return path


@dataclass(frozen=True)
class BackedUp:
    vault: Vault
    tree: Path
    summary: dict[str, Any]


@pytest.fixture(scope="session")
def dicom_backup(tmp_path_factory: pytest.TempPathFactory) -> BackedUp:
    """One backup of the DICOM tree, shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("dicom")
    tree = build_dicom_tree(root)
    vault = Vault(root / "vault").init()
    summary = vault.json("backup", str(tree))
    return BackedUp(vault, tree, summary)


@pytest.fixture
async def sites(tmp_path: Path) -> AsyncIterator[tuple[Site, Site]]:
    """Two in-process chunk servers, site-a replicating to site-b, with one practice on site-a."""
    b = await start_site(tmp_path, "site-b")
    peer = {"url": b.url, "token": b.replica_token("site-a"), "name": "site-b"}
    a = await start_site(tmp_path, "site-a", [peer])
    a.add_repo()
    yield a, b
    await a.server.close()
    await b.server.close()


@pytest.fixture
def smtp() -> Iterator[MailSink]:
    """A real SMTP server (aiosmtpd) on loopback keeping every message it is sent."""
    sink = MailSink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    sink.port = controller.port
    yield sink
    controller.stop()


@pytest.fixture
async def hook() -> AsyncIterator[Webhook]:
    """A real aiohttp webhook receiver on loopback keeping every document POSTed to it."""
    receiver = Webhook()
    await receiver.server.start_server()
    yield receiver
    await receiver.server.close()
