"""Callers without a credential: identified by client address, trusted only where a profile says.

Anonymous never claims a credential: someone who sent a wrong token is refused, not downgraded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from vapi_proxy.auth.base import Credential
from vapi_proxy.auth.identity import ANONYMOUS_METHOD, Identity
from vapi_proxy.edge.client_address import Network, client_address


class AnonymousAuthenticator:
    def __init__(self, trusted_proxies: Sequence[Network]) -> None:
        self._trusted = tuple(trusted_proxies)

    async def authenticate(self, credential: Credential) -> Identity | None:
        return None

    def identify(self, peer: str | None, headers: Mapping[str, str]) -> Identity:
        """The anonymous identity of a request from TCP peer `peer`."""
        address = client_address(peer, headers, self._trusted)
        return Identity(subject=address, method=ANONYMOUS_METHOD)
