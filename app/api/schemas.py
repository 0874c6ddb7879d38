"""Request and response bodies of the OpenAI API subset we serve. Validation happens here, once, at the edge.

Fields OpenAI defines that this server cannot honour are refused with a 400 naming them, never silently ignored,
unless their value is the no-op default (clients often send `frequency_penalty: 0`, `n: 1`, `logprobs: false`).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from app.engine.types import Grammar, GrammarKind, SamplingParams
from app.model.conventions import GenerationDefaults

MAX_CHOICES = 128  # n: evaluation harnesses sample up to 64 (cons@64); each choice is one request in the engine
SEED_RANGE = 2**64  # what torch's generators accept: [-2**63, 2**64)
MAX_TOP_LOGPROBS = 20  # OpenAI's limit on chat; completions take as many (OpenAI's own stops at 5, vLLM's at 20)
MAX_STOP_STRINGS = 4
MAX_TOOLS = 128  # OpenAI's limit
NO_ARGUMENTS = {"type": "object", "properties": {}}  # a function that declares no parameters takes {}
MAX_STOP_LENGTH = 256  # each stop string is searched for at every token: keep that cheap

RESERVED_TEMPLATE_KEYS = {
    "chat_template",
    "conversation",
    "messages",
    "tools",
    "documents",
    "tokenize",
    "add_generation_prompt",
    "continue_final_message",
    "padding",
    "truncation",
    "max_length",
    "return_tensors",
    "return_dict",
    "return_assistant_tokens_mask",
    "tokenizer_kwargs",
}

# OpenAI fields this server cannot honour, each with the values that mean "not used" (accepted and ignored).
UNSUPPORTED: dict[str, Any] = {
    "best_of": lambda v: v in (None, 1),
    "presence_penalty": lambda v: v in (None, 0),
    "frequency_penalty": lambda v: v in (None, 0),
    "logit_bias": lambda v: not v,
    "echo": lambda v: v in (None, False),
    "suffix": lambda v: v in (None, ""),
    "functions": lambda v: not v,  # the deprecated form of tools
    "function_call": lambda v: v in (None, "none"),
}
# Tools are chat's: a text completion has no messages to call them from.
COMPLETION_UNSUPPORTED: dict[str, Any] = {
    **UNSUPPORTED,
    "tools": lambda v: not v,
    "tool_choice": lambda v: v in (None, "none"),
}

SCHEMA_NAME = r"^[a-zA-Z0-9_-]{1,64}$"  # OpenAI's rule for json_schema.name
# How large a schema may be (OpenAI's own limits are 10 levels, 5,000 properties, 1,000 enum values). A schema is
# compiled in the engine between steps: measured on 2 cores, 300 nested objects took 3.2 s and an enum of 100k
# strings 71 s, stalling every stream meanwhile.
MAX_SCHEMA_DEPTH = 32
MAX_SCHEMA_PROPERTIES = 5000
MAX_SCHEMA_ENUM_VALUES = 1000


def check_schema_size(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema, if it is within the limits above; else a ValueError saying which. Walks without recursion, so a
    schema nested as deep as a request body allows is refused, not a stack overflow."""
    properties = enum_values = 0
    pending: list[tuple[Any, int]] = [(schema, 1)]
    while pending:
        node, depth = pending.pop()
        if depth > MAX_SCHEMA_DEPTH:
            raise ValueError(f"the schema nests deeper than {MAX_SCHEMA_DEPTH} levels")
        if isinstance(node, dict):
            if isinstance(node.get("properties"), dict):
                properties += len(node["properties"])
            if isinstance(node.get("enum"), list):
                enum_values += len(node["enum"])
            pending.extend((value, depth + 1) for value in node.values())
        elif isinstance(node, list):
            pending.extend((value, depth + 1) for value in node)
    if properties > MAX_SCHEMA_PROPERTIES:
        raise ValueError(f"the schema has {properties} properties, more than {MAX_SCHEMA_PROPERTIES}")
    if enum_values > MAX_SCHEMA_ENUM_VALUES:
        raise ValueError(f"the schema has {enum_values} enum values, more than {MAX_SCHEMA_ENUM_VALUES}")
    return schema


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


# A JSON Schema a request sends (response_format, a tool's parameters), within the limits the engine compiles.
JSONSchema = Annotated[dict[str, Any], AfterValidator(check_schema_size)]


