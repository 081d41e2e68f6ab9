"""`benchmarks.serverkit`: the one `dicomvault-server` process kit of the tests and benchmarks,
run for real (a `python -m server serve` child on loopback, real LMDB in tmp_path)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from benchmarks.serverkit import REPO, ServerProcess
from server.config import load_config


def test_a_killed_server_restarts_on_its_port_with_its_data(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data")
    tokens = server.create_repo()
    assert set(tokens) == {"backup", "restore", "admin"}
    with server:
        port, first = server.port, server.pid
        assert server.get_json(f"/v1/repos/{REPO}/heartbeat", tokens["admin"]) is not None
        assert server.metric("dicomvault_packs_stored_total") == 0
        server.kill()
        assert not server.alive()
        with pytest.raises(AssertionError, match="exited; its log ends"):
            server.healthy()
        server.start()
        assert server.port == port and server.pid != first and server.healthy()
        assert server.get_json(f"/v1/repos/{REPO}/heartbeat", tokens["admin"]) is not None
        server.restart()
        assert server.healthy()
    assert not server.alive() and server.log.exists()


def test_start_fails_with_the_log_tail_when_serve_exits(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        server = ServerProcess(tmp_path / "data", port=busy.getsockname()[1])
        with pytest.raises(AssertionError, match=r"cannot listen on 127\.0\.0\.1"):
            server.start()


def test_offline_commands_use_the_same_config_and_say_why_they_failed(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "site-a", name="site-a")
    peer = {"name": "site-b", "url": "http://127.0.0.1:1", "token": "t0", "rate_limit": "1MiB/s"}
    path = server.write_config([peer], site_name="site-a", replication_poll_interval=0.5)
    config = load_config(path)
    assert (config.data_dir, config.site_name, config.replication_poll_interval) == (
        tmp_path / "site-a", "site-a", 0.5,
    )  # fmt: skip
    assert [(p.name, p.url, p.token) for p in config.peers] == [("site-b", peer["url"], "t0")]
    assert server.cli("repo", "create", REPO).returncode == 0
    with pytest.raises(AssertionError, match=r"exited 11: .*already exists"):
        server.create_repo()
    assert server.pack_files() == []


def test_the_server_runs_from_the_source_tree_it_is_given(tmp_path: Path) -> None:
    """A baseline comparison (benchmarks.ingest) runs another checkout's `server`."""
    fake = tmp_path / "other-checkout" / "server"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "__main__.py").write_text(
        "import sys\nsys.exit(f'the other server was asked {sys.argv[1]}')\n"
    )
    elsewhere = ServerProcess(tmp_path / "data", tree=fake.parent)
    done = elsewhere.cli("reindex")
    assert (done.returncode, done.stderr) == (1, "the other server was asked reindex\n")
    with pytest.raises(AssertionError, match="the other server was asked serve"):
        elsewhere.start()
