"""The server's /metrics text as a serving pod exposes it, for the tests that check what the stack reads of it."""

from __future__ import annotations

from app.engine.types import CacheConfig
from app.metrics import Metrics


def touched_exposition(model: str) -> str:
    """The registry's text once every metric has been touched (an untouched labelled series renders nothing)."""
    server = Metrics(model)
    server.on_queue(waiting=1, running=1)
    server.on_step(rows=1)
    server.on_first_token(0.05)
    server.on_token_gap(0.01)
    server.model_loaded(CacheConfig(num_blocks=4096, block_size=16, prefix_caching=True))
    server.request_finished("/v1/chat/completions", 200, 1.0, prompt_tokens=3, completion_tokens=4)
    return server.render().decode()