class CalledFunction(BaseModel):
    name: str = Field(min_length=1)
    arguments: str  # JSON text, as the model wrote it


class ToolCallIn(BaseModel):
    """A tool call of an earlier assistant turn, sent back in the history."""

    id: str
    type: Literal["function"] = "function"
    function: CalledFunction


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None  # assistant turns that called tools
    tool_call_id: str | None = None  # tool turns: the call this is the result of

    @model_validator(mode="after")
    def _tool_fields_by_role(self) -> ChatMessage:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id, the id of the call it answers")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=SCHEMA_NAME)
    description: str | None = None
    parameters: JSONSchema | None = None  # of the arguments; None: no arguments
    strict: bool | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionDefinition


class ChosenFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: ChosenFunction


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class JSONSchemaFormat(BaseModel):
    """response_format.json_schema: the schema the output must validate against."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(pattern=SCHEMA_NAME)
    description: str | None = None
    schema_: JSONSchema | None = Field(default=None, alias="schema")  # None: any JSON object
    strict: bool | None = False  # true: objects take only the properties the schema lists


class ResponseFormat(BaseModel):
    """Structured outputs: free text (the default), any JSON object, or JSON that validates against a schema."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is required with type json_schema, and only with it")
        return self

    def grammar(self, after: int | None) -> Grammar | None:
        """What the engine constrains the output to; `after`: the token the constraint starts after."""
        if self.type == "text":
            return None
        if self.json_schema is None or self.json_schema.schema_ is None:
            return Grammar(GrammarKind.JSON_OBJECT, after=after)
        schema = json.dumps(self.json_schema.schema_)
        return Grammar(GrammarKind.JSON_SCHEMA, schema, bool(self.json_schema.strict), after)


class _GenerationRequest(BaseModel):
    """What chat and completions requests share: the model, sampling, stopping and streaming."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    # Unset: the served model's defaults (1.0, or DeepSeek-R1's recommended 0.6 and 0.95: app.model.conventions).
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    stop: (
        Annotated[str, Field(max_length=MAX_STOP_LENGTH)]
        | Annotated[list[Annotated[str, Field(max_length=MAX_STOP_LENGTH)]], Field(max_length=MAX_STOP_STRINGS)]
        | None
    ) = None
    seed: Annotated[int, Field(ge=-(2**63), lt=2**64)] | None = None  # what torch's generators accept
    # Choices sampled from one prompt; choice i is seeded by seed + i, so each choice is reproducible on its own.
    n: Annotated[int, Field(ge=1, le=MAX_CHOICES)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    # vLLM's extension: keep generating past end-of-sequence (benchmarks use it to fix the output length).
    ignore_eos: bool = False
    response_format: ResponseFormat | None = None
    user: str | None = None

    @field_validator("n", mode="before")
    @classmethod
    def _null_n_is_one(cls, value: Any) -> Any:
        return 1 if value is None else value  # clients send "n": null for the default

    @field_validator("stop")
    @classmethod
    def _stop_not_empty(cls, value: str | list[str] | None) -> str | list[str] | None:
        strings = [value] if isinstance(value, str) else (value or [])
        if any(s == "" for s in strings):
            raise ValueError("stop strings must not be empty")
        return value

    UNSUPPORTED_FIELDS: ClassVar[dict[str, Any]] = UNSUPPORTED

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, is_default in cls.UNSUPPORTED_FIELDS.items():
                if name in data and not is_default(data[name]):
                    raise ValueError(f"{name}={data[name]!r} is not supported by this server; leave it out")
        return data

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> _GenerationRequest:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    @model_validator(mode="after")
    def _structured_outputs_end(self) -> _GenerationRequest:
        if self.ignore_eos and self.constrained:
            raise ValueError(
                "ignore_eos cannot be combined with a JSON response_format: a finished JSON value ends there"
            )
        return self

    @property
    def constrained(self) -> bool:
        return self.response_format is not None and self.response_format.type != "text"

    @property
    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def choices(
        self, max_tokens: int, defaults: GenerationDefaults, grammar_after: int | None = None
    ) -> list[SamplingParams]:
        """Each choice's parameters; a response_format's constraint starts after `grammar_after` (R1's </think>)."""
        grammar = self.grammar(grammar_after)
        return [self.sampling(max_tokens, defaults, choice, grammar) for choice in range(self.n)]

    def grammar(self, after: int | None) -> Grammar | None:
        """What the output is constrained to (None: free text); it starts after the token `after` when set."""
        return self.response_format.grammar(after) if self.response_format is not None else None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def sampling(
        self, max_tokens: int, defaults: GenerationDefaults, choice: int = 0, grammar: Grammar | None = None
    ) -> SamplingParams:
        seed = None
        if self.seed is not None:
            seed = self.seed + choice
            if seed >= SEED_RANGE:  # wrapped into the generators' range
                seed -= SEED_RANGE
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=defaults.temperature if self.temperature is None else self.temperature,
            top_p=defaults.top_p if self.top_p is None else self.top_p,
            seed=seed,
            stop=self.stop_strings,
            ignore_eos=self.ignore_eos,
            logprobs=self.logprob_count,
            grammar=grammar,
        )

    @property
    def logprob_count(self) -> int | None:
        """None: no log probabilities; k: each token's and its k most likely alternatives'."""
        return None


