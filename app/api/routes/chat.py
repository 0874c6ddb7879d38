"""POST /v1/chat/completions, with DeepSeek-R1's reasoning split into `reasoning_content`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from app.api import generation
from app.api.deps import RuntimeDep, ServedDep
from app.api.errors import APIError
from app.api.reasoning import ReasoningSplitter, prompt_opens_reasoning, split_reasoning
from app.api.schemas import ChatCompletionRequest

router = APIRouter(prefix="/v1", tags=["openai"])


def render_prompt(tokenizer: Any, body: ChatCompletionRequest) -> str:
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
    try:
        text: str = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **(body.chat_template_kwargs or {})
        )
    except Exception as error:  # the checkpoint's template rejected these messages (e.g. roles out of order)
        raise APIError(400, f"the chat template rejected the messages: {error}", param="messages") from None
    return text


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, runtime: RuntimeDep, served: ServedDep
) -> Response:
    generation.check_model(runtime, body.model)
    tokenizer = served.tokenizer
    prompt_text = render_prompt(tokenizer, body)
    prompt = generation.encode(tokenizer, prompt_text)
    max_tokens = generation.completion_budget(
        len(prompt), body.requested_max_tokens, runtime.settings.max_model_len, default=None, prompt_field="messages"
    )
    sequence = generation.submit(runtime, served.engine, prompt, body.sampling(max_tokens))
    request.state.prompt_tokens = len(prompt)
    request.state.stream = body.stream
    thinking = prompt_opens_reasoning(prompt_text)
    completion_id, created = generation.new_id("chatcmpl"), generation.now()

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        choice = {"delta": delta, "finish_reason": finish_reason}
        return generation.envelope(completion_id, "chat.completion.chunk", created, runtime.model_name, choice)

    if body.stream:
        splitter = ReasoningSplitter(starts_in_reasoning=thinking)

        def on_text(text: str, final: bool) -> list[dict[str, Any]]:
            reasoning, content = splitter.feed(text)
            if final:
                more_reasoning, more_content = splitter.finish()
                reasoning, content = reasoning + more_reasoning, content + more_content
            chunks = []
            if reasoning:
                chunks.append(chunk({"reasoning_content": reasoning}))
            if content:
                chunks.append(chunk({"content": content}))
            return chunks

        def on_usage(completion_tokens: int) -> dict[str, Any]:
            return {**chunk({}), "choices": [], "usage": generation.usage(len(prompt), completion_tokens)}

        lines = generation.stream_chunks(
            served.engine,
            sequence,
            request,
            on_text,
            lambda reason: chunk({}, finish_reason=reason.value),
            on_usage if body.include_usage else None,
        )
        # The role chunk goes out with the first token: one write per stream instead of two during a burst.
        return await generation.event_stream(
            lines, preamble=generation.sse(chunk({"role": "assistant", "content": ""}))
        )

    outcome = await generation.collect(served.engine, sequence, request)
    if outcome is None:
        return Response(status_code=generation.CLIENT_GONE)  # nobody is left to read it
    reasoning, content = split_reasoning(outcome.text, starts_in_reasoning=thinking)
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    answer = generation.envelope(
        completion_id,
        "chat.completion",
        created,
        runtime.model_name,
        {"message": message, "finish_reason": outcome.finish_reason.value},
    )
    answer["usage"] = generation.usage(len(prompt), outcome.completion_tokens)
    return JSONResponse(answer)
