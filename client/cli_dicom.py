"""`dicomvault find` and the DICOM side of `dicomvault restore` (`--study`, `--series`,
`--to-pacs`): their options and how they run. The search and the sending live in `client.find`
and `client.topacs`; pynetdicom is imported only when a study is sent.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

from client import audit
from client.cli_common import emit, with_repo
from client.find import (
    DateRange,
    Query,
    find,
    parse_attr,
    render_text,
    study_selector,
)
from client.repository import Repository
from engine.catalogue import Entry
from engine.errors import UsageError
from engine.ids import SnapshotId

if TYPE_CHECKING:  # pydicom and pynetdicom cost ~0.5 s at start-up: loaded only to send a study
    from client.topacs import InstanceResult, Peer


def dicom_restore_options(c: argparse.ArgumentParser) -> None:
    c.add_argument("--study", metavar="UID", help="restore only this study's files")
    c.add_argument("--series", metavar="UID", help="restore only this series' files")
    c.add_argument(
        "--to-pacs",
        metavar="AET@HOST:PORT",
        help="send the study by C-STORE, in each instance's own transfer syntax, instead of "
        "writing files",
    )
    c.add_argument("--calling-aet", default="DICOMVAULT", help="our AE title (default DICOMVAULT)")
    c.add_argument("--dicom-timeout", type=float, default=30.0, help="seconds to wait for the peer")


def restore_selection(args: argparse.Namespace) -> Callable[[Entry], bool] | None:
    """Check the restore arguments; the study/series filter, or None for a plain restore."""
    dicom = bool(args.study or args.series)
    if args.to_pacs and not dicom:
        raise UsageError("--to-pacs needs --study or --series")
    if args.to_pacs and args.target:
        raise UsageError("give either --target or --to-pacs, not both")
    if not args.to_pacs and not args.target:
        raise UsageError("restore needs --target (or --to-pacs with --study)")
    if args.delete and dicom:
        raise UsageError("--delete restores a whole snapshot or --include path, not a study")
    if not dicom and not args.snapshot and not args.as_of:
        raise UsageError("restore needs a snapshot (or --study/--series, or --as-of TIME)")
    return study_selector(args.study, args.series) if dicom else None


async def restore_to_pacs(
    args: argparse.Namespace,
    repo: Repository,
    snapshot: SnapshotId,
    select: Callable[[Entry], bool],
    peer: Peer,
) -> int:
    from client.topacs import SendFailed, send_study

    def report(r: InstanceResult) -> None:
        if not args.json:
            print(f"{'ok    ' if r.ok else 'FAILED'} /{r.path}  {r.sop_instance}  {r.message}")

    s = await send_study(
        repo, snapshot, select, peer, args.calling_aet, timeout=args.dicom_timeout, report=report
    )
    emit(
        args,
        s.as_json(),
        f"sent {s.sent} of {s.instances} instances ({s.bytes_sent:,} bytes) "
        f"to {peer} in {s.duration_s:.1f} s",
    )
    if s.failed:
        raise SendFailed(f"{s.failed} of {s.instances} instances were not stored by {peer}")
    return 0


def find_options(c: argparse.ArgumentParser) -> None:
    c.add_argument("--patient-name", metavar="PATTERN", help="wildcards * and ?, e.g. 'DOE^J*'")
    c.add_argument("--patient-id", metavar="ID")
    c.add_argument("--birth-date", metavar="YYYYMMDD", help="PatientBirthDate, exact")
    c.add_argument(
        "--study-date",
        metavar="RANGE",
        help="YYYYMMDD (or the old YYYY.MM.DD), or a range A-B, A- or -B (--study-date=-B)",
    )
    c.add_argument("--modality", metavar="MOD", help="e.g. CT, MR (series modality)")
    c.add_argument("--accession", metavar="NUMBER")
    c.add_argument("--study", metavar="UID", help="StudyInstanceUID")
    c.add_argument("--series", metavar="UID", help="SeriesInstanceUID")
    c.add_argument(
        "--attr",
        action="append",
        default=[],
        metavar="KEYWORD=VALUE",
        help="any catalogue attribute, exact (repeatable), e.g. SOPInstanceUID=1.2.3",
    )
    c.add_argument("--snapshot", help="search only this snapshot (default: all)")


_FIND_FLAGS = {
    "patient_id": "PatientID",
    "birth_date": "PatientBirthDate",
    "modality": "Modality",
    "accession": "AccessionNumber",
    "study": "StudyInstanceUID",
    "series": "SeriesInstanceUID",
}


def query_text(args: argparse.Namespace) -> str:
    """The find options as given, for the audit event (sealed: it may name a patient)."""
    given = {k: v for k, v in vars(args).items() if k in {*_FIND_FLAGS, "attr", "patient_name",
             "study_date"} and v}  # fmt: skip
    return " ".join(f"{k}={v}" for k, v in sorted(given.items()))


async def cmd_find(args: argparse.Namespace) -> int:
    exact = dict(parse_attr(a) for a in args.attr)
    for flag, keyword in _FIND_FLAGS.items():
        if getattr(args, flag) is not None:
            exact[keyword] = getattr(args, flag)
    date = DateRange.parse(args.study_date) if args.study_date else None
    query = Query(exact, args.patient_name, date)

    async def run(repo: Repository) -> int:
        only = await repo.resolve(args.snapshot) if args.snapshot else None
        result = await find(repo, query, only)
        await audit.record(
            repo, "find", snapshot=only.hex() if only else "",
            studies=[hit.latest.uid for hit in result.studies], detail=f"query {query_text(args)}",
        )  # fmt: skip
        emit(args, result.as_json(), render_text(result))
        return 0

    return await with_repo(args, run)
