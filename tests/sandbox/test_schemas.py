"""The whitelist validator: Vapi's NestJS messages for unknown keys, types and bounds."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

from vapi_proxy.sandbox.schemas import Validator, load_validator

VALIDATOR = load_validator()
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("dto", "body", "expected"),
    [
        ("CreateWebCallDTO", {"assistantId": "a"}, []),
        (
            "CreateWebCallDTO",
            {"assistantId": "a", "customer": {}},
            ["property customer should not exist"],
        ),
        (
            "CreateWebCallDTO",
            {"assistant": {"userId": "u1"}},
            ["assistant.property userId should not exist"],
        ),
        (
            "CreateWebCallDTO",
            {"assistantId": "a", "assistantOverrides": {"foo": 1}},
            ["assistantOverrides.property foo should not exist"],
        ),
        (
            "CreateWebCallDTO",
            {
                "assistantId": "a",
                "assistantOverrides": {"variableValues": {"anything": {"goes": 1}}},
            },
            [],
        ),
        (
            "CreateWebCallDTO",
            {"assistantId": "a", "metadata": {}, "name": "x"},
            ["property metadata should not exist", "property name should not exist"],
        ),
        (
            "CreateWebCallDTO",
            {"assistant": {"maxDurationSeconds": 9}},
            ["assistant.maxDurationSeconds must not be less than 10"],
        ),
        (
            "CreateWebCallDTO",
            {"assistant": {"maxDurationSeconds": 43201}},
            ["assistant.maxDurationSeconds must not be greater than 43200"],
        ),
        (
            "CreateWebCallDTO",
            {"assistant": {"maxDurationSeconds": "60"}},
            [
                "assistant.maxDurationSeconds must be a number conforming to the specified "
                "constraints"
            ],
        ),
        (
            "CreateWebCallDTO",
            {"assistant": {"name": "n" * 41}},
            ["assistant.name must be shorter than or equal to 40 characters"],
        ),
        ("CreateWebCallDTO", {"assistantId": 5}, ["assistantId must be a string"]),
        (
            "CreateWebCallDTO",
            {"roomDeleteOnUserLeaveEnabled": "yes", "assistantId": "a"},
            ["roomDeleteOnUserLeaveEnabled must be a boolean value"],
        ),
        (
            "CreateWebCallDTO",
            {"assistant": "x"},
            ["nested property assistant must be either object or array"],
        ),
        # The Web SDK sends null for absent arguments; class-validator's IsOptional allows it.
        ("CreateWebCallDTO", {"assistant": None, "assistantOverrides": None, "squadId": "s"}, []),
        (
            "CreateWebCallDTO",
            {"assistant": {"firstMessageMode": "shout"}},
            [
                "assistant.firstMessageMode must be one of the following values: "
                "assistant-speaks-first, assistant-speaks-first-with-model-generated-message, "
                "assistant-waits-for-user"
            ],
        ),
        (
            "CreateWebCallDTO",
            {
                "assistant": {
                    "model": {
                        "provider": "openai",
                        "model": "gpt-4o",
                        "temperature": 0.2,
                        "bogus": 1,
                    }
                }
            },
            ["assistant.model.property bogus should not exist"],
        ),
        (
            "CreateCallDTO",
            {"customers": [{"number": "12"}, {"nope": 1}]},
            [
                "customers.0.number must be longer than or equal to 3 characters",
                "customers.1.property nope should not exist",
            ],
        ),
        (
            "CreateCallDTO",
            {"name": "n" * 41},
            ["name must be shorter than or equal to 40 characters"],
        ),
        ("CreateChatDTO", {"assistantId": "a"}, ["input should not be empty"]),
        (
            "CreateWebChatDTO",
            {"input": "hi", "assistantOverrides": {"firstMessage": "x"}},
            ["assistantOverrides.property firstMessage should not exist"],
        ),
        (
            "OpenAIResponsesRequest",
            {"input": "hi", "model": "gpt"},
            ["property model should not exist"],
        ),
    ],
)
def test_messages(dto: str, body: dict[str, object], expected: list[str]) -> None:
    assert VALIDATOR.check(dto, body) == expected


def test_non_object_body_is_refused() -> None:
    assert VALIDATOR.check("CreateWebCallDTO", ["assistantId"]) == [
        "request body must be a JSON object"
    ]


def test_extract_script_keeps_what_the_validator_needs(tmp_path: Path) -> None:
    spec = {
        "info": {"version": "1.0"},
        "components": {
            "schemas": {
                name: {"type": "object", "properties": {}}
                for name in (
                    "CreateWebCallDTO",
                    "CreateCallDTO",
                    "AssistantOverrides",
                    "CreateChatDTO",
                    "OpenAIResponsesRequest",
                    "CreateWebChatDTO",
                    "OpenAIWebChatRequest",
                )
            }
            | {
                "CreateAssistantDTO": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "maxLength": 40},
                        "server": {"allOf": [{"$ref": "#/components/schemas/Server"}]},
                        "serverMessages": {"type": "array", "enum": ["status-update"]},
                    },
                },
                "Server": {"type": "object", "properties": {"url": {"type": "string"}}},
            }
        },
    }
    src, out = tmp_path / "spec.json", tmp_path / "out.json"
    src.write_text(json.dumps(spec))
    module = runpy.run_path(str(ROOT / "scripts" / "extract-vapi-schemas"))
    assert module["main"](["x", str(src), str(out)]) == 0
    data = json.loads(out.read_text())
    validator = Validator(data)
    validator.finish_unions(data["schemas"])
    assert validator.check("CreateAssistantDTO", {"server": {"url": "u", "x": 1}}) == [
        "server.property x should not exist"
    ]
    assert validator.check("CreateAssistantDTO", {"serverMessages": ["nope"]}) == [
        "serverMessages.0 must be one of the following values: status-update"
    ]


def test_packaged_data_covers_the_request_dtos() -> None:
    for dto in (
        "CreateWebCallDTO",
        "CreateCallDTO",
        "CreateAssistantDTO",
        "AssistantOverrides",
        "CreateChatDTO",
        "OpenAIResponsesRequest",
        "CreateWebChatDTO",
        "OpenAIWebChatRequest",
    ):
        assert VALIDATOR.schemas[dto].rules, dto
