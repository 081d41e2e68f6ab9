"""Route templates and prefixes of the chunk server's API (docs/api.md).

The server registers these templates; clients build URLs from them. `{name}` is a repository
name. Paths below a repository prefix (`config`, `packs/<id>`, …) are written where used.
"""

from __future__ import annotations

API = "/v1"
HEALTH = f"{API}/health"
SCRUB = f"{API}/scrub"
ALERTS = f"{API}/alerts"
REPO = f"{API}/repos/{{name}}"  # a client's repository
REPLICA = f"{API}/replica"  # what a primary site may push to a peer
REPLICA_REPO = f"{REPLICA}/repos/{{name}}"
# The repository's primary generation (docs/design.md §17; not §14's prune generation): in every
# answer about a repository, in a client's commit and in a primary's pushes.
PRIMARY_GENERATION_HEADER = "Dicomvault-Primary-Generation"


def repo_url(base: str, name: str) -> str:
    """`base` (scheme, host, port and any proxy prefix) + the repository's route."""
    return base.rstrip("/") + REPO.format(name=name)


def replica_repo_url(base: str, name: str) -> str:
    return base.rstrip("/") + REPLICA_REPO.format(name=name)
