"""Structured outputs as a user meets them: response_format through the official openai client, on the built-in
random-weights model, against the real server. The output must parse and validate whatever the model's weights."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, cast

import openai
import pytest
from openai.types.shared_params import ResponseFormatJSONSchema
from pydantic import BaseModel, Field

from bench.grammar_libraries import conforms, schemas
from tests.app.live_server import MODEL, LiveServer, chat, client

pytestmark = pytest.mark.slow

MESSAGES: list[Any] = [{"role": "user", "content": "Describe a city as JSON"}]


def json_schema(schema: dict[str, Any], name: str = "answer", strict: bool = True) -> ResponseFormatJSONSchema:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": strict}}


def test_twenty_random_schemas_are_each_followed(server: LiveServer) -> None:
    """Nested objects, enums, arrays, strings, bounded numbers and booleans: 20 schemas from a seeded generator,
    sent four at a time, so constrained rows share batches."""
    api = client(server)

    def ask(numbered: tuple[int, dict[str, Any]]) -> tuple[dict[str, Any], Any]:
        index, schema = numbered
        response = api.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            max_tokens=400,
            seed=index,
            response_format=json_schema(schema),
        )
        return schema, response.choices[0]

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(ask, enumerate(schemas(20, seed=11, bounded=True))))
    for schema, choice in answers:
        assert choice.finish_reason == "stop", choice.message.content
        assert conforms(json.loads(choice.message.content), schema), (choice.message.content, schema)


class City(BaseModel):
    name: str = Field(max_length=16)
    population: int = Field(ge=0, le=40_000_000)
    kind: Literal["village", "town", "city"]
    districts: list[Literal["north", "south", "old town"]] = Field(max_length=3)
    capital: bool


def test_parse_with_a_pydantic_model(server: LiveServer) -> None:
    completion = client(server).chat.completions.parse(
        model=MODEL, messages=MESSAGES, max_tokens=300, seed=3, response_format=City
    )
    city = completion.choices[0].message.parsed
    assert isinstance(city, City)
    assert completion.choices[0].message.content == city.model_dump_json()  # compact: no free whitespace


def test_a_streamed_answer_reassembles_into_valid_json(server: LiveServer) -> None:
    stream = client(server).chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=300,
        seed=4,
        stream=True,
        response_format=json_schema(City.model_json_schema(), name="City"),
    )
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert len(chunks) > 5  # it came in pieces
    City.model_validate_json(text)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_json_object_mode_and_n_choices(server: LiveServer) -> None:
    """Any object: the random model may write a key for as long as max_tokens lets it, so a choice that ran out is
    an unfinished object, and one that finished parses."""
    response = client(server).chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=40, n=4, seed=5, response_format={"type": "json_object"}
    )
    assert len(response.choices) == 4
    for choice in response.choices:
        content = choice.message.content or ""
        assert content.startswith("{")
        if choice.finish_reason == "stop":
            assert isinstance(json.loads(content), dict)


def test_completions_take_a_response_format_too(server: LiveServer) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    response = client(server).completions.create(
        model=MODEL,
        prompt="JSON:",
        max_tokens=50,
        extra_body={"response_format": json_schema(schema)},
    )
    assert json.loads(response.choices[0].text) in ({"ok": True}, {"ok": False})


@pytest.mark.parametrize("stream", [False, True])
def test_a_schema_the_server_cannot_compile_is_a_400_naming_response_format(server: LiveServer, stream: bool) -> None:
    bad = json_schema({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}})
    answer = chat(server, response_format=bad, stream=stream)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == "response_format"
    assert error["message"].startswith("the JSON schema could not be compiled: ")
    assert "missing" in error["message"]
    assert chat(server).status_code == 200  # and the engine serves on


def test_bad_response_format_shapes_are_refused_by_the_client_api(server: LiveServer) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client(server).chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            max_tokens=5,
            response_format=cast(Any, {"type": "json_schema"}),
        )
    assert "json_schema is required" in str(raised.value)
