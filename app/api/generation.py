"""What the chat and completions routes share: the length budget, admission, collecting and streaming events."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from app.api.errors import APIError, error_body
from app.api.streaming import EventStreamResponse
from app.engine.client import EngineClient
from app.engine.client import Request as EngineRequest
from app.engine.types import EngineDeadError, FinishReason, QueueFullError, SamplingParams
from app.runtime import Runtime

FIRST_EVENT_WAIT_S = 1.0  # see event_stream
CLIENT_GONE = 499  # the status logged for a request whose client disconnected before its answer was ready


@dataclass(frozen=True)
class Outcome:
    text: str
    finish_reason: FinishReason
    completion_tokens: int


def check_model(runtime: Runtime, requested: str) -> None:
    if requested != runtime.model_name:
        raise APIError(
            400,
            f"model {requested!r} is not served here; this server serves {runtime.model_name!r}",
            param="model",
            code="model_not_found",
        )


def completion_budget(
    prompt_tokens: int, requested: int | None, max_model_len: int, default: int | None, prompt_field: str
) -> int:
    """max_tokens for this request; a request that cannot fit in --max-model-len is refused, never clamped."""
    if prompt_tokens == 0:
        raise APIError(400, "the prompt is empty: there is nothing to continue from", param=prompt_field)
    if prompt_tokens >= max_model_len:
        raise APIError(
            400,
            f"the prompt is {prompt_tokens} tokens, and this server's limit (--max-model-len) is {max_model_len} "
            "tokens for prompt and completion together",
            param=prompt_field,
            code="context_length_exceeded",
        )
    room = max_model_len - prompt_tokens
    if requested is None:
        return min(default, room) if default is not None else room
    if requested > room:
        raise APIError(
            400,
            f"prompt ({prompt_tokens} tokens) + max_tokens ({requested}) = {prompt_tokens + requested} tokens, over "
            f"this server's limit of {max_model_len} (--max-model-len); lower max_tokens to at most {room}",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return requested


def submit(runtime: Runtime, engine: EngineClient, prompt: list[int], params: SamplingParams) -> EngineRequest:
    try:
        return engine.submit(prompt, params)
    except QueueFullError:
        raise APIError(
            429,
            f"the server is at capacity ({runtime.settings.max_queue} requests already waiting); retry shortly",
            type="rate_limit_error",
            code="queue_full",
            headers={"Retry-After": "1"},
        ) from None
    except EngineDeadError as error:
        raise APIError(503, f"the engine is not running: {error}", type="server_error", code="unavailable") from None


async def collect(engine: EngineClient, sequence: EngineRequest, request: Request) -> Outcome | None:
    """Wait for the whole answer. If the client disconnects meanwhile, cancel the generation and return None
    (logged as 499, nginx's "client closed request")."""

    async def consume() -> Outcome:
        parts: list[str] = []
        async for event in engine.stream(sequence):
            parts.append(event.text)
            if event.finish_reason is not None:
                if event.error is not None:
                    raise APIError(503, f"generation failed: {event.error}", type="server_error", code="engine_error")
                return Outcome("".join(parts), event.finish_reason, event.completion_tokens)
        raise APIError(503, "generation ended without a result", type="server_error", code="engine_error")

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    consumer = asyncio.ensure_future(consume())
    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({consumer, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone = not consumer.done()
        for task in (watcher, consumer):
            task.cancel()
        await asyncio.gather(watcher, consumer, return_exceptions=True)  # let the cancellations finish
    if gone:
        request.state.status_override = CLIENT_GONE
        return None
    outcome = consumer.result()
    request.state.completion_tokens = outcome.completion_tokens
    return outcome


async def event_stream(lines: AsyncGenerator[str, None], preamble: str = "") -> Response:
    """An SSE response that starts with the first generated text when it comes soon; `preamble` goes before it.

    Holding the headers back for up to FIRST_EVENT_WAIT_S lets a generation that fails before producing anything
    answer with a real status (503 and the error body) instead of a 200 stream carrying an error, and keeps the
    HTTP process quiet while a burst of requests is being prefilled. A request that waits longer in the queue gets
    its headers anyway, so proxies in front do not time out on it."""
    first = asyncio.ensure_future(anext(lines, None))
    await asyncio.wait({first}, timeout=FIRST_EVENT_WAIT_S)
    if first.done() and (line := first.result()) is not None and line.startswith('data: {"error"'):
        return JSONResponse(json.loads(line.removeprefix("data: ")), status_code=503)

    async def everything() -> AsyncIterator[str]:
        # Closing this generator early (the client left) closes the lines, and with them the generation, now.
        async with contextlib.aclosing(lines):
            try:
                head = await first
            except asyncio.CancelledError:
                first.cancel()
                await asyncio.wait({first})  # it runs the lines generator, which must be idle to be closed
                raise
            yield preamble + (head or "")
            async for line in lines:
                yield line

    return EventStreamResponse(everything())


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of text; text the tokenizer cannot take (e.g. a lone UTF-16 surrogate) is a client error."""
    try:
        ids: list[int] = tokenizer.encode(text, add_special_tokens=False)
    except (TypeError, ValueError) as error:
        raise APIError(400, f"the text could not be tokenized: {error}", code="invalid_text") from None
    return ids


def sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


SSE_DONE = "data: [DONE]\n\n"


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def envelope(completion_id: str, kind: str, created: int, model: str, choice: dict[str, Any]) -> dict[str, Any]:
    """A completion object with one choice, as both routes answer and stream: `choice` holds its variable part."""
    return {
        "id": completion_id,
        "object": kind,
        "created": created,
        "model": model,
        "choices": [{"index": 0, **choice, "logprobs": None}],
    }


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


async def stream_chunks(
    engine: EngineClient,
    sequence: EngineRequest,
    request: Request,
    on_text: Callable[[str, bool], list[dict[str, Any]]],
    on_finish: Callable[[FinishReason], dict[str, Any]],
    on_usage: Callable[[int], dict[str, Any]] | None,
) -> AsyncGenerator[str, None]:
    """Turn engine events into SSE lines. `on_text(text, final)` makes the chunks for new text, `on_finish` the
    chunk carrying finish_reason, `on_usage` the usage chunk. Stops (and cancels) if the client goes away."""
    async with contextlib.aclosing(engine.stream(sequence)) as events:
        async for event in events:
            if event.error is not None:
                request.state.status_override = 503
                yield sse(error_body(f"generation failed: {event.error}", "server_error", code="engine_error"))
                break
            request.state.completion_tokens = event.completion_tokens
            for chunk in on_text(event.text, event.finish_reason is not None):
                yield sse(chunk)
            if event.finish_reason is not None:
                yield sse(on_finish(event.finish_reason))
                if on_usage is not None:
                    yield sse(on_usage(event.completion_tokens))
    yield SSE_DONE
