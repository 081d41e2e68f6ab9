"""`dicomvault forget` and `undelete` through the CLI: a local repository (its trash folder),
and a real chunk-server process where only an admin token may schedule a deletion."""

from __future__ import annotations

import shutil
from pathlib import Path

from benchmarks.serverkit import REPO, ServerProcess
from tests.client.test_remote import agent, server  # noqa: F401 (fixture)
from tests.helpers import (
    CHEAP_KDF_ARGS,
    Vault,
    assert_one_line_error,
    ct_small,
    pydicom_test_files,
    tree_state,
)


def _backups(v: Vault, tree: Path, tags: list[str]) -> list[str]:
    ids = []
    tree.mkdir(exist_ok=True)
    for i, tag in enumerate(tags):
        (tree / f"f{i}.txt").write_text(f"version {i}\n" * 100)
        ids.append(v.json("backup", str(tree), "--tag", tag)["snapshot"])
    return ids


def _listed(v: Vault) -> list[str]:
    return [s["id"] for s in v.json("snapshots")["snapshots"]]


def test_forget_by_policy_dry_run_then_for_real_then_undelete(vault: Vault, tmp_path: Path) -> None:

    ids = _backups(vault, tmp_path / "tree", ["a", "keepme", "b", "c", "d"])
    before = tree_state(vault.repo)
    dry = vault.json("forget", "--keep-last", "2", "--keep-tag", "keepme", "--dry-run")
    assert dry["dry_run"] and dry["scheduled"] == []
    assert {r["id"] for r in dry["kept"]} == {ids[1], ids[3], ids[4]}
    assert {r["id"] for r in dry["removed"]} == {ids[0], ids[2]}
    reasons = {r["id"]: r["reasons"] for r in dry["kept"] + dry["removed"]}
    assert reasons[ids[4]] == ["last snapshot"] and reasons[ids[1]] == ["has tags keepme"]
    assert reasons[ids[0]] == ["matched no keep rule"]
    assert tree_state(vault.repo) == before  # a dry run changes nothing

    done = vault.json("forget", "--keep-last", "2", "--keep-tag", "keepme")
    assert sorted(d["id"] for d in done["scheduled"]) == sorted([ids[0], ids[2]])
    assert sorted(_listed(vault)) == sorted([ids[1], ids[3], ids[4]])
    pending = vault.json("undelete")["pending"]
    assert sorted(d["id"] for d in pending) == sorted([ids[0], ids[2]])
    vault.ok("undelete", ids[0][:8])
    assert sorted(_listed(vault)) == sorted([ids[0], ids[1], ids[3], ids[4]])
    vault.ok("undelete", "--all")
    assert sorted(_listed(vault)) == sorted(ids)
    vault.ok("check", "--read-data")


def test_forget_by_id_and_bad_input(vault: Vault, tmp_path: Path) -> None:

    ids = _backups(vault, tmp_path / "tree", ["a", "b"])
    before = tree_state(vault.repo)
    assert_one_line_error(vault.run("forget", ids[0], "ffffffff"), 16, "ffffffff")
    assert_one_line_error(vault.run("forget", "--keep-within", "7w"), 2, "keep-within")
    assert_one_line_error(vault.run("forget"), 2, "no policy")
    assert_one_line_error(vault.run("forget", ids[0], "--keep-last", "1"), 2, "not both")
    assert_one_line_error(vault.run("forget", "--keep-last", "1", "--group-by", "x"), 2, "'x'")
    assert_one_line_error(vault.run("undelete", "abcdef"), 16, "abcdef")
    assert tree_state(vault.repo) == before
    out = vault.json("forget", ids[0][:10])
    assert [r["reasons"] for r in out["removed"]] == [["named on the command line"]]
    assert _listed(vault) == [ids[1]]


def test_only_an_admin_token_forgets_on_a_chunk_server(
    server: ServerProcess,  # noqa: F811
    tmp_path: Path,
) -> None:
    tokens = server.create_repo()
    a = agent(tmp_path / "pc1", f"{server.url}/{REPO}", tokens["backup"])
    a.ok("init", *CHEAP_KDF_ARGS)
    ids = _backups(a, tmp_path / "tree", ["a", "b"])
    assert_one_line_error(a.run("forget", "--keep-last", "1"), 15, "")
    assert_one_line_error(a.run("undelete", "--all"), 15, "")
    assert sorted(_listed(a)) == sorted(ids)
    admin = a.with_token(tokens["admin"])
    out = admin.json("forget", "--keep-last", "1")
    assert [d["id"] for d in out["scheduled"]] == [ids[0]]
    assert _listed(a) == [ids[1]]
    assert [d["id"] for d in a.json("undelete")["pending"]] == [ids[0]]
    admin.ok("undelete", "--all")
    assert sorted(_listed(a)) == sorted(ids)


def test_forget_with_a_retention_policy_keeps_instances_still_under_retention(
    vault: Vault, tmp_path: Path
) -> None:
    tree = tmp_path / "pacs"
    tree.mkdir()
    shutil.copy(ct_small(), tree / "ct.dcm")
    shutil.copy(next(p for p in pydicom_test_files() if p.name == "MR_small.dcm"), tree / "mr.dcm")
    ct_bytes = (tree / "ct.dcm").read_bytes()
    vault.ok("backup", str(tree))
    (tree / "ct.dcm").unlink()  # deleted from the PACS
    vault.ok("backup", str(tree))
    policy = tmp_path / "policy.toml"
    policy.write_text("[retention]\ndefault_years = 0\n[retention.modality]\nCT = 100\n")
    expired = tmp_path / "expired.toml"
    expired.write_text("[retention]\ndefault_years = 0\n")
    bad = tmp_path / "bad.toml"
    bad.write_text("[retention]\ndefault_years = 7\nfoo = 1\n")
    frozen = tree_state(vault.repo)
    assert_one_line_error(vault.run("forget", "--keep-last", "1", "--policy", str(bad)), 2,
                          "bad.toml", "retention.foo")  # fmt: skip
    dry = vault.json("forget", "--keep-last", "1", "--policy", str(expired), "--dry-run")
    assert dry["retention"]["instances"] == 0
    assert tree_state(vault.repo) == frozen

    out = vault.json("forget", "--keep-last", "1", "--policy", str(policy))
    kept_back = out["retention"]
    assert kept_back["instances"] == 1 and kept_back["bytes"] == len(ct_bytes)  # CT only: MR
    snaps = vault.json("snapshots")["snapshots"]  # is still in the kept snapshot
    (ret,) = [s for s in snaps if s["id"] == kept_back["snapshot"]]
    assert ret["tags"] == ["retention"] and "retention policy policy.toml" in ret["where"]
    studies = vault.json("find", "--modality", "CT")["studies"]
    assert [s["StudyInstanceUID"] for s in studies] == [ct_study_uid()]
    vault.ok("prune", "--max-unused", "0%")
    vault.ok("check", "--read-data")
    target = tmp_path / "restored"
    vault.ok("restore", "--study", ct_study_uid(), "--target", str(target))
    (restored_file,) = [p for p in target.rglob("*") if p.is_file()]
    assert restored_file.read_bytes() == ct_bytes
    again = vault.json("forget", "--keep-last", "1", "--policy", str(policy))
    assert again["retention"] is None or again["retention"]["instances"] == 0


def ct_study_uid() -> str:
    import pydicom

    return str(pydicom.dcmread(ct_small(), stop_before_pixels=True).StudyInstanceUID)
