"""Test glue for the kill loops: the seed, the tree, and the repositories they run against.

The loops themselves live in `benchmarks.killcore` (so `python -m benchmarks.kill_loops` runs the
same cycles at larger counts); this module hands them the suite's own helpers: `Vault` for the
CLI, `Site` for a `dicomvault-server serve` process, `tree_state` for bit-exactness.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from benchmarks.killcore import SEED_ENV, SMALL_DICOM, History, KillLoop, build_tree
from tests.client.test_remote import Agent
from tests.helpers import (
    CHEAP_KDF_ARGS,
    Vault,
    pydicom_data_files,
    pydicom_test_files,
    tree_state,
)
from tests.server.test_replication_process import REPO, Site

KILLS = int(os.environ.get("DICOMVAULT_KILLS", "20"))  # per loop; CI runs the default


def kill_seed() -> int:
    seed = int(os.environ.get(SEED_ENV) or random.SystemRandom().randrange(2**32))
    print(f"kill loop seed {seed} ({SEED_ENV}={seed} replays it)")
    return seed


def dicom_files() -> list[Path]:
    """Real DICOM: pydicom's test files and the smaller pydicom-data files."""
    data = [p for p in pydicom_data_files() if p.stat().st_size <= SMALL_DICOM]
    return pydicom_test_files() + data


def make_loop(root: Path, cli: Vault, seed: int) -> KillLoop:
    tree = build_tree(root, dicom_files(), random_files=2, seed=seed)
    history = History(cli, tree, tree_state, root / "restores")
    return KillLoop(history, random.Random(seed))


def remote_vault(root: Path, site: Site, token: str) -> Agent:
    """A practice machine backing up to `site`'s repository (created with `init` here)."""
    agent = Agent(root, url=f"{site.url}/{REPO}", token=token).create()
    agent.ok("init", *CHEAP_KDF_ARGS)
    return agent
