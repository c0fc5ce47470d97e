"""The official clients work against the simulator: `vapi-server-sdk` and `openai` Responses."""

from __future__ import annotations

import httpx
import openai
from vapi import Vapi

from tests.support.sandbox import ASSISTANT_ID, NUMBER_ID
from vapi_proxy.sandbox import RunningSandbox


def test_vapi_server_sdk_calls_and_chats(sim: RunningSandbox, client: httpx.Client) -> None:
    # The SDK's first call builds its pydantic models lazily: ~10 s here, not the simulator.
    vapi = Vapi(
        token=sim.settings.private_key.get_secret_value(), base_url=sim.url, httpx_client=client
    )
    call = vapi.calls.create(
        assistant_id=ASSISTANT_ID,
        phone_number_id=NUMBER_ID,
        customer={"number": "+15551234567"},
    )
    assert call.id
    fetched = vapi.calls.get(call.id)
    assert fetched.id == call.id
    assert fetched.type == "outboundPhoneCall"
    chat = vapi.chats.create(assistant_id=ASSISTANT_ID, input="hello sdk")
    assert chat.output[0].content == "You said: hello sdk"


def test_openai_responses_stream(sim: RunningSandbox) -> None:
    # No `model`: Vapi's OpenAIResponsesRequest has no such property (whitelist would refuse it).
    with openai.OpenAI(
        api_key=sim.settings.private_key.get_secret_value(),
        base_url=sim.url + "/chat",
        max_retries=0,
    ) as client:
        stream = client.responses.create(
            input="hi openai", stream=True, extra_body={"assistantId": ASSISTANT_ID}
        )
        events = list(stream)
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == "You said: hi openai"
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == "You said: hi openai"
