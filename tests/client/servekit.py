"""Running `dicomvault dicom-serve` in tests: a backed-up study, the server as a subprocess (the
CLI as a user runs it), and dcmtk's clients. Nothing here is used by production code."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.dicom_study import build_study, free_port, stop
from tests.helpers import Vault

WEB_TOKEN = "s3cret-viewer-token"
DCMTK = Path("/usr/bin")  # dcmtk's tools; `findscu` on PATH may be pynetdicom's own script


def back_up(
    root: Path, build: Callable[[Path], list[Path]] = build_study
) -> tuple[Vault, list[Path]]:
    """A new vault in root/vault holding one backup of the study `build` writes into root/study;
    returns the vault and the study's files."""
    paths = build(root / "study")
    vault = Vault(root / "vault").init()
    vault.json("backup", str(root / "study"))
    return vault, paths


@dataclass
class Served:
    proc: subprocess.Popen[str]
    ready: dict[str, Any]
    state: Path
    stderr: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.ready["dimse_port"])

    @property
    def web(self) -> str:
        return f"http://127.0.0.1:{self.ready['web_port']}/dicomweb"

    def audit(self) -> list[dict[str, Any]]:
        path = self.state / "audit.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

    def await_audit(self, action: str, timeout: float = 30) -> dict[str, Any]:
        """The newest record of `action`, waiting for one written after the client returned
        (a prefetch, a rejected association)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.audit() if r["action"] == action]
            if found or time.monotonic() > deadline:
                assert found, f"no {action} record in the audit trail"
                return found[-1]
            time.sleep(0.05)


@contextlib.contextmanager
def dicom_serve(
    vault: Vault, *args: str, web: bool = True, env: dict[str, str] | None = None
) -> Iterator[Served]:
    state = vault.root / f"serve-{free_port()}"
    extra = ["--port", "0", "--state-dir", str(state), "--json"]
    if web:
        tokens = vault.root / "web-tokens"
        tokens.write_text(f"viewer {WEB_TOKEN}\n")
        extra += ["--web-port", "0", "--web-token-file", str(tokens)]
    proc = subprocess.Popen(
        vault.command("dicom-serve", *extra, *args), env=vault.env(**(env or {})), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    served = Served(proc, {}, state)
    assert proc.stderr is not None and proc.stdout is not None
    drain = threading.Thread(target=lambda: served.stderr.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
    drain.start()
    try:
        line = proc.stdout.readline()
        if not line:
            proc.wait(30)
            drain.join(5)
            raise AssertionError(f"dicom-serve exited {proc.returncode}: {''.join(served.stderr)}")
        served.ready = json.loads(line)
        yield served
    finally:
        stop(proc)


@contextlib.contextmanager
def serving_testdata(
    root: Path, sources: dict[str, str], root_uid: str
) -> Iterator[tuple[Served, dict[str, Path]]]:
    """dicom-serve (DICOMweb only) over one backup of pydicom's test files `sources` (our name →
    file name), each saved with its own SOP Instance UID `root_uid.N` (N from 1, in order);
    yields the server and our name → the saved file."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    def build(folder: Path) -> list[Path]:
        folder.mkdir(parents=True)
        for n, (name, source) in enumerate(sources.items()):
            ds = dcmread(get_testdata_file(source))
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{root_uid}.{n + 1}"
            ds.save_as(folder / f"{name}.dcm")
        return [folder / f"{name}.dcm" for name in sources]

    vault, paths = back_up(root, build)
    with dicom_serve(vault, "--no-dimse") as served:
        yield served, dict(zip(sources, paths, strict=True))


def dcmtk(tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    path = DCMTK / tool
    assert path.is_file(), f"dcmtk's {tool} is missing: `make setup-system` installs dcmtk"
    return subprocess.run([str(path), *args], capture_output=True, text=True, timeout=timeout)


@contextlib.contextmanager
def raw_store_scp(folder: Path, ae_title: str = "RAWSCP") -> Iterator[int]:
    """A pynetdicom storage SCP that keeps each received dataset's bytes exactly as they came
    off the wire (dcmtk's receivers re-encode what they write). Yields its port."""
    from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt

    folder.mkdir(parents=True, exist_ok=True)
    before = _config.STORE_RECV_CHUNKED_DATASET
    _config.STORE_RECV_CHUNKED_DATASET = True

    def on_store(event: Any) -> int:
        raw = Path(event.dataset_path).read_bytes()
        (folder / f"{event.request.AffectedSOPInstanceUID}.dcm").write_bytes(raw)
        return 0

    ae = AE(ae_title=ae_title)
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(str(cx.abstract_syntax), ALL_TRANSFER_SYNTAXES)
    port = free_port()
    handlers: list[Any] = [(evt.EVT_C_STORE, on_store)]
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
    assert server is not None
    try:
        yield port
    finally:
        server.shutdown()
        _config.STORE_RECV_CHUNKED_DATASET = before
