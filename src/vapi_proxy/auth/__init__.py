"""Authentication: turn a request's verified credential into an `Identity`."""

from vapi_proxy.auth.chain import AuthChain
from vapi_proxy.auth.config import AuthSettings
from vapi_proxy.auth.identity import Identity

__all__ = ["AuthChain", "AuthSettings", "Identity"]
