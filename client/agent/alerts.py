"""The agent's own troubles, as the alert lines it shows in status.json and sends in heartbeats
(the server turns them into `agent_alert` alerts and delivers them, docs/design.md §10).

Owns the rules: the spool over `[spool] alert_bytes`, `[alerts] upload_failures` pack
uploads in a row that failed (cleared by the next acknowledged pack), and a DICOM connection or
association refused in the last hour (someone not allow-listed is calling, or the slots ran
out). Pure: the daemon passes the numbers in. Must not send anything.
"""

from __future__ import annotations

from client.agent.config import Policy
from client.agent.door import Door
from client.spool import UploadStats

REFUSAL_ALERT_SECONDS = 3600.0  # a refusal keeps its alert raised this long


def agent_alerts(
    policy: Policy,
    spool_bytes: int,
    uploads: UploadStats | None,
    door: Door | None = None,
    now: float = 0.0,
) -> list[str]:
    """`door`: the DICOM listener's (None: no listener); `now` on the clock its refusals use."""
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
    last = door.last_refusal() if door is not None else None
    if door is not None and last is not None and now - last.time < REFUSAL_ALERT_SECONDS:
        who = f"{last.calling_ae} from {last.host}" if last.calling_ae else last.host
        out.append(
            f"DICOM listener refused {door.refused} since start; latest: {who}: {last.reason}"
        )
    return out
