"""Seeded kill loops: SIGKILL a `dicomvault backup`, a `dicomvault restore` or the chunk server at
a random moment, then prove that nothing committed is lost and that the next run finishes.

Owns the cycle logic (what is killed when, what must hold afterwards), the churn that gives every
cycle new data, and the comparison of a chunk server's index with its packs. It does not start
processes of its own kind: the caller hands in the `dicomvault` runner, the server process and
the tree-state function (the tests pass their own helpers, `benchmarks.kill_loops` its own), so
this module imports nothing from `tests`.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

MiB = 1024 * 1024
CHURN_RANDOM = 2 * MiB  # new incompressible bytes per cycle, in two files
SMALL_DICOM = 700_000  # DICOM files up to this size: ~12 MB from pydicom and pydicom-data
INDEX_MAP_SIZE = 256 * MiB
SEED_ENV = "DICOMVAULT_KILL_SEED"
UNREACHABLE = 14  # the CLI's exit code for a storage error, e.g. a server never reached


class Completed(Protocol):
    @property
    def rc(self) -> int: ...
    @property
    def out(self) -> str: ...
    @property
    def err(self) -> str: ...


class Cli(Protocol):
    """`dicomvault` bound to one repository and cache (tests.helpers.Vault fits)."""

    def run(self, *args: str) -> Completed: ...
    def popen(self, *args: str) -> subprocess.Popen[str]: ...


class ServerProc(Protocol):
    """`dicomvault-server serve` on a fixed data folder and port; `start` waits until healthy."""

    data: Path

    def start(self) -> Any: ...
    def kill(self) -> None: ...


TreeState = Callable[[Path], Any]


@dataclass
class Tally:
    """What the kills hit: `kills` counts SIGKILLs sent; `outcomes` what each one left."""

    kills: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)

    def add(self, outcome: str) -> None:
        self.kills += 1
        self.outcomes[outcome] += 1

    def line(self, name: str) -> str:
        parts = ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items()))
        return f"{name}: {self.kills} kills ({parts})"


@contextmanager
def seeded(seed: int, what: str) -> Iterator[None]:
    """Any failure inside says how to replay it."""
    try:
        yield
    except BaseException as e:
        e.add_note(f"kill loop {what!r} failed with seed {seed}: replay with {SEED_ENV}={seed}")
        raise


# --- processes -----------------------------------------------------------------------------------


def ok(cli: Cli, *args: str) -> Completed:
    result = cli.run(*args)
    assert result.rc == 0, f"dicomvault {' '.join(args)} exited {result.rc}: {result.err}"
    return result


def sigkill_after(proc: subprocess.Popen[str], delay: float) -> bool:
    """SIGKILL `proc` `delay` seconds from now; return whether it was still running then."""
    try:
        proc.wait(delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        return True
    proc.communicate(timeout=60)
    return False


def tcp_connected(pid: int) -> bool:
    """Whether process `pid` holds an established TCP connection (Linux /proc)."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with suppress(FileNotFoundError):  # closed since the listing
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        rows = [
            line.split()
            for table in ("tcp", "tcp6")
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        ]
    except (FileNotFoundError, ProcessLookupError):  # it has exited
        return False
    return any(row[3] == "01" and row[9] in inodes for row in rows)  # 01: ESTABLISHED


def timed(cli: Cli, *args: str) -> tuple[Completed, float]:
    start = time.monotonic()
    result = ok(cli, *args)
    return result, time.monotonic() - start


# --- data ----------------------------------------------------------------------------------------


def build_tree(root: Path, dicom: Sequence[Path], random_files: int, seed: int) -> Path:
    """Copies of `dicom` plus `random_files` seeded incompressible files of 3 MiB."""
    tree = root / "tree"
    for i, path in enumerate(dicom):
        folder = tree / "dicom" / f"s{i % 5}"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, folder / f"{i:03}-{path.name}")
    rng = random.Random(f"{seed}/tree")
    (tree / "random").mkdir()
    for i in range(random_files):
        (tree / "random" / f"r{i}.bin").write_bytes(rng.randbytes(3 * MiB))
    return tree