class ChatCompletionRequest(_GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool | None = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    # vLLM's extension: variables for the chat template, e.g. {"thinking": true} to open a <think> block.
    chat_template_kwargs: dict[str, Any] | None = None
    tools: Annotated[list[Tool], Field(max_length=MAX_TOOLS)] | None = None
    # None: "auto" when tools are given (OpenAI's default), else "none"
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    # Accepted as sent: the model may call several tools in one turn. A forced call (required, or a named
    # function) is constrained to exactly one call.
    parallel_tool_calls: bool | None = None

    @model_validator(mode="after")
    def _tool_choice_names_a_tool(self) -> ChatCompletionRequest:
        names = [tool.function.name for tool in self.tools or []]
        if len(set(names)) != len(names):
            raise ValueError("tools: two tools have the same name")
        choice = self.tool_choice
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise ValueError(f"tool_choice names {choice.function.name!r}, which is not among the tools")
        if choice == "required" and not names:
            raise ValueError('tool_choice "required" needs tools')
        if self.calls_tools and self.json_format:
            raise ValueError(
                'tools and a JSON response_format cannot be combined: send tool_choice "none", or no tools'
            )
        return self

    @property
    def calls_tools(self) -> bool:
        """Whether the model is offered tools (and its output is read for calls)."""
        return bool(self.tools) and self.tool_choice != "none"

    def forced_tools(self) -> list[Tool]:
        """The tools one of which must be called (required: any; a named choice: that one); [] when none must."""
        if not self.calls_tools:
            return []
        if isinstance(self.tool_choice, NamedToolChoice):
            return [t for t in self.tools or [] if t.function.name == self.tool_choice.function.name]
        return list(self.tools or []) if self.tool_choice == "required" else []

    def grammar(self, after: int | None) -> Grammar | None:
        forced = self.forced_tools()
        if not forced:
            return super().grammar(after)
        functions = [{"name": t.function.name, "parameters": t.function.parameters or NO_ARGUMENTS} for t in forced]
        return Grammar(GrammarKind.TOOL_CALL, json.dumps(functions), strict=True, after=after)

    @property
    def constrained(self) -> bool:
        return super().constrained or bool(self.forced_tools())

    @property
    def json_format(self) -> bool:
        return super().constrained

    @field_validator("chat_template_kwargs")
    @classmethod
    def _template_variables_only(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        # Only variables for the checkpoint's template: not a template of the client's own (it would run in the
        # server), nor arguments of the rendering call itself.
        reserved = sorted(set(value or {}) & RESERVED_TEMPLATE_KEYS)
        if reserved:
            raise ValueError(f"chat_template_kwargs may not set {', '.join(reserved)}")
        return value

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    @property
    def logprob_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_GenerationRequest):
    UNSUPPORTED_FIELDS: ClassVar[dict[str, Any]] = COMPLETION_UNSUPPORTED
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)] | Annotated[list[int], Field(min_length=1)]
    # The legacy API's shape: the number of most likely alternatives to report beside each token's own
    logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None

    @property
    def logprob_count(self) -> int | None:
        return self.logprobs

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_tokens


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "deepseek-inference"
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
