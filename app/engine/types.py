"""What flows between the API and the engine: sampling parameters in, token events out."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

GREEDY_BELOW = 1e-4


class FinishReason(StrEnum):
    STOP = "stop"  # end-of-sequence token or a stop string
    LENGTH = "length"  # max_tokens reached
    ERROR = "error"  # the engine failed; the API turns it into an error response


class GrammarKind(StrEnum):
    JSON_OBJECT = "json_object"  # any JSON object (OpenAI's JSON mode)
    JSON_SCHEMA = "json_schema"  # JSON that validates against `schema`
    TOOL_CALL = "tool_call"  # one call, in DeepSeek's tool format, of one of the functions `schema` lists


class Grammar(NamedTuple):
    """What a request's output must be (structured outputs), enforced by constrained decoding (engine/grammar.py)."""

    kind: GrammarKind
    # json_schema: JSON Schema text (None: any object); tool_call: a JSON list of {"name", "parameters"}
    schema: str | None = None
    strict: bool = False  # objects take only the properties the schema lists
    after: int | None = None  # the constraint starts after this token (R1's `</think>`); None: from the first

    @property
    def field(self) -> str:
        """The request field it comes from, which a refusal names."""
        return "tools" if self.kind is GrammarKind.TOOL_CALL else "response_format"


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    # None: no log probabilities; k: each token's log probability and the k most likely tokens' (the model's own
    # distribution, before temperature and top_p, as vLLM reports it)
    logprobs: int | None = None
    grammar: Grammar | None = None

    @property
    def greedy(self) -> bool:
        # Below this, dividing logits by the temperature overflows; the distribution is the argmax anyway.
        return self.temperature < GREEDY_BELOW


class KVStats(NamedTuple):
    """The KV cache as the metrics report it: usage now, cumulative counters since the engine started serving."""

    usage: float  # fraction of the cache's blocks that live sequences hold
    prefix_queries: int  # prompt tokens looked up in the prefix cache when their request was admitted
    prefix_hits: int  # of those, tokens found there (not recomputed)
    preemptions: int  # sequences sent back to the queue because the cache was full


class CacheConfig(NamedTuple):
    """The KV cache's shape, fixed once the engine has loaded: operators compute its capacity in tokens from it."""

    num_blocks: int  # blocks sequences can hold (the pad block not counted)
    block_size: int  # tokens a block holds
    prefix_caching: bool


# (its log probability, the most likely tokens with theirs, most likely first)
Logprobs = tuple[float, tuple[tuple[int, float], ...]]


class TokenLogprob(NamedTuple):
    """One generated token's log probability, and the most likely alternatives' at its position."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]


@dataclass(frozen=True)
class TokenEvent:
    """New text for one request. `finish_reason` is set on the last event of a request, which may carry text too."""

    text: str
    completion_tokens: int
    finish_reason: FinishReason | None = None
    error: str | None = None
    logprobs: tuple[TokenLogprob, ...] = ()  # of the tokens this event carries (when the request asked)
    # When events that piled up were merged into this one: each one's (text, completion_tokens), in order, so
    # what counts per token (reasoning tokens) does not depend on how fast the events were read
    parts: tuple[tuple[str, int], ...] = ()
    # With `error`: the request field at fault when the engine refused the request itself (a 400, not a 503)
    invalid: str | None = None

    def pieces(self) -> tuple[tuple[str, int], ...]:
        return self.parts or ((self.text, self.completion_tokens),)


class QueueFullError(Exception):
    """The waiting queue is at --max-queue: the caller should answer 429 and ask the client to retry."""


class EngineDeadError(Exception):
    """The engine process has stopped after a failure; the server should be restarted."""
