"""Edge: pure ASGI middleware and request-level helpers."""
