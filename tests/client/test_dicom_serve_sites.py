"""`dicom-serve` during a disaster: the first site is gone, or has lost packs, and every read
falls over to the next site; the study still arrives whole and bit-exact."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from benchmarks.dicom_study import STUDY_UID, free_port
from tests.client.servekit import back_up, dcmtk, dicom_serve, raw_store_scp
from tests.client.test_dicom_serve import by_sop
from tests.helpers import Vault


@pytest.fixture
def study(tmp_path: Path) -> tuple[Vault, list[Path]]:
    return back_up(tmp_path)


def move_study(port: int, dest: str) -> None:
    result = dcmtk("movescu", "-S", "-aet", "DVTEST", "-aec", "DICOMVAULT", "-aem", dest,
                   "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={STUDY_UID}",
                   "127.0.0.1", str(port))  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_a_primary_that_does_not_answer_is_passed_over(
    study: tuple[Vault, list[Path]], tmp_path: Path
) -> None:
    vault, paths = study
    dead = f"http://127.0.0.1:{free_port()}/practice"
    with raw_store_scp(tmp_path / "got") as port, dicom_serve(
        vault, "--site", str(vault.repo), "--allow", "DVTEST",
        "--move-dest", f"RAWSCP=127.0.0.1:{port}", web=False,
        env={"DICOMVAULT_REPO": dead, "DICOMVAULT_TOKEN": "t"},
    ) as served:  # fmt: skip
        move_study(served.port, "RAWSCP")
    assert by_sop(sorted((tmp_path / "got").iterdir())) == by_sop(paths)


def test_packs_lost_at_the_first_site_are_read_from_the_next(
    study: tuple[Vault, list[Path]], tmp_path: Path
) -> None:
    vault, paths = study
    peer = tmp_path / "peer-site"
    shutil.copytree(vault.repo, peer)
    for pack in vault.pack_files():  # the primary lost every pack, catalogue and data alike
        pack.unlink()
    with raw_store_scp(tmp_path / "got") as port, dicom_serve(
        vault, "--site", str(peer), "--allow", "DVTEST",
        "--move-dest", f"RAWSCP=127.0.0.1:{port}", web=False,
    ) as served:  # fmt: skip
        move_study(served.port, "RAWSCP")
        assert served.ready["snapshots"] == 1
    assert by_sop(sorted((tmp_path / "got").iterdir())) == by_sop(paths)
