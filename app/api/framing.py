"""Response framing: engine events in, OpenAI's completion objects out, whole (collect) or as server-sent events.

Each route gives a ChunkFormatter (its chunk shapes: chat deltas with reasoning split, or completion text); the
envelopes, usage objects, the stream's error event and [DONE] are built here for both. A generation that fails
raises GenerationError once (engine events → stream_chunks); event_stream turns it into a JSON 503 when no byte
has gone out yet, or into the stream's last event otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import Request
from fastapi.responses import Response
from transformers.convert_slow_tokenizer import bytes_to_unicode

from app.api.errors import APIError, GenerationError, body_of
from app.api.request_record import record_of
from app.api.streaming import EventStreamResponse
from app.engine.client import EngineClient
from app.engine.client import Request as EngineRequest
from app.engine.types import FinishReason, TokenEvent, TokenLogprob

FIRST_EVENT_WAIT_S = 1.0  # see event_stream
CLIENT_GONE = 499  # the status logged for a request whose client disconnected before its answer was ready
SSE_DONE = "data: [DONE]\n\n"


@dataclass(frozen=True)
class Outcome:
    text: str
    finish_reason: FinishReason
    completion_tokens: int
    logprobs: list[TokenLogprob]  # of every token, when the request asked
    pieces: list[tuple[str, int]]  # the text as it came: (piece, completion tokens so far), for per-token counts


class ChunkFormatter(Protocol):
    """The chunks of one choice of one route's stream."""

    def text(self, event: TokenEvent) -> list[dict[str, Any]]:
        """Chunks for an event's newly generated text (and the log probabilities of its tokens, when asked); an
        event with a finish reason carries the generation's last text."""

    def finish(self, reason: FinishReason) -> dict[str, Any]:
        """The chunk that carries finish_reason."""

    def reasoning_tokens(self, completion_tokens: int) -> int | None:
        """How many of the choice's tokens were reasoning (None: the route does not report it)."""

    def usage(self, counts: dict[str, Any]) -> dict[str, Any]:
        """The usage chunk (stream_options.include_usage), carrying the whole request's counts."""


def failure_of(event: TokenEvent) -> APIError:
    """The error an event that ended its generation with one stands for: the client's (400, naming the field)
    when the engine refused the request, else the engine's (503)."""
    assert event.error is not None
    if event.invalid is not None:
        return APIError(400, event.error, param=event.invalid)
    return GenerationError(event.error)


def sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def envelope(
    completion_id: str, kind: str, created: int, model: str, choice: dict[str, Any], index: int = 0
) -> dict[str, Any]:
    """A completion object with one choice, as both routes stream it: `choice` holds its variable part."""
    return completion(completion_id, kind, created, model, [{"index": index, **choice, "logprobs": None}])


def completion(
    completion_id: str, kind: str, created: int, model: str, choices: list[dict[str, Any]]
) -> dict[str, Any]:
    """A completion object with its choices, each whole (index, logprobs and its variable part)."""
    return {"id": completion_id, "object": kind, "created": created, "model": model, "choices": choices}


# byte-level BPE (GPT-2's, which DeepSeek's tokenizer uses) writes each byte as a printable stand-in: its inverse
_BYTE_OF = {shown: byte for byte, shown in bytes_to_unicode().items()}  # type: ignore[no-untyped-call]


class TokenText:
    """A token's own text and bytes, as log probabilities name them. A token that is part of a character decodes
    to U+FFFD; its bytes are still its own (byte-level pieces map back to them), so a client can join them."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    def __call__(self, token: int) -> str:
        text: str = self._tokenizer.decode([token])
        return text

    def bytes(self, token: int) -> list[int]:
        piece = self._tokenizer.convert_ids_to_tokens(token)
        if isinstance(piece, str) and piece and all(c in _BYTE_OF for c in piece):
            return [_BYTE_OF[c] for c in piece]
        return list(self(token).encode("utf-8"))  # a special token, or a tokenizer that is not byte-level


def chat_logprobs(entries: list[TokenLogprob], describe: TokenText) -> dict[str, Any]:
    """A chat choice's `logprobs`: one item per token, with its most likely alternatives."""

    def item(token: int, logprob: float) -> dict[str, Any]:
        return {"token": describe(token), "logprob": logprob, "bytes": describe.bytes(token)}

    return {
        "content": [{**item(e.token, e.logprob), "top_logprobs": [item(t, lp) for t, lp in e.top]} for e in entries]
    }


