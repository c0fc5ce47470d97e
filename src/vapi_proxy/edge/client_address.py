"""The client's address: the TCP peer, or what trusted reverse proxies say the peer was.

Anyone can send `X-Forwarded-For`; it means something only when the peer that sent it is a proxy
we run. So the chain of hops is walked from the right (nearest) and stops at the first address
that is not a trusted proxy: that is the client. Addresses further left were written by the
client itself and are ignored.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

UNKNOWN = "unknown"
"""The address reported when the server gives no peer (e.g. a Unix socket)."""


def client_address(peer: str | None, headers: Mapping[str, str], trusted: Sequence[Network]) -> str:
    """The client's address as a normalised string.

    `headers` is looked up case-insensitively. Repeated header lines count as one comma-joined
    list (RFC 9110 §5.3) when `headers` has Starlette's `getlist`; a plain mapping holds one value
    per name, so its caller must join them. RFC 7239 `Forwarded` wins over `X-Forwarded-For` when
    both are present, being the standard one.
    """
    if not peer:
        return UNKNOWN
    current = _parse(peer)
    if current is None:
        return peer
    if not _is_trusted(current, trusted):
        return str(current)
    forwarded = _joined(headers, "forwarded")
    if forwarded is not None:
        hops = _forwarded_for(forwarded)
    else:
        xff = _joined(headers, "x-forwarded-for")
        hops = [part.strip() for part in xff.split(",")] if xff else []
    for hop in reversed(hops):
        address = _parse(hop)
        if address is None:
            # "unknown", an obfuscated name or garbage: nothing beyond it can be trusted, so the
            # last trusted proxy is the best we know.
            break
        current = address
        if not _is_trusted(current, trusted):
            break
    return str(current)


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
