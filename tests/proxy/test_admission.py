"""Limits, the ledger and idempotency on `POST /call/web`, through real HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx
import pytest

from tests.support.clients import HTTP, bearer, observed_sandbox, proxy_for, wait_until
from tests.support.http import assert_envelope, post, upstream_bodies
from tests.support.proxy import ProxyFactory
from vapi_proxy.admission import Admission, Admissions, Attempt, Created, Outcome
from vapi_proxy.auth.identity import Identity
from vapi_proxy.edge.middleware import RequestState
from vapi_proxy.errors import ProxyError, TooManyRequestsError, UpstreamError
from vapi_proxy.ledger.store import Ledger
from vapi_proxy.limits.base import AdmissionRequest
from vapi_proxy.limits.config import LimitsSettings
from vapi_proxy.limits.registry import create_limiter
from vapi_proxy.metrics import Metrics
from vapi_proxy.routes.chat import Turn, record_reply
from vapi_proxy.sandbox import RunningSandbox
from vapi_proxy.testing import ServerThread

T = TypeVar("T")


def on_server(server: ServerThread, coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on the server's own event loop (its engine lives there)."""
    assert server.loop is not None
    return asyncio.run_coroutine_threadsafe(coro, server.loop).result(timeout=10)


def runtime(server: ServerThread) -> Any:
    return server.app.runtime  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def _reset(sandbox: RunningSandbox) -> Iterator[None]:
    httpx.delete(sandbox.url + "/__sandbox/requests", timeout=5)
    httpx.delete(sandbox.url + "/__sandbox/faults", timeout=5)
    yield
    httpx.delete(sandbox.url + "/__sandbox/faults", timeout=5)


def limited(rules: list[dict[str, Any]]) -> Any:
    def patch(config: dict[str, Any]) -> None:
        config["limits"] = {"backend": "memory://", "rules": rules}

    return patch


def test_a_created_call_is_in_the_ledger_with_its_caller(
    proxy: ServerThread, user_key: str
) -> None:
    reply = post(proxy, {"assistantId": "sales-coach"}, user_key, headers={"X-Request-ID": "rq-9"})
    assert reply.status_code == 201
    call_id = reply.json()["id"]
    record = on_server(proxy, runtime(proxy).ledger.get_call(call_id))
    assert record is not None
    assert record.identity_key == "api_key:alice"
    assert record.profile == "sales-coach"
    assert record.kind == "web"
    assert record.request_id == "rq-9"
    assert record.max_duration_seconds == 600


def test_quota_refusal_is_a_readable_429_with_retry_after(
    make_proxy: ProxyFactory, sandbox: RunningSandbox, user_key: str
) -> None:
    server = make_proxy(limited([{"name": "daily", "quota": {"per_day": 2}}]))
    for _ in range(2):
        assert post(server, {"assistantId": "sales-coach"}, user_key).status_code == 201
    httpx.delete(sandbox.url + "/__sandbox/requests", timeout=5)
    refused = post(server, {"assistantId": "sales-coach"}, user_key)
    body = assert_envelope(refused, 429)
    assert "2 calls" in str(body["message"])
    assert int(refused.headers["retry-after"]) >= 1
    assert upstream_bodies(sandbox) == []


def test_a_failed_upstream_call_gives_its_reservation_back(
    make_proxy: ProxyFactory, sandbox: RunningSandbox, user_key: str
) -> None:
    server = make_proxy(limited([{"name": "daily", "quota": {"per_day": 1}}]))
    fault = {"path": "/call/web", "action": "status", "status": 500, "count": 1}
    httpx.post(sandbox.url + "/__sandbox/faults", json=fault, timeout=5)
    assert post(server, {"assistantId": "sales-coach"}, user_key).status_code == 503
    # The quota of one is still there because Vapi created nothing.
    assert post(server, {"assistantId": "sales-coach"}, user_key).status_code == 201
    assert post(server, {"assistantId": "sales-coach"}, user_key).status_code == 429


def test_concurrency_holds_under_a_burst(
    make_proxy: ProxyFactory, sandbox: RunningSandbox, user_key: str
) -> None:
    server = make_proxy(
        limited([{"name": "live", "concurrency": 3}, {"name": "daily", "quota": {"per_day": 10}}])
    )
    with ThreadPoolExecutor(max_workers=20) as pool:
        replies = list(
            pool.map(lambda _: post(server, {"assistantId": "sales-coach"}, user_key), range(20))
        )
    statuses = sorted(r.status_code for r in replies)
    assert statuses.count(201) == 3, statuses
    assert set(statuses) == {201, 429}
    for reply in replies:
        if reply.status_code == 429:
            assert_envelope(reply, 429)
    assert len(upstream_bodies(sandbox)) == 3


