"""docs/design.md stays true to the tree: every module path it names exists, it points at no file
outside the repository, and §3.10 lays out every table of the server's LMDB environment."""

from __future__ import annotations

import re
from pathlib import Path

from server.index import TABLES

ROOT = Path(__file__).resolve().parents[1]
DESIGN = (ROOT / "docs" / "design.md").read_text()


def test_every_path_the_design_names_exists() -> None:
    named = set(re.findall(r"`((?:engine|server|client|tests|benchmarks)/[\w/.]*)`", DESIGN))
    assert named, "the pattern no longer finds the design's paths"
    assert sorted(p for p in named if not (ROOT / p).exists()) == []


def test_the_design_points_at_nothing_outside_the_repository() -> None:
    links = re.findall(r"\]\(([^)]*)\)", DESIGN)  # markdown link targets
    outside = [t for t in links if t.startswith(("../", "/")) or "/../" in t]
    assert outside + re.findall(r"\.\./shared\b", DESIGN) == []


def test_the_server_index_section_lays_out_every_table() -> None:
    section = DESIGN.split("### 3.10 Server index")[1].split("\n## ")[0]
    assert [t for t in TABLES if not re.search(rf"\b{t}\b", section)] == []
