"""Authentication: turn a request's verified credential into an `Identity`."""

from vapi_proxy.auth.identity import Identity

__all__ = ["Identity"]
