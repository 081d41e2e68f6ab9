"""The recovery kit on paper: `key kit` writes a PDF, `pdftoppm` rasterises it as a scanner
would, `key import-kit` reads the QR codes back and sets up a machine that has nothing, and the
practice restores bit-exact from the peer site with the passphrase typed in. A damaged code and a
kit of another repository are refused with exit 22, nothing written."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from tests.conftest import build_dicom_tree
from tests.helpers import (
    CHEAP_KDF_ARGS,
    PASSPHRASE,
    Result,
    Vault,
    assert_one_line_error,
    restored,
    tree_state,
)
from tests.server.test_replication_process import REPO, Site, settled, wait_until
from tests.server.test_replication_process import sites as sites_fixture

sites = sites_fixture  # the real `dicomvault-server` processes of the replication tests


def fresh_machine(home: Path) -> dict[str, str]:
    """The environment of a machine with no configuration, no cache and no passphrase file."""
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DICOMVAULT_", "XDG_"))}
    return {**env, "HOME": str(home)}


def run(vault: Vault, env: dict[str, str], *args: str, typed: str = "") -> Result:
    proc = subprocess.run(
        vault.command(*args), env=env, input=typed, capture_output=True, text=True, timeout=600
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def rasterise(pdf: Path, dpi: int = 150) -> Path:
    """The kit as a scanner sees it: `pdftoppm` (poppler-utils, in the Makefile's APT_PACKAGES)."""
    subprocess.run(
        ["pdftoppm", "-r", str(dpi), "-png", str(pdf), str(pdf.with_suffix(""))], check=True
    )
    (page,) = pdf.parent.glob(f"{pdf.stem}-*.png")
    return page


@pytest.mark.slow
def test_kit_to_paper_to_a_fresh_machine_restores_from_the_peer(
    sites: Callable[..., Site], tmp_path: Path
) -> None:
    b = sites("site-b")
    a = sites("site-a", [b.peer_entry("site-a")])
    tokens = a.create_repo()
    b.start(), a.start()
    src = build_dicom_tree(tmp_path / "practice")
    vault = Vault(tmp_path / "vault")
    vault.root.mkdir()
    vault.password_file.write_bytes(PASSPHRASE + b"\n")
    at_a = {"DICOMVAULT_REPO": f"{a.url}/{REPO}", "DICOMVAULT_TOKEN": tokens["backup"]}
    vault.ok("init", *CHEAP_KDF_ARGS, **at_a)
    vault.ok("backup", str(src), **at_a)
    vault.ok("find", **{**at_a, "DICOMVAULT_TOKEN": tokens["restore"]})  # an audit event
    wait_until(lambda: settled(a, tokens["admin"]), what="replication to the peer")
    kit = tmp_path / "safe" / "kit.pdf"
    kit.parent.mkdir()
    made = vault.json(
        "key", "kit", "--out", str(kit), "--site", f"{b.url}/{REPO}",
        "--restore-token", tokens["restore"], **at_a,
    )  # fmt: skip
    assert made["sites"] == [f"{a.url}/{REPO}", f"{b.url}/{REPO}"]

    # The primary site's data folder and the practice's machine burn.
    a.kill()
    shutil.rmtree(a.data)
    shutil.rmtree(vault.root)
    page = rasterise(kit)
    env = fresh_machine(tmp_path / "new-pc")
    imported = run(vault, env, "key", "import-kit", str(page), "--json")
    assert imported.rc == 0, imported.err
    assert imported.doc["answering"] == [f"{b.url}/{REPO}"]
    out = tmp_path / "restored"
    done = run(vault, env, "restore", "latest", "--target", str(out), typed=PASSPHRASE.decode())
    assert done.rc == 0, done.err
    assert f"site {a.url}/{REPO} does not answer" in done.err  # failed over by itself
    assert tree_state(restored(out, src)) == tree_state(src)
    wrong = run(vault, env, "snapshots", typed="not the passphrase\n")
    assert_one_line_error(wrong, 12)
    # The find made at the primary reached the peer; the restore made at the peer is recorded.
    audit = run(vault, env, "audit", "--json", typed=PASSPHRASE.decode())
    assert [e["action"] for e in audit.doc["events"]] == ["find", "restore"], audit.err


def damage(page: Path) -> Path:
    """White out a band across the middle of the QR code, beyond its error correction."""
    with Image.open(page) as image:
        width, height = image.size
        draw = ImageDraw.Draw(image)
        draw.rectangle((0, int(height * 0.42), width, int(height * 0.50)), fill="white")
        out = page.with_name("damaged.png")
        image.save(out)
    return out


def local_kit(root: Path, *extra: str) -> tuple[Vault, Path]:
    vault = Vault(root / "vault").init()
    (root / "f.txt").write_text("x\n")
    vault.ok("backup", str(root / "f.txt"))
    kit = root / "kit.pdf"
    vault.ok("key", "kit", "--out", str(kit), *extra)
    return vault, kit


def test_a_damaged_code_and_a_kit_of_another_repository_change_nothing(tmp_path: Path) -> None:
    mine, my_kit = local_kit(tmp_path / "mine")
    other, other_kit = local_kit(
        tmp_path / "other", "--site", str(tmp_path / "mine" / "vault" / "repo")
    )
    env = fresh_machine(tmp_path / "pc")
    config = tmp_path / "pc" / ".config" / "dicomvault" / "config.toml"

    damaged = run(mine, env, "key", "import-kit", str(damage(rasterise(my_kit))))
    assert_one_line_error(damaged, 22, "QR code")
    assert not config.exists()

    # A kit whose sites hold another repository is not this practice's kit.
    foreign = run(mine, env, "key", "import-kit", str(other_kit))
    assert_one_line_error(foreign, 22, "another repository", "nothing changed")
    assert not config.exists()

    assert run(mine, env, "key", "import-kit", str(my_kit)).rc == 0
    before = config.read_bytes()
    replaced = run(mine, env, "key", "import-kit", str(rasterise(other_kit)))
    assert replaced.rc == 22 and config.read_bytes() == before

    # The kit's key object opens the repository even after its key was revoked there.
    mine.ok("key", "passwd", "--new-password-file", str(write(tmp_path / "new.pw", "new one")))
    snaps = run(mine, env, "snapshots", "--json", typed=PASSPHRASE.decode())
    assert snaps.rc == 0, snaps.err
    assert len(snaps.doc["snapshots"]) == 1
    assert other.run("snapshots").rc == 0


def write(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    return path


def test_import_kit_of_something_else(tmp_path: Path) -> None:
    vault = Vault(tmp_path / "v")
    env = fresh_machine(tmp_path / "pc")
    text = tmp_path / "notes.txt"
    text.write_text("not a kit\n")
    assert_one_line_error(run(vault, env, "key", "import-kit", str(text)), 22, "not an image")
    blank = tmp_path / "blank.png"
    Image.new("L", (400, 400), 255).save(blank)
    assert_one_line_error(run(vault, env, "key", "import-kit", str(blank)), 22, "QR code")
    assert_one_line_error(run(vault, env, "key", "import-kit", str(tmp_path / "none.pdf")), 2)


def test_a_configuration_never_opens_a_site_holding_another_repository(tmp_path: Path) -> None:
    vault, _ = local_kit(tmp_path / "r")
    env = fresh_machine(tmp_path / "pc")
    config = tmp_path / "pc" / ".config" / "dicomvault" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'repository = "{"0" * 32}"\n[[sites]]\nurl = "{vault.repo}"\n')
    result = run(vault, env, "snapshots", typed=PASSPHRASE.decode())
    assert_one_line_error(result, 22, "holds repository", "not " + "0" * 32)
