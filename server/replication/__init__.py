"""Replication of each repository to peer chunk servers at other sites (docs/design.md §7).

`settings` (peer configuration), `state` (the durable LMDB queue), `bucket` (pacing), `peer`
(HTTP client for a peer's `/v1/replica` API), `worker` (one replicator per peer) and `service`
(what the app wires in). The peer-side routes live in `server.replica`. This package must not
import `server.app`, `server.handlers` or `server.config`: it is given a `ReplicationSettings`.
"""
