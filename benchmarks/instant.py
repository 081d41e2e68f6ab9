"""Priors within seconds: time from a C-MOVE or a WADO-RS request to the first and the last
instance of a study served by `dicomvault dicom-serve`, against a full `restore --study` and the
link time of the study's stored bytes.

    python -m benchmarks.instant [--rates 10Mbit,100Mbit] [--mammo-size 1024] [--ct-images 300]
                                 [--ct-size 256] [--out instant.json] [--work DIR]

A real `dicomvault-server` holds the backup; `dicom-serve` and `restore` reach it through the
paced proxy of `benchmarks/linkproxy.py` (both directions at the rate). Two synthetic studies of
seeded 12-bit native images: a 4-image mammography prior (MG) and a CT series. For each rate and
study: C-MOVE to a pynetdicom storage SCP in this process, cold (a fresh dicom-serve, empty
cache) then warm (again, same process); the same for WADO-RS (a streamed multipart read); then
`restore --study` with an empty cache folder. "link" is the study's stored (sealed) bytes divided
by the rate: the physical limit. Prints a Markdown table; measures, asserts nothing.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import UID

from benchmarks.clikit import cli_env
from benchmarks.common import report_parser, run_and_report
from benchmarks.dicom_study import free_port
from benchmarks.link import REPO, chunk_server
from benchmarks.linkproxy import LinkProxy
from engine.rates import parse_rate

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "instant-benchmark"
UID_ROOT = "1.2.826.0.1.3680043.8.498.7782"
MAMMO_SOP = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray Image - For Presentation
CT_SOP = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
WEB_TOKEN = "instant-bench"
SCP_AET = "BENCHSCP"


def log(msg: str) -> None:
    print(f"[instant {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- the studies ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Study:
    name: str
    uid: str
    images: int
    file_bytes: int


def _pixels(rng: np.random.Generator, rows: int, cols: int) -> bytes:
    """12-bit tissue-like image: smooth shading, a few blobs and sensor noise (compresses ~2×)."""
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    image = 900 + 600 * np.sin(x / cols * 3.1) * np.cos(y / rows * 2.3)
    for _ in range(6):
        cy, cx, r = rng.uniform(0, rows), rng.uniform(0, cols), rng.uniform(rows / 20, rows / 6)
        image += 800 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r))
    image += rng.normal(0, 25, size=image.shape)
    return np.clip(image, 0, 4095).astype("<u2").tobytes()


def make_study(folder: Path, name: str, number: int, spec: tuple[str, str, int, int, int]) -> Study:
    modality, sop_class, count, rows, cols = spec
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(number)
    uid = f"{UID_ROOT}.{number}"
    total = 0
    for i in range(count):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]
        ds.PatientID, ds.PatientName = f"BENCH-{number}", f"BENCH^{name.upper()}"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = uid, f"{uid}.1"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(f"{uid}.1.{i + 1}")
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
        ds.Modality, ds.InstanceNumber = modality, i + 1
        ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = rows, cols, 16, 12, 11
        ds.PixelRepresentation, ds.SamplesPerPixel = 0, 1
        ds.PixelData = _pixels(rng, rows, cols)
        path = folder / f"{i + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        total += path.stat().st_size
    return Study(name, uid, count, total)


# --- the CLI, a DICOM receiver, a DICOMweb reader ------------------------------------------------


class Cli:
    def __init__(self, work: Path, repo_url: str, token: str) -> None:
        self.work = work
        self.env = cli_env(DICOMVAULT_REPO=repo_url, DICOMVAULT_TOKEN=token,
                           DICOMVAULT_PASSWORD=PASSWORD)  # fmt: skip

    def command(self, cache: Path, *args: str) -> tuple[list[str], dict[str, str]]:
        env = {**self.env, "DICOMVAULT_CACHE_DIR": str(cache)}
        return [sys.executable, "-m", "client", *args], env

    def run(self, cache: Path, *args: str) -> dict[str, Any]:
        cmd, env = self.command(cache, *args, "--json")
        proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"dicomvault {args[0]} exited {proc.returncode}: {proc.stderr}")
        doc: dict[str, Any] = json.loads(proc.stdout)
        return doc


@dataclass
class Serve:
    proc: subprocess.Popen[str]
    dimse_port: int
    web_port: int


@contextmanager
def dicom_serve(cli: Cli, cache: Path, scp_port: int) -> Iterator[Serve]:
    tokens = cli.work / "web-tokens"
    tokens.write_text(f"bench {WEB_TOKEN}\n")
    cmd, env = cli.command(
        cache, "dicom-serve", "--port", "0", "--web-port", "0", "--web-token-file", str(tokens),
        "--allow", "BENCH", "--move-dest", f"{SCP_AET}=127.0.0.1:{scp_port}",
        "--refresh-seconds", "3600", "--json",
    )  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)  # fmt: skip
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline() or "null")
        if ready is None:
            raise RuntimeError(f"dicom-serve exited {proc.wait()}")
        yield Serve(proc, ready["dimse_port"], ready["web_port"])
    finally:
        proc.terminate()
        proc.wait(30)


class Receiver:
    """A pynetdicom storage SCP that notes when each instance arrives."""

    def __init__(self) -> None:
        from pynetdicom import AE, evt

        self.arrivals: list[float] = []
        self.port = free_port()
        ae = AE(ae_title=SCP_AET)
        for sop in (MAMMO_SOP, CT_SOP):
            ae.add_supported_context(sop, EXPLICIT_VR_LE)
        handlers: list[Any] = [(evt.EVT_C_STORE, self._stored)]
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=handlers)

    def _stored(self, event: Any) -> int:
        self.arrivals.append(time.perf_counter())
        return 0

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()


def c_move(serve: Serve, receiver: Receiver, study: Study) -> tuple[float, float]:
    from pydicom.dataset import Dataset
    from pynetdicom import AE

    ae = AE(ae_title="BENCH")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.2.2.2")  # study root MOVE
    query = Dataset()
    query.QueryRetrieveLevel, query.StudyInstanceUID = "STUDY", study.uid
    receiver.arrivals.clear()
    assoc = ae.associate("127.0.0.1", serve.dimse_port, ae_title="DICOMVAULT")
    start = time.perf_counter()
    for _ in assoc.send_c_move(query, SCP_AET, "1.2.840.10008.5.1.4.1.2.2.2"):
        pass
    assoc.release()
    if len(receiver.arrivals) != study.images:
        raise RuntimeError(f"C-MOVE delivered {len(receiver.arrivals)} of {study.images}")
    return receiver.arrivals[0] - start, receiver.arrivals[-1] - start


def wado(serve: Serve, study: Study) -> tuple[float, float]:
    """Stream the multipart response; an instance is in once the next delimiter has arrived."""
    conn = http.client.HTTPConnection("127.0.0.1", serve.web_port, timeout=600)
    start = time.perf_counter()
    conn.request("GET", f"/dicomweb/studies/{study.uid}",
                 headers={"Authorization": f"Bearer {WEB_TOKEN}"})  # fmt: skip
    response = conn.getresponse()
    boundary = response.getheader("Content-Type", "").split("boundary=")[1].encode()
    delimiter, seen, tail, first = b"--" + boundary, 0, b"", None
    while block := response.read1(64 << 10):  # what has arrived, not a full 64 KiB
        seen += (tail + block).count(delimiter) - tail.count(delimiter)
        tail = (tail + block)[-len(delimiter) :]
        if first is None and seen >= 2:
            first = time.perf_counter() - start
    last = time.perf_counter() - start
    conn.close()
    if seen != study.images + 1:
        raise RuntimeError(f"WADO-RS delivered {seen - 1} of {study.images}")
    return first or last, last


# --- the runs ------------------------------------------------------------------------------------


def stored_bytes(cli: Cli, study: Study) -> int:
    """Sealed bytes of the study's chunks (each once): what must cross the link."""
    import asyncio

    from client.find import study_selector
    from client.repository import Repository
    from client.restore import catalogue
    from engine.ids import ChunkId
    from engine.index import Location
    from engine.remote import RemoteBackend

    async def run() -> int:
        backend = RemoteBackend(cli.env["DICOMVAULT_REPO"], cli.env["DICOMVAULT_TOKEN"])
        repo = await Repository.open(backend, PASSWORD.encode(), cli.work / "cache-measure")
        try:
            await repo.sync_index()
            select = study_selector(study.uid, None)
            chunks: dict[ChunkId, Location | None] = {}
            for _, _, body in await repo.snapshots():
                async for entry in catalogue(repo, body):
                    if entry.type == "file" and select(entry):
                        chunks.update((c, repo.index.lookup(c)) for c, _ in entry.chunks)
            return sum(loc.length for loc in chunks.values() if loc is not None)
        finally:
            await repo.close()

    return asyncio.run(run())


