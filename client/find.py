"""Search the DICOM catalogue of snapshots: which studies a repository holds, and where.

Owns the query language of `dicomvault find` (exact attributes, person-name wildcards, date
ranges), the per-study aggregation across snapshots, and the choice of the snapshot a study is
restored from. Streams every catalogue; what it keeps is per study (series counters of the
newest snapshot holding it, and runs of snapshot numbers), plus one snapshot's set of instance
keys while that snapshot is read. Reads the repository only: never writes, never fetches file data.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from client.repository import Repository
from client.restore import catalogue
from engine.catalogue import Entry, SnapshotBody
from engine.dicom.attrs import CATALOGUE
from engine.errors import NotFound, UsageError
from engine.ids import SnapshotId

KEYWORDS = tuple(keyword for keyword, _ in CATALOGUE.values())
# Attributes that describe the patient and the study: taken from one instance of the study.
STUDY_ATTRS = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "StudyDate",
    "AccessionNumber",
    "StudyDescription",
)
_DATE = re.compile(r"\d{8}")
_OLD_DATE = re.compile(r"\d{4}\.\d{2}\.\d{2}")  # ACR-NEMA 2.0's YYYY.MM.DD, still in old archives
_INSTANCE_KEY_BYTES = 8  # 64-bit hash per instance: collisions need ~4e9 instances in a snapshot


# --- query ---------------------------------------------------------------------------------------


def dicom_date(value: str) -> str | None:
    """A DA value as YYYYMMDD, from that form or the old YYYY.MM.DD; None if it is neither."""
    value = value.strip()
    if _OLD_DATE.fullmatch(value):
        value = value.replace(".", "")
    return value if _DATE.fullmatch(value) else None


@dataclass(frozen=True, slots=True)
class DateRange:
    """Inclusive range of DICOM dates (YYYYMMDD); an empty end is open."""

    first: str = ""
    last: str = ""

    @classmethod
    def parse(cls, text: str) -> DateRange:
        """`20200101-20201231`, `20200101-`, `-20201231` or one date `20200101`; each date may
        also be written YYYY.MM.DD."""
        first, sep, last = text.strip().partition("-")
        if not sep:
            last = first
        first, last = (cls._bound(part, text) for part in (first, last))
        if not first and not last:
            raise UsageError(f"empty date range {text!r}")
        if first and last and first > last:
            raise UsageError(f"date range {text!r} ends before it starts")
        return cls(first, last)

    @staticmethod
    def _bound(part: str, text: str) -> str:
        if not part:
            return ""
        date = dicom_date(part)
        if date is None:
            raise UsageError(f"bad date {part!r} in {text!r}: use YYYYMMDD[-YYYYMMDD]")
        return date

    def __contains__(self, value: object) -> bool:
        date = dicom_date(value) if isinstance(value, str) else None
        if date is None:
            return False
        return (not self.first or date >= self.first) and (not self.last or date <= self.last)


def name_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a DICOM person-name pattern: `*` any run, `?` one character, case-insensitive.

    Components are separated by `^` as in the stored value (`DOE^JOHN`); trailing empty
    components are ignored on both sides, so `doe^john` matches `Doe^John^^^`.
    """
    parts = (re.escape(c) if c not in "*?" else {"*": ".*", "?": "."}[c] for c in pattern)
    return re.compile("".join(parts).rstrip("^"), re.IGNORECASE | re.DOTALL)


def _name_matches(pattern: re.Pattern[str], value: str) -> bool:
    """A person name matches when any of its values or groups (`=`-separated) matches whole."""
    for name in value.split("\\"):
        candidates = [name, *name.split("=")] if "=" in name else [name]
        if any(pattern.fullmatch(c.rstrip("^ ")) for c in candidates):
            return True
    return False


@dataclass(frozen=True)
class Query:
    """What an instance's catalogue attributes must satisfy; all given conditions must hold."""

    exact: dict[str, str] = field(default_factory=dict)
    patient_name: str | None = None
    study_date: DateRange | None = None
    _name: re.Pattern[str] | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.exact) - set(KEYWORDS))
        if unknown:
            raise UsageError(f"unknown attribute {unknown[0]}: one of {', '.join(KEYWORDS)}")
        if self.patient_name is not None:  # compiled once, not per instance
            object.__setattr__(self, "_name", name_pattern(self.patient_name))

    def matches(self, attrs: dict[str, str]) -> bool:
        for keyword, want in self.exact.items():
            have = attrs.get(keyword, "")
            if have != want and not (keyword == "Modality" and have.upper() == want.upper()):
                return False
        if self._name is not None and not _name_matches(self._name, attrs.get("PatientName", "")):
            return False
        return self.study_date is None or attrs.get("StudyDate", "") in self.study_date


