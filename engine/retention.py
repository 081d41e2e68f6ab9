"""Clinical retention: how long every DICOM instance must stay restorable, as a pure function.

Owns the policy file (TOML, `forget --policy FILE`) and its validation, and `keep_until`:

    [retention]
    default_years = 7            # every instance, counted from its StudyDate
    [retention.modality]
    MG = 10                      # mammograms: ten years
    [retention.minors]
    until_age = 18               # a minor's instances: until the patient turns 18 ...
    plus_years = 3               # ... and three more years (from PatientBirthDate)

The time counts from StudyDate, or from the first backup that held the instance when the
StudyDate is missing or unreadable; the minors rule, when set and PatientBirthDate is readable,
keeps an instance until birth + `until_age` + `plus_years` if that is later. An unknown key or an
impossible value is a usage error naming it. Must not read a repository or the clock.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from engine.errors import UsageError

_TOP = {"retention"}
_RETENTION = {"default_years", "modality", "minors"}
_MINORS = {"until_age", "plus_years"}
MAX_YEARS = 150


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    default_years: float = 0.0
    modality_years: dict[str, float] = field(default_factory=dict)
    minors_until_age: float | None = None
    minors_plus_years: float = 0.0

    def keep_until(self, attrs: dict[str, str], first_seen: date) -> date:
        """The last day the instance must stay restorable."""
        start = parse_dicom_date(attrs.get("StudyDate", "")) or first_seen
        years = self.modality_years.get(attrs.get("Modality", "").upper(), self.default_years)
        until = add_years(start, years)
        birth = parse_dicom_date(attrs.get("PatientBirthDate", ""))
        if self.minors_until_age is not None and birth is not None:
            until = max(until, add_years(birth, self.minors_until_age + self.minors_plus_years))
        return until


def add_years(d: date, years: float) -> date:
    whole = int(years)
    try:
        moved = d.replace(year=d.year + whole)
    except ValueError:  # 29 February
        moved = d.replace(year=d.year + whole, day=28)
    return date.fromordinal(moved.toordinal() + round((years - whole) * 365.25))


def parse_dicom_date(text: str) -> date | None:
    """DA as stored: YYYYMMDD, or the old ACR-NEMA YYYY.MM.DD; None when unreadable."""
    t = (text or "").strip().replace(".", "")
    try:
        return datetime.strptime(t, "%Y%m%d").date() if len(t) == 8 else None
    except ValueError:
        return None


def load_policy(text: str, name: str = "policy") -> RetentionPolicy:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{name}: not TOML: {e}") from None
    _known(name, "", doc, _TOP)
    table = _table(name, "retention", doc.get("retention", {}))
    _known(name, "retention.", table, _RETENTION)
    modality = _table(name, "retention.modality", table.get("modality", {}))
    minors = _table(name, "retention.minors", table.get("minors", {}))
    _known(name, "retention.minors.", minors, _MINORS)
    for key in modality:
        if not key.isascii() or not key.isalnum() or len(key) > 16:
            raise UsageError(f"{name}: retention.modality.{key}: not a DICOM modality code")
    return RetentionPolicy(
        default_years=_years(name, "retention.default_years", table.get("default_years", 0)),
        modality_years={
            k.upper(): _years(name, f"retention.modality.{k}", v) for k, v in modality.items()
        },
        minors_until_age=(
            _years(name, "retention.minors.until_age", minors["until_age"])
            if "until_age" in minors
            else None
        ),
        minors_plus_years=_years(name, "retention.minors.plus_years", minors.get("plus_years", 0)),
    )


def _known(name: str, prefix: str, doc: dict[str, Any], keys: set[str]) -> None:
    unknown = sorted(set(doc) - keys)
    if unknown:
        raise UsageError(f"{name}: unknown key {prefix}{unknown[0]}")


def _table(name: str, key: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UsageError(f"{name}: {key} must be a table")
    return value


def _years(name: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= MAX_YEARS:
        raise UsageError(f"{name}: {key} = {value!r}: years must be a number from 0 to {MAX_YEARS}")
    return float(value)
