"""Constrained decoding for structured outputs, in the engine process: a request's grammar (types.Grammar) compiled by
xgrammar against the served tokenizer, and per row a matcher that says, before each sampled token, which tokens keep
the output inside the grammar (docs/decisions/grammar-library.md says why xgrammar).

A row's constraint may start late: with an R1 model the answer comes after the reasoning, so the matcher waits for
the row to produce `Grammar.after` (`</think>`) and constrains only what follows; the reasoning stays free text.
"""

from __future__ import annotations

import json
import re
from typing import Any

import torch
import xgrammar as xgr

from app.engine.types import Grammar, GrammarKind

# Compiled grammars kept for reuse, by the schema's text: clients send the same few schemas over and over.
COMPILE_CACHE_BYTES = 256 * 2**20


class GrammarError(ValueError):
    """The request's grammar could not be compiled (a schema xgrammar cannot take); the message says why."""


class Grammars:
    """The served tokenizer's index (built once, ~0.5 s for DeepSeek's 129k tokens) and its compiled grammars."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: set[int]) -> None:
        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=sorted(stop_token_ids)
        )
        # Two threads: compiling shares the engine's cores with model steps.
        self._compiler = xgr.GrammarCompiler(info, max_threads=2, cache_limit_bytes=COMPILE_CACHE_BYTES)
        self.vocab_size = vocab_size

    def matcher(self, grammar: Grammar) -> RowGrammar:
        try:
            if grammar.kind is GrammarKind.JSON_OBJECT or grammar.schema is None:
                compiled = self._compiler.compile_json_schema(_ANY_OBJECT, **_COMPACT, strict_mode=False)
            else:
                # With strict_mode an object takes no properties the schema does not list (OpenAI's strict: true).
                compiled = self._compiler.compile_json_schema(grammar.schema, **_COMPACT, strict_mode=grammar.strict)
        except Exception as error:  # xgrammar raises RuntimeError/ValueError with its parser's message
            raise GrammarError(f"the JSON schema could not be compiled: {_first_line(error)}") from None
        return RowGrammar(xgr.GrammarMatcher(compiled), grammar.after)


# Compact JSON, `{"a":1,"b":[2,3]}`: no free whitespace, so a model cannot spend its tokens on blank space (or loop
# on it), and the fewest tokens per value.
_COMPACT: dict[str, Any] = {"any_whitespace": False, "separators": (",", ":")}
_ANY_OBJECT = json.dumps({"type": "object"})  # json_object: any JSON object, as OpenAI's JSON mode answers


def _first_line(error: Exception) -> str:
    """xgrammar's message without its log prefix ("[16:33:55] /project/cpp/json_schema_converter.cc:5082: ")."""
    text = (str(error).strip() or type(error).__name__).splitlines()[0]
    return _LOG_PREFIX.sub("", text)


_LOG_PREFIX = re.compile(r"^\[[\d:]+\]\s+\S+:\d+:\s*")


class RowGrammar:
    """One row's place in its grammar. Until the row has produced `after` (when set) it is not constrained."""

    def __init__(self, matcher: xgr.GrammarMatcher, after: int | None) -> None:
        self._matcher = matcher
        self._after = after
        self.active = after is None

    def fill(self, bitmask: torch.Tensor, index: int) -> None:
        self._matcher.fill_next_token_bitmask(bitmask, index)

    def accept(self, token: int) -> None:
        """The row produced `token` (sampled under this grammar's mask when active)."""
        if not self.active:
            self.active = token == self._after
            return
        if not self._matcher.accept_token(token):
            # The mask allowed only accepted tokens, so this is a bug, not bad input: say which token.
            raise RuntimeError(f"token {token} was sampled outside the row's grammar")


def mask_logits(logits: torch.Tensor, rows: list[tuple[int, RowGrammar]], vocab_size: int) -> torch.Tensor:
    """A copy of the step's logits [rows, vocab] in float32 with each constrained row's disallowed tokens at -inf
    (the model's own logits stay as they were, for log probabilities)."""
    masked = logits.float()
    if masked is logits:
        masked = masked.clone()
    bitmask = xgr.allocate_token_bitmask(len(rows), vocab_size)
    for position, (_, grammar) in enumerate(rows):
        grammar.fill(bitmask, position)
    indices = [index for index, _ in rows]
    # apply_token_bitmask_inplace pairs bitmask row i with logits row indices[i] only when both have one row per
    # index; gather the constrained rows, mask them, and put them back.
    chosen = masked[indices]
    xgr.apply_token_bitmask_inplace(chosen, bitmask.to(chosen.device), vocab_size=vocab_size)
    masked[indices] = chosen
    return masked
