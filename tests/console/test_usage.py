"""Usage over time for the console (per hour or day, per profile, top users with what is left
under their limits, CSV) and `GET /me/usage` for end users."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import timedelta
from typing import Any

import httpx
import pytest

from tests.support.console import DAY, ROWS, admin_proxy, usage_row
from tests.support.http import assert_envelope, post
from tests.support.proxy import ProxyFactory
from vapi_proxy.auth.api_key import generate_key
from vapi_proxy.auth.identity import Identity
from vapi_proxy.console.limits_view import identity_from_ledger
from vapi_proxy.ledger.records import utc_now
from vapi_proxy.ledger.schema import calls
from vapi_proxy.testing import ServerThread


@pytest.fixture(scope="module")
def admin_key() -> str:
    return generate_key()


def seed(server: ServerThread, rows: list[dict[str, Any]]) -> None:
    runtime = server.app.runtime  # type: ignore[attr-defined]

    async def insert() -> None:
        async with runtime.ledger.database.write() as conn:
            await conn.execute(calls.insert(), rows)

    assert server.loop is not None
    asyncio.run_coroutine_threadsafe(insert(), server.loop).result(timeout=10)


def _get(server: ServerThread, admin_key: str, path: str, **params: str) -> httpx.Response:
    return httpx.get(
        server.url + path, params=params, headers={"Authorization": f"Bearer {admin_key}"}
    )


def test_usage_per_hour_with_filters(make_proxy: ProxyFactory, admin_key: str) -> None:
    server = admin_proxy(make_proxy, admin_key)
    seed(server, ROWS)
    window = {"since": "2026-11-03T08:00:00Z", "until": "2026-11-03T12:00:00Z"}
    reply = _get(server, admin_key, "/admin/api/usage", **window)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["filter"]["bucket"] == "hour"
    assert [
        (p["t"], p["calls"], p["chats"], p["minutes"], p["costUsd"]) for p in body["series"]
    ] == [
        ("2026-11-03T08:00:00Z", 0, 0, 0.0, 0.0),
        ("2026-11-03T09:00:00Z", 2, 0, 3.0, 1.75),
        ("2026-11-03T10:00:00Z", 0, 0, 0.0, 0.0),
        ("2026-11-03T11:00:00Z", 1, 1, 0.5, 0.11),
    ]
    assert body["totals"] == {"calls": 3, "chats": 1, "minutes": 3.5, "costUsd": 1.86}
    assert [(p["profile"], p["calls"], p["costUsd"]) for p in body["profiles"]] == [
        ("support", 2, 1.36),
        ("sales-coach", 1, 0.5),
    ]
    assert [(u["identity"], u["costUsd"]) for u in body["topUsers"]] == [
        ("api_key:alice", 1.75),
        ("api_key:bob", 0.11),
    ]

    by_profile = _get(server, admin_key, "/admin/api/usage", profile="sales-coach", **window)
    assert by_profile.json()["totals"]["calls"] == 1
    by_tenant = _get(server, admin_key, "/admin/api/usage", tenant="acme", **window)
    assert by_tenant.json()["totals"] == {"calls": 1, "chats": 1, "minutes": 0.5, "costUsd": 0.11}
    by_identity = _get(server, admin_key, "/admin/api/usage", identity="api_key:alice", **window)
    assert by_identity.json()["totals"]["costUsd"] == 1.75
    daily = _get(
        server, admin_key, "/admin/api/usage", since="2026-10-31", until="2026-11-04", bucket="day"
    ).json()
    assert [(p["t"][:10], p["calls"]) for p in daily["series"]] == [
        ("2026-10-31", 1),
        ("2026-11-01", 0),
        ("2026-11-02", 0),
        ("2026-11-03", 3),
    ]


def test_top_users_show_what_is_left_under_their_limits(
    make_proxy: ProxyFactory, admin_key: str, user_key: str
) -> None:
    def limits(config: dict[str, Any]) -> None:
        config["limits"] = {
            "rules": [{"name": "everyone", "quota": {"per_day": 5}, "concurrency": 2}]
        }

    server = admin_proxy(make_proxy, admin_key, limits)
    assert post(server, {"assistantId": "sales-coach"}, user_key).status_code == 201
    body = _get(server, admin_key, "/admin/api/usage").json()
    alice = next(u for u in body["topUsers"] if u["identity"] == "api_key:alice")
    quota = next(r for r in alice["limits"] if r["what"] == "quota")
    assert (quota["rule"], quota["limit"], quota["used"], quota["remaining"]) == (
        "everyone",
        5,
        1,
        4,
    )
    slots = next(r for r in alice["limits"] if r["what"] == "concurrency")
    assert (slots["used"], slots["remaining"]) == (1, 1)


def test_csv_export_is_what_is_shown(make_proxy: ProxyFactory, admin_key: str) -> None:
    server = admin_proxy(make_proxy, admin_key)
    evil = usage_row(
        "c9", DAY + timedelta(hours=9), "=HYPERLINK(1)", "support", auth_method="api_key"
    )
    seed(server, [*ROWS, evil])
    window = {"since": "2026-11-03T08:00:00Z", "until": "2026-11-03T12:00:00Z"}
    reply = _get(server, admin_key, "/admin/api/usage.csv", **window)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/csv")
    assert "attachment" in reply.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(reply.text)))
    assert rows[0] == ["t", "calls", "chats", "minutes", "costUsd"]
    assert rows[2] == ["2026-11-03T09:00:00Z", "3", "0", "4.0", "2.25"]
    users = _get(server, admin_key, "/admin/api/usage.csv", table="users", **window)
    cells = [r[0] for r in csv.reader(io.StringIO(users.text))]
    assert "'=HYPERLINK(1)" in cells  # a spreadsheet would have run it as a formula
    profiles = _get(server, admin_key, "/admin/api/usage.csv", table="profiles", **window)
    assert [r[0] for r in csv.reader(io.StringIO(profiles.text))] == [
        "profile",
        "support",
        "sales-coach",
    ]
    audit = _get(server, admin_key, "/admin/api/audit", action="export").json()["items"]
    assert [a["target"] for a in audit] == ["profiles", "users", "series"]


def test_usage_input_is_checked(make_proxy: ProxyFactory, admin_key: str) -> None:
    server = admin_proxy(make_proxy, admin_key)
    for params in [
        {"since": "yesterday"},
        {"since": "2026-11-05", "until": "2026-11-04"},
        {"bucket": "week"},
        {"since": "2020-01-01", "until": "2026-01-01", "bucket": "hour"},
        {"top": "0"},
        {"top": "101"},
        {"colour": "red"},
    ]:
        assert_envelope(_get(server, admin_key, "/admin/api/usage", **params), 400)
    assert_envelope(_get(server, admin_key, "/admin/api/usage.csv", table="calls"), 400)


def test_me_usage_shows_my_usage_and_what_is_left(
    make_proxy: ProxyFactory, user_key: str, other_key: str
) -> None:
    def limits(config: dict[str, Any]) -> None:
        config["limits"] = {
            "rules": [
                {
                    "name": "everyone",
                    "quota": {"per_day": 3},
                    "concurrency": 2,
                    "budget": {"minutes_per_month": 100},
                }
            ]
        }

    server = make_proxy(limits)
    assert post(server, {"assistantId": "sales-coach"}, user_key).status_code == 201
    assert post(server, {"assistantId": "support"}, other_key).status_code == 201
    seed(
        server,
        [
            usage_row(
                "earlier",
                utc_now() - timedelta(seconds=5),
                "api_key:alice",
                "sales-coach",
                duration_seconds=90.0,
                cost_usd=0.2,
            )
        ],
    )
    reply = httpx.get(server.url + "/me/usage", headers={"Authorization": f"Bearer {user_key}"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["identity"] == "api_key:alice"
    assert body["usage"]["today"] == {"calls": 2, "chats": 0, "minutes": 1.5, "costUsd": 0.2}
    assert body["blocked"] is None
    by_what = {r["what"]: r for r in body["limits"]}
    assert (by_what["quota"]["limit"], by_what["quota"]["used"]) == (3, 1)
    assert by_what["quota"]["remaining"] == 2
    assert by_what["concurrency"]["used"] == 1
    assert by_what["minutes"]["limit"] == 100
    assert "bob" not in reply.text

    # Same authentication as calls: a wrong credential is refused, none is the anonymous caller.
    wrong = {"Authorization": f"Bearer {generate_key()}"}
    assert_envelope(httpx.get(server.url + "/me/usage", headers=wrong), 401)
    anonymous = httpx.get(server.url + "/me/usage").json()
    assert anonymous["identity"] == "anonymous:127.0.0.1"
    assert anonymous["usage"]["today"]["calls"] == 0
    bearer = {"Authorization": f"Bearer {user_key}"}
    assert_envelope(httpx.get(server.url + "/me/usage?profile=nope", headers=bearer), 404)
    assert_envelope(httpx.get(server.url + "/me/usage?x=1", headers=bearer), 400)
    scoped = httpx.get(server.url + "/me/usage?profile=support", headers=bearer).json()
    assert scoped["usage"]["today"]["calls"] == 0


@pytest.mark.parametrize(
    "identity",
    [
        Identity(subject="alice", method="api_key"),
        Identity(subject="user:42", method="jwt", issuer="https://idp.example/"),
        Identity(subject="user-7", method="jwt"),
        Identity(subject="2001:db8::/64", method="anonymous"),
    ],
)
def test_a_ledger_key_gives_back_the_identity_the_limits_count(identity: Identity) -> None:
    """The top users' remaining limits are read with the identity rebuilt from the ledger's key:
    it must be the same key, or the limiter reads another (empty) counter."""
    rebuilt = identity_from_ledger(identity.key, "acme")
    assert rebuilt.key == identity.key
    assert rebuilt.tenant == "acme"
