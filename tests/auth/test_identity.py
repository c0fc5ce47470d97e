"""The identity key: one caller per (method, issuer, subject), and its legacy rewrites."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vapi_proxy.auth.identity import (
    Identity,
    from_legacy_jwt_key,
    identity_key,
    limit_key_from_legacy,
    limit_key_to_legacy,
    parse_identity_key,
    to_legacy_jwt_key,
)

ISSUERS = st.one_of(st.none(), st.text(min_size=1, max_size=40))
SUBJECTS = st.text(max_size=40)


def test_the_same_sub_at_two_issuers_is_two_callers() -> None:
    a = Identity(subject="user-1", method="jwt", issuer="https://a.example/")
    b = Identity(subject="user-1", method="jwt", issuer="https://b.example/")
    assert a.key != b.key and a.hashed != b.hashed
    assert a.key == "jwt:https%3A%2F%2Fa.example%2F:user-1"
    assert Identity(subject="user-1", method="jwt").key == "jwt::user-1"
    # Other methods are one namespace each, and never meet a JWT's.
    assert Identity(subject="user-1", method="api_key").key == "api_key:user-1"
    assert Identity(subject="192.0.2.1", method="anonymous").key == "anonymous:192.0.2.1"


@given(issuer=ISSUERS, subject=SUBJECTS)
def test_a_key_parses_back_to_what_made_it(issuer: str | None, subject: str) -> None:
    assert parse_identity_key(identity_key("jwt", subject, issuer)) == ("jwt", subject, issuer)


@given(first=st.tuples(ISSUERS, SUBJECTS), second=st.tuples(ISSUERS, SUBJECTS))
def test_distinct_callers_get_distinct_keys(
    first: tuple[str | None, str], second: tuple[str | None, str]
) -> None:
    # Issuers containing ':' or the subject's text cannot make two callers share a key.
    if first != second:
        assert identity_key("jwt", first[1], first[0]) != identity_key("jwt", second[1], second[0])


@given(issuer=ISSUERS, subject=SUBJECTS)
def test_legacy_keys_rewrite_both_ways(issuer: str | None, subject: str) -> None:
    legacy = f"jwt:{subject}"
    assert from_legacy_jwt_key(legacy, issuer) == identity_key("jwt", subject, issuer)
    assert to_legacy_jwt_key(from_legacy_jwt_key(legacy, issuer)) == legacy
    assert from_legacy_jwt_key("api_key:ci", issuer) == "api_key:ci"


@given(issuer=ISSUERS, subject=st.text(alphabet="abc-|:", max_size=12))
def test_limit_keys_rewrite_both_ways(issuer: str | None, subject: str) -> None:
    legacy = f"ns:rule:i=jwt:{subject}|p=support:call:quota:day:2026-12-06"
    new = limit_key_from_legacy(legacy, issuer)
    assert new == legacy.replace(f"i=jwt:{subject}", "i=" + identity_key("jwt", subject, issuer), 1)
    assert limit_key_to_legacy(new) == legacy
    untouched = "ns:rule:t=acme:call:slots"
    assert limit_key_from_legacy(untouched, issuer) == untouched
