"""Response framing (app/api/framing.py) where a running server cannot easily be made to show it: a generation
that fails before its first token, or after its stream has started; a stream's first write."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator

import pytest
from fastapi import Request

from app.api import framing
from app.api.errors import GenerationError, body_of
from app.api.request_record import record_of
from app.api.streaming import EventStreamResponse
from tests.app.aio import run
from tests.app.asgi import Client


def a_request() -> Request:
    return Request({"type": "http", "headers": [], "state": {}})


async def lines(*items: str, then_fail: str | None = None) -> AsyncGenerator[str, None]:
    for item in items:
        yield item
    if then_fail is not None:
        raise GenerationError(then_fail)
    yield framing.SSE_DONE


async def sent_bodies(response: EventStreamResponse) -> list[str]:
    client = Client()  # stays connected
    await response({"type": "http"}, client.receive, client.send)
    return [m["body"].decode() for m in client.sent if m["type"] == "http.response.body" and m["body"]]


def test_a_stream_that_fails_before_its_first_token_raises_its_error() -> None:
    """The error handler then answers with the error's own status and JSON body, as for any refusal."""
    with pytest.raises(GenerationError) as raised:
        run(framing.event_stream(lines(then_fail="out of memory"), a_request(), preamble="role\n\n"))
    assert raised.value.status == 503
    assert body_of(raised.value)["error"]["message"] == "generation failed: out of memory"


def test_a_stream_that_fails_after_it_started_ends_with_an_error_event_and_done() -> None:
    request = a_request()

    async def scenario() -> list[str]:
        response = await framing.event_stream(lines("data: 1\n\n", then_fail="boom"), request, preamble="role\n\n")
        assert isinstance(response, EventStreamResponse)
        return await sent_bodies(response)

    bodies = run(scenario())
    assert bodies[0] == "role\n\ndata: 1\n\n"
    event, done = bodies[1].split("\n\n")[0], bodies[1].split("\n\n", 1)[1]
    assert json.loads(event.removeprefix("data: "))["error"]["code"] == "engine_error"
    assert done == framing.SSE_DONE
    assert record_of(request).status == 503  # logged and counted as the failure it was


def test_a_stream_starts_with_its_preamble_then_the_first_token() -> None:
    async def scenario() -> list[str]:
        response = await framing.event_stream(lines("data: 1\n\n"), a_request(), preamble="role\n\n")
        assert isinstance(response, EventStreamResponse)
        return await sent_bodies(response)

    assert run(scenario()) == ["role\n\ndata: 1\n\n", framing.SSE_DONE]


def test_a_stream_that_fails_after_its_headers_but_before_a_token_still_opens_with_its_preamble(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(framing, "FIRST_EVENT_WAIT_S", 0.01)  # the headers go out before the failure comes

    async def late_failure() -> AsyncGenerator[str, None]:
        await asyncio.sleep(0.1)
        raise GenerationError("the engine process exited")
        yield ""  # a generator  # pragma: no cover

    async def scenario() -> list[str]:
        response = await framing.event_stream(late_failure(), a_request(), preamble="role\n\n")
        assert isinstance(response, EventStreamResponse)
        return await sent_bodies(response)

    (body,) = run(scenario())
    assert body.startswith("role\n\ndata: {") and body.endswith(framing.SSE_DONE)
