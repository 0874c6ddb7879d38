"""Request bodies (app/api/schemas.py): what the server cannot honour is refused, naming the field, never ignored."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from app.api.schemas import MAX_CHOICES, MAX_STOP_STRINGS, ChatCompletionRequest, CompletionRequest
from app.engine.types import Grammar, GrammarKind, SamplingParams
from app.model.conventions import GenerationDefaults, generation_defaults

PLAIN = GenerationDefaults()
R1 = generation_defaults(r1=True)

MESSAGES = [{"role": "user", "content": "Hello"}]


def chat(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": MESSAGES, **fields})


def completion(**fields: Any) -> CompletionRequest:
    return CompletionRequest.model_validate({"model": "m", "prompt": "Hello", **fields})


def refusal(build: Any, **fields: Any) -> str:
    with pytest.raises(ValidationError) as raised:
        build(**fields)
    return str(raised.value)


# --- unsupported fields ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("functions", [{"name": "f"}]),
        ("function_call", "auto"),
        ("presence_penalty", 0.5),
        ("frequency_penalty", -1.0),
        ("logit_bias", {"50256": -100}),
        ("best_of", 3),
    ],
)
def test_unsupported_chat_field_is_refused_naming_it(field: str, value: Any) -> None:
    message = refusal(chat, **{field: value})

    assert f"{field}=" in message
    assert "not supported" in message


@pytest.mark.parametrize(
    ("field", "value"),
    [("echo", True), ("suffix", "tail"), ("tools", [{"type": "function", "function": {"name": "f"}}])],
)
def test_unsupported_completion_field_is_refused_naming_it(field: str, value: Any) -> None:
    assert f"{field}=" in refusal(completion, **{field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n", 1),
        ("best_of", 1),
        ("frequency_penalty", 0),
        ("presence_penalty", 0.0),
        ("logprobs", False),
        ("top_logprobs", 0),
        ("logit_bias", {}),
        ("tools", []),
        ("tool_choice", "none"),
        ("response_format", {"type": "text"}),
        ("n", None),
    ],
)
def test_no_op_values_of_unsupported_fields_are_accepted(field: str, value: Any) -> None:
    assert chat(**{field: value}).model == "m"


def test_unknown_fields_are_ignored() -> None:
    assert chat(metadata={"team": "a"}, store=False).model == "m"


# --- stop strings ------------------------------------------------------------------------------------------------


def test_stop_accepts_one_string_or_up_to_four() -> None:
    assert chat(stop="END").stop_strings == ("END",)
    assert chat(stop=["a", "b", "c", "d"]).stop_strings == ("a", "b", "c", "d")
    assert chat().stop_strings == ()


def test_more_than_four_stop_strings_are_refused() -> None:
    assert MAX_STOP_STRINGS == 4

    assert "stop" in refusal(chat, stop=["a", "b", "c", "d", "e"])


@pytest.mark.parametrize("stop", ["", ["ok", ""]])
def test_an_empty_stop_string_is_refused(stop: str | list[str]) -> None:
    assert "stop strings must not be empty" in refusal(chat, stop=stop)


# --- lengths and ranges ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("value", [0, -5])
def test_max_tokens_below_one_is_refused(field: str, value: int) -> None:
    assert field in refusal(chat, **{field: value})


def test_max_tokens_below_one_is_refused_for_completions() -> None:
    assert "max_tokens" in refusal(completion, max_tokens=0)


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert chat(max_tokens=10, max_completion_tokens=20).requested_max_tokens == 20
    assert chat(max_tokens=10).requested_max_tokens == 10
    assert chat().requested_max_tokens is None
    assert completion(max_tokens=7).requested_max_tokens == 7


@pytest.mark.parametrize(
    ("field", "value"), [("temperature", -0.1), ("temperature", 2.5), ("top_p", 0), ("top_p", 1.5)]
)
def test_sampling_values_out_of_range_are_refused(field: str, value: float) -> None:
    assert field in refusal(chat, **{field: value})


def test_messages_must_not_be_empty() -> None:
    assert "messages" in refusal(ChatCompletionRequest.model_validate, obj={"model": "m", "messages": []})


def test_an_unknown_role_is_refused() -> None:
    assert "role" in refusal(chat, messages=[{"role": "tool", "content": "42"}])


def test_message_content_parts_are_joined_into_text() -> None:
    request = chat(
        messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    )

    assert request.messages[0].text() == "ab"


@pytest.mark.parametrize("prompt", ["Hello", ["Hello"], [1, 2, 3]])
def test_completion_prompt_forms(prompt: str | list[str] | list[int]) -> None:
    assert completion(prompt=prompt).prompt == prompt


@pytest.mark.parametrize("prompt", [["one", "two"], []])
def test_completion_prompt_batches_and_empty_lists_are_refused(prompt: list[str]) -> None:
    assert "prompt" in refusal(completion, prompt=prompt)


# --- streaming ---------------------------------------------------------------------------------------------------


def test_stream_options_without_stream_are_refused() -> None:
    assert "stream_options is only allowed when stream is true" in refusal(chat, stream_options={"include_usage": True})


def test_stream_options_with_stream_set_include_usage() -> None:
    assert chat(stream=True, stream_options={"include_usage": True}).include_usage
    assert not chat(stream=True, stream_options={"include_usage": False}).include_usage
    assert not chat(stream=True).include_usage


def test_unknown_stream_option_is_refused() -> None:
    assert "continuous_usage_stats" in refusal(chat, stream=True, stream_options={"continuous_usage_stats": True})


# --- to the engine -----------------------------------------------------------------------------------------------


def test_sampling_maps_every_field() -> None:
    request = chat(temperature=0.7, top_p=0.9, seed=123, stop=["\n\n", "END"], ignore_eos=True)

    assert request.sampling(64, R1) == SamplingParams(
        max_tokens=64, temperature=0.7, top_p=0.9, seed=123, stop=("\n\n", "END"), ignore_eos=True
    )


def test_sampling_defaults() -> None:
    assert completion().sampling(16, PLAIN) == SamplingParams(
        max_tokens=16, temperature=1.0, top_p=1.0, seed=None, stop=(), ignore_eos=False
    )


def test_each_choice_is_seeded_by_seed_plus_its_index() -> None:
    assert [p.seed for p in chat(n=3, seed=10).choices(8, PLAIN)] == [10, 11, 12]
    assert [p.seed for p in chat(n=2, seed=2**64 - 1).choices(8, PLAIN)] == [2**64 - 1, 0]  # wrapped into range
    assert [p.seed for p in completion(n=2).choices(8, PLAIN)] == [None, None]
    assert len(chat().choices(8, PLAIN)) == 1


@pytest.mark.parametrize("n", [0, -1, MAX_CHOICES + 1, "two"])
def test_n_out_of_range_is_refused_naming_it(n: Any) -> None:
    with pytest.raises(ValidationError) as raised:
        chat(n=n)
    assert [error["loc"] for error in raised.value.errors()] == [("n",)]


def test_logprobs_map_to_the_engine_as_a_count_of_alternatives() -> None:
    assert chat().sampling(8, PLAIN).logprobs is None
    assert chat(logprobs=True).sampling(8, PLAIN).logprobs == 0
    assert chat(logprobs=True, top_logprobs=5).sampling(8, PLAIN).logprobs == 5
    assert completion(logprobs=3).sampling(8, PLAIN).logprobs == 3
    assert completion().sampling(8, PLAIN).logprobs is None


@pytest.mark.parametrize(
    ("build", "fields", "named"),
    [
        (chat, {"top_logprobs": 3}, "top_logprobs needs logprobs"),
        (chat, {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        (chat, {"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
        (completion, {"logprobs": 21}, "logprobs"),
        (completion, {"logprobs": "many"}, "logprobs"),
    ],
)
def test_bad_logprobs_are_refused_naming_the_field(build: Any, fields: dict[str, Any], named: str) -> None:
    assert named in refusal(build, **fields)


def test_r1_defaults_fill_what_the_request_leaves_out_and_its_own_values_win() -> None:
    assert (chat().sampling(8, R1).temperature, chat().sampling(8, R1).top_p) == (0.6, 0.95)
    assert (completion().sampling(8, R1).temperature, completion().sampling(8, R1).top_p) == (0.6, 0.95)
    own = chat(temperature=1.0, top_p=1.0).sampling(8, R1)
    assert (own.temperature, own.top_p) == (1.0, 1.0)
    assert chat(temperature=0).sampling(8, R1).greedy


def test_temperature_zero_is_greedy() -> None:
    assert chat(temperature=0).sampling(8, PLAIN).greedy
    assert not chat(temperature=0.01).sampling(8, PLAIN).greedy


def test_a_single_stop_string_becomes_a_one_element_tuple() -> None:
    assert completion(stop="###").sampling(8, PLAIN).stop == ("###",)


# --- structured outputs ------------------------------------------------------------------------------------------

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


def test_response_formats_become_the_engine_grammar() -> None:
    assert chat(response_format={"type": "text"}).sampling(8, PLAIN).grammar is None
    assert chat().choices(8, PLAIN)[0].grammar is None
    assert chat(response_format={"type": "json_object"}).choices(8, PLAIN)[0].grammar == Grammar(
        GrammarKind.JSON_OBJECT
    )
    strict = {"type": "json_schema", "json_schema": {"name": "A_1", "schema": SCHEMA, "strict": True}}
    assert [p.grammar for p in chat(response_format=strict, n=2).choices(8, PLAIN, grammar_after=77)] == [
        Grammar(
            GrammarKind.JSON_SCHEMA,
            '{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}',
            strict=True,
            after=77,
        )
    ] * 2
    loose = {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}
    assert completion(response_format=loose).choices(8, PLAIN)[0].grammar == Grammar(
        GrammarKind.JSON_SCHEMA, '{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}'
    )
    no_schema = {"type": "json_schema", "json_schema": {"name": "any"}}
    assert chat(response_format=no_schema).choices(8, PLAIN)[0].grammar == Grammar(GrammarKind.JSON_OBJECT)


@pytest.mark.parametrize(
    ("response_format", "named"),
    [
        ({"type": "xml"}, "response_format.type"),
        ({"type": "json_schema"}, "json_schema is required with type json_schema"),
        ({"type": "json_object", "json_schema": {"name": "a"}}, "json_schema is required with type json_schema"),
        ({"type": "json_schema", "json_schema": {"name": "has space", "schema": SCHEMA}}, "json_schema.name"),
        ({"type": "json_schema", "json_schema": {"schema": SCHEMA}}, "json_schema.name"),
        ({"type": "json_schema", "json_schema": {"name": "a", "schema": "{}"}}, "json_schema.schema"),
        ({"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA, "extra": 1}}, "json_schema.extra"),
        ("json", "response_format"),
    ],
)
def test_bad_response_formats_are_refused_naming_the_field(response_format: Any, named: str) -> None:
    assert named in refusal(chat, response_format=response_format)


def test_ignore_eos_cannot_run_past_a_finished_json_value() -> None:
    assert "ignore_eos cannot be combined" in refusal(chat, response_format={"type": "json_object"}, ignore_eos=True)
    assert chat(response_format={"type": "text"}, ignore_eos=True).ignore_eos


# --- tools -------------------------------------------------------------------------------------------------------

WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}
NOW = {"type": "function", "function": {"name": "now"}}
CALLED = {"name": "now", "arguments": "{}"}


def test_forced_tool_calls_become_a_tool_call_grammar() -> None:
    assert chat(tools=[WEATHER]).sampling(8, PLAIN).grammar is None  # auto: the model decides
    assert chat(tools=[WEATHER], tool_choice="auto").choices(8, PLAIN)[0].grammar is None
    required = chat(tools=[WEATHER, NOW], tool_choice="required").choices(8, PLAIN, grammar_after=5)[0].grammar
    assert required == Grammar(
        GrammarKind.TOOL_CALL,
        '[{"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}, '
        '{"name": "now", "parameters": {"type": "object", "properties": {}}}]',
        strict=True,
        after=5,
    )
    named = {"type": "function", "function": {"name": "now"}}
    grammar = chat(tools=[WEATHER, NOW], tool_choice=named).choices(8, PLAIN)[0].grammar
    assert (
        grammar is not None
        and grammar.schema == '[{"name": "now", "parameters": {"type": "object", "properties": {}}}]'
    )
    assert not chat(tools=[WEATHER], tool_choice="none").calls_tools


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"tool_choice": "required"}, 'tool_choice "required" needs tools'),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}}, "'x', which is not"),
        ({"tools": [WEATHER, WEATHER]}, "two tools have the same name"),
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools.0.function.name"),
        ({"tools": [{"type": "retrieval"}]}, "tools.0.type"),
        ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "tools and a JSON response_format"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"messages": [{"role": "tool", "content": "18 C"}]}, "needs tool_call_id"),
        (
            {"messages": [{"role": "user", "content": "x", "tool_calls": [{"id": "c", "function": CALLED}]}]},
            "only assistant messages",
        ),
    ],
)
def test_bad_tool_requests_are_refused_naming_the_problem(fields: dict[str, Any], named: str) -> None:
    assert named in refusal(chat, **fields)


def deep(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        (deep(40), "nests deeper than 32 levels"),
        (deep(900), "nests deeper than 32 levels"),  # as deep as a body parses: refused, no recursion error
        ({"enum": [str(n) for n in range(1001)]}, "1001 enum values, more than 1000"),
        ({"type": "object", "properties": {str(n): {} for n in range(5001)}}, "5001 properties, more than 5000"),
    ],
)
def test_schemas_too_large_to_compile_between_steps_are_refused(schema: dict[str, Any], named: str) -> None:
    response_format = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}
    assert named in refusal(chat, response_format=response_format)
    tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
    assert named in refusal(chat, tools=[tool])
    assert chat(response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": deep(10)}})
