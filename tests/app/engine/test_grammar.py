"""Constrained decoding (app/engine/grammar.py) on the built-in model in the batch loop: outputs follow the schema,
the constraint waits for its start token, and what cannot be constrained is refused with the reason."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from app.engine.batch_loop import BatchLoop
from app.engine.grammar import GrammarError, Grammars, mask_logits
from app.engine.types import FinishReason, Grammar, GrammarKind, SamplingParams
from bench.grammar_libraries import conforms, schemas
from tests.app.engine.loop_helpers import Driver, greedy

EOS = 1  # the built-in model's end-of-sequence token


@pytest.fixture(scope="module")
def grammars(builtin_tokenizer: Any, model: Any) -> Grammars:
    return Grammars(builtin_tokenizer, model.get_output_embeddings().out_features, {EOS})


def loop_with(model: Any, grammars: Grammars | None) -> BatchLoop:
    return BatchLoop(model, {EOS}, max_batch_size=8, grammars=grammars)


def constrained(schema: dict[str, Any] | None, max_tokens: int = 200, **fields: Any) -> SamplingParams:
    kind = GrammarKind.JSON_SCHEMA if schema is not None else GrammarKind.JSON_OBJECT
    grammar = Grammar(kind, json.dumps(schema) if schema is not None else None, strict=True, **fields)
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, grammar=grammar)


def text_of(tokenizer: Any, driver: Driver, request_id: int) -> str:
    outputs = driver.outputs[request_id]
    assert outputs[-1].finish is FinishReason.STOP and outputs[-1].is_eos, "the JSON was not finished"
    decoded: str = tokenizer.decode([o.token for o in outputs if not o.is_eos])
    return decoded


def test_rows_in_one_batch_each_follow_their_own_schema(
    model: Any, builtin_tokenizer: Any, grammars: Grammars, prompts: list[list[int]]
) -> None:
    loop = loop_with(model, grammars)
    chosen = schemas(6, seed=3, bounded=True)
    for request_id, schema in enumerate(chosen):
        seeded = SamplingParams(max_tokens=200, temperature=1.0, seed=request_id, grammar=constrained(schema).grammar)
        loop.add(request_id, prompts[request_id % len(prompts)], seeded)
    loop.add(99, prompts[0], greedy())  # an unconstrained row beside them
    driver = Driver(loop)
    driver.run(limit=400)
    for request_id, schema in enumerate(chosen):
        value = json.loads(text_of(builtin_tokenizer, driver, request_id))
        assert conforms(value, schema), (value, schema)
    assert len(driver.outputs[99]) == 12


def test_json_object_takes_any_object_and_then_only_its_end(builtin_tokenizer: Any, grammars: Grammars) -> None:
    """(The random model, sampling freely, writes keys of unbounded length, so an engine run need not end: the
    grammar is checked token by token instead.)"""
    row = grammars.matcher(Grammar(GrammarKind.JSON_OBJECT))

    def allowed() -> torch.Tensor:
        masked, _ = mask_logits(torch.zeros(1, grammars.vocab_size), [(0, row)], keep_original=False)
        return torch.isfinite(masked[0]).nonzero().flatten()

    starts = {builtin_tokenizer.decode([int(t)]) for t in allowed()}
    assert starts and all(text.startswith("{") for text in starts)
    for token in builtin_tokenizer.encode('{"a":[1,"x"]}', add_special_tokens=False):
        row.accept(token)
    assert allowed().tolist() == [EOS]
    assert not row.accept(builtin_tokenizer.encode("x", add_special_tokens=False)[0])  # past its end


def test_the_constraint_starts_after_its_token(model: Any, builtin_tokenizer: Any, grammars: Grammars) -> None:
    """R1: the reasoning is free text; the grammar applies from the token after `after` (here the row's own third
    unconstrained token, so the first three tokens are what the model writes alone)."""
    free = loop_with(model, grammars)
    free.add(0, [5, 6, 7], greedy(max_tokens=3))
    alone = Driver(free)
    alone.run()
    first_three = alone.tokens(0)
    assert len(first_three) == 3 and first_three[2] not in first_three[:2]  # the start token is not seen earlier

    loop = loop_with(model, grammars)
    schema = schemas(1, seed=5, bounded=True)[0]
    loop.add(0, [5, 6, 7], constrained(schema, after=first_three[2]))
    driver = Driver(loop)
    driver.run(limit=400)
    assert driver.tokens(0)[:3] == first_three
    answer = builtin_tokenizer.decode([o.token for o in driver.outputs[0][3:] if not o.is_eos])
    assert conforms(json.loads(answer), schema)


def test_a_schema_the_library_cannot_take_is_refused_with_its_reason(model: Any, grammars: Grammars) -> None:
    loop = loop_with(model, grammars)
    with pytest.raises(GrammarError, match=r'^the JSON schema could not be compiled: Unsupported type "colour"$'):
        loop.add(0, [5], constrained({"type": "object", "properties": {"a": {"type": "colour"}}}))
    assert loop.idle


def test_a_grammar_without_structured_outputs_or_with_ignore_eos_is_refused(model: Any, grammars: Grammars) -> None:
    with pytest.raises(GrammarError, match="without structured outputs"):
        loop_with(model, None).add(0, [5], constrained(None))
    params = SamplingParams(max_tokens=5, ignore_eos=True, grammar=Grammar(GrammarKind.JSON_OBJECT))
    with pytest.raises(GrammarError, match="ignore_eos"):
        loop_with(model, grammars).add(0, [5], params)


def test_masking_leaves_the_model_logits_and_the_unconstrained_rows_alone(grammars: Grammars) -> None:
    logits = torch.randn(3, grammars.vocab_size)
    before = logits.clone()
    row = grammars.matcher(Grammar(GrammarKind.JSON_OBJECT))
    masked, stuck = mask_logits(logits, [(1, row)], keep_original=True)
    assert stuck == []
    assert torch.equal(logits, before)
    assert torch.equal(masked[0], before[0]) and torch.equal(masked[2], before[2])
    allowed = torch.isfinite(masked[1])
    assert 0 < int(allowed.sum()) < grammars.vocab_size // 10  # an object starts with "{" (and its few forms)
    assert torch.equal(masked[1][allowed], before[1][allowed])


def test_the_cpu_mask_is_the_one_xgrammar_kernel_applies(builtin_tokenizer: Any, grammars: Grammars) -> None:
    """The CPU path unpacks xgrammar's bitmask with numpy: the same tokens as xgrammar's own kernel allows, rows in
    any order, masked in place when the original is not kept."""
    import xgrammar as xgr

    schema = json.dumps(schemas(1, seed=2, bounded=True)[0])
    prefixes = ['{"', "", "{"]
    rows = []
    for prefix in prefixes:
        row = grammars.matcher(Grammar(GrammarKind.JSON_SCHEMA, schema, strict=True))
        for token in builtin_tokenizer.encode(prefix, add_special_tokens=False):
            row.accept(token)
        rows.append(row)
    logits = torch.randn(4, grammars.vocab_size)
    expected = logits.clone()
    bitmask = xgr.allocate_token_bitmask(4, grammars.vocab_size)  # row 1 unconstrained: every token allowed
    for index, row in zip([3, 0, 2], rows, strict=True):
        row.fill(bitmask, index)
    xgr.apply_token_bitmask_inplace(expected, bitmask)
    masked, _ = mask_logits(logits, list(zip([3, 0, 2], rows, strict=True)), keep_original=False)
    assert masked is logits
    assert torch.equal(masked, expected)


def test_a_forced_tool_call_is_one_call_of_a_listed_function_then_its_end(
    builtin_tokenizer: Any, grammars: Grammars
) -> None:
    from app.model.tool_format import CALLS_BEGIN, CALLS_END, call_text

    functions = [
        {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
        {"name": "now", "parameters": {"type": "object", "properties": {}}},
    ]
    row = grammars.matcher(Grammar(GrammarKind.TOOL_CALL, json.dumps(functions), strict=True))

    def allowed() -> list[int]:
        masked, _ = mask_logits(torch.zeros(1, grammars.vocab_size), [(0, row)], keep_original=False)
        return torch.isfinite(masked[0]).nonzero().flatten().tolist()

    begin = builtin_tokenizer.encode(CALLS_BEGIN, add_special_tokens=False)
    assert begin[0] in allowed()

    def feed(target: Any, text: str) -> bool:
        return all([target.accept(token) for token in builtin_tokenizer.encode(text, add_special_tokens=False)])

    assert feed(row, CALLS_BEGIN + call_text("get_weather", '{"city":"Oslo"}') + CALLS_END)
    assert allowed() == [EOS]
    other = grammars.matcher(Grammar(GrammarKind.TOOL_CALL, json.dumps(functions), strict=True))
    assert not feed(other, CALLS_BEGIN + call_text("delete_all", "{}"))  # an unlisted function


BOUNDED = {
    "type": "object",
    "properties": {"city": {"type": "string", "minLength": 1, "maxLength": 3}},
    "required": ["city"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("Osl", True),
        ("Åsé", True),  # three code points, five bytes: the bounds count characters
        ("\tab", False),  # a raw tab: json.loads refuses it (xgrammar 0.2.9 let it through)
        ("\x01", False),
        ("abcd", False),  # the bounds still hold
        ("", False),
        # No escapes in a bounded string (grammar.py: with them the mask took ~600x longer to fill): valid JSON,
        # refused by the grammar, so a bounded string holds no quote, backslash or control character.
        ("\\tab", False),
        ('a\\"b', False),
        ("\\u00e9", False),
    ],
)
@pytest.mark.parametrize("kind", [GrammarKind.JSON_SCHEMA, GrammarKind.TOOL_CALL])
def test_a_length_bounded_string_takes_unescaped_json_characters_only(
    builtin_tokenizer: Any, grammars: Grammars, kind: GrammarKind, value: str, valid: bool
) -> None:
    from app.model.tool_format import CALLS_BEGIN, CALLS_END, call_text

    arguments = '{"city":"' + value + '"}'
    if valid:
        assert json.loads(arguments)["city"]  # the cases say what JSON says
    if kind is GrammarKind.TOOL_CALL:
        row = grammars.matcher(Grammar(kind, json.dumps([{"name": "f", "parameters": BOUNDED}]), strict=True))
        text = CALLS_BEGIN + call_text("f", arguments) + CALLS_END
    else:
        row = grammars.matcher(Grammar(kind, json.dumps(BOUNDED), strict=True))
        text = arguments
    tokens = [*builtin_tokenizer.encode(text, add_special_tokens=False), EOS]
    assert all([row.accept(token) for token in tokens]) == valid


def test_requests_with_one_schema_share_its_grammar_but_not_their_place_in_it(
    builtin_tokenizer: Any, grammars: Grammars
) -> None:
    """The grammar built from a schema's text is cached (grammar.py): each request still gets its own matcher."""
    first, second = (grammars.matcher(Grammar(GrammarKind.JSON_SCHEMA, json.dumps(BOUNDED), strict=True)) for _ in "ab")
    for token in builtin_tokenizer.encode('{"city":"Os', add_special_tokens=False):
        assert first.accept(token)
    rest = builtin_tokenizer.encode('{"city":"abc"}', add_special_tokens=False)
    assert all([second.accept(token) for token in [*rest, EOS]])  # from the start, whatever `first` took
    assert all([first.accept(token) for token in [*builtin_tokenizer.encode('l"}', add_special_tokens=False), EOS]])


