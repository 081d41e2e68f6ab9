"""One `dicomvault-server` process kit for the tests and the benchmarks.

Owns how a real `python -m server serve` is started on a loopback port (its data folder, an
optional config file with `[[peers]]` and other settings, an optional `--store s3://...`, its
environment and log file), how we wait for `/v1/health` (failing with the log's tail), how it
is killed, stopped and restarted on the same port, and the offline commands (`repo create`,
`peer-token create`, `reindex`, ...) run against the same data, config and store.

It must not know what a test or a benchmark does with the server: no repository contents, no
clients, no assertions about behaviour. Benchmarks may import it; it imports nothing from
`tests` (tests/test_layers.py).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self, TypeVar

ROOT = Path(__file__).resolve().parents[1]
REPO = "clinic"
START_TIMEOUT = 60.0
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 30.0) -> T:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def server_env(extra: Mapping[str, str] | None = None, tree: Path = ROOT) -> dict[str, str]:
    """This process's environment now, running `python -m server` of the source `tree`."""
    return {**os.environ, "PYTHONPATH": str(tree), **(extra or {})}


def server_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "server", *args]


def cli(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 120, tree: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    """`python -m server ARGS` of the source `tree` (default: this checkout) run to the end, its
    output captured (never raises on exit code)."""
    return subprocess.run(
        server_command(*args), cwd=tree, env=dict(env or server_env(tree=tree)),
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def _toml_value(value: Any) -> str:
    if isinstance(value, Path):
        value = str(value)
    return json.dumps(value)  # strings, numbers, booleans and lists read the same in TOML


def config_text(settings: Mapping[str, Any], peers: Iterable[Mapping[str, Any]] = ()) -> str:
    """A server TOML config: top-level `settings`, then one `[[peers]]` table per peer."""
    lines = [f"{key} = {_toml_value(value)}" for key, value in settings.items()]
    for peer in peers:
        lines.append("[[peers]]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in peer.items()]
    return "\n".join(lines) + "\n"


class ServerProcess:
    """`python -m server serve` on a fixed loopback port, which survives kills and restarts.

    `data` is the server's data folder; the log (stdout and stderr, appended across restarts)
    goes to `log`, by default DATA.log beside it. `config`, `store` and `tls` are passed to
    `serve` and (but `tls`) to every offline command of `cli`; `serve_args` to `serve` only.
    `tree` is the source tree run, e.g. a baseline checkout to compare with."""

    def __init__(
        self,
        data: Path,
        *,
        port: int | None = None,
        config: Path | None = None,
        store: str | None = None,
        env: Mapping[str, str] | None = None,
        log: Path | None = None,
        tls: tuple[Path, Path] | None = None,
        name: str = "",
        preexec: Callable[[], None] | None = None,
        serve_args: Sequence[str] = (),
        tree: Path = ROOT,
    ) -> None:
        self.data, self.config, self.store, self.tls = data, config, store, tls
        self.port = port or free_port()
        self.tree = tree  # the source tree whose `server` runs (default: this checkout)
        self.env = server_env(env, tree)
        self.log = log or data.parent / f"{data.name}.log"
        self.name = name or data.name
        self.preexec = preexec  # run in the child before `serve` starts, e.g. to set rlimits
        self.serve_args = list(serve_args)  # more `serve` options, e.g. connection limits
        self.proc: subprocess.Popen[bytes] | None = None

    # --- addresses and configuration -----------------------------------------------------------

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def repo_url(self, repo: str = REPO) -> str:
        """What a client's DICOMVAULT_REPO names for `repo` on this server."""
        return f"{self.url}/{repo}"

    def write_config(self, peers: Iterable[Mapping[str, Any]] = (), **settings: Any) -> Path:
        """Write DATA.toml (data_dir, listen, `settings`, `peers`) and use it from now on."""
        head = {"data_dir": self.data, "listen": f"127.0.0.1:{self.port}", **settings}
        self.config = self.config or self.data.parent / f"{self.data.name}.toml"
        self.config.write_text(config_text(head, peers))
        return self.config

    def _where(self) -> list[str]:
        args = ["--data", str(self.data)]
        args += ["--config", str(self.config)] if self.config else []
        return args + (["--store", self.store] if self.store else [])

    # --- offline commands ----------------------------------------------------------------------

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """`python -m server ARGS` on this server's data, config and store."""
        return cli(*args, *self._where(), env=self.env, timeout=timeout, tree=self.tree)

    def cli_json(self, *args: str) -> Any:
        """`cli(ARGS --json)`, which must exit 0; its parsed output."""
        done = self.cli(*args, "--json")
        said = f"server {' '.join(args)} exited {done.returncode}: {done.stderr}"
        assert done.returncode == 0, said
        return json.loads(done.stdout)

    def create_repo(self, name: str = REPO) -> dict[str, str]:
        """`repo create NAME`; its tokens by role (backup, restore, admin)."""
        tokens: dict[str, str] = self.cli_json("repo", "create", name)["tokens"]
        return tokens

    # --- the process ---------------------------------------------------------------------------

    def start(self) -> Self:
        """Start `serve` (again, after kill or stop: same data, same port) and wait for health."""
        args = ["serve", *self._where(), "--listen", f"127.0.0.1:{self.port}", *self.serve_args]
        if self.tls:
            args += ["--tls-cert", str(self.tls[0]), "--tls-key", str(self.tls[1])]
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                server_command(*args), cwd=self.tree, env=self.env, stdout=log, stderr=log,
                stdin=subprocess.DEVNULL, preexec_fn=self.preexec,
            )  # fmt: skip
        wait_for(f"{self.name}'s /v1/health", self.healthy, START_TIMEOUT)
        return self

    def healthy(self) -> bool:
        """Whether /v1/health answers 200; fails with the log's tail once the process is gone."""
        assert self.alive(), f"{self.name} exited; its log ends:\n{self.log_tail()}"
        context = ssl.create_default_context(cafile=str(self.tls[0])) if self.tls else None
        try:
            with urllib.request.urlopen(f"{self.url}/v1/health", timeout=2, context=context) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else "(no log)"

    def kill(self) -> None:
        """SIGKILL, as a power cut would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM and wait; SIGKILL if it has not exited within 10 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> Self:
        self.stop()
        return self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- reading it while it runs --------------------------------------------------------------

    def get_json(self, path: str, token: str, timeout: float = 10) -> Any:
        """GET PATH (e.g. /v1/repos/clinic/replication) with a bearer token; parsed JSON."""
        headers = {"Authorization": f"Bearer {token}"}
        req = urllib.request.Request(f"{self.url}{path}", headers=headers)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())

    def metric(self, name: str) -> float:
        """The first sample of metric NAME on /metrics."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith(name + " ") or line.startswith(name + "{"):
                    return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"no metric {name} on {self.name}")

    def pack_files(self, repo: str = REPO) -> list[Path]:
        """The pack files of `repo` in DATA (a local store), without hidden temporary files."""
        folder = self.data / "repos" / repo / "packs"
        found = folder.rglob("*") if folder.is_dir() else ()
        return sorted(p for p in found if p.is_file() and not p.name.startswith("."))
