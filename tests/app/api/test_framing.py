"""Response framing (app/api/framing.py) where a running server cannot easily be made to show it: a generation
that fails before its first token, or after its stream has started; a stream's first write."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from typing import Any

import pytest
from fastapi import Request

from app.api import framing
from app.api.errors import GenerationError, body_of
from app.api.request_record import record_of
from app.api.streaming import EventStreamResponse
from app.engine.types import FinishReason, TokenEvent, TokenLogprob
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


# --- several choices ----------------------------------------------------------------------------------------------


class ChoicesEngine:
    """Stands in for EngineClient: each sequence is a list of events, or an exception its stream raises."""

    def __init__(self) -> None:
        self.cancelled: list[object] = []

    async def stream(self, sequence: Any) -> AsyncGenerator[TokenEvent, None]:
        for item in sequence:
            await asyncio.sleep(0)
            if isinstance(item, Exception):
                raise item
            yield item

    def cancel(self, sequence: Any) -> None:
        self.cancelled.append(sequence)


def done(text: str, tokens: int) -> TokenEvent:
    return TokenEvent(text, tokens, FinishReason.LENGTH)


class Plain:
    def text(self, event: TokenEvent) -> list[dict[str, Any]]:
        return [{"text": event.text}] if event.text else []

    def finish(self, reason: FinishReason) -> dict[str, Any]:
        return {"finish": reason.value}

    def reasoning_tokens(self, completion_tokens: int) -> None:
        return None

    def usage(self, counts: dict[str, Any]) -> dict[str, Any]:
        return {"usage": counts}


def test_a_choice_whose_stream_breaks_ends_the_request_instead_of_hanging_it() -> None:
    engine = ChoicesEngine()
    sequences = [[TokenEvent("a", 1), done("b", 2)], [TokenEvent("x", 1), RuntimeError("pipe gone")]]

    async def scenario() -> list[str]:
        stream = framing.stream_chunks(engine, sequences, a_request(), [Plain(), Plain()], True, 3)  # type: ignore[arg-type]
        return [line async for line in stream]

    with pytest.raises(GenerationError, match="pipe gone"):
        run(asyncio.wait_for(scenario(), timeout=5))
    assert len(engine.cancelled) == 2  # every choice is let go


def a_connected_request() -> Request:
    """A request whose client stays connected while it is answered."""

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return Request({"type": "http", "headers": [], "state": {}}, receive)


def test_collect_returns_every_choice_in_order_and_a_failing_choice_fails_the_request() -> None:
    engine = ChoicesEngine()
    scored = TokenLogprob(9, -0.5, ((9, -0.5),))
    merged = TokenEvent("bc", 3, parts=(("b", 2), ("c", 3)), logprobs=(scored,))
    sequences: Any = [[TokenEvent("a", 1), merged, done("", 3)], [done("xyz", 3)]]  # what the stand-in streams
    outcomes = run(framing.collect(engine, sequences, a_connected_request()))  # type: ignore[arg-type]
    assert outcomes is not None and [(o.text, o.completion_tokens) for o in outcomes] == [("abc", 3), ("xyz", 3)]
    assert outcomes[0].pieces == [("a", 1), ("b", 2), ("c", 3), ("", 3)]  # merged events keep their pieces
    assert outcomes[0].logprobs == [scored] and outcomes[1].logprobs == []
    failing: Any = [[done("ok", 1)], [TokenEvent("", 0, FinishReason.ERROR, error="out of memory")]]
    with pytest.raises(GenerationError, match="out of memory"):
        run(framing.collect(engine, failing, a_connected_request()))  # type: ignore[arg-type]


def test_a_client_that_leaves_gets_none_and_every_choice_is_cancelled() -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    engine = ChoicesEngine()
    slow: Any = [[TokenEvent(str(i), i + 1) for i in range(1000)], [TokenEvent("x", 1)] * 1000]
    gone = Request({"type": "http", "headers": [], "state": {}}, receive)
    assert run(framing.collect(engine, slow, gone)) is None  # type: ignore[arg-type]
    assert record_of(gone).status == framing.CLIENT_GONE
    assert len(engine.cancelled) == 2


def test_legacy_alternatives_that_read_the_same_keep_the_likeliest() -> None:
    top = ((5, -0.1), (6, -3.0), (7, -4.0))
    names = {5: "\ufffd", 6: "\ufffd", 7: "a"}
    assert framing._by_text(top, names.__getitem__) == {"\ufffd": -0.1, "a": -4.0}


def test_token_bytes_join_back_into_the_text_even_where_tokens_split_a_character(builtin_tokenizer: Any) -> None:
    text = "naïve 🦙 llama, 龘龘 and ℵ"
    ids = builtin_tokenizer.encode(text, add_special_tokens=False)
    describe = framing.TokenText(builtin_tokenizer)
    assert any(describe(t) == "\ufffd" or "\ufffd" in describe(t) for t in ids)  # some token is part of a character
    assert b"".join(bytes(describe.bytes(t)) for t in ids) == text.encode("utf-8")
