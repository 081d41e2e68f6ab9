"""`benchmarks.common`'s report helpers: a benchmark's work folder, JSON document and Markdown."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks.common import md_table, print_report, run_and_report


def test_run_and_report_writes_the_document_and_removes_only_a_temp_work_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[Path] = []

    def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
        (work / "scratch").write_text("x")
        seen.append(work)
        return {"rate": 10}

    out = tmp_path / "out" / "bench.json"
    kept = tmp_path / "kept"
    kept.mkdir()
    for work in (None, kept):
        args = argparse.Namespace(work=work, out=out)
        assert run_and_report(args, "dv-test-", run, lambda doc: f"| rate | {doc['rate']} |") == 0
        assert json.loads(out.read_text()) == {"rate": 10}
        assert capsys.readouterr().out == "| rate | 10 |\n"
    assert seen[0].name.startswith("dv-test-") and not seen[0].exists()
    assert seen[1] == kept and (kept / "scratch").exists()


def test_md_table_aligns_columns_by_letter_and_checks_the_widths() -> None:
    lines = md_table(("tool", "MB/s", "runs"), "lrl", [("dv", 1.5, "1, 2"), ("restic", "", "3")])
    assert lines == [
        "| tool | MB/s | runs |",
        "|---|---:|---|",
        "| dv | 1.5 | 1, 2 |",
        "| restic |  | 3 |",
    ]
    with pytest.raises(AssertionError):
        md_table(("a", "b"), "l", [])


def test_print_report_without_a_json_path_only_prints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert print_report({"x": 1}, lambda doc: f"x = {doc['x']}", None) == 0
    assert capsys.readouterr().out == "x = 1\n" and list(tmp_path.iterdir()) == []
    target = tmp_path / "deep" / "r.json"
    print_report({"x": 2}, str, target)
    assert json.loads(target.read_text()) == {"x": 2} and target.read_text().endswith("}\n")
