"""Client address: forwarded headers count only from trusted proxies, walked from the right."""

from __future__ import annotations

import ipaddress

import pytest
from starlette.datastructures import Headers

from vapi_proxy.edge.client_address import client_address

TRUSTED = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")]

CASES = [
    # (name, peer, headers, expected)
    ("no headers", "192.0.2.1", {}, "192.0.2.1"),
    ("untrusted peer spoofs XFF", "192.0.2.1", {"x-forwarded-for": "6.6.6.6"}, "192.0.2.1"),
    ("untrusted peer spoofs Forwarded", "192.0.2.1", {"forwarded": "for=6.6.6.6"}, "192.0.2.1"),
    ("trusted peer, one hop", "10.0.0.2", {"x-forwarded-for": "203.0.113.5"}, "203.0.113.5"),
    (
        "client-written hops ignored",
        "10.0.0.2",
        {"x-forwarded-for": "6.6.6.6, 203.0.113.5, 10.9.9.9"},
        "203.0.113.5",
    ),
    (
        "all hops trusted: leftmost",
        "10.0.0.2",
        {"x-forwarded-for": "10.1.1.1, 10.2.2.2"},
        "10.1.1.1",
    ),
    ("trusted peer, no header", "10.0.0.2", {}, "10.0.0.2"),
    ("garbage hop stops the walk", "10.0.0.2", {"x-forwarded-for": "nonsense"}, "10.0.0.2"),
    ("garbage beyond a good hop", "10.0.0.2", {"x-forwarded-for": "x, 203.0.113.5"}, "203.0.113.5"),
    ("XFF with port", "10.0.0.2", {"x-forwarded-for": "203.0.113.5:4711"}, "203.0.113.5"),
    ("XFF IPv6 bracketed", "10.0.0.2", {"x-forwarded-for": "[2001:db8::1]:80"}, "2001:db8::1"),
    ("XFF IPv6 bare", "10.0.0.2", {"x-forwarded-for": "2001:db8::1"}, "2001:db8::1"),
    ("header name case", "10.0.0.2", {"X-Forwarded-For": "203.0.113.5"}, "203.0.113.5"),
    (
        "Forwarded with quoted IPv6 and port",
        "10.0.0.2",
        {"forwarded": 'for="[2001:db8::7]:4711";proto=https'},
        "2001:db8::7",
    ),
    (
        "Forwarded walked from the right",
        "10.0.0.2",
        {"forwarded": "for=6.6.6.6, for=198.51.100.9;by=10.0.0.2, For=10.3.3.3"},
        "198.51.100.9",
    ),
    ("Forwarded obfuscated node", "10.0.0.2", {"forwarded": "for=_hidden"}, "10.0.0.2"),
    ("Forwarded element without for", "10.0.0.2", {"forwarded": "proto=https"}, "10.0.0.2"),
    (
        "Forwarded wins over XFF",
        "10.0.0.2",
        {"forwarded": "for=198.51.100.9", "x-forwarded-for": "203.0.113.5"},
        "198.51.100.9",
    ),
    ("IPv6 trusted peer", "fd00::1", {"x-forwarded-for": "203.0.113.5"}, "203.0.113.5"),
    ("IPv4-mapped peer unwrapped", "::ffff:192.0.2.1", {}, "192.0.2.1"),
    (
        "IPv4-mapped trusted peer",
        "::ffff:10.0.0.2",
        {"x-forwarded-for": "203.0.113.5"},
        "203.0.113.5",
    ),
    ("no peer", None, {"x-forwarded-for": "203.0.113.5"}, "unknown"),
    ("empty peer", "", {"x-forwarded-for": "203.0.113.5"}, "unknown"),
    ("non-IP peer kept", "testclient", {"x-forwarded-for": "203.0.113.5"}, "testclient"),
]


@pytest.mark.parametrize(("name", "peer", "headers", "expected"), CASES, ids=[c[0] for c in CASES])
def test_client_address(
    name: str, peer: str | None, headers: dict[str, str], expected: str
) -> None:
    assert client_address(peer, headers, TRUSTED) == expected


def test_nothing_trusted_means_the_peer() -> None:
    assert client_address("10.0.0.2", {"x-forwarded-for": "203.0.113.5"}, []) == "10.0.0.2"


def test_repeated_header_lines_are_one_list() -> None:
    # The client sent its own line first; our proxy added a second one rather than appending.
    headers = Headers(raw=[(b"x-forwarded-for", b"6.6.6.6"), (b"x-forwarded-for", b"203.0.113.5")])
    assert client_address("10.0.0.2", headers, TRUSTED) == "203.0.113.5"
    forwarded = Headers(raw=[(b"forwarded", b"for=6.6.6.6"), (b"forwarded", b"for=10.4.4.4")])
    assert client_address("10.0.0.2", forwarded, TRUSTED) == "6.6.6.6"
