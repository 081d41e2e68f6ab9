"""The agent's own troubles, as the alert lines it shows in status.json and sends in heartbeats
(the server turns them into `agent_alert` alerts and delivers them, docs/design.md §10).

Owns the rules: the spool over `[spool] alert_bytes`, and `[alerts] upload_failures` pack
uploads in a row that failed (cleared by the next acknowledged pack). Pure: the daemon passes
the numbers in. Must not send anything.
"""

from __future__ import annotations

from client.agent.config import Policy
from client.spool import UploadStats


def agent_alerts(policy: Policy, spool_bytes: int, uploads: UploadStats | None) -> list[str]:
    out = []
    limit = policy.spool_alert_bytes
    if limit is not None and spool_bytes >= limit:
        out.append(f"spool holds {spool_bytes:,} bytes, over the alert threshold of {limit:,}")
    threshold = policy.upload_failures_alert
    if uploads is not None and threshold > 0 and uploads.failures_in_row >= threshold:
        out.append(
            f"{uploads.failures_in_row} pack uploads in a row failed "
            f"(last error: {uploads.last_error})"
        )
    return out
