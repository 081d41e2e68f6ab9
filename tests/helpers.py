"""Shared test helpers: repositories driven through the CLI (`benchmarks.clikit`), tree comparison.

Tests never mock: repositories are real folders, the index is real LMDB, the CLI runs in a real
subprocess. Nothing here is used by production code.
"""

from __future__ import annotations

import hashlib
import os
import random
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom.data

from benchmarks.clikit import (
    CHEAP_KDF_ARGS,
    CHEAP_KDF_ENV,
    PASSPHRASE,
    Result,
    cli_command,
    cli_env,
)
from engine.backend import LocalBackend
from engine.keys import CHEAP_KDF, KdfParams
from engine.store.local import LocalStore

MiB = 1024 * 1024


def cheap_kdf() -> KdfParams:
    """The one way tests get KDF parameters: cheap, so a repository opens in microseconds."""
    return CHEAP_KDF


@dataclass(frozen=True)
class Vault:
    """A repository folder, its cache folder and passphrase file, driven through the CLI."""

    root: Path

    @property
    def repo(self) -> Path:
        return self.root / "repo"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def password_file(self) -> Path:
        return self.root / "passphrase"

    def env(self, **extra: str) -> dict[str, str]:
        return (
            cli_env(
                DICOMVAULT_REPO=str(self.repo),
                DICOMVAULT_PASSWORD_FILE=str(self.password_file),
                DICOMVAULT_CACHE_DIR=str(self.cache),
                **CHEAP_KDF_ENV,
            )
            | extra
        )

    def command(self, *args: str, prefix: tuple[str, ...] = ()) -> list[str]:
        return [*prefix, *cli_command(), *args]

    def run(
        self, *args: str, timeout: float = 600, prefix: tuple[str, ...] = (), **env: str
    ) -> Result:
        proc = subprocess.run(
            self.command(*args, prefix=prefix),
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def ok(self, *args: str, **kw: Any) -> Result:
        result = self.run(*args, **kw)
        assert result.rc == 0, f"dicomvault {' '.join(args)} exited {result.rc}: {result.err}"
        return result

    def json(self, *args: str, **kw: Any) -> Any:
        return self.ok(*args, "--json", **kw).doc

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(*args),
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )

    def init(self) -> Vault:
        self.root.mkdir(parents=True, exist_ok=True)
        self.password_file.write_bytes(PASSPHRASE + b"\n")
        self.ok("init", *CHEAP_KDF_ARGS)
        return self

    def backend(self) -> LocalBackend:
        return LocalBackend(LocalStore(self.repo), str(self.repo))

    def pack_files(self) -> list[Path]:
        return sorted(p for p in (self.repo / "packs").rglob("*") if _is_object(p))

    def packs_size(self) -> int:
        return sum(p.stat().st_size for p in self.pack_files())


def _is_object(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".")


def assert_one_line_error(result: Result, exit_code: int, *needles: str) -> None:
    """The CLI failed with `exit_code`, one line on stderr, no traceback, mentioning `needles`."""
    assert result.rc == exit_code, f"exit {result.rc}, wanted {exit_code}: {result.err}"
    assert "Traceback" not in result.err
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) >= 1
    assert lines[-1].startswith("dicomvault: "), result.err
    assert all(line.startswith(("dicomvault: ", "error: ")) for line in lines), result.err
    for needle in needles:
        assert needle in result.err, f"{needle!r} not in {result.err!r}"


# trees


def tree_state(root: Path) -> dict[str, tuple[Any, ...]]:
    """Everything a bit-exact restore must reproduce, keyed by path relative to `root`."""
    state: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames]:
            path = Path(dirpath) / name if name != "." else Path(dirpath)
            rel = str(path.relative_to(root))
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                state[rel] = ("symlink", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                state[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            else:
                state[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, file_digest(path))
    return state


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * MiB):
            h.update(block)
    return h.hexdigest()


def restored(target: Path, source: Path) -> Path:
    """Where a restore into `target` puts `source` (snapshots record absolute paths)."""
    return target / str(source.resolve()).lstrip("/")


def write_pattern_file(path: Path, size: int, seed: int, random_every: int = 8) -> None:
    """Write `size` bytes in 1 MiB pieces: compressible text, with every `random_every`-th piece
    random, so it compresses like real mixed data. Every 4 KiB block of text names itself, so no
    two chunks are alike whatever the repository's chunker seed (text that repeated for a whole
    piece could be cut into identical chunks at a seed-dependent phase)."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        written, i = 0, 0
        while written < size:
            n = min(MiB, size - written)
            if random_every and i % random_every == random_every - 1:
                piece = rng.randbytes(n)
            else:
                piece = b"".join(_pattern_block(seed, i, j) for j in range(-(-n // 4096)))[:n]
            f.write(piece)
            written, i = written + n, i + 1


def _pattern_block(seed: int, piece: int, block: int) -> bytes:
    line = b"seed %08d piece %08d block %04d dicomvault pattern\n" % (seed, piece, block)
    return (line * (4096 // len(line) + 1))[:4096]


def pydicom_test_files() -> list[Path]:
    """pydicom's own test files that are on disk (not the ones it would download)."""
    local = Path(pydicom.data.__file__).parent
    files = [Path(p) for p in pydicom.data.get_testdata_files()]
    return sorted(p for p in files if p.is_file() and local in p.parents)


def pydicom_data_files() -> list[Path]:
    """The pydicom-data package's files (module `data_store`)."""
    import data_store

    folder = Path(data_store.__file__).parent / "data"
    return sorted(p for p in folder.iterdir() if p.is_file())


def ct_small() -> Path:
    return Path(pydicom.data.get_testdata_file("CT_small.dcm"))