def parse_attr(text: str) -> tuple[str, str]:
    """`Keyword=value` from the command line."""
    keyword, sep, value = text.partition("=")
    if not sep or keyword not in KEYWORDS:
        raise UsageError(
            f"bad --attr {text!r}: use KEYWORD=VALUE with one of {', '.join(KEYWORDS)}"
        )
    return keyword, value


def study_selector(study: str | None, series: str | None = None) -> Callable[[Entry], bool]:
    """The restore `select` hook: files of one study (and, if given, one series)."""
    if not study and not series:
        raise UsageError("select a study or a series")

    def select(entry: Entry) -> bool:
        attrs = entry.dicom or {}
        if entry.type != "file" or not attrs:
            return False
        if study and attrs.get("StudyInstanceUID") != study:
            return False
        return not series or attrs.get("SeriesInstanceUID") == series

    return select


# --- aggregation ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Tally:
    """What restoring these files writes (`files`, `bytes`, as `restore --study` reports them),
    and how many distinct instances they hold: a copy of an instance in another folder is one
    more file, not one more instance."""

    files: int = 0
    bytes: int = 0
    instances: int = 0
    instance_bytes: int = 0

    def count(self, size: int, new_instance: bool) -> None:
        self.files += 1
        self.bytes += size
        if new_instance:
            self.instances += 1
            self.instance_bytes += size

    def as_json(self) -> dict[str, int]:
        return dict(files=self.files, bytes=self.bytes, instances=self.instances,
                    instance_bytes=self.instance_bytes)  # fmt: skip

    def text(self) -> str:
        return f"{self.instances} instances in {self.files} files, {self.bytes:,} bytes"


@dataclass(slots=True)
class SeriesStats:
    uid: str
    modality: str = ""
    description: str = ""
    tally: Tally = field(default_factory=Tally)
    transfer_syntaxes: set[str] = field(default_factory=set)

    def as_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"SeriesInstanceUID": self.uid, "Modality": self.modality}
        if self.description:
            doc["SeriesDescription"] = self.description
        doc.update(self.tally.as_json(), transfer_syntaxes=sorted(self.transfer_syntaxes))
        return doc


@dataclass(slots=True)
class StudyStats:
    """One study as one snapshot holds it (the instances that matched the query)."""

    uid: str
    attrs: dict[str, str]
    series: dict[str, SeriesStats] = field(default_factory=dict)
    tally: Tally = field(default_factory=Tally)

    def add(self, entry: Entry, attrs: dict[str, str], new_instance: bool) -> None:
        uid = attrs.get("SeriesInstanceUID", "")
        series = self.series.get(uid)
        if series is None:
            series = self.series[uid] = SeriesStats(
                uid, attrs.get("Modality", ""), attrs.get("SeriesDescription", "")
            )
        series.tally.count(entry.size, new_instance)
        self.tally.count(entry.size, new_instance)
        if ts := attrs.get("TransferSyntaxUID"):
            series.transfer_syntaxes.add(ts)


@dataclass(slots=True)
class StudyHit:
    """A study across snapshots: its newest view and the runs of snapshot numbers holding it."""

    latest: StudyStats
    latest_snapshot: int
    runs: list[list[int]] = field(default_factory=list)  # [first, last] snapshot numbers

    def seen_in(self, number: int, stats: StudyStats) -> None:
        self.latest, self.latest_snapshot = stats, number
        if self.runs and self.runs[-1][1] == number - 1:
            self.runs[-1][1] = number
        else:
            self.runs.append([number, number])

    def snapshot_numbers(self) -> Iterable[int]:
        for first, last in self.runs:
            yield from range(first, last + 1)


@dataclass(frozen=True, slots=True)
class SnapshotRef:
    id: SnapshotId
    time: str


@dataclass
class FindResult:
    snapshots: list[SnapshotRef]  # searched, oldest first; StudyHit numbers index this list
    studies: list[StudyHit]

    def as_json(self) -> dict[str, Any]:
        return {
            "snapshots_searched": len(self.snapshots),
            "studies": [self._study_json(hit) for hit in self.studies],
        }

    def _study_json(self, hit: StudyHit) -> dict[str, Any]:
        study = hit.latest
        latest = self.snapshots[hit.latest_snapshot]
        return {
            "StudyInstanceUID": study.uid,
            **{k: study.attrs.get(k, "") for k in STUDY_ATTRS},
            "modalities": _modalities(study),
            **study.tally.as_json(),
            "series": [s.as_json() for s in _sorted_series(study)],
            "snapshot": latest.id.hex(),
            "snapshot_time": latest.time,
            "snapshots": [self.snapshots[n].id.hex() for n in hit.snapshot_numbers()],
        }


def _modalities(study: StudyStats) -> list[str]:
    return sorted({s.modality for s in study.series.values() if s.modality})