def churn(tree: Path, rng: random.Random) -> None:
    """New data for the next cycle: fresh random files and a DICOM copy with one byte changed."""
    folder = tree / "churn"
    folder.mkdir(exist_ok=True)
    for i in range(2):
        (folder / f"fresh-{i}.bin").write_bytes(rng.randbytes(CHURN_RANDOM // 2))
    dicom = sorted((tree / "dicom").rglob("*.dcm"))
    data = bytearray(rng.choice(dicom).read_bytes())
    if data:
        data[rng.randrange(len(data))] ^= 0xFF
    (folder / "edited.dcm").write_bytes(bytes(data))


# --- what must hold after a kill ----------------------------------------------------------------


@dataclass
class History:
    """Every snapshot this loop saw committed, with the tree state it must restore to."""

    cli: Cli
    tree: Path
    tree_state: TreeState
    work: Path
    states: dict[str, Any] = field(default_factory=dict)
    restores: int = 0

    def listing(self) -> list[str]:
        rows = json.loads(ok(self.cli, "snapshots", "--json").out)["snapshots"]
        return [row["id"] for row in rows]  # oldest first, as `latest` resolves

    def adopt(self, state: Any) -> str | None:
        """Record the snapshot a killed run committed, if it got that far; return the newest."""
        ids = self.listing()
        new = [sid for sid in ids if sid not in self.states]
        assert len(new) <= 1, f"one run committed {len(new)} snapshots"
        for sid in new:
            self.states[sid] = state
        assert set(ids) == set(self.states), "a committed snapshot disappeared"
        return ids[-1] if ids else None

    def record(self, summary: str, state: Any) -> str:
        """Record the snapshot that `backup --json` printed as `summary`."""
        doc = json.loads(summary)
        assert doc["errors"] == [], doc["errors"]
        sid: str = doc["snapshot"]
        self.states[sid] = state
        return sid

    def target(self) -> Path:
        self.restores += 1
        return self.work / f"restore-{self.restores}"

    def assert_restores(self, sid: str, target: Path | None = None) -> None:
        target = target or self.target()
        ok(self.cli, "restore", sid, "--target", str(target))
        got = self.tree_state(target / str(self.tree.resolve()).lstrip("/"))
        want = self.states[sid]
        diff = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
        assert not diff, f"restore of {sid[:8]} is not bit-exact: " + "; ".join(
            f"{k}: {want.get(k)} != {got.get(k)}" for k in diff[:3]
        )
        shutil.rmtree(target)

    def assert_clean(self) -> None:
        report = json.loads(ok(self.cli, "check", "--read-data", "--json").out)
        assert report["problems"] == [], report["problems"]


# --- the loops -----------------------------------------------------------------------------------


@dataclass
class KillLoop:
    """One repository, one tree, one seeded random stream; each cycle churns the tree first."""

    history: History
    rng: random.Random
    backup_s: float = 0.0  # the last uninterrupted backup's wall time
    restore_s: float = 0.0
    backups: Tally = field(default_factory=Tally)
    restores: Tally = field(default_factory=Tally)
    servers: Tally = field(default_factory=Tally)

    @property
    def cli(self) -> Cli:
        return self.history.cli

    def start(self) -> None:
        """The first backup, then one cycle's worth of churn backed up uninterrupted: its
        duration is what the first kill moment is drawn from."""
        for first in (True, False):
            if not first:
                churn(self.history.tree, self.rng)
            state = self.history.tree_state(self.history.tree)
            summary, self.backup_s = timed(self.cli, "backup", str(self.history.tree), "--json")
            self.history.record(summary.out, state)

    def backup_cycle(self) -> None:
        """Kill a backup; check and restore what is committed; the next backup completes."""
        tree = self.history.tree
        churn(tree, self.rng)
        state = self.history.tree_state(tree)
        proc = self.cli.popen("backup", str(tree), "--json")
        running = sigkill_after(proc, self.rng.random() * self.backup_s)
        before = len(self.history.states)
        latest = self.history.adopt(state)
        committed = len(self.history.states) > before
        self.backups.add(_backup_outcome(running, committed))
        self.history.assert_clean()
        if committed and latest is not None:  # otherwise `latest` was restored last cycle
            self.history.assert_restores(latest)
        summary, self.backup_s = timed(self.cli, "backup", str(tree), "--json")
        self.restore_cycle(self.history.record(summary.out, state))

    def restore_cycle(self, sid: str) -> None:
        """Kill a restore of `sid`; a second restore into the same folder is bit-exact."""
        target = self.history.target()
        args = ("restore", sid, "--target", str(target))
        if not self.restore_s:
            _, self.restore_s = timed(self.cli, *args)
            shutil.rmtree(target)
        proc = self.cli.popen(*args)
        running = sigkill_after(proc, self.rng.random() * self.restore_s)
        self.restores.add("killed mid-run" if running else "finished first")
        start = time.monotonic()
        self.history.assert_restores(sid, target)
        self.restore_s = time.monotonic() - start

    def server_cycle(self, server: ServerProc) -> None:
        """Kill the server under a backup; its index matches its packs; the backup completes."""
        tree = self.history.tree
        churn(tree, self.rng)
        state = self.history.tree_state(tree)
        proc = self.cli.popen("backup", str(tree), "--json")
        # Draw the kill from the client's first contact on: before it, a kill only meets a
        # starting interpreter, and that share would grow with the machine's load.
        while proc.poll() is None and not tcp_connected(proc.pid):
            time.sleep(0.005)
        start = time.monotonic()
        with suppress(subprocess.TimeoutExpired):
            proc.wait(self.rng.random() * self.backup_s)
        running = proc.poll() is None
        if not running:  # it ran whole: later draws follow how long a churned tree's backup takes
            self.backup_s = time.monotonic() - start
        server.kill()
        problems = index_problems(server.data)
        assert problems == [], f"index and packs differ after the kill: {problems}"
        time.sleep(self.rng.random() * 0.5)  # the client sees refused connections for a while
        server.start()
        out, err = proc.communicate(timeout=300)
        code = proc.returncode
        if code == UNREACHABLE and "connection refused" in err:
            # Killed before the client's first contact: that fails at once, by design (a
            # mistyped address must not retry for minutes); once established it is retried.
            running = False
            again = self.cli.popen("backup", str(tree), "--json")
            out, err = again.communicate(timeout=300)
            code = again.returncode
        assert code == 0, f"backup across a server kill exited {code}: {err}"
        self.servers.add("client mid-backup" if running else "client done or not yet connected")
        sid = self.history.record(out, state)
        problems = index_problems(server.data)
        assert problems == [], f"index and packs differ after the backup: {problems}"
        self.history.assert_clean()
        self.history.assert_restores(sid)


def _backup_outcome(running: bool, committed: bool) -> str:
    if not running:
        return "finished first"
    return "killed after commit" if committed else "killed before commit"


# --- the server's index against its packs --------------------------------------------------------


def index_problems(data: Path) -> list[str]:
    """Compare a (stopped or idle) server's index with one rebuilt from its repository folders.

    The index is a cache of the packs and commits (docs/design.md invariant 3), so every row the
    server would start from must be exactly what `reindex` derives from the files. It starts by
    finishing the intakes a kill interrupted (`complete_intakes`, as `serve` does), then serves.
    """
    from server.config import ServerConfig
    from server.index import ServerIndex
    from server.intake import complete_intakes
    from server.reindex import reindex
    from server.repos import open_repositories

    config = ServerConfig(data_dir=data)
    repos = open_repositories(config)
    with tempfile.TemporaryDirectory(prefix="reindexed-") as scratch:
        rebuilt = ServerIndex(Path(scratch), INDEX_MAP_SIZE)
        live = ServerIndex(config.index_path, INDEX_MAP_SIZE)
        try:
            asyncio.run(complete_intakes(repos, live))
            asyncio.run(reindex(repos, rebuilt))
            return [p for name in repos.names() for p in _diff(name, live, rebuilt)]
        finally:
            rebuilt.close()
            live.close()


def _diff(repo: str, live: Any, rebuilt: Any) -> list[str]:
    want, got = rebuilt.dump(repo), live.dump(repo)
    problems = []
    for table in want:
        extra = {k.hex()[:16] for k, _ in got[table]} - {k.hex()[:16] for k, _ in want[table]}
        absent = {k.hex()[:16] for k, _ in want[table]} - {k.hex()[:16] for k, _ in got[table]}
        if extra:
            problems.append(f"{repo}: {table} indexed but not stored: {sorted(extra)}")
        if absent:
            problems.append(f"{repo}: {table} stored but not indexed: {sorted(absent)}")
        if not extra and not absent and got[table] != want[table]:
            problems.append(f"{repo}: {table} rows differ from a reindex")
    return problems
