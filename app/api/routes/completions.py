"""POST /v1/completions: raw text in, raw text out (no chat template, no reasoning split)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from app.api import admission, framing
from app.api.deps import RuntimeDep, ServedDep
from app.api.errors import APIError
from app.api.schemas import CompletionRequest
from app.engine.types import FinishReason, TokenEvent

router = APIRouter(prefix="/v1", tags=["openai"])

# OpenAI's default for the legacy completions endpoint.
DEFAULT_COMPLETION_TOKENS = 16


def prompt_ids(tokenizer: Any, body: CompletionRequest) -> list[int]:
    prompt = body.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
        ids = [int(t) for t in prompt]
        vocabulary = len(tokenizer)
        bad = next((t for t in ids if not 0 <= t < vocabulary), None)
        if bad is not None:
            raise APIError(
                400, f"prompt: token id {bad} is outside the vocabulary (0..{vocabulary - 1})", param="prompt"
            )
        return ids
    text = prompt if isinstance(prompt, str) else str(prompt[0])
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos + admission.encode(tokenizer, text)


class CompletionChunks:
    """The chunks of one choice of a streamed text completion."""

    def __init__(
        self,
        completion_id: str,
        created: int,
        model: str,
        index: int = 0,
        describe: framing.TokenText | None = None,
    ) -> None:
        self._id, self._created, self._model, self._index = completion_id, created, model, index
        self._describe = describe  # a token's text, when the request asked for log probabilities
        self._offset = 0  # characters of the tokens reported so far, for text_offset

    def chunk(self, text: str, finish_reason: str | None = None) -> dict[str, Any]:
        choice = {"text": text, "finish_reason": finish_reason}
        return framing.envelope(self._id, "text_completion", self._created, self._model, choice, self._index)

    def text(self, event: TokenEvent) -> list[dict[str, Any]]:
        logprobs = event.logprobs
        if not (event.text or (logprobs and self._describe)):
            return []
        chunk = self.chunk(event.text)
        if logprobs and self._describe is not None:
            scored = framing.completion_logprobs(list(logprobs), self._describe, self._offset)
            self._offset += sum(len(t) for t in scored["tokens"])
            chunk["choices"][0]["logprobs"] = scored
        return [chunk]

    def finish(self, reason: FinishReason) -> dict[str, Any]:
        return self.chunk("", finish_reason=reason.value)

    def reasoning_tokens(self, completion_tokens: int) -> None:
        return None  # raw text: no reasoning split

    def usage(self, counts: dict[str, Any]) -> dict[str, Any]:
        return {**self.chunk(""), "choices": [], "usage": counts}


@router.post("/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request, runtime: RuntimeDep, served: ServedDep) -> Response:
    admission.check_model(runtime, body.model)
    admitted = admission.admit(
        request,
        runtime,
        served,
        prompt_ids(served.tokenizer, body),
        requested_max_tokens=body.requested_max_tokens,
        default_max_tokens=DEFAULT_COMPLETION_TOKENS,
        prompt_field="prompt",
        sampling=lambda max_tokens: body.choices(max_tokens, runtime.defaults),
        stream=body.stream,
    )
    completion_id, created = framing.new_id("cmpl"), framing.now()
    describe = framing.TokenText(served.tokenizer) if body.logprobs is not None else None
    formatters = [
        CompletionChunks(completion_id, created, runtime.model_name, index, describe) for index in range(body.n)
    ]
    prompt_tokens = len(admitted.prompt)
    if body.stream:
        lines = framing.stream_chunks(
            served.engine, admitted.sequences, request, list(formatters), body.include_usage, prompt_tokens
        )
        return await framing.event_stream(lines, request)

    outcomes = await framing.collect(served.engine, admitted.sequences, request)
    if outcomes is None:
        return Response(status_code=framing.CLIENT_GONE)  # nobody is left to read it
    choices = []
    for formatter, outcome in zip(formatters, outcomes, strict=True):
        choice = formatter.chunk(outcome.text, finish_reason=outcome.finish_reason.value)["choices"][0]
        if describe is not None:
            choice["logprobs"] = framing.completion_logprobs(outcome.logprobs, describe, 0)
        choices.append(choice)
    answer = framing.completion(completion_id, "text_completion", created, runtime.model_name, choices)
    answer["usage"] = framing.total_usage(prompt_tokens, [(o.completion_tokens, None) for o in outcomes])
    return JSONResponse(answer)
