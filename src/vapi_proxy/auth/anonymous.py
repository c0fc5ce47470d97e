"""Callers without a credential: identified by client address, trusted only where a profile says.

Anonymous never claims a credential: someone who sent a wrong token is refused, not downgraded.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from vapi_proxy.auth.identity import ANONYMOUS_METHOD, Identity
from vapi_proxy.edge.client_address import ClientAddressResolver


class AnonymousAuthenticator:
    """Not in the chain's list of authenticators: the chain asks it only when no credential came."""

    def __init__(self, client_address: ClientAddressResolver) -> None:
        self._client_address = client_address

    def identify(self, peer: str | None, headers: Mapping[str, str]) -> Identity:
        """The anonymous identity of a request from TCP peer `peer`.

        An IPv6 caller is keyed by its /64: one subscriber usually holds a whole /64 and can
        rotate addresses inside it at will, which would otherwise reset every per-caller
        limit. The full address stays in the claims for logs and templates.
        """
        address = self._client_address.resolve(peer, headers)
        return Identity(
            subject=caller_key(address), method=ANONYMOUS_METHOD, claims={"address": address}
        )


def caller_key(address: str) -> str:
    """IPv4 addresses as they are; IPv6 addresses as their /64 network."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return address
