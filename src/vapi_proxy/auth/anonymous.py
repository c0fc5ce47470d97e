"""Callers without a credential: identified by client address, trusted only where a profile says.

Anonymous never claims a credential: someone who sent a wrong token is refused, not downgraded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from vapi_proxy.auth.identity import ANONYMOUS_METHOD, Identity
from vapi_proxy.edge.client_address import Network, client_address


class AnonymousAuthenticator:
    """Not in the chain's list of authenticators: the chain asks it only when no credential came."""

    def __init__(self, trusted_proxies: Sequence[Network]) -> None:
        self._trusted = tuple(trusted_proxies)

    def identify(self, peer: str | None, headers: Mapping[str, str]) -> Identity:
        """The anonymous identity of a request from TCP peer `peer`."""
        address = client_address(peer, headers, self._trusted)
        return Identity(subject=address, method=ANONYMOUS_METHOD)