def test_an_idempotency_key_replays_the_first_call(
    proxy: ServerThread, sandbox: RunningSandbox, user_key: str
) -> None:
    headers = {"Idempotency-Key": "create-42"}
    first = post(proxy, {"assistantId": "sales-coach"}, user_key, headers=headers)
    second = post(proxy, {"assistantId": "sales-coach"}, user_key, headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert second.headers["idempotent-replayed"] == "true"
    assert len(upstream_bodies(sandbox)) == 1
    other = post(proxy, {"assistantId": "support"}, user_key, headers=headers)
    assert_envelope(other, 422)
    bad = post(proxy, {"assistantId": "sales-coach"}, user_key, headers={"Idempotency-Key": "a b"})
    assert_envelope(bad, 400)


def test_idempotency_keys_belong_to_their_caller(
    proxy: ServerThread, sandbox: RunningSandbox, user_key: str, other_key: str
) -> None:
    headers = {"Idempotency-Key": "shared-key"}
    mine = post(proxy, {"assistantId": "support"}, user_key, headers=headers)
    theirs = post(proxy, {"assistantId": "support"}, other_key, headers=headers)
    assert mine.status_code == theirs.status_code == 201
    assert mine.json()["id"] != theirs.json()["id"]


def test_readyz_reports_each_dependency(proxy: ServerThread, sandbox: RunningSandbox) -> None:
    reply = httpx.get(proxy.url + "/readyz")
    assert reply.status_code == 200, reply.text
    checks = reply.json()["checks"]
    assert checks["ledger"]["ok"] is True
    assert checks["limits"]["ok"] is True
    assert upstream_bodies(sandbox) == []
    assert httpx.get(sandbox.url + "/__sandbox/requests").json() == []


def test_readyz_details_are_for_internal_networks_only(make_proxy: Any) -> None:
    server = make_proxy(lambda c: c.update(metrics={"allowed_networks": ["10.0.0.0/8"]}))
    reply = httpx.get(server.url + "/readyz")
    assert reply.status_code == 200
    assert reply.json() == {"status": "ready"}


def test_a_creation_cancelled_mid_upstream_is_never_created_again_with_its_key(
    user_key: str, other_key: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The task is torn down while Vapi holds the request (latency injected): the call may
    exist, so the reservation stays and the key replays a 502 instead of creating again."""

    def one_at_a_time(config: dict[str, Any]) -> None:
        config["limits"] = {"backend": "memory://", "rules": [{"name": "one", "concurrency": 1}]}

    folder = str(tmp_path_factory.mktemp("cancelled"))
    with (
        observed_sandbox() as observed,
        proxy_for(observed.sandbox, user_key, other_key, folder, one_at_a_time) as server,
    ):
        fault = {"path": "/call/web", "action": "none", "latency_seconds": 2, "count": 1}
        assert HTTP.post(f"{observed.sandbox.url}/__sandbox/faults", json=fault).is_success
        headers = {**bearer(user_key), "Idempotency-Key": "cancel-me"}
        body = {"assistantId": "sales-coach"}

        async def create() -> httpx.Response:
            transport = httpx.ASGITransport(app=server.app, client=("127.0.0.1", 50000))
            async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as client:
                return await client.post("/call/web", json=body, headers=headers)

        async def start() -> asyncio.Future[httpx.Response]:
            return asyncio.ensure_future(create())

        def sent() -> list[str]:
            return [k for k in observed.log.started if k.endswith(":/call/web")]

        task = on_server(server, start())
        assert wait_until(lambda: len(sent()) == 1, timeout=5)
        assert server.loop is not None
        server.loop.call_soon_threadsafe(task.cancel)
        assert wait_until(task.done, timeout=5) and task.cancelled()

        async def claim() -> Any:
            return await runtime(server).ledger.idempotency_get("cancel-me", "api_key:alice")

        assert wait_until(lambda: on_server(server, claim()) is not None, timeout=5)
        retried = HTTP.post(f"{server.url}/call/web", json=body, headers=headers)
        assert retried.status_code == 502, retried.text
        assert retried.headers["idempotent-replayed"] == "true"
        replayed = retried.json()
        assert set(replayed) == {"message", "error", "statusCode", "requestId"}
        assert "may have been created" in str(replayed["message"])
        # The possible call keeps its slot: a new key is refused by the limit, not sent.
        other = HTTP.post(
            f"{server.url}/call/web",
            json=body,
            headers={**bearer(user_key), "Idempotency-Key": "another"},
        )
        assert_envelope(other, 429)
        assert len(sent()) == 1
        admissions = runtime(server).metrics.admissions
        assert admissions.labels("call", "cancelled")._value.get() == 1
        assert admissions.labels("call", "refused")._value.get() == 1
        # Let the simulator finish its delayed answer before it is shut down.
        assert wait_until(lambda: sent()[0] in observed.log.finished, timeout=5)


# --- the admission unit's outcomes, on a real limiter and ledger -----------------------------


@pytest.fixture
async def unit(tmp_path: Any) -> AsyncIterator[Admissions]:
    settings = LimitsSettings.model_validate(
        {"rules": [{"name": "one", "concurrency": 1, "kinds": ["call", "chat"]}]}
    )
    ledger = Ledger.from_url(f"sqlite:///{tmp_path}/ledger.db")
    await ledger.start(auto_migrate=True)
    limiter = create_limiter(settings, database=ledger.database)  # the default: in the ledger
    try:
        yield Admissions(limiter, ledger, Metrics())
    finally:
        await limiter.aclose()
        await ledger.aclose()


ALICE = Identity(subject="alice", method="api_key")


async def _admit(unit: Admissions) -> Admission:
    return await unit.admit(
        AdmissionRequest(identity=ALICE, profile="p", worst_case_seconds=60),
        record_kind="web",
        request_id="rq",
    )


async def _slot_free(unit: Admissions) -> bool:
    try:
        admission = await _admit(unit)
    except TooManyRequestsError:
        return False
    await admission.not_sent()
    return True


def _count(unit: Admissions, outcome: str) -> float:
    assert unit.metrics is not None
    value: float = unit.metrics.admissions.labels("call", outcome)._value.get()
    return value


@pytest.mark.parametrize(
    ("failure", "outcome", "released"),
    [
        (UpstreamError("Vapi refused", maybe_sent=False), Outcome.NOT_SENT, True),
        (ProxyError("a caller's own mistake", status_code=400), Outcome.NOT_SENT, True),
        (UpstreamError("timed out", status_code=504, maybe_sent=True), Outcome.MAYBE_SENT, False),
        (RuntimeError("a bug after the reply arrived"), Outcome.MAYBE_SENT, False),
        (asyncio.CancelledError(), Outcome.CANCELLED, False),
    ],
)
async def test_each_failure_has_its_outcome_and_only_unsent_ones_give_back(
    unit: Admissions, failure: BaseException, outcome: Outcome, released: bool
) -> None:
    admission = await _admit(unit)

    async def upstream() -> None:
        raise failure

    with pytest.raises(type(failure)):
        await admission.send(upstream)
    assert admission.outcome is outcome
    assert _count(unit, outcome.value) == 1
    assert await _slot_free(unit) is released
    assert admission.attempt.maybe_created is not released


async def test_a_created_item_is_committed_and_recorded(unit: Admissions) -> None:
    admission = await _admit(unit)

    async def upstream() -> str:
        return "call-1"

    call_id = await admission.send(upstream)
    await admission.created(Created(call_id, "queued"))
    assert admission.outcome is Outcome.CREATED
    record = await unit.ledger.get_call("call-1")
    assert record is not None and record.identity_key == ALICE.key and record.kind == "web"
    assert record.max_duration_seconds == 60
    assert not await _slot_free(unit)  # a live call holds its slot until it is settled
    await unit.limiter.settle("call-1", duration_seconds=1, cost_usd=None)
    assert await _slot_free(unit)


async def test_a_refusal_is_counted(unit: Admissions) -> None:
    await _admit(unit)
    with pytest.raises(TooManyRequestsError):
        await _admit(unit)
    assert _count(unit, "refused") == 1


async def test_a_fail_open_admission_while_the_store_is_down_is_counted_as_degraded(
    tmp_path: Any,
) -> None:
    settings = LimitsSettings.model_validate(
        {
            "backend": "redis://127.0.0.1:9/0",  # nothing listens on the discard port
            "failure_mode": "open",
            "timeout_seconds": 0.5,
            "rules": [{"name": "one", "concurrency": 1}],
        }
    )
    limiter = create_limiter(settings)
    ledger = Ledger.from_url(f"sqlite:///{tmp_path}/ledger.db")
    metrics = Metrics()
    try:
        admission = await Admissions(limiter, ledger, metrics).admit(
            AdmissionRequest(identity=ALICE, profile="p"), record_kind="web", request_id="rq"
        )
        assert admission.reservation.degraded
        assert metrics.degraded_admissions.labels("call")._value.get() == 1
    finally:
        await limiter.aclose()
        await ledger.aclose()


class _SlowClaims(Ledger):
    """A real ledger whose claims land at once but whose answers come back only when allowed
    (a request cancelled in that gap), and whose result writes can be made to fail."""

    gate: asyncio.Event
    fail_complete = False

    async def idempotency_claim(self, *args: Any, **kwargs: Any) -> Any:
        result = await super().idempotency_claim(*args, **kwargs)
        await self.gate.wait()
        return result

    async def idempotency_complete(self, *args: Any, **kwargs: Any) -> None:
        if self.fail_complete:
            raise OSError("disk full")
        await super().idempotency_complete(*args, **kwargs)


@pytest.fixture
async def slow_unit(tmp_path: Any) -> AsyncIterator[Admissions]:
    ledger = _SlowClaims.from_url(f"sqlite:///{tmp_path}/ledger.db")
    assert isinstance(ledger, _SlowClaims)
    ledger.gate = asyncio.Event()
    await ledger.start(auto_migrate=True)
    limiter = create_limiter(LimitsSettings(), database=ledger.database)
    try:
        yield Admissions(limiter, ledger, Metrics())
    finally:
        await limiter.aclose()
        await ledger.aclose()


async def _run(unit: Admissions, create: Any) -> tuple[int, bytes, bool]:
    return await unit.idempotent(
        "k1", ALICE.key, request_hash="h", ttl_seconds=60, request_id="rq", create=create
    )


async def test_a_request_cancelled_while_claiming_its_key_gives_the_key_back(
    slow_unit: Admissions,
) -> None:
    created: list[Attempt] = []

    async def create(attempt: Attempt) -> tuple[int, bytes]:
        created.append(attempt)
        return 201, b"{}"

    task = asyncio.ensure_future(_run(slow_unit, create))
    for _ in range(500):  # the claim is in the database, its answer held back
        if await slow_unit.ledger.idempotency_get("k1", ALICE.key) is not None:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert isinstance(slow_unit.ledger, _SlowClaims)
    slow_unit.ledger.gate.set()
    for _ in range(500):
        if await slow_unit.ledger.idempotency_get("k1", ALICE.key) is None:
            break
        await asyncio.sleep(0.01)
    # Nothing was sent: a retry with the key is served, not told "in progress" for a day.
    assert await _run(slow_unit, create) == (201, b"{}", False)
    assert len(created) == 1


async def test_a_created_item_is_handed_over_when_its_key_cannot_be_completed(
    slow_unit: Admissions,
) -> None:
    assert isinstance(slow_unit.ledger, _SlowClaims)
    slow_unit.ledger.gate.set()
    slow_unit.ledger.fail_complete = True

    async def create(attempt: Attempt) -> tuple[int, bytes]:
        return 201, b'{"id": "call-1"}'

    assert await _run(slow_unit, create) == (201, b'{"id": "call-1"}', False)
    assert slow_unit.metrics is not None
    assert slow_unit.metrics.storage_errors.labels("ledger")._value.get() == 1
    # The key stays in progress: a retry is a 409, not a second creation.
    with pytest.raises(ProxyError) as refused:
        await _run(slow_unit, create)
    assert refused.value.status_code == 409


async def test_a_chat_reply_without_an_id_still_counts_and_is_recorded(unit: Admissions) -> None:
    admission = await unit.admit(
        AdmissionRequest(identity=ALICE, profile="p", kind="chat"),
        record_kind="chat",
        request_id="rq-noid",
    )
    turn = Turn(admission, RequestState(request_id="rq-noid"))

    async def upstream() -> None:
        await record_reply(turn, {"output": [{"role": "assistant", "content": "hi"}]})

    with pytest.raises(UpstreamError) as failed:
        await admission.send(upstream)
    assert failed.value.maybe_sent
    assert admission.outcome is Outcome.CREATED
    assert admission.created_id is not None and admission.created_id.startswith("partial-")
    record = await unit.ledger.get_call(admission.created_id)
    assert record is not None and record.request_id == "rq-noid" and record.kind == "chat"
