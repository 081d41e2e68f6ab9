"""Prometheus lines for scrub and alerts, rendered from their LMDB records for `/metrics`.

Owns the series `dicomvault_scrub_*` and `dicomvault_alerts_open`. Like the replication lag
gauges, the per-repository scrub series carry repository names (docs/api.md: keep `/metrics`
behind the provider's firewall). Must not change state.
"""

from __future__ import annotations

from server.alerts.store import AlertStore
from server.scrubstate import ScrubState

_PROGRESS = (
    ("running", "gauge", "1 while a scrub pass runs (in the server or the CLI)."),
    ("packs_checked", "gauge", "Packs re-hashed by the current or last pass."),
    ("bytes_checked", "gauge", "Bytes re-hashed by the current or last pass."),
    ("bad", "gauge", "Bad packs found by the current or last pass."),
    ("unhealed", "gauge", "Bad packs of the current or last pass not yet healed."),
    ("finished", "gauge", "Unix time the last pass finished (0: never)."),
)
_PER_REPO = (
    ("repo_last_finished", "gauge", "Unix time the last pass over the repository finished."),
    ("repo_packs_checked", "gauge", "Packs re-hashed in the repository's last pass."),
    ("repo_bad", "gauge", "Bad packs found in the repository's last pass."),
    ("repo_healed", "gauge", "Bad packs healed from a peer in the repository's last pass."),
    ("repo_unhealed", "gauge", "Bad packs of the repository still waiting for a good copy."),
)


def render(scrub: ScrubState, alerts: AlertStore) -> str:
    lines: list[str] = []
    progress = scrub.progress() or {}
    for key, kind, text in _PROGRESS:
        value = progress.get(key) or 0
        lines += _head(f"dicomvault_scrub_{key}", kind, text)
        lines.append(f"dicomvault_scrub_{key} {float(value) if key == 'finished' else int(value)}")
    runs = scrub.runs()
    for key, kind, text in _PER_REPO:
        lines += _head(f"dicomvault_scrub_{key}", kind, text)
        for repo, run in sorted(runs.items()):
            lines.append(f'dicomvault_scrub_{key}{{repo="{repo}"}} {_value(key, run)}')
    open_alerts = alerts.open_alerts()
    lines += _head("dicomvault_alerts_open", "gauge", "Open alerts, by kind.")
    kinds: dict[str, int] = {}
    for a in open_alerts:
        kinds[a["kind"]] = kinds.get(a["kind"], 0) + 1
    lines += [f'dicomvault_alerts_open{{kind="{k}"}} {n}' for k, n in sorted(kinds.items())]
    return "\n".join(lines) + "\n"


def _value(key: str, run: dict[str, object]) -> str:
    if key == "repo_last_finished":
        return str(float(run.get("finished") or 0))  # type: ignore[arg-type]
    if key == "repo_unhealed":
        return str(len(run.get("unhealed") or []))  # type: ignore[arg-type]
    return str(int(run.get(key.removeprefix("repo_")) or 0))  # type: ignore[call-overload]


def _head(name: str, kind: str, text: str) -> list[str]:
    return [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
