"""Tool calls as a user meets them: tools, tool_choice and tool results through the official openai client, on the
built-in random-weights model against the real server. A forced call's arguments must parse and match the
function's schema whatever the weights."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types.chat import (
    ChatCompletionMessageFunctionToolCall,
    ChatCompletionMessageParam,
    ChatCompletionToolParam,
)

from bench.grammar_libraries import conforms
from tests.app.live_server import MODEL, LiveServer, chat, client

pytestmark = pytest.mark.slow

WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit", "days"],
    "additionalProperties": False,
}
TOOLS: list[ChatCompletionToolParam] = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "The forecast", "parameters": WEATHER_PARAMETERS},
    },
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
]
ASK: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is the weather in Oslo?"}]


@pytest.mark.parametrize("seed", range(4))
def test_a_named_tool_choice_is_called_with_arguments_that_match_its_schema(server: LiveServer, seed: int) -> None:
    response = client(server).chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=400,
        seed=seed,
    )
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert conforms(json.loads(call.function.arguments), WEATHER_PARAMETERS)


def test_required_calls_one_of_the_tools(server: LiveServer) -> None:
    response = client(server).chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=400, seed=1
    )
    [call] = response.choices[0].message.tool_calls or []
    assert isinstance(call, ChatCompletionMessageFunctionToolCall)
    assert call.function.name in ("get_weather", "get_time")
    assert isinstance(json.loads(call.function.arguments), dict)
    assert response.choices[0].finish_reason == "tool_calls"


def test_streamed_tool_calls_are_reassembled_by_the_client(server: LiveServer) -> None:
    with client(server).chat.completions.stream(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=400,
        seed=2,
    ) as stream:
        final = stream.get_final_completion()
    [call] = final.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather"
    assert conforms(json.loads(call.function.arguments), WEATHER_PARAMETERS)
    assert final.choices[0].finish_reason == "tool_calls"


def test_tool_results_in_the_history_are_rendered_and_answered(server: LiveServer) -> None:
    arguments = '{"city":"Oslo","unit":"celsius","days":1}'
    history: list[ChatCompletionMessageParam] = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "4 degrees and snow"},
    ]
    api = client(server)
    answered = api.chat.completions.create(model=MODEL, messages=history, tools=TOOLS, max_tokens=8, temperature=0)
    asked = api.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, max_tokens=8, temperature=0)
    assert answered.choices[0].finish_reason in ("stop", "length", "tool_calls")
    # The call and its result are in the prompt: the markers, name, arguments and result text add their tokens.
    assert answered.usage is not None and asked.usage is not None
    assert answered.usage.prompt_tokens > asked.usage.prompt_tokens + 20


def test_tool_choice_none_offers_no_tools_and_reads_no_calls(server: LiveServer) -> None:
    offered = chat(server, tools=TOOLS, tool_choice="auto", temperature=0).json()
    declined = chat(server, tools=TOOLS, tool_choice="none", temperature=0).json()
    plain = chat(server, temperature=0).json()
    assert declined["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"]
    assert offered["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"]  # the tools section


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "launch"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "tool_call_id"),
    ],
)
def test_bad_tool_requests_are_400_naming_the_problem(server: LiveServer, body: dict[str, Any], named: str) -> None:
    answer = chat(server, **body)
    assert answer.status_code == 400
    assert named in answer.json()["error"]["message"]


def test_parameters_the_server_cannot_compile_are_a_400(server: LiveServer) -> None:
    bad: list[dict[str, Any]] = [
        {
            "type": "function",
            "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "x"}}}},
        }
    ]
    answer = chat(server, tools=bad, tool_choice="required")
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["message"].startswith("a tool's parameters could not be compiled")