def test_tool_parameters_the_library_cannot_take_are_refused(grammars: Grammars) -> None:
    functions = [{"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "colour"}}}}]
    with pytest.raises(GrammarError, match=r"^a tool's parameters could not be compiled: Unsupported type"):
        grammars.matcher(Grammar(GrammarKind.TOOL_CALL, json.dumps(functions)))


def test_a_row_its_grammar_leaves_no_token_ends_alone_and_the_others_go_on(
    model: Any, grammars: Grammars, prompts: list[list[int]]
) -> None:
    """A schema no string satisfies (a pattern that matches nothing): once its row opens the string, no token is
    allowed. That row fails with the reason; the row beside it is untouched, and every block comes back."""
    loop = loop_with(model, grammars)
    impossible = {"type": "object", "properties": {"a": {"type": "string", "pattern": "[^\\s\\S]"}}, "required": ["a"]}
    loop.add(0, prompts[1], constrained(impossible))
    loop.add(1, prompts[2], greedy())
    free = loop.kv.usage
    driver = Driver(loop)
    failed: list[tuple[int, str, str]] = []
    for _ in range(50):
        if loop.idle:
            break
        driver.step()
        failed += loop.failed
    assert failed == [(0, "the grammar allows no further token: no value satisfies the schema", "response_format")]
    assert len(driver.outputs[1]) == 12 and driver.outputs[1][-1].finish is FinishReason.LENGTH
    assert all(output.finish is None for output in driver.outputs[0])  # it never finished normally
    assert loop.idle and loop.kv.usage == free == 0.0
