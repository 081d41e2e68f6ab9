"""Fire-drill reports from agents: validated and kept durably (table `drills` in DATA/index.lmdb).

Owns the report's wire shape (docs/api.md `POST /v1/repos/{name}/drills`) and the last report per
(repository, agent, site drilled). The alert conditions and the status page read them. Must not
know HTTP or run drills (the agent does: `client/drill.py`).

    repo ‖ 0 ‖ agent ‖ 0 ‖ site  → JSON {agent, site, ok, time, received, files, bytes,
                                          mismatches, errors, problems: [≤ 20 lines]}
"""

from __future__ import annotations

import json
from typing import Any

from engine.errors import UsageError
from server.index import ServerIndex, prefixed

MAX_PROBLEMS = 20  # lines of detail kept per report; the agent's own log has them all
_NAME_MAX = 128


def parse_report(doc: Any, received: float) -> dict[str, Any]:
    """The stored form of a drill report, or `UsageError` if the body is not one."""
    if not isinstance(doc, dict):
        raise UsageError("drill report must be a JSON object")
    agent, ok = doc.get("agent"), doc.get("ok")
    if not isinstance(agent, str) or not agent or not isinstance(ok, bool):
        raise UsageError('drill report needs a string "agent" and a boolean "ok"')
    problems = doc.get("problems", [])
    if not isinstance(problems, list):
        raise UsageError('"problems" must be a list of strings')
    return {
        "agent": agent[:_NAME_MAX],
        "site": str(doc.get("site") or "primary")[:_NAME_MAX],
        "ok": ok,
        "time": str(doc.get("time", "")),
        "received": received,
        "files": _count(doc, "files"),
        "bytes": _count(doc, "bytes"),
        "mismatches": _count(doc, "mismatches"),
        "errors": _count(doc, "errors"),
        "problems": [str(p)[:500] for p in problems[:MAX_PROBLEMS]],
    }


def _count(doc: dict[str, Any], name: str) -> int:
    value = doc.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageError(f'"{name}" must be a non-negative integer')
    return value


class DrillRecords:
    def __init__(self, index: ServerIndex) -> None:
        self.env = index.env
        self.db = index.dbs["drills"]

    def put(self, repo: str, report: dict[str, Any]) -> None:
        key = "\0".join((repo, report["agent"], report["site"])).encode()
        with self.env.begin(write=True, db=self.db) as txn:
            txn.put(key, json.dumps(report).encode())

    def latest(self, repo: str) -> list[dict[str, Any]]:
        """The last report of each (agent, site) of `repo`."""
        with self.env.begin(db=self.db) as txn:
            return [json.loads(v) for _, v in prefixed(txn.cursor(), repo.encode() + b"\0")]
