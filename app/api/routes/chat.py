"""POST /v1/chat/completions, with DeepSeek-R1's reasoning split into `reasoning_content` (and `reasoning`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from app.api import admission, framing
from app.api.deps import RuntimeDep, ServedDep
from app.api.errors import APIError
from app.api.reasoning import ReasoningSplitter, ReasoningTokens, prompt_opens_reasoning, split_reasoning
from app.api.schemas import ChatCompletionRequest, ChatMessage
from app.api.tool_calls import ToolCall, ToolCallStream
from app.api.tool_calls import parse as parse_tool_calls
from app.engine.types import FinishReason, TokenEvent
from app.model.conventions import THINK_CLOSE, THINK_OPEN
from app.model.tool_format import tools_section

router = APIRouter(prefix="/v1", tags=["openai"])


def template_message(message: ChatMessage) -> dict[str, Any]:
    """A message as chat templates read it (DeepSeek's test `content is none` on turns that only call tools)."""
    content = None if message.content is None and message.tool_calls else message.text()
    rendered: dict[str, Any] = {"role": "system" if message.role == "developer" else message.role, "content": content}
    if message.tool_calls:
        rendered["tool_calls"] = [call.model_dump() for call in message.tool_calls]
    if message.tool_call_id is not None:
        rendered["tool_call_id"] = message.tool_call_id
    return rendered


def render_prompt(tokenizer: Any, body: ChatCompletionRequest) -> str:
    messages = [template_message(m) for m in body.messages]
    variables = dict(body.chat_template_kwargs or {})
    if body.calls_tools:
        tools = [tool.model_dump(exclude_none=True) for tool in body.tools or []]
        if "tools" in (tokenizer.chat_template or ""):
            variables["tools"] = tools  # the checkpoint's template shows them its own way
        else:  # as DeepSeek-V3 was shown them, in the system prompt
            section = tools_section([tool["function"] for tool in tools])
            if messages[0]["role"] == "system":
                messages[0] = {**messages[0], "content": f"{messages[0]['content']}\n\n{section}"}
            else:
                messages.insert(0, {"role": "system", "content": section})
    try:
        text: str = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **variables)
    except Exception as error:  # the checkpoint's template rejected these messages (e.g. roles out of order)
        raise APIError(400, f"the chat template rejected the messages: {error}", param="messages") from None
    return text


class ChatChunks:
    """The chunks of one choice of a streamed chat completion: deltas, with R1's reasoning split into
    reasoning_content."""

    def __init__(
        self,
        completion_id: str,
        created: int,
        model: str,
        thinking: bool,
        index: int = 0,
        describe: framing.TokenText | None = None,
        tools: bool = False,
    ) -> None:
        self._id, self._created, self._model, self._index = completion_id, created, model, index
        self._tools = ToolCallStream() if tools else None  # the answer is read for tool calls
        self._calls = 0
        self._describe = describe  # a token's text, when the request asked for log probabilities
        self._splitter = ReasoningSplitter(starts_in_reasoning=thinking)
        self._reasoning_tokens = ReasoningTokens(starts_in_reasoning=thinking)

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        choice = {"delta": delta, "finish_reason": finish_reason}
        return framing.envelope(self._id, "chat.completion.chunk", self._created, self._model, choice, self._index)

    def text(self, event: TokenEvent) -> list[dict[str, Any]]:
        self._reasoning_tokens.feed_pieces(event.pieces())
        chunks = self._text(event.text, event.finish_reason is not None)
        if event.logprobs and self._describe is not None:
            if not chunks:  # their text is held back (a partial character, a possible stop string)
                chunks.append(self.chunk({}))
            chunks[-1]["choices"][0]["logprobs"] = framing.chat_logprobs(list(event.logprobs), self._describe)
        return chunks

    def _text(self, text: str, final: bool) -> list[dict[str, Any]]:
        reasoning, content = self._splitter.feed(text)
        if final:
            more_reasoning, more_content = self._splitter.finish()
            reasoning, content = reasoning + more_reasoning, content + more_content
        calls: list[ToolCall] = []
        if self._tools is not None:
            content, calls = self._tools.feed(content)
            if final:
                more, more_calls = self._tools.finish()
                content, calls = content + more, calls + more_calls
        chunks = []
        if reasoning:
            # Both names: DeepSeek's API and older vLLM send reasoning_content, newer vLLM reasoning.
            chunks.append(self.chunk({"reasoning_content": reasoning, "reasoning": reasoning}))
        if content:
            chunks.append(self.chunk({"content": content}))
        if calls:
            shaped = [call.shaped(self._calls + number) for number, call in enumerate(calls)]
            self._calls += len(calls)
            chunks.append(self.chunk({"tool_calls": shaped}))
        return chunks

    def finish(self, reason: FinishReason) -> dict[str, Any]:
        return self.chunk({}, finish_reason=finish_reason(reason, self._calls > 0))

    def reasoning_tokens(self, completion_tokens: int) -> int:
        return self._reasoning_tokens.count(completion_tokens)

    def usage(self, counts: dict[str, Any]) -> dict[str, Any]:
        return {**self.chunk({}), "choices": [], "usage": counts}


