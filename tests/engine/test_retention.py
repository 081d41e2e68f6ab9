"""Clinical retention policy: keep-until dates and the policy file's validation."""

from __future__ import annotations

from datetime import date

import pytest

from engine.errors import UsageError
from engine.retention import RetentionPolicy, load_policy, parse_dicom_date

POLICY = """
[retention]
default_years = 7
[retention.modality]
MG = 10
[retention.minors]
until_age = 18
plus_years = 3
"""
SEEN = date(2026, 1, 1)


def test_keep_until_by_modality_study_date_and_first_backup() -> None:
    p = load_policy(POLICY)
    assert p.keep_until({"Modality": "CT", "StudyDate": "20200315"}, SEEN) == date(2027, 3, 15)
    assert p.keep_until({"Modality": "MG", "StudyDate": "20200315"}, SEEN) == date(2030, 3, 15)
    assert p.keep_until({"Modality": "mg", "StudyDate": "2020.03.15"}, SEEN) == date(2030, 3, 15)
    assert p.keep_until({"Modality": "CT"}, SEEN) == date(2033, 1, 1)  # from the first backup
    assert p.keep_until({"StudyDate": "garbage"}, SEEN) == date(2033, 1, 1)


def test_minors_are_kept_until_age_plus_years_when_later() -> None:
    p = load_policy(POLICY)
    child = {"Modality": "CR", "StudyDate": "20200101", "PatientBirthDate": "20150601"}
    assert p.keep_until(child, SEEN) == date(2036, 6, 1)  # 18 + 3 years after birth
    adult = {**child, "PatientBirthDate": "19700101"}
    assert p.keep_until(adult, SEEN) == date(2027, 1, 1)
    assert RetentionPolicy(7).keep_until(child, SEEN) == date(2027, 1, 1)  # no minors rule


def test_dates() -> None:
    assert parse_dicom_date("20240229") == date(2024, 2, 29)
    assert parse_dicom_date("2024.02.29") == date(2024, 2, 29)
    assert parse_dicom_date("20240230") is None and parse_dicom_date("") is None
    assert RetentionPolicy(1).keep_until({"StudyDate": "20240229"}, SEEN) == date(2025, 2, 28)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[retention]\ndefault_yers = 7", "retention.default_yers"),
        ("[retension]\ndefault_years = 7", "retension"),
        ("[retention]\ndefault_years = -1", "retention.default_years"),
        ("[retention]\ndefault_years = 'seven'", "retention.default_years"),
        ("[retention.modality]\nMG = 1000", "retention.modality.MG"),
        ("[retention.modality]\n'M G' = 3", "retention.modality.M G"),
        ("[retention.minors]\nuntil_age = 18\nplus = 3", "retention.minors.plus"),
        ("[retention]\nminors = 3", "retention.minors"),
        ("retention = [", "not TOML"),
    ],
)
def test_a_bad_policy_is_a_usage_error_naming_the_key(text: str, named: str) -> None:
    with pytest.raises(UsageError, match=r"policy\.toml") as e:
        load_policy(text, "policy.toml")
    assert named in str(e.value)
