"""The practice's audit trail in the repository: restore, restore --study, find and drills each
leave a sealed event; `dicomvault audit` shows who opened which study when; without the key the
events say nothing (no UID, no user in the stored bytes)."""

from __future__ import annotations

import getpass
import socket
from pathlib import Path

from tests.conftest import build_dicom_tree
from tests.helpers import Vault, assert_one_line_error


def test_restores_finds_and_drills_are_audited_and_sealed(tmp_path: Path) -> None:
    vault = Vault(tmp_path / "vault").init()
    tree = build_dicom_tree(tmp_path / "practice")
    vault.ok("backup", str(tree))
    studies = vault.json("find")["studies"]
    uid = studies[0]["StudyInstanceUID"]
    vault.ok("restore", "--study", uid, "--target", str(tmp_path / "one"))
    vault.ok("restore", "latest", "--target", str(tmp_path / "all"))
    vault.ok("drill", "--sample-percent", "5", "--no-source")

    events = vault.json("audit")["events"]
    actions = [e["action"] for e in events]
    assert sorted(actions) == ["drill", "find", "restore", "restore-study"]
    study = next(e for e in events if e["action"] == "restore-study")
    assert study["studies"] == [uid] and study["snapshot"]
    assert study["user"] == getpass.getuser() and study["host"] == socket.gethostname()
    found = next(e for e in events if e["action"] == "find")
    assert set(found["studies"]) == {s["StudyInstanceUID"] for s in studies}
    only = vault.json("audit", "--study", uid)["events"]
    assert sorted(e["action"] for e in only) == ["find", "restore-study"]
    assert vault.json("audit", "--since", "2999-01-01")["events"] == []

    # What the provider holds: opaque bytes, one object per event.
    stored = sorted((vault.repo / "events").iterdir())
    assert len(stored) == len(events)
    for path in stored:
        data = path.read_bytes()
        assert uid.encode() not in data and getpass.getuser().encode() not in data
    vault.password_file.write_text("not the passphrase\n")
    assert_one_line_error(vault.run("audit"), 12)


def test_a_damaged_event_is_skipped_with_a_warning(tmp_path: Path) -> None:
    vault = Vault(tmp_path / "vault").init()
    (tmp_path / "f").write_text("x\n")
    vault.ok("backup", str(tmp_path / "f"))
    vault.ok("restore", "latest", "--target", str(tmp_path / "out"))
    vault.ok("restore", "latest", "--target", str(tmp_path / "out2"))
    first = sorted((vault.repo / "events").iterdir())[0]
    first.write_bytes(first.read_bytes()[:-1] + bytes([first.read_bytes()[-1] ^ 1]))
    result = vault.ok("audit", "--json")
    assert len(result.doc["events"]) == 1
    assert f"skipped audit event {first.name}" in result.err
