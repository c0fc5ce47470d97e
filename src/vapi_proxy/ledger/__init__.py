"""The call ledger: calls and the webhook events that changed them, over SQLite or PostgreSQL."""