def _by_text(top: tuple[tuple[int, float], ...], describe: Callable[[int], str]) -> dict[str, float]:
    """The legacy shape keys alternatives by their text: where two tokens read the same (pieces of characters),
    the likelier one's value stays."""
    found: dict[str, float] = {}
    for token, logprob in top:
        found.setdefault(describe(token), logprob)
    return found


def completion_logprobs(entries: list[TokenLogprob], describe: Callable[[int], str], offset: int) -> dict[str, Any]:
    """A text completion's `logprobs`, the legacy shape: parallel lists, `text_offset` counted from `offset`."""
    tokens = [describe(e.token) for e in entries]
    offsets = []
    for text in tokens:
        offsets.append(offset)
        offset += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [_by_text(e.top, describe) for e in entries],
        "text_offset": offsets,
    }


def total_usage(prompt_tokens: int, outcomes: Sequence[tuple[int, int | None]]) -> dict[str, Any]:
    """The usage of a request whose choices generated (completion tokens, reasoning tokens or None) each: the
    prompt counted once (it is computed once), the choices' tokens added up."""
    reasoning = [r for _, r in outcomes if r is not None]
    return usage(prompt_tokens, sum(c for c, _ in outcomes), sum(reasoning) if reasoning else None)


def usage(prompt_tokens: int, completion_tokens: int, reasoning_tokens: int | None = None) -> dict[str, Any]:
    """OpenAI's usage object; chat answers also say how many completion tokens were reasoning."""
    counts: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if reasoning_tokens is not None:
        counts["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
    return counts


async def collect(engine: EngineClient, sequences: list[EngineRequest], request: Request) -> list[Outcome] | None:
    """Wait for every choice's whole answer. If the client disconnects meanwhile, cancel the generations and return
    None (logged as 499, nginx's "client closed request")."""

    async def consume(sequence: EngineRequest) -> Outcome:
        pieces: list[tuple[str, int]] = []
        logprobs: list[TokenLogprob] = []
        async for event in engine.stream(sequence):
            pieces.extend(event.pieces())
            logprobs.extend(event.logprobs)
            if event.finish_reason is not None:
                if event.error is not None:
                    raise failure_of(event)
                text = "".join(piece for piece, _ in pieces)
                return Outcome(text, event.finish_reason, event.completion_tokens, logprobs, pieces)
        raise GenerationError("the generation ended without a result")

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    consumers = [asyncio.ensure_future(consume(sequence)) for sequence in sequences]
    settled = asyncio.ensure_future(asyncio.wait(consumers, return_when=asyncio.FIRST_EXCEPTION))
    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({settled, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        failure = next((c.exception() for c in consumers if c.done() and not c.cancelled() and c.exception()), None)
        gone = failure is None and not all(c.done() for c in consumers)
        # A cancelled consumer closes its engine stream, which cancels that generation in the engine.
        pending = [watcher, settled, *consumers]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)  # let the cancellations finish
        for sequence in sequences:  # one whose consumer never started is still running in the engine
            engine.cancel(sequence)
    record = record_of(request)
    if gone:
        record.status = CLIENT_GONE
        return None
    if failure is not None:
        raise failure
    outcomes = [consumer.result() for consumer in consumers]
    record.completion_tokens = sum(o.completion_tokens for o in outcomes)
    return outcomes


async def stream_chunks(
    engine: EngineClient,
    sequences: list[EngineRequest],
    request: Request,
    formatters: list[ChunkFormatter],
    include_usage: bool,
    prompt_tokens: int,
) -> AsyncGenerator[str, None]:
    """Engine events of every choice as SSE lines (each chunk names its choice's index), ending with [DONE];
    raises GenerationError if the engine ends a choice with an error. Closing it early (the client left) cancels
    every generation."""
    record = record_of(request)
    finished: dict[int, int] = {}
    async with contextlib.aclosing(_events(engine, sequences)) as events:
        async for choice, event in events:
            if event.error is not None:
                raise failure_of(event)
            formatter = formatters[choice]
            for chunk in formatter.text(event):
                yield sse(chunk)
            if event.finish_reason is not None:
                finished[choice] = event.completion_tokens
                record.completion_tokens = sum(finished.values())
                yield sse(formatter.finish(event.finish_reason))
    if include_usage:
        counts = [(tokens, formatters[choice].reasoning_tokens(tokens)) for choice, tokens in sorted(finished.items())]
        yield sse(formatters[0].usage(total_usage(prompt_tokens, counts)))
    yield SSE_DONE


async def _events(engine: EngineClient, sequences: list[EngineRequest]) -> AsyncGenerator[tuple[int, TokenEvent], None]:
    """(choice, event) of every sequence as they come. One sequence (n = 1, the hot path) is read directly; several
    are read by one task each into a queue. Closing this early cancels every generation still running."""
    if len(sequences) == 1:
        try:
            async with contextlib.aclosing(engine.stream(sequences[0])) as only:
                async for event in only:
                    yield 0, event
        finally:
            engine.cancel(sequences[0])  # closed before its first event: its stream never ran
        return
    queue: asyncio.Queue[tuple[int, TokenEvent]] = asyncio.Queue()

    async def pump(choice: int, sequence: EngineRequest) -> None:
        try:
            async for event in engine.stream(sequence):
                queue.put_nowait((choice, event))
        except Exception as error:  # the reader must hear of it, or it would wait for this choice forever
            queue.put_nowait((choice, TokenEvent("", 0, FinishReason.ERROR, error=f"{type(error).__name__}: {error}")))

    pumps = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(sequences)]
    try:
        ended = 0
        while ended < len(sequences):
            choice, event = await queue.get()
            if event.finish_reason is not None:
                ended += 1
            yield choice, event
    finally:
        for task in pumps:  # a cancelled pump closes its engine stream, which cancels that generation
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        for sequence in sequences:  # and one whose pump never started
            engine.cancel(sequence)


async def event_stream(lines: AsyncGenerator[str, None], request: Request, preamble: str = "") -> Response:
    """An SSE response that starts with the first generated text when it comes soon; `preamble` goes before it.

    Holding the headers back for up to FIRST_EVENT_WAIT_S lets a generation that fails before producing anything
    answer with a real status (the error's own, with its JSON body) instead of a 200 stream carrying an error, and
    keeps the HTTP process quiet while a burst of requests is being prefilled. A request that waits longer in the
    queue gets its headers anyway, so proxies in front do not time out on it. A failure after that ends the stream
    with an error event and [DONE], and is logged and counted as 503."""
    first = asyncio.ensure_future(anext(lines, None))
    await asyncio.wait({first}, timeout=FIRST_EVENT_WAIT_S)
    if first.done() and isinstance(failure := first.exception(), APIError):
        await lines.aclose()
        raise failure  # answered by the API error handler, as any refusal is

    async def everything() -> AsyncIterator[str]:
        # Closing this generator early (the client left) closes the lines, and with them the generation, now.
        async with contextlib.aclosing(lines):
            started = False
            try:
                try:
                    head = await first
                except asyncio.CancelledError:
                    first.cancel()
                    await asyncio.wait({first})  # it runs the lines generator, which must be idle to be closed
                    raise
                yield preamble + (head or "")
                started = True
                async for line in lines:
                    yield line
            except APIError as error:
                record_of(request).status = error.status
                # A stream's first chunk is always its preamble (the role), error or not.
                yield ("" if started else preamble) + sse(body_of(error)) + SSE_DONE

    return EventStreamResponse(everything())
