"""The official Python `vapi-server-sdk` pointed at the proxy with an app API key."""

from __future__ import annotations

import pytest
from vapi import Vapi
from vapi.core.api_error import ApiError

from tests.support.clients import HTTP
from vapi_proxy.testing import ServerThread


def _client(proxy: ServerThread, key: str) -> Vapi:
    # Our own httpx client, so no socket outlives the test (the SDK would leave its own open).
    return Vapi(token=key, base_url=proxy.url, httpx_client=HTTP)


def test_calls_create_and_get(phone_proxy: ServerThread, user_key: str) -> None:
    vapi = _client(phone_proxy, user_key)
    call = vapi.calls.create(assistant_id="outbound", customer={"number": "+14155550188"})
    assert call.id and call.type == "outboundPhoneCall"
    assert call.customer is not None and call.customer.number == "+14155550188"
    again = vapi.calls.get(call.id)
    assert again.id == call.id and again.status in {"queued", "ringing", "in-progress"}


def test_a_call_outside_the_allowlist_is_refused(phone_proxy: ServerThread, user_key: str) -> None:
    vapi = _client(phone_proxy, user_key)
    with pytest.raises(ApiError) as caught:
        vapi.calls.create(assistant_id="outbound", customer={"number": "+33612345678"})
    assert caught.value.status_code == 403


def test_another_users_call_is_not_found(
    phone_proxy: ServerThread, user_key: str, other_key: str
) -> None:
    call = _client(phone_proxy, user_key).calls.create(
        assistant_id="outbound", customer={"number": "+14155550189"}
    )
    with pytest.raises(ApiError) as caught:
        _client(phone_proxy, other_key).calls.get(call.id)
    assert caught.value.status_code == 404


def test_chats_create_and_continue(phone_proxy: ServerThread, user_key: str) -> None:
    vapi = _client(phone_proxy, user_key)
    chat = vapi.chats.create(assistant_id="sales-coach", input="hello sdk")
    assert chat.output is not None and chat.output[0].content == "You said: hello sdk"
    more = vapi.chats.create(previous_chat_id=chat.id, input="and again")
    assert more.output is not None and more.output[0].content == "You said: and again"


def test_chats_create_response(phone_proxy: ServerThread, user_key: str) -> None:
    vapi = _client(phone_proxy, user_key)
    # The SDK reads the reply as JSON: it must ask for `stream=False` (the endpoint streams by
    # default, as Vapi's does).
    response = vapi.chats.create_response(assistant_id="support", input="hi", stream=False)
    data = response.dict() if hasattr(response, "dict") else dict(response)
    assert data["object"] == "response"
    assert data["output"][0]["content"][0]["text"] == "You said: hi"
