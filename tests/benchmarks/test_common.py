"""`benchmarks.common.run_and_report`: a benchmark's work folder, JSON document and Markdown."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks.common import run_and_report


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
