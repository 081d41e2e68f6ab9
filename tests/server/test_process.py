"""The server as an operator runs it: `python -m server` in a subprocess, killed mid-upload."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.serverkit import ServerProcess, cli, free_port
from engine.errors import UsageError
from engine.remote import RemoteBackend
from tests.server.conftest import make_pack


@pytest.fixture
def data(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "data"


def test_repo_create_prints_tokens_and_refuses_duplicates(data: Path) -> None:
    out = cli("repo", "create", "clinic", "--data", str(data), "--json")
    assert out.returncode == 0, out.stderr
    tokens = json.loads(out.stdout)["tokens"]
    assert set(tokens) == {"backup", "restore", "admin"}
    again = cli("repo", "create", "clinic", "--data", str(data))
    assert again.returncode == 11  # RepositoryExists.exit_code
    assert again.stderr.count("\n") == 1 and "Traceback" not in again.stderr
    bad = cli("repo", "create", "../x", "--data", str(data))
    assert bad.returncode != 0 and "invalid repository name" in bad.stderr
    assert cli("reindex", "--data", str(data), "--json").returncode == 0


def _send_partial_upload(
    url: str, token: str, pack_id: str, data: bytes, sent: int
) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = (
        f"PUT /v1/repos/clinic/packs/{pack_id} HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    sock.sendall(head.encode())
    for i in range(0, sent, 256 * 1024):  # slowly, like a thin uplink
        sock.sendall(data[i : i + 256 * 1024])
        time.sleep(0.01)
    return sock


def _wait_for_temp_file(incoming: Path, at_least: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        sizes = [p.stat().st_size for p in incoming.iterdir()]
        if sizes and max(sizes) >= at_least:
            return
        time.sleep(0.05)
    raise AssertionError("upload never reached the temp file")


async def test_sigkill_mid_upload_exposes_no_partial_pack(data: Path) -> None:
    tokens = json.loads(cli("repo", "create", "clinic", "--data", str(data), "--json").stdout)
    token = tokens["tokens"]["backup"]
    repo = data / "repos" / "clinic"
    pack_id, pack, ids = make_pack(chunks=16, size=1024 * 1024)  # a full 16 MiB pack
    port = free_port()

    server = ServerProcess(data, port=port).start()
    try:
        sock = _send_partial_upload(server.url, token, pack_id.hex(), pack, 6 * 1024 * 1024)
        _wait_for_temp_file(repo / ".incoming", 1024 * 1024)
        server.kill()
        sock.close()
    finally:
        server.stop()
    assert not list(repo.glob("packs/**/*[0-9a-f]"))  # nothing under a real name
    assert list((repo / ".incoming").iterdir())  # the partial upload is only a temp file

    server = ServerProcess(data, port=port).start()
    backend = RemoteBackend(f"{server.url}/clinic", token)
    try:
        assert not list((repo / ".incoming").iterdir())  # swept at start-up
        assert await backend.missing(ids) == set(ids)
        assert [p async for p in backend.list_packs()] == []
        await backend.put_pack(pack_id, pack)
        assert await backend.missing(ids) == set()
        assert await backend.get_pack_range(pack_id, 1000, 10) == pack[1000:1010]
    finally:
        await backend.close()
        server.stop()


@pytest.mark.parametrize(
    "command",
    [
        ["alerts"],
        ["reindex"],
        ["scrub"],
        ["repo", "promote", "clinic"],
        ["repo", "quarantine", "clinic", "key", "k1"],
    ],
    ids=" ".join,
)
def test_reading_a_mistyped_data_folder_is_a_usage_error_and_creates_nothing(
    tmp_path: Path, command: list[str]
) -> None:
    typo = tmp_path / "dat"
    out = cli(*command, "--data", str(typo))
    assert out.returncode == 2 and "no server data folder" in out.stderr, out.stderr
    assert not typo.exists()


def test_repo_create_with_a_bad_name_says_which_names_are_allowed(data: Path) -> None:
    out = cli("repo", "create", "Practice_1", "--data", str(data))
    assert out.returncode == 2, out.stderr
    assert "invalid repository name 'Practice_1'" in out.stderr
    assert "a-z, 0-9, '_' and '-'" in out.stderr and out.stderr.count("\n") == 1


def test_minted_tokens_never_look_like_an_option(data: Path) -> None:
    tokens = json.loads(cli("repo", "create", "clinic", "--data", str(data), "--json").stdout)
    assert all(t.startswith("dv_") for t in tokens["tokens"].values())


def test_serve_on_a_port_in_use_says_so_in_one_line(data: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = cli("serve", "--data", str(data), "--listen", f"127.0.0.1:{port}")
    assert out.returncode == 2, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("dicomvault-server: cannot listen on 127.0.0.1:") and "in use" in last


def test_a_peer_given_on_the_command_line_is_labelled_with_its_site_name(data: Path) -> None:
    from server.cli import _config, build_parser

    argv = ["serve", "--data", str(data), "--peer", "site-b=https://b.example:8420",
            "--peer-token=-starts-with-a-dash", "--peer", "http://c.example:1",
            "--peer-token=t"]  # fmt: skip
    peers = _config(build_parser().parse_args(argv)).peers
    assert [(p.name, p.url, p.token) for p in peers] == [
        ("site-b", "https://b.example:8420", "-starts-with-a-dash"),
        ("c.example:1", "http://c.example:1", "t"),
    ]
    assert [p.ca_file for p in peers] == [None, None]


def test_each_peer_given_on_the_command_line_takes_its_own_ca_file(data: Path) -> None:
    from server.cli import _config, build_parser

    two = ["serve", "--data", str(data), "--peer", "site-b=https://b.example:8420",
           "--peer-token=t1", "--peer", "https://c.example:1", "--peer-token=t2"]  # fmt: skip
    args = build_parser().parse_args([*two, "--peer-ca", "b.pem", "--peer-ca", "c.pem"])
    assert [p.ca_file for p in _config(args).peers] == ["b.pem", "c.pem"]
    with pytest.raises(UsageError, match="one --peer-ca for each --peer"):
        _config(build_parser().parse_args([*two, "--peer-ca", "b.pem"]))


def test_serve_on_an_address_this_machine_does_not_have_says_so(data: Path) -> None:
    out = cli("serve", "--data", str(data), "--listen", "192.0.2.1:8420")  # TEST-NET-1
    assert out.returncode == 2, out.stderr
    assert "no such address" in out.stderr.strip().splitlines()[-1]
