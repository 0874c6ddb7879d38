"""POST /v1/chat/completions, with DeepSeek-R1's reasoning split into `reasoning_content` (and `reasoning`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from app.api import admission, framing
from app.api.deps import RuntimeDep, ServedDep
from app.api.errors import APIError
from app.api.reasoning import ReasoningSplitter, ReasoningTokens, prompt_opens_reasoning, split_reasoning
from app.api.schemas import ChatCompletionRequest
from app.engine.types import FinishReason
from app.model.conventions import THINK_OPEN

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


class ChatChunks:
    """The chunks of a streamed chat completion: deltas, with R1's reasoning split into reasoning_content."""

    def __init__(self, completion_id: str, created: int, model: str, prompt_tokens: int, thinking: bool) -> None:
        self._id, self._created, self._model, self._prompt_tokens = completion_id, created, model, prompt_tokens
        self._splitter = ReasoningSplitter(starts_in_reasoning=thinking)
        self._reasoning_tokens = ReasoningTokens(starts_in_reasoning=thinking)

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        choice = {"delta": delta, "finish_reason": finish_reason}
        return framing.envelope(self._id, "chat.completion.chunk", self._created, self._model, choice)

    def text(self, text: str, final: bool, completion_tokens: int) -> list[dict[str, Any]]:
        self._reasoning_tokens.feed(text, completion_tokens)
        reasoning, content = self._splitter.feed(text)
        if final:
            more_reasoning, more_content = self._splitter.finish()
            reasoning, content = reasoning + more_reasoning, content + more_content
        chunks = []
        if reasoning:
            # Both names: DeepSeek's API and older vLLM send reasoning_content, newer vLLM reasoning.
            chunks.append(self.chunk({"reasoning_content": reasoning, "reasoning": reasoning}))
        if content:
            chunks.append(self.chunk({"content": content}))
        return chunks

    def finish(self, reason: FinishReason) -> dict[str, Any]:
        return self.chunk({}, finish_reason=reason.value)

    def usage(self, completion_tokens: int) -> dict[str, Any]:
        counts = framing.usage(self._prompt_tokens, completion_tokens, self._reasoning_tokens.count(completion_tokens))
        return {**self.chunk({}), "choices": [], "usage": counts}


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, runtime: RuntimeDep, served: ServedDep
) -> Response:
    admission.check_model(runtime, body.model)
    tokenizer = served.tokenizer
    prompt_text = render_prompt(tokenizer, body)
    declined = (body.chat_template_kwargs or {}).get("thinking") is False
    if runtime.defaults.open_reasoning and not declined and not prompt_opens_reasoning(prompt_text):
        prompt_text += THINK_OPEN  # R1's recommendation: make the answer start with its reasoning
    admitted = admission.admit(
        request,
        runtime,
        served,
        admission.encode(tokenizer, prompt_text),
        requested_max_tokens=body.requested_max_tokens,
        default_max_tokens=None,
        prompt_field="messages",
        sampling=lambda max_tokens: body.sampling(max_tokens, runtime.defaults),
        stream=body.stream,
    )
    prompt_tokens = len(admitted.prompt)
    thinking = prompt_opens_reasoning(prompt_text)
    completion_id, created = framing.new_id("chatcmpl"), framing.now()

    if body.stream:
        chunks = ChatChunks(completion_id, created, runtime.model_name, prompt_tokens, thinking)
        lines = framing.stream_chunks(served.engine, admitted.sequence, request, chunks, body.include_usage)
        # The role chunk goes out with the first token: one write per stream instead of two during a burst.
        preamble = framing.sse(chunks.chunk({"role": "assistant", "content": ""}))
        return await framing.event_stream(lines, request, preamble=preamble)

    counter = ReasoningTokens(starts_in_reasoning=thinking)
    outcome = await framing.collect(
        served.engine, admitted.sequence, request, lambda event: counter.feed(event.text, event.completion_tokens)
    )
    if outcome is None:
        return Response(status_code=framing.CLIENT_GONE)  # nobody is left to read it
    reasoning, content = split_reasoning(outcome.text, starts_in_reasoning=thinking)
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if reasoning is not None:
        message["reasoning_content"] = message["reasoning"] = reasoning
    answer = framing.envelope(
        completion_id,
        "chat.completion",
        created,
        runtime.model_name,
        {"message": message, "finish_reason": outcome.finish_reason.value},
    )
    answer["usage"] = framing.usage(prompt_tokens, outcome.completion_tokens, counter.count(outcome.completion_tokens))
    return JSONResponse(answer)
