"""Which grammar library constrains decoding to JSON schemas here: xgrammar or llguidance, measured on this machine
with the DeepSeek tokenizer (129k tokens), as structured outputs would use them.

    python -m bench.grammar_libraries          # both are pinned in requirements-dev.txt

For each library: building its tokenizer index once, compiling 32 random JSON schemas (nested objects, enums,
arrays, integers, numbers, booleans, strings), and the time to fill the next-token masks of a batch of 32
constrained rows, per step, while each row is walked to the end of its JSON by picking allowed tokens from random
logits (a stand-in model that never stalls: after a few tokens inside a string it prefers tokens that close it).
Every finished output is parsed and checked against its schema.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

ROWS = 32
MAX_TOKENS = 400


def random_schema(chooser: random.Random, depth: int = 0, bounded: bool = False) -> dict[str, Any]:
    """A JSON schema of the kinds structured outputs send: objects (all properties required), arrays, enums.
    `bounded`: integers and numbers get a range too, so that a random-weights model, which may write digits for
    as long as the grammar lets it, still ends its numbers (the server's acceptance tests)."""
    kinds = ["string", "integer", "number", "boolean", "enum"] + (["object", "array"] if depth < 2 else [])
    kind = chooser.choice(kinds)
    if kind == "object":
        names = chooser.sample(["name", "id", "tags", "score", "items", "ok", "city", "meta"], chooser.randint(1, 4))
        properties = {name: random_schema(chooser, depth + 1, bounded) for name in names}
        return {"type": "object", "properties": properties, "required": names, "additionalProperties": False}
    if kind == "array":
        return {"type": "array", "items": random_schema(chooser, depth + 1, bounded), "maxItems": 3}
    if kind == "enum":
        return {"enum": chooser.sample(["red", "green", "blue", "none"], 2)}
    if kind == "string":
        return {"type": "string", "maxLength": 12}
    if bounded and kind in ("integer", "number"):
        return {"type": kind, "minimum": -100, "maximum": 1000}
    return {"type": kind}


def schemas(count: int, seed: int = 0, bounded: bool = False) -> list[dict[str, Any]]:
    chooser = random.Random(seed)
    found: list[dict[str, Any]] = []
    while len(found) < count:
        schema = random_schema(chooser, bounded=bounded)
        if schema.get("type") == "object":  # what response_format's json_schema carries
            found.append(schema)
    return found


def conforms(value: Any, schema: dict[str, Any]) -> bool:
    """The subset of JSON Schema that `random_schema` writes."""
    if "enum" in schema:
        return value in schema["enum"]
    kind = schema["type"]
    if kind == "object":
        properties = schema["properties"]
        return (
            isinstance(value, dict)
            and set(value) == set(properties)
            and all(conforms(value[name], sub) for name, sub in properties.items())
        )
    if kind == "array":
        return (
            isinstance(value, list)
            and len(value) <= schema["maxItems"]
            and all(conforms(v, schema["items"]) for v in value)
        )
    if kind == "string":
        return isinstance(value, str) and len(value) <= schema["maxLength"]
    if kind in ("integer", "number"):
        numeric = isinstance(value, int) if kind == "integer" else isinstance(value, int | float)
        in_range = schema.get("minimum", -math.inf) <= value <= schema.get("maximum", math.inf) if numeric else False
        return numeric and not isinstance(value, bool) and in_range
    return isinstance(value, bool)


def unpack(bitmask: torch.Tensor, vocab: int) -> torch.Tensor:
    """[rows, words] int32 bitmask (bit j of word i: token 32 i + j allowed) → [rows, vocab] bool."""
    bits = torch.arange(32, dtype=torch.int32)
    return ((bitmask.unsqueeze(-1) >> bits) & 1).bool().flatten(1)[:, :vocab]


class Walker:
    """Picks each row's next token among the allowed ones: random logits, but after a few tokens it prefers the
    tokens that end things (quotes, brackets, commas), so every row reaches the end of its JSON."""

    def __init__(self, tokenizer: Any, vocab: int) -> None:
        self._rng = torch.Generator().manual_seed(0)
        closing = torch.zeros(vocab, dtype=torch.bool)
        for token in range(min(vocab, len(tokenizer))):
            text = tokenizer.decode([token])
            if text and len(text) <= 2 and all(c in '"}],' for c in text):
                closing[token] = True
        self._closing = closing
        self._vocab = vocab

    def pick(self, allowed: torch.Tensor, steps: int) -> list[int]:
        scores = torch.rand((allowed.shape[0], self._vocab), generator=self._rng)
        if steps > 6:
            scores = scores + self._closing.float() * 2
        return scores.masked_fill(~allowed, -1.0).argmax(dim=-1).tolist()


def run_xgrammar(tokenizer: Any, vocab: int, chosen: list[dict[str, Any]], walker: Walker) -> dict[str, Any]:
    import xgrammar as xgr

    started = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab)
    compiler = xgr.GrammarCompiler(info)
    index_s = time.perf_counter() - started
    compiled, compile_s = [], []
    for schema in chosen:
        started = time.perf_counter()
        compiled.append(compiler.compile_json_schema(json.dumps(schema)))
        compile_s.append(time.perf_counter() - started)
    matchers = [xgr.GrammarMatcher(c) for c in compiled]
    bitmask = xgr.allocate_token_bitmask(len(matchers), vocab)

    def fill(rows: list[int]) -> None:
        for row in rows:
            matchers[row].fill_next_token_bitmask(bitmask, row)

    def accept(row: int, token: int) -> bool:
        matchers[row].accept_token(token)
        return bool(matchers[row].is_terminated())

    return walk("xgrammar", index_s, compile_s, fill, accept, bitmask, vocab, tokenizer, chosen, walker)


