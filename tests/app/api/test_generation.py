"""Pieces of the generation routes that a running server cannot easily be made to show."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator

import pytest
from fastapi.responses import JSONResponse

from app.api import generation
from app.api.errors import APIError
from app.api.streaming import EventStreamResponse
from tests.app.aio import run
from tests.app.asgi import Client


async def lines(*items: str) -> AsyncGenerator[str, None]:
    for item in items:
        yield item


def test_a_stream_that_fails_before_its_first_token_answers_503() -> None:
    error = generation.sse({"error": {"message": "boom", "type": "server_error", "param": None, "code": "x"}})
    response = run(generation.event_stream(lines(error, generation.SSE_DONE), preamble="role\n\n"))
    assert isinstance(response, JSONResponse)
    assert response.status_code == 503
    assert json.loads(bytes(response.body))["error"]["message"] == "boom"


def test_a_stream_starts_with_its_preamble_then_the_first_token() -> None:
    async def collect() -> list[str]:
        response = await generation.event_stream(lines("data: 1\n\n", generation.SSE_DONE), preamble="role\n\n")
        assert isinstance(response, EventStreamResponse)
        client = Client()  # stays connected
        await response({"type": "http"}, client.receive, client.send)
        return [m["body"].decode() for m in client.sent if m["type"] == "http.response.body" and m["body"]]

    assert run(collect()) == ["role\n\ndata: 1\n\n", generation.SSE_DONE]


def test_an_empty_prompt_is_refused() -> None:
    with pytest.raises(APIError, match="empty"):
        generation.completion_budget(0, None, 4096, default=16, prompt_field="prompt")
