"""Policy: the pure decisions — profiles, intake, access, body building."""
