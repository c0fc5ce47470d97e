"""Anonymous callers: keyed by address, IPv6 by its /64 so rotating addresses gains nothing."""

from __future__ import annotations

import pytest

from vapi_proxy.auth.anonymous import AnonymousAuthenticator, caller_key
from vapi_proxy.edge.client_address import ClientAddressResolver


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("::ffff:203.0.113.7", "::ffff:203.0.113.7"),
        ("not-an-address", "not-an-address"),
    ],
)
def test_caller_key(address: str, key: str) -> None:
    assert caller_key(address) == key


def test_two_addresses_of_one_ipv6_subscriber_are_one_caller() -> None:
    anonymous = AnonymousAuthenticator(ClientAddressResolver(()))
    first = anonymous.identify("2001:db8:1:2::10", {})
    second = anonymous.identify("2001:db8:1:2:ffff::99", {})
    assert first.key == second.key
    assert first.claims["address"] == "2001:db8:1:2::10"
    assert anonymous.identify("2001:db8:1:3::10", {}).key != first.key
