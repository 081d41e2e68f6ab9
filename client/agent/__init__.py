"""The practice agent: receives DICOM (C-STORE, Storage Commitment) and watches folders, then
backs up what arrived, in real time or in after-hours batches (see docs/design.md, "Agent").

Modules: `config` (TOML + flags), `inbox` (durable instance spool), `receiver` (pynetdicom SCP),
`watcher` (inotify + rescans), `batching` (when to seal), `ledger` (what is committed),
`daemon` (the loop), `status` (the status file). Nothing outside `client` imports this package.
"""
