"""Admission: whether a request may be generated, and handing it to the engine.

The routes turn a request body into prompt token ids; here that prompt is checked against the served model and the
length budget (refused, never clamped), queued in the engine (429 when the queue is full, 503 when the engine is
gone), and recorded for the access log. What comes back out is framed by framing.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from app.api.errors import APIError
from app.api.request_record import record_of
from app.engine.client import Request as EngineRequest
from app.engine.types import EngineDeadError, QueueFullError, SamplingParams
from app.runtime import Runtime, Served


@dataclass(frozen=True)
class Admitted:
    """A request the engine has accepted: its prompt, and the handles its choices' tokens arrive on."""

    prompt: list[int]
    sequences: list[EngineRequest]


def check_model(runtime: Runtime, requested: str) -> None:
    if requested != runtime.model_name:
        raise APIError(
            400,
            f"model {requested!r} is not served here; this server serves {runtime.model_name!r}",
            param="model",
            code="model_not_found",
        )


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of text; text the tokenizer cannot take (e.g. a lone UTF-16 surrogate) is a client error."""
    try:
        ids: list[int] = tokenizer.encode(text, add_special_tokens=False)
    except (TypeError, ValueError) as error:
        raise APIError(400, f"the text could not be tokenized: {error}", code="invalid_text") from None
    return ids


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


def submit(runtime: Runtime, served: Served, prompt: list[int], choices: list[SamplingParams]) -> list[EngineRequest]:
    try:
        return served.engine.submit_all(prompt, choices)
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


def admit(
    request: Request,
    runtime: Runtime,
    served: Served,
    prompt: list[int],
    *,
    requested_max_tokens: int | None,
    default_max_tokens: int | None,
    prompt_field: str,
    sampling: Callable[[int], list[SamplingParams]],
    stream: bool,
) -> Admitted:
    """Budget, queue and record one request. `sampling(max_tokens)` gives the SamplingParams of each choice."""
    max_tokens = completion_budget(
        len(prompt), requested_max_tokens, runtime.settings.max_model_len, default_max_tokens, prompt_field
    )
    choices = sampling(max_tokens)
    capacity = served.engine.capacity
    if len(choices) > capacity:
        raise APIError(
            400,
            f"n={len(choices)} is more choices than this server can hold at once ({capacity}: --max-batch-size + "
            "--max-queue); ask for fewer",
            param="n",
        )
    sequences = submit(runtime, served, prompt, choices)
    record = record_of(request)
    record.prompt_tokens, record.stream = len(prompt), stream
    return Admitted(prompt, sequences)
