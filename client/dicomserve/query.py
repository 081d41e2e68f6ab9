"""DICOM query semantics over the catalogue index, shared by C-FIND and QIDO-RS.

Owns which keys can be matched and returned (the catalogue attributes and the counts derived from
them), DICOM matching (single value, UID list, `*`/`?` wildcards, date ranges, universal
matching), and the aggregation of instances into patient, study and series answers. A request
with keys outside that set is answered on the keys it can match, and says so (`unsupported`).
Knows nothing of pynetdicom or HTTP: keys and answers are plain keyword → string maps.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from client.dicomserve.index import IndexReader, InstanceRef
from client.find import DateRange, Query
from engine.errors import UsageError

if TYPE_CHECKING:  # pydicom is imported where a dataset is built
    from pydicom.dataset import Dataset

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
LEVEL_KEY = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID",
             "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}  # fmt: skip
MATCHABLE = (
    "PatientID", "PatientName", "PatientBirthDate", "StudyInstanceUID", "StudyDate",
    "AccessionNumber", "StudyDescription", "Modality", "SeriesInstanceUID", "SOPInstanceUID",
)  # fmt: skip
COUNTS = (
    "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries",
    "NumberOfPatientRelatedInstances", "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances", "NumberOfSeriesRelatedInstances",
)  # fmt: skip
RETURNED = (*MATCHABLE, *COUNTS, "ModalitiesInStudy", "NumberOfFrames", "TransferSyntaxUID",
            "SOPClassUID", "InstanceAvailability", "RetrieveAETitle")  # fmt: skip
IGNORED = ("QueryRetrieveLevel", "SpecificCharacterSet", "TimezoneOffsetFromUTC")
_IN_BATCH = 500  # UIDs per SQL `IN (...)` list (SQLite caps bound parameters)
_INDEXED = {"PatientID": "patient", "StudyInstanceUID": "study",
            "SeriesInstanceUID": "series", "SOPInstanceUID": "sop"}  # fmt: skip
# Attributes a level's answer takes from its instances (the rest are counts or left empty).
LEVEL_ATTRS = {
    "PATIENT": ("PatientID", "PatientName", "PatientBirthDate"),
    "STUDY": ("PatientID", "PatientName", "PatientBirthDate", "StudyInstanceUID", "StudyDate",
              "AccessionNumber", "StudyDescription"),
}  # fmt: skip
LEVEL_ATTRS["SERIES"] = (*LEVEL_ATTRS["STUDY"], "Modality", "SeriesInstanceUID")
LEVEL_ATTRS["IMAGE"] = (*LEVEL_ATTRS["SERIES"], "SOPInstanceUID", "NumberOfFrames",
                        "TransferSyntaxUID")  # fmt: skip


class BadQuery(UsageError):
    """The query cannot be answered as asked (unknown level, malformed value)."""


@dataclass(frozen=True)
class Request:
    """A query: its level, every key asked for (empty value: return it), and the unsupported
    ones (asked for, matched as universal, returned empty)."""

    level: str
    keys: dict[str, str]
    unsupported: tuple[str, ...] = ()
    _tests: tuple[tuple[str, Callable[[str], bool]], ...] = field(default=(), repr=False)

    @classmethod
    def parse(cls, level: str, keys: dict[str, str]) -> Request:
        level = level.strip().upper()
        if level not in LEVELS:
            raise BadQuery(f"unknown query level {level!r}: one of {', '.join(LEVELS)}")
        unsupported = tuple(
            k for k, v in keys.items() if k not in RETURNED and k not in IGNORED
        ) + tuple(k for k, v in keys.items() if v and k in RETURNED and k not in MATCHABLE
                  and k != "ModalitiesInStudy")  # fmt: skip
        tests = tuple((k, _test(k, v)) for k, v in _matching(keys).items())
        return cls(level, dict(keys), tuple(dict.fromkeys(unsupported)), tests)

    def narrowing(self) -> dict[str, list[str]]:
        """Index columns the request pins to UIDs: the SQL side of the match."""
        out = {}
        for keyword, column in _INDEXED.items():
            value = self.keys.get(keyword, "")
            if value and not _has_wildcard(value):
                out[column] = [v for v in value.split("\\") if v]
        return out

    @property
    def tested(self) -> tuple[str, ...]:
        """The keywords this request matches on (not universal)."""
        return tuple(keyword for keyword, _ in self._tests)

    def matches(self, attrs: dict[str, str]) -> bool:
        return all(test(attrs.get(keyword, "")) for keyword, test in self._tests)


def _matching(keys: dict[str, str]) -> dict[str, str]:
    out = {k: v for k, v in keys.items() if k in MATCHABLE and v and v != "*"}
    if keys.get("ModalitiesInStudy") and "Modality" not in out:
        out["Modality"] = keys["ModalitiesInStudy"]
    return out


def _has_wildcard(value: str) -> bool:
    return "*" in value or "?" in value


def _test(keyword: str, value: str) -> Callable[[str], bool]:
    if keyword == "PatientName":
        query = Query(patient_name=value)
        return lambda have: query.matches({"PatientName": have})
    if keyword in ("StudyDate", "PatientBirthDate"):
        try:
            dates = DateRange.parse(value)
        except UsageError as e:
            raise BadQuery(f"{keyword}: {e}") from None
        return lambda have: have in dates
    if _has_wildcard(value):
        pattern = _wildcard(value, ignore_case=keyword == "Modality")
        return lambda have: bool(pattern.fullmatch(have))
    wanted = {v.upper() if keyword == "Modality" else v for v in value.split("\\")}
    if keyword == "Modality":
        return lambda have: have.upper() in wanted
    return lambda have: have in wanted


def _wildcard(value: str, ignore_case: bool) -> re.Pattern[str]:
    parts = (re.escape(c) if c not in "*?" else {"*": ".*", "?": "."}[c] for c in value)
    return re.compile("".join(parts), (re.IGNORECASE if ignore_case else 0) | re.DOTALL)


# --- answers -------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Group:
    attrs: dict[str, str]
    studies: set[str] = field(default_factory=set)
    series: set[str] = field(default_factory=set)
    instances: int = 0
    modalities: set[str] = field(default_factory=set)

    def add(self, ref: InstanceRef) -> None:
        self.studies.add(ref.study)
        self.series.add(ref.series)
        self.instances += 1
        if modality := ref.attrs.get("Modality"):
            self.modalities.add(modality)


def matching_instances(
    reader: IndexReader, request: Request, as_of: str | None
) -> Iterator[InstanceRef]:
    for ref in reader.current(as_of, request.narrowing()):
        if request.matches(ref.attrs):
            yield ref


def answers(
    reader: IndexReader, request: Request, as_of: str | None, aet: str = ""
) -> Iterator[dict[str, str]]:
    """One answer per matching patient, study, series or instance: the requested keys, filled."""
    refs = matching_instances(reader, request, as_of)
    if request.level == "IMAGE":
        for ref in refs:
            yield _answer(request, _one(ref), aet, reader.sop_class(ref.sop) or "")
        return
    key, attrs = LEVEL_KEY[request.level], LEVEL_ATTRS[request.level]
    groups = _grouped(refs, key, attrs)
    if request.level in ("PATIENT", "STUDY") and "Modality" in request.tested:
        groups = _whole(reader, groups, key, as_of)
    for group in groups.values():
        yield _answer(request, group, aet, "")


def _whole(
    reader: IndexReader, groups: dict[str, _Group], key: str, as_of: str | None
) -> dict[str, _Group]:
    """The counts of whole patients or studies, not of the series that matched a modality:
    `ModalitiesInStudy=MR` finds a CT+MR study, which has all its instances."""
    column, uids = _INDEXED[key], list(groups)
    whole = {uid: _Group(group.attrs) for uid, group in groups.items()}
    for start in range(0, len(uids), _IN_BATCH):
        for ref in reader.current(as_of, {column: uids[start : start + _IN_BATCH]}):
            if (group := whole.get(ref.attrs.get(key, ""))) is not None:
                group.add(ref)
    return whole


def _one(ref: InstanceRef) -> _Group:
    group = _Group({k: ref.attrs.get(k, "") for k in LEVEL_ATTRS["IMAGE"]})
    group.add(ref)
    return group


def _grouped(refs: Iterable[InstanceRef], key: str, attrs: tuple[str, ...]) -> dict[str, _Group]:
    groups: dict[str, _Group] = {}
    for ref in refs:
        uid = ref.attrs.get(key, "")
        group = groups.get(uid)
        if group is None:
            group = groups[uid] = _Group({k: ref.attrs.get(k, "") for k in attrs})
        group.add(ref)
    return groups


def _answer(request: Request, group: _Group, aet: str, sop_class: str) -> dict[str, str]:
    computed = {
        "NumberOfPatientRelatedStudies": str(len(group.studies)),
        "NumberOfPatientRelatedSeries": str(len(group.series)),
        "NumberOfPatientRelatedInstances": str(group.instances),
        "NumberOfStudyRelatedSeries": str(len(group.series)),
        "NumberOfStudyRelatedInstances": str(group.instances),
        "NumberOfSeriesRelatedInstances": str(group.instances),
        "ModalitiesInStudy": "\\".join(sorted(group.modalities)),
        "InstanceAvailability": "ONLINE",
        "RetrieveAETitle": aet,
        "SOPClassUID": sop_class,
    }
    out = {"QueryRetrieveLevel": request.level}
    unique = [LEVEL_KEY[level] for level in LEVELS[: LEVELS.index(request.level) + 1]]
    for keyword in [*unique, *request.keys]:
        if keyword in IGNORED:
            continue
        out[keyword] = group.attrs.get(keyword) or computed.get(keyword, "")
    return out


def answer_dataset(answer: dict[str, str]) -> Dataset:
    """An answer as a pydicom dataset (UTF-8 when any value needs it); keys the dictionary does
    not know, or whose values do not fit their VR (a sequence asked for), are left out."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    if not all(value.isascii() for value in answer.values()):
        ds.SpecificCharacterSet = "ISO_IR 192"  # catalogue values are decoded text
    for keyword, value in answer.items():
        try:
            setattr(ds, keyword, value)
        except (ValueError, TypeError, AttributeError):
            continue
    return ds
