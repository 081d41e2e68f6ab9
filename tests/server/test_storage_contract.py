"""Nothing on the server outside a Store touches the paths of stored objects (issue 13 item 1).

A grep over server/: the names that reach a stored object's file directly may appear only in the
modules listed here, each with the reason it is still allowed. The list only shrinks.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PATH_LEVEL = re.compile(
    r"\b(object_path|write_durably|link_durably|new_temp_path|FileResponse)\b"
    r"|\.root\s*/\s*\"(packs|snapshots|keys)\""
)
ALLOWED: dict[str, str] = {}


def test_only_the_listed_server_modules_reach_stored_objects_by_path() -> None:
    offenders = {}
    for path in sorted((ROOT / "server").rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        hits = [m.group(0) for m in PATH_LEVEL.finditer(path.read_text())]
        if hits and rel not in ALLOWED:
            offenders[rel] = sorted(set(hits))
    assert offenders == {}, "use the repository's Store (engine/store/base.py) instead"


def test_the_allow_list_names_only_modules_that_still_need_it() -> None:
    stale = [rel for rel in ALLOWED if not PATH_LEVEL.search((ROOT / rel).read_text())]
    assert stale == [], "remove these from ALLOWED: they go through the Store now"
