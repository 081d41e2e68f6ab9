"""`dicomvault key`: several passphrases per repository and SLIP-39 escrow of the master key,
through the real CLI on a real repository folder. Every refusal changes nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import Vault, assert_one_line_error

NEW = "a second passphrase, for the practice manager"


def backed_up(root: Path) -> tuple[Vault, Path]:
    vault = Vault(root / "vault").init()
    src = root / "src"
    src.mkdir()
    (src / "scan.bin").write_bytes(os.urandom(300_000))
    vault.ok("backup", str(src))
    return vault, src


def keys_dir(vault: Vault) -> list[str]:
    return sorted(p.name for p in (vault.repo / "keys").iterdir())


def password_file(root: Path, text: str) -> str:
    path = root / f"pw-{len(list(root.glob('pw-*')))}"
    path.write_text(text + "\n")
    return str(path)


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Vault, Path]:
    return backed_up(tmp_path)


def test_add_list_and_open_with_either_passphrase(repo: tuple[Vault, Path], tmp_path: Path) -> None:
    vault, _ = repo
    first = keys_dir(vault)
    added = vault.json("key", "add", "--new-password-file", password_file(tmp_path, NEW))["added"]
    assert keys_dir(vault) == sorted([*first, added])
    rows = vault.json("key", "list")["keys"]
    assert {r["name"]: r["current"] for r in rows} == {first[0]: True, added: False}
    as_new = vault.json("key", "list", DICOMVAULT_PASSWORD_FILE=password_file(tmp_path, NEW))
    assert {r["name"] for r in as_new["keys"] if r["current"]} == {added}
    snaps = vault.json("snapshots", DICOMVAULT_PASSWORD_FILE=password_file(tmp_path, NEW))
    assert len(snaps["snapshots"]) == 1


def test_passwd_revokes_the_old_passphrase_without_touching_data(
    repo: tuple[Vault, Path], tmp_path: Path
) -> None:
    vault, src = repo
    packs = {p: p.read_bytes() for p in vault.pack_files()}
    snapshots = sorted((vault.repo / "snapshots").iterdir())
    vault.ok("key", "passwd", "--new-password-file", password_file(tmp_path, NEW))
    assert len(keys_dir(vault)) == 1
    assert_one_line_error(vault.run("snapshots"), 12, "Wrong passphrase")
    new = password_file(tmp_path, NEW)
    vault.ok("restore", "latest", "--target", str(tmp_path / "out"), DICOMVAULT_PASSWORD_FILE=new)
    assert (tmp_path / "out" / src.relative_to("/") / "scan.bin").read_bytes() == (
        src / "scan.bin"
    ).read_bytes()
    assert {p: p.read_bytes() for p in vault.pack_files()} == packs  # nothing re-encrypted
    assert sorted((vault.repo / "snapshots").iterdir()) == snapshots


def test_the_key_in_use_and_the_last_key_are_never_removed(
    repo: tuple[Vault, Path], tmp_path: Path
) -> None:
    vault, _ = repo
    (only,) = keys_dir(vault)
    assert_one_line_error(vault.run("key", "remove", only[:8]), 2, "nothing removed")
    assert keys_dir(vault) == [only]
    added = vault.json("key", "add", "--new-password-file", password_file(tmp_path, NEW))["added"]
    # With the new passphrase the old key may go; then the new one is the last and stays.
    new = password_file(tmp_path, NEW)
    vault.ok("key", "remove", only, DICOMVAULT_PASSWORD_FILE=new)
    assert keys_dir(vault) == [added]
    assert_one_line_error(vault.run("key", "remove", added, DICOMVAULT_PASSWORD_FILE=new), 2)
    assert_one_line_error(vault.run("key", "remove", "ffff", DICOMVAULT_PASSWORD_FILE=new), 16)
    assert keys_dir(vault) == [added]


def test_split_and_recover_from_any_three_of_five(repo: tuple[Vault, Path], tmp_path: Path) -> None:
    vault, src = repo
    doc = vault.json("key", "split", "--shares", "5", "--threshold", "3")
    shares = doc["shares"]
    assert len(shares) == 5 and all(len(s.split()) == 33 for s in shares)
    vault.password_file.write_text("forgotten by everyone\n")  # the passphrase is lost
    assert_one_line_error(vault.run("snapshots"), 12)
    shares_file = tmp_path / "shares"
    shares_file.write_text("\n".join([shares[4], shares[0], shares[2]]) + "\n")
    new = password_file(tmp_path, NEW)
    vault.ok("key", "recover", "--shares-file", str(shares_file), "--new-password-file", new)
    assert len(keys_dir(vault)) == 2
    vault.ok("restore", "latest", "--target", str(tmp_path / "out"), DICOMVAULT_PASSWORD_FILE=new)
    assert (tmp_path / "out" / src.relative_to("/") / "scan.bin").exists()


def test_too_few_a_mistyped_or_a_foreign_share_change_nothing(
    repo: tuple[Vault, Path], tmp_path: Path
) -> None:
    vault, _ = repo
    shares = vault.json("key", "split", "--shares", "3", "--threshold", "2")["shares"]
    other, _ = backed_up(tmp_path / "other")
    foreign = other.json("key", "split", "--shares", "3", "--threshold", "2")["shares"]
    words = shares[1].split()
    words[5] = "academic" if words[5] != "academic" else "acid"
    before = keys_dir(vault)
    new = password_file(tmp_path, NEW)
    cases = {
        "too few": [shares[0]],
        "mistyped": [shares[0], " ".join(words)],
        "mixed sets": [shares[0], foreign[1]],
        "another repository": foreign[:2],
    }
    for case, given in cases.items():
        path = tmp_path / f"shares-{case}"
        path.write_text("\n".join(given) + "\n")
        result = vault.run("key", "recover", "--shares-file", str(path), "--new-password-file", new)
        assert_one_line_error(result, 21, "nothing changed" if case == "another repository" else "")
        assert keys_dir(vault) == before, case


def test_recover_reads_shares_and_passphrase_from_stdin(
    repo: tuple[Vault, Path], tmp_path: Path
) -> None:
    import subprocess

    vault, _ = repo
    shares = vault.json("key", "split", "--shares", "2", "--threshold", "2")["shares"]
    typed = "\n".join([*shares, "", NEW]) + "\n"
    proc = subprocess.run(
        vault.command("key", "recover"), env=vault.env(), input=typed, text=True,
        capture_output=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    vault.ok("snapshots", DICOMVAULT_PASSWORD_FILE=password_file(tmp_path, NEW))


def test_split_refuses_bad_counts(repo: tuple[Vault, Path]) -> None:
    vault, _ = repo
    for shares, threshold in [("3", "4"), ("17", "2"), ("3", "1"), ("2", "0")]:
        result = vault.run("key", "split", "--shares", shares, "--threshold", threshold)
        assert_one_line_error(result, 2)


@pytest.mark.slow
def test_on_a_chunk_server_keys_need_the_admin_token_and_removal_is_quarantine(
    tmp_path: Path,
) -> None:
    from tests.server.test_replication_process import REPO, Site

    site = Site(tmp_path, "site-a")
    tokens = site.create_repo()
    site.start()
    try:
        vault = Vault(tmp_path / "vault")
        vault.root.mkdir()
        vault.password_file.write_text("first passphrase\n")
        url = f"{site.url}/{REPO}"
        as_backup = {"DICOMVAULT_REPO": url, "DICOMVAULT_TOKEN": tokens["backup"]}
        as_admin = {"DICOMVAULT_REPO": url, "DICOMVAULT_TOKEN": tokens["admin"]}
        vault.ok("init", "--kdf-memory-mib", "0.0078125", "--kdf-iterations", "1", **as_backup)
        new = password_file(tmp_path, NEW)
        refused = vault.run("key", "add", "--new-password-file", new, **as_backup)
        assert_one_line_error(refused, 15, "admin")
        (first,) = [r["name"] for r in vault.json("key", "list", **as_backup)["keys"]]
        vault.ok("key", "add", "--new-password-file", new, **as_admin)
        vault.ok("key", "remove", first, DICOMVAULT_PASSWORD_FILE=new, **as_admin)
        assert [r["current"] for r in vault.json("key", "list", **as_backup,
                DICOMVAULT_PASSWORD_FILE=new)["keys"]] == [True]  # fmt: skip
        assert_one_line_error(vault.run("snapshots", **as_backup), 12)  # the old one is gone
        kept = list((site.data / "quarantine").rglob("*"))
        assert any(first in p.name for p in kept), kept  # kept aside, not deleted
    finally:
        site.stop()
