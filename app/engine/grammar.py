"""Constrained decoding for structured outputs and forced tool calls, in the engine process: a request's grammar
(types.Grammar) compiled by xgrammar against the served tokenizer, and per row a matcher that says, before each
sampled token, which tokens keep the output inside the grammar (docs/decisions/grammar-library.md: why xgrammar).

A row's constraint may start late: with an R1 model the answer comes after the reasoning, so the matcher waits for
the row to produce `Grammar.after` (`</think>`) and constrains only what follows; the reasoning stays free text.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

import numpy as np
import torch
import xgrammar as xgr

from app.engine.types import Grammar, GrammarKind
from app.model.tool_format import ARGUMENTS_CLOSE, CALL_END, CALLS_BEGIN, CALLS_END, call_head

# Compiled grammars kept for reuse, by the schema's text: clients send the same few schemas over and over.
COMPILE_CACHE_BYTES = 256 * 2**20
GRAMMAR_CACHE_ENTRIES = 256  # the grammars built from them, before compiling (a few kB each)


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
            if grammar.kind is GrammarKind.TOOL_CALL:
                compiled = self._compiler.compile_grammar(_grammar(grammar.kind, grammar.schema or "[]", True))
            elif grammar.kind is GrammarKind.JSON_OBJECT or grammar.schema is None:
                compiled = self._compiler.compile_json_schema(_ANY_OBJECT, **_COMPACT, strict_mode=False)
            else:
                compiled = self._compiler.compile_grammar(_grammar(grammar.kind, grammar.schema, grammar.strict))
        except Exception as error:  # xgrammar raises RuntimeError/ValueError with its parser's message
            what = "a tool's parameters" if grammar.kind is GrammarKind.TOOL_CALL else "the JSON schema"
            raise GrammarError(f"{what} could not be compiled: {_first_line(error)}") from None
        return RowGrammar(xgr.GrammarMatcher(compiled), grammar.after)


# Compact JSON, `{"a":1,"b":[2,3]}`: no free whitespace, so a model cannot spend its tokens on blank space (or loop
# on it), and the fewest tokens per value.
_COMPACT: dict[str, Any] = {"any_whitespace": False, "separators": (",", ":")}
_ANY_OBJECT = json.dumps({"type": "object"})  # json_object: any JSON object, as OpenAI's JSON mode answers


@functools.lru_cache(maxsize=GRAMMAR_CACHE_ENTRIES)
def _grammar(kind: GrammarKind, schema: str, strict: bool) -> xgr.Grammar:
    """The grammar of a JSON schema or of a forced tool call, by the request's text. Cached: building one (xgrammar's
    conversion, then the mend below) took ~0.4 ms a request, in the engine process, for a schema xgrammar had
    already compiled; the compiler finds a grammar it has seen in ~0.02 ms."""
    if kind is GrammarKind.TOOL_CALL:
        return _tool_call(json.loads(schema))
    # With strict_mode an object takes no properties the schema does not list (OpenAI's strict: true).
    return _json_schema(schema, strict=strict)


def _tool_call(functions: list[dict[str, Any]]) -> xgr.Grammar:
    """One call of one of these functions, its arguments valid for the function's parameters (tool_format.py)."""
    calls = [
        xgr.Grammar.concat(
            _literal(call_head(function["name"])),
            _json_schema(json.dumps(function["parameters"]), strict=True),
            _literal(ARGUMENTS_CLOSE + CALL_END),
        )
        for function in functions
    ]
    choice = calls[0] if len(calls) == 1 else xgr.Grammar.union(*calls)
    return xgr.Grammar.concat(_literal(CALLS_BEGIN), choice, _literal(CALLS_END))


def _json_schema(schema: str, strict: bool) -> xgr.Grammar:
    """xgrammar's grammar for a JSON schema, its length-bounded strings mended. xgrammar 0.2.9 writes a string with
    minLength or maxLength as a repetition of any character but the quote, the backslash, CR and LF
    (mlc-ai/xgrammar#800, fixes not released): raw control characters pass (a random model wrote a tab into a tool
    call's `"city"`, which json.loads refuses). Each repetition becomes one code point outside U+0000-U+001F, the
    quote and the backslash: every output parses and the bounds hold, but a bounded string takes no escapes. A
    repetition that also took an escape (an alternation with a two-character sequence) made the token mask ~600x
    slower to fill (3 ms a token on average, 10-14 ms inside such a string, against 0.005 ms; the benchmark's
    constrained throughput fell to 0.15 of the unconstrained): docs/decisions/grammar-library.md."""
    grammar = xgr.Grammar.from_json_schema(schema, **_COMPACT, strict_mode=strict)
    text = str(grammar)
    mended, count = _BOUNDED_STRING_CHARACTER.subn(_UNESCAPED_STRING_CHARACTER, text)
    if not count:  # nothing to mend (or a release that writes them otherwise)
        return grammar
    return xgr.Grammar.from_ebnf(mended)


# The rule as xgrammar 0.2.9 prints it, `name_characters ::= (([^\"\\\r\n]))`, and its replacement.
_BOUNDED_STRING_CHARACTER = re.compile(r'^(\S+_characters) ::= \(\(\[\^\\"\\\\\\r\\n\]\)\)$', re.MULTILINE)
_UNESCAPED_STRING_CHARACTER = r'\1 ::= (([^\\0-\\x1f\\"\\\\]))'


def _literal(text: str) -> xgr.Grammar:
    return xgr.Grammar.from_ebnf(f"root ::= {json.dumps(text, ensure_ascii=False)}")


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

    def accept(self, token: int) -> bool:
        """The row produced `token` (sampled under this grammar's mask when active); False if the grammar does not
        take it (a row whose grammar allowed no token at all, which some schemas reach: the row must end)."""
        if not self.active:
            self.active = token == self._after
            return True
        return bool(self._matcher.accept_token(token))


def mask_logits(
    logits: torch.Tensor, rows: list[tuple[int, RowGrammar]], keep_original: bool
) -> tuple[torch.Tensor, list[int]]:
    """The step's logits [rows, vocab] in float32 with each constrained row's disallowed tokens at -inf: in place
    when they already are float32, unless `keep_original` (rows that report log probabilities report the model's
    own distribution). Also the rows whose grammar allows no token at all (a schema no value satisfies, such as a
    pattern that matches nothing): they cannot go on."""
    masked = logits.float()
    if masked is logits and keep_original:
        masked = masked.clone()
    width = masked.shape[-1]
    bitmask = xgr.allocate_token_bitmask(masked.shape[0], width)  # a row per logits row, every token allowed
    for index, grammar in rows:
        grammar.fill(bitmask, index)
    indices = [index for index, _ in rows]
    stuck = [index for index in indices if not bool(bitmask[index].any())]
    if masked.device.type != "cpu":
        xgr.apply_token_bitmask_inplace(masked, bitmask.to(masked.device), indices=indices)
        return masked, stuck
    # On a CPU, numpy's bit unpacking and masked copy: xgrammar's CPU kernel took 18 ms a step for 32 rows of 129k
    # tokens on 2 AVX2 cores, about half the step; this takes ~5 ms (bench/results/structured-outputs-*.txt).
    # Bit j of 32-bit word i allows token 32 i + j: little-endian words, so bytes in order, bits from the lowest.
    packed = bitmask[indices].numpy().view(np.uint8)
    allowed = np.unpackbits(packed, axis=1, count=width, bitorder="little").view(bool)
    values = masked.numpy()
    for position, index in enumerate(indices):
        np.copyto(values[index], -np.inf, where=~allowed[position])
    return masked, stuck
