"""Failures reach the user as one line on stderr and a specific exit code, never a traceback,
and never as silently wrong output."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import blake3
import pytest

from client.restore import RestoreIncomplete
from engine.errors import (
    CheckFailed,
    IntegrityError,
    NotFound,
    RepositoryExists,
    RepositoryNotFound,
    UsageError,
    WrongPassphrase,
)
from engine.pack import read_pack_info
from tests.helpers import (
    CHEAP_KDF_ARGS,
    MiB,
    Result,
    Vault,
    assert_one_line_error,
    ct_small,
    restored,
)


def make_backup(root: Path) -> tuple[Vault, Path]:
    vault = Vault(root / "vault").init()
    src = root / "src"
    src.mkdir()
    (src / "scan.bin").write_bytes(os.urandom(2 * MiB))
    (src / "notes.txt").write_text("note\n" * 1000)
    vault.ok("backup", str(src))
    assert len(vault.pack_files()) == 1
    return vault, src


@pytest.fixture
def backed_up(tmp_path: Path) -> tuple[Vault, Path]:
    """A repository with one snapshot, for tests that damage it."""
    return make_backup(tmp_path)


@pytest.fixture(scope="module")
def intact(tmp_path_factory: pytest.TempPathFactory) -> tuple[Vault, Path]:
    """A repository with one snapshot, shared by tests that only read it."""
    return make_backup(tmp_path_factory.mktemp("intact"))


def first_blob_offset(pack: Path) -> int:
    entry = read_pack_info(pack.read_bytes()).entries[0]
    return entry.offset + entry.length // 2


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))


COMMANDS = [
    ("snapshots",),
    ("check", "--read-data"),
    ("restore", "latest", "--target", "/nonexistent-target"),
    ("backup", "/etc/hostname"),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_wrong_passphrase_is_one_line_and_exit_12(
    intact: tuple[Vault, Path], tmp_path: Path, command: tuple[str, ...]
) -> None:
    vault, _ = intact
    wrong = tmp_path / "wrong"
    wrong.write_text("not the passphrase\n")
    result = vault.run(*command, DICOMVAULT_PASSWORD_FILE=str(wrong))
    assert_one_line_error(result, WrongPassphrase.exit_code, "Wrong passphrase")
    assert result.out == ""


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_missing_repository_is_one_line_and_exit_10(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    vault = Vault(tmp_path / "none")
    vault.root.mkdir()
    vault.password_file.write_text("pw\n")
    result = vault.run(*command)
    assert_one_line_error(result, RepositoryNotFound.exit_code, str(vault.repo), "dicomvault init")
    assert not vault.repo.exists()  # reading commands never create a repository


def test_init_over_an_existing_repository_is_exit_11(intact: tuple[Vault, Path]) -> None:
    vault, _ = intact
    assert_one_line_error(vault.run("init", *CHEAP_KDF_ARGS), RepositoryExists.exit_code)


def test_no_repository_given_is_a_usage_error(intact: tuple[Vault, Path]) -> None:
    vault, _ = intact
    result = vault.run("snapshots", DICOMVAULT_REPO="")
    assert_one_line_error(result, UsageError.exit_code, "no repository")


def test_unknown_snapshot_is_exit_16(intact: tuple[Vault, Path]) -> None:
    vault, _ = intact
    assert_one_line_error(vault.run("ls", "ffffffff"), NotFound.exit_code, "ffffffff")


def test_corrupted_pack_fails_restore_and_check_read_data_naming_the_pack(
    backed_up: tuple[Vault, Path], tmp_path: Path
) -> None:
    vault, src = backed_up
    (pack,) = vault.pack_files()
    flip_byte(pack, first_blob_offset(pack))
    result = vault.run("check", "--read-data")
    assert_one_line_error(result, CheckFailed.exit_code, pack.name)
    assert f"error: pack {pack.name}" in result.err
    out = tmp_path / "out"
    result = vault.run("restore", "latest", "--target", str(out))
    assert_one_file_failed(result, pack.name)
    assert_nothing_wrong_under_a_real_name(out, src)


def assert_one_file_failed(result: Result, pack: str) -> None:
    """A damaged blob fails its file alone: the others restore, and the CLI exits 20."""
    assert_one_line_error(result, RestoreIncomplete.exit_code, "1 entries failed")
    (line,) = [line for line in result.err.splitlines() if line.startswith("error: ")]
    assert f"pack {pack}: " in line and "authentication failed" in line, result.err


def assert_nothing_wrong_under_a_real_name(out: Path, src: Path) -> None:
    """A failed restore may have finished some files (files restore concurrently), but every
    file under its real name is bit-exact, the damaged one is absent, and no temp file is left."""
    present = [p for p in src.iterdir() if restored(out, p).exists()]
    assert len(present) < len(list(src.iterdir()))
    for p in present:
        assert restored(out, p).read_bytes() == p.read_bytes()
    assert not [p for p in out.rglob("*") if p.is_file() and p.name.startswith(".")]


def test_truncated_pack_fails_check_and_restore_naming_the_pack(
    backed_up: tuple[Vault, Path], tmp_path: Path
) -> None:
    vault, src = backed_up
    (pack,) = vault.pack_files()
    os.truncate(pack, pack.stat().st_size // 2)
    for args in (("check",), ("check", "--read-data")):
        result = vault.run(*args)
        assert_one_line_error(result, CheckFailed.exit_code, pack.name)
    result = vault.run("restore", "latest", "--target", str(tmp_path / "out"))
    assert_one_line_error(result, IntegrityError.exit_code, pack.name)
    assert_nothing_wrong_under_a_real_name(tmp_path / "out", src)


def test_truncated_trailer_is_found_by_a_structure_check(backed_up: tuple[Vault, Path]) -> None:
    vault, _ = backed_up
    (pack,) = vault.pack_files()
    os.truncate(pack, pack.stat().st_size - 10)
    result = vault.run("check")
    assert_one_line_error(result, CheckFailed.exit_code, pack.name)


def test_tampered_blob_in_a_well_named_pack_fails_aead_on_restore_and_check(
    backed_up: tuple[Vault, Path], tmp_path: Path
) -> None:
    """A server that rewrites a blob and renames the pack to match: only the AEAD tag catches it."""
    vault, src = backed_up
    (pack,) = vault.pack_files()
    data = bytearray(pack.read_bytes())
    data[first_blob_offset(pack)] ^= 0x01
    forged = blake3.blake3(bytes(data)).hexdigest()
    target = vault.repo / "packs" / forged[:2] / forged
    target.parent.mkdir(exist_ok=True)
    target.write_bytes(bytes(data))
    pack.unlink()
    vault.ok("repair-index")
    result = vault.run("check", "--read-data")
    assert_one_line_error(result, CheckFailed.exit_code, forged, "authentication failed")
    out = tmp_path / "out"
    result = vault.run("restore", "latest", "--target", str(out))
    assert_one_file_failed(result, forged)
    assert_nothing_wrong_under_a_real_name(out, src)


# clear messages for what used to be "internal error"


def test_a_non_utf8_passphrase_file_is_used_as_bytes(tmp_path: Path) -> None:
    vault = Vault(tmp_path / "latin1")
    vault.root.mkdir()
    vault.password_file.write_bytes("geheimes Paßwort\n".encode("latin-1"))
    vault.ok("init", *CHEAP_KDF_ARGS)
    assert vault.ok("snapshots").out.strip() == "no snapshots"


@pytest.mark.parametrize(
    ("memory", "passes"), [("0.008", "1"), ("8", "1"), ("64", "1"), ("4096000", "3")]
)
def test_init_refuses_kdf_below_the_safe_floor_outside_test_mode(
    tmp_path: Path, memory: str, passes: str
) -> None:
    vault = Vault(tmp_path / "weak")
    vault.root.mkdir()
    vault.password_file.write_text("pw\n")
    args = ("init", "--kdf-memory-mib", memory, "--kdf-iterations", passes)
    result = vault.run(*args, DICOMVAULT_TEST_CHEAP_KDF="")
    assert_one_line_error(result, UsageError.exit_code, "--kdf-memory-mib")
    assert not vault.repo.exists()


def test_a_tampered_key_object_says_it_may_be_damaged(backed_up: tuple[Vault, Path]) -> None:
    vault, _ = backed_up
    (key,) = (vault.repo / "keys").iterdir()
    key.write_bytes(key.read_bytes().replace(b'"iterations": 1', b'"iterations": 2'))
    result = vault.run("snapshots")
    assert_one_line_error(result, WrongPassphrase.exit_code, "Wrong passphrase", "damaged")


def test_the_cache_holds_no_patient_name_or_uid_after_a_backup(tmp_path: Path) -> None:
    vault = Vault(tmp_path / "vault").init()
    src = tmp_path / "Doe_Jane"  # exports are often named after the patient
    src.mkdir()
    shutil.copyfile(ct_small(), src / "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322.dcm")
    vault.ok("backup", str(src))
    vault.ok("backup", str(src))  # the second run reads the files cache back
    (data,) = vault.cache.rglob("index/data.mdb")
    raw = data.read_bytes()
    for secret in (b"CompressedSamples", b"1CT1", b"5962.1.2.1.2004", b"Doe_Jane"):
        assert secret not in raw, secret
    assert [e["dicom"] for e in vault.json("ls", "latest")["entries"] if "dicom" in e]


def test_a_damaged_chunk_id_in_a_manifest_is_traced_to_its_pack(tmp_path: Path) -> None:
    vault = Vault(tmp_path / "vault").init()
    src = tmp_path / "src"
    src.mkdir()
    (src / "scan.bin").write_bytes(os.urandom(12 * MiB))  # several chunks in one file
    vault.ok("backup", str(src))
    (pack,) = vault.pack_files()
    data = bytearray(pack.read_bytes())
    victim = read_pack_info(bytes(data)).entries[1].chunk_id  # a chunk of scan.bin, not the first
    data[data.rfind(bytes(victim))] ^= 0x40
    pack.write_bytes(bytes(data))
    shutil.rmtree(vault.cache)  # a fresh machine reads the damaged manifest
    result = vault.run("check")
    assert_one_line_error(result, CheckFailed.exit_code, victim.hex(), f"pack {pack.name}")
    result = vault.run("restore", "latest", "--target", str(tmp_path / "out"))
    # The file with the lost chunk fails alone (exit 20); its line names the chunk and says
    # how to find the pack.
    assert_one_line_error(result, RestoreIncomplete.exit_code, "1 entries failed")
    (line,) = [line for line in result.err.splitlines() if line.startswith("error: ")]
    assert victim.hex() in line and "dicomvault check" in line, result.err