def reasoning_end(tokenizer: Any) -> int:
    """The token that closes R1's reasoning: a response_format constrains only what follows it, so the reasoning
    stays free text."""
    ids = tokenizer.encode(THINK_CLOSE, add_special_tokens=False)
    if len(ids) != 1:
        raise APIError(
            400,
            f"this model's tokenizer has no single {THINK_CLOSE} token, so a response_format cannot start after the "
            'reasoning; send chat_template_kwargs {"thinking": false} to constrain the whole answer',
            param="response_format",
        )
    return int(ids[0])


def finish_reason(reason: FinishReason, called: bool) -> str:
    """OpenAI's: "tool_calls" when the answer ended by calling tools."""
    return "tool_calls" if called and reason is FinishReason.STOP else reason.value


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
    thinking = prompt_opens_reasoning(prompt_text)
    grammar_after = reasoning_end(tokenizer) if thinking and body.constrained else None
    admitted = admission.admit(
        request,
        runtime,
        served,
        admission.encode(tokenizer, prompt_text),
        requested_max_tokens=body.requested_max_tokens,
        default_max_tokens=None,
        prompt_field="messages",
        sampling=lambda max_tokens: body.choices(max_tokens, runtime.defaults, grammar_after),
        stream=body.stream,
    )
    prompt_tokens = len(admitted.prompt)
    describe = framing.TokenText(tokenizer) if body.logprobs else None
    completion_id, created = framing.new_id("chatcmpl"), framing.now()

    if body.stream:
        formatters = [
            ChatChunks(completion_id, created, runtime.model_name, thinking, index, describe, body.calls_tools)
            for index in range(body.n)
        ]
        lines = framing.stream_chunks(
            served.engine, admitted.sequences, request, list(formatters), body.include_usage, prompt_tokens
        )
        # The role chunks go out with the first token: one write per stream instead of two during a burst.
        preamble = "".join(framing.sse(f.chunk({"role": "assistant", "content": ""})) for f in formatters)
        return await framing.event_stream(lines, request, preamble=preamble)

    outcomes = await framing.collect(served.engine, admitted.sequences, request)
    if outcomes is None:
        return Response(status_code=framing.CLIENT_GONE)  # nobody is left to read it
    choices, counts = [], []
    for index, outcome in enumerate(outcomes):
        reasoning, content = split_reasoning(outcome.text, starts_in_reasoning=thinking)
        calls: list[ToolCall] = []
        if body.calls_tools:
            content, calls = parse_tool_calls(content)
        message: dict[str, Any] = {"role": "assistant", "content": content or (None if calls else content)}
        if reasoning is not None:
            message["reasoning_content"] = message["reasoning"] = reasoning
        if calls:
            message["tool_calls"] = [call.shaped() for call in calls]
        scored = framing.chat_logprobs(outcome.logprobs, describe) if describe is not None else None
        finished = finish_reason(outcome.finish_reason, bool(calls))
        choices.append({"index": index, "message": message, "finish_reason": finished, "logprobs": scored})
        counter = ReasoningTokens(starts_in_reasoning=thinking)
        counter.feed_pieces(outcome.pieces)
        counts.append((outcome.completion_tokens, counter.count(outcome.completion_tokens)))
    answer = framing.completion(completion_id, "chat.completion", created, runtime.model_name, choices)
    answer["usage"] = framing.total_usage(prompt_tokens, counts)
    return JSONResponse(answer)
