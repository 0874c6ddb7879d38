"""EventStreamResponse (app/api/streaming.py): the token stream's response, driven as uvicorn drives it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from starlette.background import BackgroundTask
from starlette.types import Message

from app.api.streaming import EventStreamResponse
from tests.app.aio import run
from tests.app.asgi import Client


class Generation:
    """A line source that yields when told to, and records whether it was closed (the generation cancelled)."""

    def __init__(self) -> None:
        self.next_line: asyncio.Queue[str | None] = asyncio.Queue()
        self.closed = False

    async def lines(self) -> AsyncIterator[str]:
        try:
            while (line := await self.next_line.get()) is not None:
                yield line
        finally:
            self.closed = True


def test_headers_declare_an_event_stream_without_a_length() -> None:
    async def scenario() -> list[tuple[bytes, bytes]]:
        client = Client()
        generation = Generation()
        for line in ("data: 1\n\n", None):
            generation.next_line.put_nowait(line)
        await EventStreamResponse(generation.lines())({"type": "http"}, client.receive, client.send)
        start = client.sent[0]
        assert start["type"] == "http.response.start"
        assert start["status"] == 200
        return list(start["headers"])

    headers = dict(run(scenario()))
    assert headers[b"content-type"] == b"text/event-stream; charset=utf-8"
    assert headers[b"cache-control"] == b"no-cache"
    assert b"content-length" not in headers


def test_lines_go_out_in_order_and_the_stream_ends() -> None:
    async def scenario() -> tuple[list[Message], str, bool]:
        client = Client()
        generation = Generation()
        response = asyncio.ensure_future(
            EventStreamResponse(generation.lines())({"type": "http"}, client.receive, client.send)
        )
        for line in ("data: a\n\n", "data: b\n\n", "data: [DONE]\n\n"):
            generation.next_line.put_nowait(line)
            await asyncio.sleep(0.01)  # one at a time, as tokens come
        generation.next_line.put_nowait(None)
        await asyncio.wait_for(response, timeout=5)
        return client.sent, client.body, generation.closed

    sent, body, closed = run(scenario())
    assert body == "data: a\n\ndata: b\n\ndata: [DONE]\n\n"
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert closed


def test_a_client_that_leaves_mid_stream_closes_the_generation_quietly() -> None:
    async def scenario() -> tuple[str, bool, bool]:
        client = Client()
        generation = Generation()
        still_cancelling: list[int] = []

        async def request_task() -> None:  # what uvicorn's task runs: the app, then its own bookkeeping
            await EventStreamResponse(generation.lines())({"type": "http"}, client.receive, client.send)
            task = asyncio.current_task()
            assert task is not None
            still_cancelling.append(task.cancelling())

        response = asyncio.ensure_future(request_task())
        generation.next_line.put_nowait("data: a\n\n")
        await asyncio.sleep(0.01)
        client.leave.set()  # and no more lines ever come: only the disconnect can end this
        done, _ = await asyncio.wait({response}, timeout=2)
        assert response in done
        response.result()  # returns normally: nothing to report to anybody
        assert still_cancelling == [0]  # the watcher's cancellation was taken back, not left to surprise callers
        return client.body, generation.closed, response.cancelled()

    body, closed, cancelled = run(scenario())
    assert body == "data: a\n\n"
    assert closed  # EngineClient.stream's cleanup ran: the engine frees the slot
    assert not cancelled


@pytest.mark.parametrize("client_leaves_too", [False, True], ids=["shutdown", "shutdown-as-the-client-leaves"])
def test_a_server_shutdown_cancellation_still_propagates(client_leaves_too: bool) -> None:
    async def scenario() -> bool:
        client = Client()
        generation = Generation()
        response = asyncio.ensure_future(
            EventStreamResponse(generation.lines())({"type": "http"}, client.receive, client.send)
        )
        await asyncio.sleep(0.01)
        if client_leaves_too:
            client.leave.set()  # the watcher will cancel the writer as well, in the same loop iteration
        response.cancel()  # uvicorn cancelling the request task at shutdown
        with pytest.raises(asyncio.CancelledError):
            await response
        return generation.closed

    assert run(scenario())


def test_a_failed_write_closes_the_generation_and_is_raised() -> None:
    async def scenario() -> bool:
        client = Client()
        generation = Generation()
        generation.next_line.put_nowait("data: a\n\n")

        async def broken_send(message: Message) -> None:
            if message["type"] == "http.response.body":
                raise OSError("connection reset")
            await client.send(message)

        with pytest.raises(OSError, match="reset"):
            await EventStreamResponse(generation.lines())({"type": "http"}, client.receive, broken_send)
        return generation.closed

    assert run(scenario())  # the generation does not run on for a client nobody can write to


def test_background_tasks_run_after_the_stream() -> None:
    async def scenario() -> list[str]:
        client = Client()
        generation = Generation()
        generation.next_line.put_nowait(None)
        ran: list[str] = []

        async def note() -> None:
            ran.append("after " + client.body)

        response = EventStreamResponse(generation.lines())
        response.background = BackgroundTask(note)
        await response({"type": "http"}, client.receive, client.send)
        return ran

    assert run(scenario()) == ["after "]