def restore_study(cli: Cli, study: Study, tag: str) -> float:
    target = cli.work / f"restore-{tag}"
    shutil.rmtree(target, ignore_errors=True)
    start = time.perf_counter()
    cli.run(
        cli.work / f"cache-restore-{tag}", "restore", "--study", study.uid, "--target", str(target)
    )
    elapsed = time.perf_counter() - start
    shutil.rmtree(target, ignore_errors=True)
    return elapsed


@dataclass
class Row:
    rate: str
    study: str
    images: int
    stored_bytes: int
    link_s: float
    move_cold: tuple[float, float]
    move_warm: tuple[float, float]
    wado_cold: tuple[float, float]
    wado_warm: tuple[float, float]
    restore_s: float


def measure(cli: Cli, link: LinkProxy, rate: str, study: Study, stored: int, n: int) -> Row:
    receiver = Receiver()
    try:
        link.rate = link.down_rate = _rate(rate)
        with dicom_serve(cli, cli.work / f"cache-move-{n}", receiver.port) as serve:
            move_cold, move_warm = c_move(serve, receiver, study), c_move(serve, receiver, study)
        with dicom_serve(cli, cli.work / f"cache-wado-{n}", receiver.port) as serve:
            wado_cold, wado_warm = wado(serve, study), wado(serve, study)
        restore_s = restore_study(cli, study, str(n))
    finally:
        receiver.close()
    link_s = stored / _rate(rate)
    return Row(rate, study.name, study.images, stored, round(link_s, 2), _r(move_cold),
               _r(move_warm), _r(wado_cold), _r(wado_warm), round(restore_s, 2))  # fmt: skip


