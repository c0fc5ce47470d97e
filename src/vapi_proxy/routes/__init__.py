"""Routes: thin HTTP handlers that wire edge, auth, policy, limits, upstream and ledger."""
