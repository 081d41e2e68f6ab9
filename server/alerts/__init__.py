"""Alerts that reach someone (docs/design.md "Alerts").

`settings` (recipients, thresholds, SMTP), `conditions` (what is wrong right now, from the index,
replication, scrub and drill records), `store` (the durable open/repeat/resolve state in LMDB),
`delivery` (SMTP and webhooks) and `service` (the periodic task the app owns). The server is the
one place that delivers mail: agents report their own troubles in heartbeats and drill reports.
This package must not import `server.app`, `server.handlers` or `server.config`: it is
given an `AlertSite`.
"""