def _rate(text: str) -> float:
    rate = parse_rate(text)
    if rate is None:
        raise SystemExit(f"--rates: {text!r} is not a finite rate")
    return rate


def _r(pair: tuple[float, float]) -> tuple[float, float]:
    return round(pair[0], 2), round(pair[1], 2)


def markdown(doc: dict[str, Any]) -> str:
    lines = [
        "| link | study | images | stored MB | link s | C-MOVE cold first / last s | "
        "C-MOVE warm | WADO-RS cold | WADO-RS warm | restore --study s | target 1.2×link+1 s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        target = 1.2 * r["link_s"] + 1
        lines.append(
            f"| {r['rate']} | {r['study']} | {r['images']} | {r['stored_bytes'] / 1e6:.1f} | "
            f"{r['link_s']:.2f} | {_pair(r['move_cold'])} | {_pair(r['move_warm'])} | "
            f"{_pair(r['wado_cold'])} | {_pair(r['wado_warm'])} | {r['restore_s']:.2f} | "
            f"{target:.2f} {'met' if r['move_cold'][1] <= target else 'missed'} |"
        )
    return "\n".join(lines)


def _pair(pair: list[float]) -> str:
    return f"{pair[0]:.2f} / {pair[1]:.2f}"


def run_all(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    for old in [work / "server", work / "studies", *work.glob("cache-*"), *work.glob("restore-*")]:
        shutil.rmtree(old, ignore_errors=True)  # a reused --work starts afresh
    studies_root = work / "studies"
    specs = {"mammo": ("MG", MAMMO_SOP, 4, args.mammo_size, args.mammo_size * 13 // 16),
             "ct": ("CT", CT_SOP, args.ct_images, args.ct_size, args.ct_size)}  # fmt: skip
    studies = [make_study(studies_root / name, name, n + 1, spec)
               for n, (name, spec) in enumerate(specs.items())]  # fmt: skip
    rows: list[dict[str, Any]] = []
    with chunk_server(work / "server") as (port, tokens, _):
        direct = Cli(work, f"http://127.0.0.1:{port}/{REPO}", tokens["backup"])
        direct.run(work / "cache-backup", "init", "--kdf-memory-mib", "8", "--kdf-iterations", "1")
        direct.run(work / "cache-backup", "backup", str(studies_root))
        stored = {s.name: stored_bytes(direct, s) for s in studies}
        with LinkProxy(port) as link:
            cli = Cli(work, f"{link.url}/{REPO}", tokens["backup"])
            for rate in args.rates.split(","):
                for study in studies:
                    log(f"{rate} {study.name}: {study.images} images, {stored[study.name]:,} B")
                    row = measure(cli, link, rate, study, stored[study.name], len(rows))
                    rows.append(asdict(row))
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "-m", "benchmarks.instant", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "studies": [asdict(s) for s in studies],
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    p = report_parser("instant", __doc__)
    p.add_argument("--rates", default="10Mbit,100Mbit", help="link rates, comma-separated")
    p.add_argument("--mammo-size", type=int, default=1024, help="mammography rows (default 1024)")
    p.add_argument("--ct-images", type=int, default=300, help="CT images (default 300)")
    p.add_argument("--ct-size", type=int, default=256, help="CT rows and columns (default 256)")
    args = p.parse_args(argv)
    return run_and_report(args, "dv-instant-", run_all, markdown)


if __name__ == "__main__":
    sys.exit(main())
