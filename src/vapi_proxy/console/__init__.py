"""The operator console: admin sessions and access control, identity blocks, the audit trail and
the ledger queries behind `/admin` and `/admin/api/...`."""