def run_llguidance(tokenizer: Any, vocab: int, chosen: list[dict[str, Any]], walker: Walker) -> dict[str, Any]:
    import llguidance
    import llguidance.hf
    import llguidance.numpy

    started = time.perf_counter()
    index = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab)
    index_s = time.perf_counter() - started
    matchers, compile_s = [], []
    for schema in chosen:
        started = time.perf_counter()
        grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema))
        matchers.append(llguidance.LLMatcher(index, grammar))
        compile_s.append(time.perf_counter() - started)
    words = llguidance.numpy.allocate_token_bitmask(len(matchers), vocab)

    def fill(rows: list[int]) -> None:
        for row in rows:
            llguidance.numpy.fill_next_token_bitmask(matchers[row], words, row)

    def accept(row: int, token: int) -> bool:
        matchers[row].consume_token(token)
        return bool(matchers[row].is_stopped())

    bitmask = torch.from_numpy(words)
    return walk("llguidance", index_s, compile_s, fill, accept, bitmask, vocab, tokenizer, chosen, walker)


def walk(
    name: str,
    index_s: float,
    compile_s: list[float],
    fill: Callable[[list[int]], None],
    accept: Callable[[int, int], bool],
    bitmask: torch.Tensor,
    vocab: int,
    tokenizer: Any,
    chosen: list[dict[str, Any]],
    walker: Walker,
) -> dict[str, Any]:
    special = set(getattr(tokenizer, "all_special_ids", []))
    outputs: list[list[int]] = [[] for _ in chosen]
    active = list(range(len(chosen)))
    step_s: list[float] = []  # filling every active row's mask, for steps with the whole batch active
    row_s, row_fills = 0.0, 0
    for step in range(MAX_TOKENS):
        if not active:
            break
        started = time.perf_counter()
        fill(active)
        elapsed = time.perf_counter() - started
        row_s, row_fills = row_s + elapsed, row_fills + len(active)
        if len(active) == len(chosen):
            step_s.append(elapsed)
        allowed = unpack(bitmask[active], vocab)
        for row, token in zip(list(active), walker.pick(allowed, step), strict=True):
            if token in special:
                active.remove(row)  # the grammar allowed the end: the JSON is complete
                continue
            outputs[row].append(token)
            if accept(row, token):
                active.remove(row)
    valid = 0
    for schema, tokens in zip(chosen, outputs, strict=True):
        with contextlib.suppress(json.JSONDecodeError):  # an unfinished output: not valid
            valid += conforms(json.loads(tokenizer.decode(tokens)), schema)
    return {
        "library": name,
        "index_s": index_s,
        "compile_ms_median": statistics.median(compile_s) * 1000,
        "compile_ms_max": max(compile_s) * 1000,
        "batch_mask_ms": statistics.median(step_s) * 1000 if step_s else float("nan"),
        "row_mask_us": row_s / row_fills * 1e6,
        "steps": step + 1,
        "valid": valid,
        "rows": len(chosen),
    }


def main() -> int:
    from app.model import hardware
    from app.model.builtin import ensure_builtin_model
    from app.model.source import load_tokenizer

    print(hardware.describe())
    tokenizer = load_tokenizer(ensure_builtin_model(), lambda _: None)
    vocab = 129280
    chosen = schemas(ROWS)
    walker = Walker(tokenizer, vocab)
    print(f"{ROWS} rows, each its own random JSON schema; DeepSeek tokenizer, {vocab} tokens")
    for run in (run_xgrammar, run_llguidance):
        try:
            r = run(tokenizer, vocab, chosen, walker)
        except ImportError as error:
            print(f"  {run.__name__.removeprefix('run_')}: not installed ({error})")
            continue
        print(
            f"  {r['library']:10s} index {r['index_s']:.2f} s, compile median {r['compile_ms_median']:.1f} ms "
            f"(max {r['compile_ms_max']:.1f}); masks {r['batch_mask_ms']:.2f} ms a step for all {r['rows']} rows "
            f"(median), {r['row_mask_us']:.0f} µs a row; {r['steps']} steps; valid {r['valid']}/{r['rows']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
