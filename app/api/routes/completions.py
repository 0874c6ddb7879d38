"""POST /v1/completions: raw text in, raw text out (no chat template, no reasoning split)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from app.api import generation
from app.api.deps import RuntimeDep, ServedDep
from app.api.errors import APIError
from app.api.schemas import CompletionRequest

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
    return bos + generation.encode(tokenizer, text)


@router.post("/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request, runtime: RuntimeDep, served: ServedDep) -> Response:
    generation.check_model(runtime, body.model)
    prompt = prompt_ids(served.tokenizer, body)
    max_tokens = generation.completion_budget(
        len(prompt),
        body.requested_max_tokens,
        runtime.settings.max_model_len,
        default=DEFAULT_COMPLETION_TOKENS,
        prompt_field="prompt",
    )
    sequence = generation.submit(runtime, served.engine, prompt, body.sampling(max_tokens))
    request.state.prompt_tokens = len(prompt)
    request.state.stream = body.stream
    completion_id, created = generation.new_id("cmpl"), generation.now()

    def chunk(text: str, finish_reason: str | None = None) -> dict[str, Any]:
        choice = {"text": text, "finish_reason": finish_reason}
        return generation.envelope(completion_id, "text_completion", created, runtime.model_name, choice)

    if body.stream:

        def on_usage(completion_tokens: int) -> dict[str, Any]:
            return {**chunk(""), "choices": [], "usage": generation.usage(len(prompt), completion_tokens)}

        lines = generation.stream_chunks(
            served.engine,
            sequence,
            request,
            lambda text, _final: [chunk(text)] if text else [],
            lambda reason: chunk("", finish_reason=reason.value),
            on_usage if body.include_usage else None,
        )
        return await generation.event_stream(lines)

    outcome = await generation.collect(served.engine, sequence, request)
    if outcome is None:
        return Response(status_code=generation.CLIENT_GONE)  # nobody is left to read it
    body_json = chunk(outcome.text, finish_reason=outcome.finish_reason.value)
    body_json["usage"] = generation.usage(len(prompt), outcome.completion_tokens)
    return JSONResponse(body_json)