def _sorted_series(study: StudyStats) -> list[SeriesStats]:
    return sorted(study.series.values(), key=lambda s: (s.modality, s.uid))


async def find(repo: Repository, query: Query, snapshot: SnapshotId | None = None) -> FindResult:
    """Search every snapshot (or only `snapshot`), oldest first, for studies matching `query`."""
    refs = await _snapshots(repo, snapshot)
    hits: dict[str, StudyHit] = {}
    for number, (_, body) in enumerate(refs):
        for uid, stats in (await _scan(repo, body, query)).items():
            hit = hits.get(uid)
            if hit is None:
                hits[uid] = StudyHit(stats, number, [[number, number]])
            else:
                hit.seen_in(number, stats)
    studies = sorted(hits.values(), key=lambda h: (_study_date(h.latest), h.latest.uid))
    return FindResult([ref for ref, _ in refs], studies)


async def _snapshots(
    repo: Repository, only: SnapshotId | None
) -> list[tuple[SnapshotRef, SnapshotBody]]:
    snaps = [(SnapshotRef(sid, body.time), body) for sid, _, body in await repo.snapshots()]
    if only is not None:
        snaps = [s for s in snaps if s[0].id == only]
    return snaps


async def _scan(repo: Repository, body: SnapshotBody, query: Query) -> dict[str, StudyStats]:
    """One snapshot's matching instances, aggregated per study; copies of an instance count once."""
    studies: dict[str, StudyStats] = {}
    seen: set[bytes] = set()
    async for entry in catalogue(repo, body):
        attrs = entry.dicom
        if entry.type != "file" or not attrs or not attrs.get("StudyInstanceUID"):
            continue
        if not query.matches(attrs):
            continue
        uid = attrs["StudyInstanceUID"]
        study = studies.get(uid)
        if study is None:
            study = studies[uid] = StudyStats(uid, {k: attrs[k] for k in STUDY_ATTRS if k in attrs})
        key = _instance_key(attrs.get("SOPInstanceUID") or "path:" + entry.path)
        study.add(entry, attrs, key not in seen)
        seen.add(key)
    return studies


def _instance_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=_INSTANCE_KEY_BYTES).digest()


async def snapshot_holding(
    repo: Repository, select: Callable[[Entry], bool], snapshot: SnapshotId | None = None
) -> SnapshotId:
    """`snapshot` if given, else the newest snapshot with at least one file `select` accepts."""
    if snapshot is not None:
        return snapshot
    for sid, _, body in reversed(await repo.snapshots()):
        async for entry in catalogue(repo, body):
            if select(entry):
                return sid
    raise NotFound("no snapshot holds that study or series")


# --- text output ---------------------------------------------------------------------------------


def render_text(result: FindResult) -> str:
    if not result.studies:
        return f"no matching studies in {len(result.snapshots)} snapshots"
    blocks = [_study_text(result, hit) for hit in result.studies]
    return "\n\n".join(blocks) + f"\n\n{len(result.studies)} studies"


def _study_text(result: FindResult, hit: StudyHit) -> str:
    s, a = hit.latest, hit.latest.attrs
    title = "  ".join(
        part
        for part in (
            _date(a.get("StudyDate", "")),
            a.get("PatientName", "") or "(no name)",
            f"id {a['PatientID']}" if a.get("PatientID") else "",
            f"born {_date(a['PatientBirthDate'])}" if a.get("PatientBirthDate") else "",
            f"acc {a['AccessionNumber']}" if a.get("AccessionNumber") else "",
            f'"{a["StudyDescription"]}"' if a.get("StudyDescription") else "",
        )
        if part
    )
    numbers = list(hit.snapshot_numbers())
    first, last = result.snapshots[numbers[0]], result.snapshots[numbers[-1]]
    held = f"{first.id.short()} {first.time}" + (
        f" … {last.id.short()} {last.time}" if len(numbers) > 1 else ""
    )
    lines = [
        f"study {s.uid}",
        f"  {title}",
        f"  {s.tally.text()}, {'/'.join(_modalities(s)) or '-'}",
        f"  in {len(numbers)} snapshot{'s' if len(numbers) != 1 else ''}: {held}",
    ]
    for series in _sorted_series(s):
        desc = f'  "{series.description}"' if series.description else ""
        lines.append(
            f"  series {series.uid}  {series.modality or '-'}{desc}  {series.tally.text()}"
        )
    return "\n".join(lines)


def _study_date(study: StudyStats) -> str:
    value = study.attrs.get("StudyDate", "")
    return dicom_date(value) or value


def _date(value: str) -> str:
    date = dicom_date(value)
    return f"{date[:4]}-{date[4:6]}-{date[6:]}" if date else value
