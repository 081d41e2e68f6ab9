"""Prometheus metrics in the text exposition format (version 0.0.4), written by hand.

Owns the counters and the per-route latency histogram and renders them for `/metrics`. Labels
never carry repository names, so one practice's activity is not visible to another's scraper.
Must not do I/O: gauges that need the disk or the index are passed in at render time.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass, field

# Seconds; from a cheap missing-query up to a 16 MiB pack over a slow uplink.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


@dataclass
class _Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds


@dataclass
class Metrics:
    bytes_received: int = 0  # pack bodies accepted or refused: what crossed the wire to us
    packs_stored: int = 0
    packs_duplicate: int = 0
    missing_query_ids: int = 0
    missing_ids_returned: int = 0
    commits: int = 0
    commits_refused: int = 0
    latency: dict[tuple[str, str, int], _Histogram] = field(
        default_factory=lambda: defaultdict(_Histogram)
    )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.latency[(method, route, status)].observe(seconds)

    def render(self, repositories: int) -> str:
        lines: list[str] = []
        counters = {
            "bytes_received_total": ("Pack body bytes received.", self.bytes_received),
            "packs_stored_total": ("Packs newly stored.", self.packs_stored),
            "packs_duplicate_total": (
                "Pack uploads that were already stored.",
                self.packs_duplicate,
            ),
            "missing_query_ids_total": ("Chunk ids asked about.", self.missing_query_ids),
            "missing_ids_returned_total": (
                "Chunk ids answered missing.",
                self.missing_ids_returned,
            ),
            "commits_total": ("Snapshots committed.", self.commits),
            "commits_refused_total": ("Commits refused for missing chunks.", self.commits_refused),
        }
        for name, (help_text, value) in counters.items():
            lines += _metric(f"dicomvault_{name}", "counter", help_text, [("", value)])
        lines += _metric(
            "dicomvault_repositories", "gauge", "Repositories on this server.", [("", repositories)]
        )
        lines += self._render_latency()
        return "\n".join(lines) + "\n"

    def _render_latency(self) -> list[str]:
        name = "dicomvault_request_duration_seconds"
        lines = [f"# HELP {name} Request latency by route.", f"# TYPE {name} histogram"]
        for (method, route, status), h in sorted(self.latency.items()):
            labels = f'method="{method}",route="{_escape(route)}",status="{status}"'
            running = 0
            for bound, count in zip((*BUCKETS, float("inf")), h.counts, strict=True):
                running += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                lines.append(f'{name}_bucket{{{labels},le="{le}"}} {running}')
            lines.append(f"{name}_sum{{{labels}}} {h.total}")
            lines.append(f"{name}_count{{{labels}}} {running}")
        return lines


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> list[str]:
    out = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    out += [f"{name}{labels} {value}" for labels, value in samples]
    return out
