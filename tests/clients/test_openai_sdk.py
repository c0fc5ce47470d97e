"""The OpenAI Python SDK's Responses API pointed at the proxy: `base_url=<proxy>/chat`, the app's
API key as `api_key`, the profile as `assistantId` (Vapi's OpenAI-compatibility guide)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from openai import OpenAI

from tests.support.clients import proxy_for
from vapi_proxy.sandbox import RunningSandbox
from vapi_proxy.testing import ServerThread


@pytest.fixture(scope="module")
def openai_proxy(
    sandbox: RunningSandbox,
    user_key: str,
    other_key: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerThread]:
    folder = str(tmp_path_factory.mktemp("openai"))
    with proxy_for(sandbox, user_key, other_key, folder) as proxy:
        yield proxy


@pytest.fixture
def client(openai_proxy: ServerThread, user_key: str) -> Iterator[OpenAI]:
    with httpx.Client() as http:
        yield OpenAI(
            base_url=f"{openai_proxy.url}/chat", api_key=user_key, http_client=http, max_retries=0
        )


def test_responses_stream(client: OpenAI) -> None:
    stream = client.responses.create(
        model="gpt-4o",  # required by the SDK's types; the proxy drops it, the profile decides
        input="stream me",
        stream=True,
        extra_body={"assistantId": "sales-coach"},
    )
    deltas, completed = [], None
    with stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            elif event.type == "response.completed":
                completed = event.response
    assert "".join(deltas) == "You said: stream me"
    assert completed is not None and completed.output_text == "You said: stream me"
    # The response id continues the conversation, for its owner only.
    more = client.responses.create(
        model="gpt-4o",
        input="and more",
        stream=False,
        extra_body={"previousChatId": completed.id},
    )
    assert more.output_text == "You said: and more"


def test_responses_without_stream(client: OpenAI) -> None:
    response = client.responses.create(
        model="gpt-4o", input="plain", stream=False, extra_body={"assistantId": "support"}
    )
    assert response.status == "completed"
    assert response.output_text == "You said: plain"
