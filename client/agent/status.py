"""The agent's status file: written atomically every second, read by `dicomvault status`.

Owns the file's place (`<state dir>/status.json`), its schema (version 1, documented in
docs/design.md "Agent"), the liveness test (the pid in it is alive and the file is fresh) and
the text rendering. The daemon builds the document from its figures (`Agent.status`); this
module knows no agent.
"""

from __future__ import annotations

import contextlib
import json
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from engine.clock import SYSTEM, Clock

STATUS_VERSION = 1
STATUS_NAME = "status.json"
STALE_SECONDS = 15.0  # a running agent rewrites the file every second


def agent_version() -> str:
    try:
        return version("dicomvault")
    except PackageNotFoundError:
        return "unknown"


def status_path(state_dir: Path) -> Path:
    return state_dir / STATUS_NAME


def write_status(state_dir: Path, doc: dict[str, Any]) -> None:
    """Replace the status file atomically (readers never see half a document)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_dir / f".{STATUS_NAME}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, status_path(state_dir))


def read_status(state_dir: Path, clock: Clock = SYSTEM) -> dict[str, Any] | None:
    """The last status the agent wrote, with `running` set from its pid and age; None if none."""
    try:
        doc: dict[str, Any] = json.loads(status_path(state_dir).read_text())
    except (OSError, ValueError):
        return None
    age = clock.time() - float(doc.get("updated_unix", 0))
    doc["running"] = (
        doc.get("state") == "running" and pid_alive(int(doc.get("pid", 0))) and age < STALE_SECONDS
    )
    doc["age_seconds"] = round(age, 1)
    return doc


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by another user
    # A zombie has exited: count it as gone.
    with contextlib.suppress(OSError, IndexError), open(f"/proc/{pid}/stat") as f:
        if f.read().rsplit(")", 1)[-1].split()[0] == "Z":
            return False
    return True


def _size(n: float | None) -> str:
    if n is None:
        return "unlimited"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _duration(s: float | None) -> str:
    if s is None:
        return "unknown"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def render(doc: dict[str, Any]) -> str:
    q, up, last = doc["queue"], doc["upload"], doc.get("last_commit")
    state = "running" if doc["running"] else f"NOT RUNNING (last seen {doc['age_seconds']} s ago)"
    lines = [
        f"agent {doc['agent']} (pid {doc['pid']}, dicomvault {doc['dicomvault']}): {state}",
        f"repository: {doc.get('repository') or 'not open yet'}",
        "sources: " + "; ".join(doc["sources"]),
        f"queue: {q['files']} files ({q['instances']} received, {q['watched']} watched, "
        f"{q['settling']} settling), {_size(doc['bytes_pending'])} pending "
        f"(of which {_size(doc['spool']['packs_bytes'])} sealed packs)",
        f"mode: {doc['mode']}" + (f" (window {doc['window']})" if doc.get("window") else ""),
        f"upload: {_size(up['rate_bytes_per_s'])}/s now, limit {_size(up['limit_bytes_per_s'])}"
        + ("/s" if up["limit_bytes_per_s"] else "")
        + f"; drains in {_duration(doc.get('eta_seconds'))}",
        "last commit: "
        + (
            f"{last['snapshot'][:8]} at {last['time']} ({last['files']} files)"
            if last
            else "none yet"
        ),
        f"storage commitments pending: {doc['commitments_pending']}",
    ]
    if since := doc.get("repository_unreachable_since"):
        lines.insert(2, f"repository unreachable since {since}, retrying (files wait in the spool)")
    lines += [f"ALERT: {a}" for a in doc.get("alerts", [])]
    lines += [f"error: {e['time']} {e['message']}" for e in doc.get("errors", [])[-5:]]
    return "\n".join(lines)
