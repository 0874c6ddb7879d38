"""The messages between the HTTP process and the engine process, one small typed record each (framing: wire.py).

They are NamedTuples: a record pickles as a tuple with its class named once, so a frame costs what the bare tuples
it replaces cost, and each side dispatches on the record's class with `match`. The per-token payload of a Step
stays a plain tuple: it is the one part that grows with the batch.

    HTTP process → engine   Add | Cancel; the pipe closing means stop
    engine → HTTP process   Progress* then Ready | Failed while loading; then Step | FailedRequests | Refused
"""

from __future__ import annotations

from typing import NamedTuple

from app.engine.types import CacheConfig, KVStats, Logprobs, SamplingParams


class Add(NamedTuple):
    request_id: int
    prompt: list[int]
    params: SamplingParams


class Cancel(NamedTuple):
    request_id: int


class Progress(NamedTuple):
    """A loading message for the log (download, load, warm-up)."""

    text: str


class Ready(NamedTuple):
    """The model is loaded and warmed up; `description` names it for the log."""

    description: str
    cache: CacheConfig


class Failed(NamedTuple):
    """The model could not be loaded: the reason, in one line."""

    reason: str


# (request id, token id, finish reason's value or None, whether the token is EOS, its log probabilities or None)
StepToken = tuple[int, int, str | None, bool, Logprobs | None]


class Step(NamedTuple):
    """What one batch step produced, and the queue after it."""

    tokens: list[StepToken]
    waiting: int
    running: int
    rows: int
    kv: KVStats


class FailedRequests(NamedTuple):
    """These requests ended with an error (their step failed, or one could not be added); the engine goes on."""

    request_ids: list[int]
    reason: str


class Refused(NamedTuple):
    """The engine will not run this request because of what it asks (a JSON schema that does not compile): the
    client's error, answered with a 400 naming `param`."""

    request_id: int
    reason: str
    param: str


ToEngine = Add | Cancel
FromEngine = Progress | Ready | Failed | Step | FailedRequests | Refused
