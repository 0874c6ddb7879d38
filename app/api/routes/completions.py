"""POST /v1/completions: raw text in, raw text out (no chat template, no reasoning split)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from app.api import admission, framing
from app.api.deps import RuntimeDep, ServedDep
from app.api.errors import APIError
from app.api.schemas import CompletionRequest
from app.engine.types import FinishReason

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
    """The chunks of a streamed text completion."""

    def __init__(self, completion_id: str, created: int, model: str, prompt_tokens: int) -> None:
        self._id, self._created, self._model, self._prompt_tokens = completion_id, created, model, prompt_tokens

    def chunk(self, text: str, finish_reason: str | None = None) -> dict[str, Any]:
        choice = {"text": text, "finish_reason": finish_reason}
        return framing.envelope(self._id, "text_completion", self._created, self._model, choice)

    def text(self, text: str, final: bool, completion_tokens: int) -> list[dict[str, Any]]:
        return [self.chunk(text)] if text else []

    def finish(self, reason: FinishReason) -> dict[str, Any]:
        return self.chunk("", finish_reason=reason.value)

    def usage(self, completion_tokens: int) -> dict[str, Any]:
        return {**self.chunk(""), "choices": [], "usage": framing.usage(self._prompt_tokens, completion_tokens)}


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
        sampling=lambda max_tokens: body.sampling(max_tokens, runtime.defaults),
        stream=body.stream,
    )
    chunks = CompletionChunks(framing.new_id("cmpl"), framing.now(), runtime.model_name, len(admitted.prompt))
    if body.stream:
        lines = framing.stream_chunks(served.engine, admitted.sequence, request, chunks, body.include_usage)
        return await framing.event_stream(lines, request)

    outcome = await framing.collect(served.engine, admitted.sequence, request)
    if outcome is None:
        return Response(status_code=framing.CLIENT_GONE)  # nobody is left to read it
    answer = chunks.chunk(outcome.text, finish_reason=outcome.finish_reason.value)
    answer["usage"] = framing.usage(len(admitted.prompt), outcome.completion_tokens)
    return JSONResponse(answer)
