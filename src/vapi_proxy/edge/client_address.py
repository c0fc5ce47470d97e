"""The client's address: the TCP peer, or what the operator's own balancer says the peer was.

Anyone can send forwarded headers; one means something only when the peer that sent it is a
proxy we run, and only the one header that proxy writes: a balancer appends to (or sets) its
own header and passes every other one through untouched, client-written. So exactly one header
is read, the one the operator names (`auth.client_address_header`), and its hops are walked from
the right (nearest), stopping at the first address that is not a trusted proxy: that is the
client. Addresses further left, and every other forwarded header, were written by the client.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_MAX_PEERS = 4096
UNKNOWN = "unknown"
"""The address reported when the server gives no peer (e.g. a Unix socket)."""

DEFAULT_HEADER = "X-Forwarded-For"
HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
"""An RFC 9110 §5.1 field name (a token)."""


class ClientAddressResolver:
    """The one place a request's client address is worked out (auth, metrics, logs, webhooks).

    `header` is the field the trusted balancer writes: `X-Forwarded-For` (nginx, ingress-nginx,
    AWS ALB, most balancers), `Forwarded` (RFC 7239), or a single-address one such as
    `X-Real-IP`, `CF-Connecting-IP` or `Fly-Client-IP`. Without trusted proxies no header is read.
    """

    def __init__(self, trusted: Sequence[Network], header: str = DEFAULT_HEADER) -> None:
        if not HEADER_NAME.fullmatch(header):
            raise ValueError(f"{header!r} is not a header name")
        self.trusted = tuple(trusted)
        self.header = header.lower()
        self._rfc7239 = self.header == "forwarded"
        # peer → (its normalised text, the address when it is a trusted proxy, else None): the
        # same few peers ask again and again, and parsing an address is most of the work.
        self._peers: dict[str, tuple[str, Address | None]] = {}

    def resolve(self, peer: str | None, headers: Mapping[str, str]) -> str:
        """The client's address as a normalised string.

        `headers` is looked up case-insensitively. Repeated header lines count as one
        comma-joined list (RFC 9110 §5.3) when `headers` has Starlette's `getlist`; a plain
        mapping holds one value per name, so its caller must join them.
        """
        if not peer:
            return UNKNOWN
        known = self._peers.get(peer)
        if known is None:
            known = self._learn(peer)
        text, proxy = known
        if proxy is None:
            return text
        current = proxy
        value = _joined(headers, self.header)
        if not value:
            return text
        hops = _forwarded_for(value) if self._rfc7239 else value.split(",")
        for hop in reversed(hops):
            address = _parse(hop)
            if address is None:
                # "unknown", an obfuscated name or garbage: nothing beyond it can be trusted, so
                # the last trusted proxy is the best we know.
                break
            current = address
            if not _is_trusted(current, self.trusted):
                break
        return str(current)

    def _learn(self, peer: str) -> tuple[str, Address | None]:
        address = _parse(peer)
        if address is None:
            known: tuple[str, Address | None] = (peer, None)
        elif self.trusted and _is_trusted(address, self.trusted):
            known = (str(address), address)
        else:
            known = (str(address), None)
        if len(self._peers) >= _MAX_PEERS:
            self._peers.clear()  # bounded: many distinct peers just means parsing again
        self._peers[peer] = known
        return known

    def is_in(
        self, peer: str | None, headers: Mapping[str, str], networks: Sequence[Network]
    ) -> bool:
        """Whether the resolved client is on one of `networks` (unknown or unparseable: no)."""
        address = _parse(self.resolve(peer, headers))
        return address is not None and _is_trusted(address, networks)


def client_address(
    peer: str | None,
    headers: Mapping[str, str],
    trusted: Sequence[Network],
    header: str = DEFAULT_HEADER,
) -> str:
    """`ClientAddressResolver(trusted, header).resolve(peer, headers)`, for one-off uses."""
    return ClientAddressResolver(trusted, header).resolve(peer, headers)


def get_header(headers: Mapping[str, str], name: str) -> str | None:
    """`headers[name]` ignoring case, for Starlette `Headers` and plain dicts alike."""
    value = headers.get(name)
    if value is not None:
        return value
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def _joined(headers: Mapping[str, str], name: str) -> str | None:
    # A proxy that adds its own header line instead of appending to the client's would otherwise
    # leave us reading only the first, client-written, line: the spoof this module exists to stop.
    getlist = getattr(headers, "getlist", None)
    if getlist is not None:
        values: list[str] = getlist(name)
        return ", ".join(values) if values else None
    return get_header(headers, name)


def _is_trusted(address: Address, trusted: Sequence[Network]) -> bool:
    return any(address.version == net.version and address in net for net in trusted)


def _forwarded_for(value: str) -> list[str]:
    """The `for=` node of each element of an RFC 7239 Forwarded header, in order."""
    nodes = []
    for element in value.split(","):
        node = None
        for pair in element.split(";"):
            name, _, token = pair.strip().partition("=")
            if name.strip().lower() == "for":
                node = token.strip().strip('"')
        # An element without `for=` still is a hop we cannot place: keep it as unparseable.
        nodes.append(node or "")
    return nodes


def _parse(text: str) -> Address | None:
    """An address from `1.2.3.4`, `1.2.3.4:80`, `::1`, `[::1]:80`; IPv4-mapped IPv6 unwrapped."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
