"""Client address: only the configured header, only from trusted proxies, walked from the right."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.datastructures import Headers

from vapi_proxy.edge.client_address import ClientAddressResolver, client_address

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
        "Forwarded ignored by default (issue 13.2)",
        "10.0.0.2",
        {"forwarded": "for=198.51.100.9", "x-forwarded-for": "203.0.113.5"},
        "203.0.113.5",
    ),
    ("Forwarded alone ignored by default", "10.0.0.2", {"forwarded": "for=6.6.6.6"}, "10.0.0.2"),
    ("X-Real-IP ignored by default", "10.0.0.2", {"x-real-ip": "6.6.6.6"}, "10.0.0.2"),
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
    assert client_address("10.0.0.2", forwarded, TRUSTED, "Forwarded") == "6.6.6.6"


# (name, configured header, peer, headers, expected)
HEADER_CASES = [
    (
        "Forwarded with quoted IPv6 and port",
        "Forwarded",
        "10.0.0.2",
        {"forwarded": 'for="[2001:db8::7]:4711";proto=https'},
        "2001:db8::7",
    ),
    (
        "Forwarded walked from the right",
        "Forwarded",
        "10.0.0.2",
        {"forwarded": "for=6.6.6.6, for=198.51.100.9;by=10.0.0.2, For=10.3.3.3"},
        "198.51.100.9",
    ),
    (
        "Forwarded obfuscated node",
        "Forwarded",
        "10.0.0.2",
        {"forwarded": "for=_hidden"},
        "10.0.0.2",
    ),
    (
        "Forwarded element without for",
        "forwarded",
        "10.0.0.2",
        {"forwarded": "proto=https"},
        "10.0.0.2",
    ),
    (
        "Forwarded chosen: a client's XFF is ignored",
        "Forwarded",
        "10.0.0.2",
        {"forwarded": "for=198.51.100.9", "x-forwarded-for": "6.6.6.6"},
        "198.51.100.9",
    ),
    (
        "Cloudflare: CF-Connecting-IP only",
        "CF-Connecting-IP",
        "10.0.0.2",
        {
            "cf-connecting-ip": "198.51.100.9",
            "x-forwarded-for": "6.6.6.6",
            "forwarded": "for=7.7.7.7",
        },
        "198.51.100.9",
    ),
    ("Fly-Client-IP", "Fly-Client-IP", "10.0.0.2", {"fly-client-ip": "2001:db8::9"}, "2001:db8::9"),
    ("X-Real-IP", "X-Real-IP", "10.0.0.2", {"x-real-ip": "198.51.100.9"}, "198.51.100.9"),
    ("X-Real-IP absent", "X-Real-IP", "10.0.0.2", {"x-forwarded-for": "6.6.6.6"}, "10.0.0.2"),
    (
        "configured header from an untrusted peer",
        "CF-Connecting-IP",
        "192.0.2.1",
        {"cf-connecting-ip": "6.6.6.6"},
        "192.0.2.1",
    ),
]


@pytest.mark.parametrize(
    ("name", "header", "peer", "headers", "expected"),
    HEADER_CASES,
    ids=[c[0] for c in HEADER_CASES],
)
def test_configured_header(
    name: str, header: str, peer: str, headers: dict[str, str], expected: str
) -> None:
    assert ClientAddressResolver(TRUSTED, header).resolve(peer, headers) == expected


def test_a_client_cannot_pick_a_new_address_per_request() -> None:
    # Behind nginx, which appends the peer to X-Forwarded-For and passes a client's own
    # Forwarded through: every request claiming a fresh address must still resolve to one.
    resolver = ClientAddressResolver(TRUSTED)
    seen = {
        resolver.resolve(
            "10.0.0.2", {"forwarded": f"for=198.51.100.{n}", "x-forwarded-for": "203.0.113.5"}
        )
        for n in range(20)
    }
    assert seen == {"203.0.113.5"}


def test_header_name_is_checked() -> None:
    with pytest.raises(ValueError, match="not a header name"):
        ClientAddressResolver(TRUSTED, "X Forwarded For")


def test_is_in_uses_the_resolved_client() -> None:
    resolver = ClientAddressResolver(TRUSTED)
    internal = [ipaddress.ip_network("10.0.0.0/8")]
    assert resolver.is_in("10.0.0.2", {}, internal)
    assert not resolver.is_in("10.0.0.2", {"x-forwarded-for": "203.0.113.5"}, internal)
    assert not resolver.is_in(None, {}, internal)
    assert not resolver.is_in("testclient", {}, internal)


async def test_the_edge_records_the_resolved_client() -> None:
    # Webhook logs and handlers read `request_state(scope).client`: it is the resolved client,
    # not the balancer that relayed the request.
    import httpx
    from starlette.types import Receive, Scope, Send

    from vapi_proxy.edge.middleware import CorsPolicy, EdgeMiddleware, request_state

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body = str(request_state(scope).client).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    edge = EdgeMiddleware(
        app, cors=CorsPolicy([], 600), client_address=ClientAddressResolver(TRUSTED)
    )
    transport = httpx.ASGITransport(app=edge, client=("10.0.0.2", 4711))
    async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
        headers = {"x-forwarded-for": "203.0.113.5", "forwarded": "for=6.6.6.6"}
        assert (await client.get("/", headers=headers)).text == "203.0.113.5"


_ADDRESSES = st.one_of(
    st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str), st.text(max_size=20)
)


@given(
    client_hops=st.lists(_ADDRESSES, max_size=4),
    real=st.ip_addresses(v=4).filter(lambda a: a not in TRUSTED[0]).map(str),
    other_headers=st.dictionaries(
        st.sampled_from(["forwarded", "x-real-ip", "cf-connecting-ip", "true-client-ip"]),
        st.text(max_size=40),
    ),
)
def test_whatever_a_client_writes_the_balancers_hop_wins(
    client_hops: list[str], real: str, other_headers: dict[str, str]
) -> None:
    # The balancer (10.0.0.2, trusted) appended the address it saw to X-Forwarded-For; all the
    # client controls is what came before it and every other header.
    xff = ", ".join([*client_hops, real])
    headers = {**other_headers, "x-forwarded-for": xff}
    assert ClientAddressResolver(TRUSTED).resolve("10.0.0.2", headers) == str(
        ipaddress.ip_address(real)
    )


def test_a_remembered_peer_still_reads_each_requests_header() -> None:
    # Peers are remembered (parsing is the cost); what a trusted one relays is read every time.
    resolver = ClientAddressResolver([ipaddress.ip_network("10.0.0.0/8")])
    assert resolver.resolve("10.0.0.5", {"x-forwarded-for": "203.0.113.7"}) == "203.0.113.7"
    assert resolver.resolve("10.0.0.5", {"x-forwarded-for": "198.51.100.9"}) == "198.51.100.9"
    assert resolver.resolve("10.0.0.5", {}) == "10.0.0.5"
    assert resolver.resolve("203.0.113.1", {"x-forwarded-for": "1.2.3.4"}) == "203.0.113.1"
    assert resolver.resolve("203.0.113.1", {"x-forwarded-for": "1.2.3.4"}) == "203.0.113.1"
    assert resolver.resolve("not-an-address", {}) == "not-an-address"
