"""Continuous batching (app/engine/batch_loop.py) with the built-in model.

The reference is transformers' own `generate` on each prompt alone: whatever joins, leaves or shares the batch,
a request's greedy tokens must be exactly the ones it would get by itself. The model runs in float32 here (see the
`builtin_weights_fp32` fixture): in bfloat16 the random model's top logits tie within a rounding step, so two
correct ways of computing them can pick different tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

from app.engine.batch_loop import BatchLoop, StepOutput
from app.engine.types import FinishReason, SamplingParams
from tests.app.engine.loop_helpers import TEXTS, Driver, N, greedy

Reference = Callable[[int], list[int]]


@pytest.fixture(scope="module")
def reference(model: Any, prompts: list[list[int]]) -> Reference:
    """reference(i): the first N greedy tokens of prompt i, from `model.generate` on that prompt alone."""
    cache: dict[int, list[int]] = {}

    def tokens(index: int) -> list[int]:
        if index not in cache:
            prompt = prompts[index]
            output = model.generate(
                torch.tensor([prompt]),
                attention_mask=torch.ones((1, len(prompt)), dtype=torch.long),
                do_sample=False,
                max_new_tokens=N,
                min_new_tokens=N,  # never ends early at end-of-sequence, like ignore_eos
            )
            cache[index] = [int(t) for t in output[0, len(prompt) :].tolist()]
        return cache[index]

    return tokens


# --- the same tokens as generating alone -------------------------------------------------------------------------


def test_requests_joining_at_different_steps_get_exactly_the_tokens_they_get_alone(
    model: Any, prompts: list[list[int]], reference: Reference
) -> None:
    driver = Driver(BatchLoop(model, {1}, max_batch_size=8))

    driver.loop.add(0, prompts[0], greedy())
    driver.loop.add(1, prompts[1], greedy())
    driver.step(3)
    driver.loop.add(2, prompts[2], greedy())
    driver.loop.add(3, prompts[3], greedy())
    driver.step(2)
    driver.loop.add(4, prompts[4], greedy())
    driver.step()
    driver.loop.add(5, prompts[5], greedy())
    driver.step()
    assert driver.loop.running == 6  # every request shares the batch now
    driver.run()

    for index in range(len(prompts)):
        assert driver.tokens(index) == reference(index), f"request {index} ({TEXTS[index]!r})"


def test_rows_leaving_at_different_steps_leave_the_others_unchanged(
    model: Any, prompts: list[list[int]], reference: Reference
) -> None:
    lengths = [N, 3, 7, N, 1, 5]
    driver = Driver(BatchLoop(model, {1}, max_batch_size=8))

    for index in range(3):
        driver.loop.add(index, prompts[index], greedy(lengths[index]))
    driver.step(2)
    for index in range(3, 6):
        driver.loop.add(index, prompts[index], greedy(lengths[index]))
    driver.run()

    for index, length in enumerate(lengths):
        assert driver.tokens(index) == reference(index)[:length], f"request {index}"


def test_a_seeded_sampled_request_gets_the_same_tokens_alone_and_in_a_batch(
    model: Any, prompts: list[list[int]]
) -> None:
    params = SamplingParams(max_tokens=8, temperature=0.8, top_p=0.9, seed=42, ignore_eos=True)
    alone = Driver(BatchLoop(model, {1}, max_batch_size=8))
    alone.loop.add(0, prompts[2], params)
    alone.run()

    shared = Driver(BatchLoop(model, {1}, max_batch_size=8))
    shared.loop.add(10, prompts[0], greedy())
    shared.loop.add(11, prompts[4], SamplingParams(max_tokens=N, temperature=1.0, seed=7))
    shared.step(2)
    shared.loop.add(0, prompts[2], params)
    shared.run()

    assert shared.tokens(0) == alone.tokens(0)


# --- how requests finish -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_tokens", [1, 2, 5])
def test_max_tokens_gives_exactly_that_many_tokens_then_length(
    model: Any, prompts: list[list[int]], reference: Reference, max_tokens: int
) -> None:
    driver = Driver(BatchLoop(model, {1}, max_batch_size=4))
    driver.loop.add(0, prompts[1], greedy(max_tokens))

    driver.run()

    assert driver.tokens(0) == reference(1)[:max_tokens]
    assert driver.finishes(0) == [None] * (max_tokens - 1) + [FinishReason.LENGTH]
    assert not any(o.is_eos for o in driver.outputs[0])
    assert driver.loop.idle


def test_end_of_sequence_stops_the_request_with_is_eos(
    model: Any, prompts: list[list[int]], reference: Reference
) -> None:
    expected = reference(1)
    eos = expected[2]
    assert eos not in expected[:2]
    other = next(i for i in range(len(prompts)) if eos not in reference(i))
    driver = Driver(BatchLoop(model, {1, eos}, max_batch_size=4))
    driver.loop.add(0, prompts[1], greedy(N, ignore_eos=False))
    driver.loop.add(1, prompts[other], greedy(N, ignore_eos=False))

    driver.run()

    assert driver.tokens(0) == expected[:3]
    assert driver.finishes(0) == [None, None, FinishReason.STOP]
    assert [o.is_eos for o in driver.outputs[0]] == [False, False, True]
    assert driver.tokens(1) == reference(other)  # the row beside it goes on to max_tokens
    assert driver.finishes(1)[-1] == FinishReason.LENGTH


def test_end_of_sequence_as_the_first_token_ends_the_request_at_prefill(
    model: Any, prompts: list[list[int]], reference: Reference
) -> None:
    driver = Driver(BatchLoop(model, {reference(3)[0]}, max_batch_size=4))
    driver.loop.add(0, prompts[3], greedy(N, ignore_eos=False))

    driver.step()

    assert driver.outputs[0] == [StepOutput(0, reference(3)[0], FinishReason.STOP, is_eos=True)]
    assert driver.loop.idle


def test_end_of_sequence_wins_over_max_tokens_on_the_same_token(
    model: Any, prompts: list[list[int]], reference: Reference
) -> None:
    expected = reference(1)
    driver = Driver(BatchLoop(model, {expected[2]}, max_batch_size=4))
    driver.loop.add(0, prompts[1], greedy(3, ignore_eos=False))

    driver.run()

    assert driver.finishes(0)[-1] == FinishReason.STOP
    assert driver.outputs[0][-1].is_eos


def test_ignore_eos_generates_through_end_of_sequence(
    model: Any, prompts: list[list[int]], reference: Reference
) -> None:
    expected = reference(1)
    driver = Driver(BatchLoop(model, {1, expected[2]}, max_batch_size=4))
    driver.loop.add(0, prompts[1], greedy(N, ignore_eos=True))

    driver.run()

    assert driver.tokens(0) == expected
    assert not any(o.is_eos for o in driver.outputs[0])
    assert driver.finishes(0)[-1] == FinishReason.LENGTH


# --- cancelling --------------------------------------------------------------------------------------------------


def test_cancelling_a_waiting_request_removes_it_before_it_runs(
    model: Any, prompts: list[list[int]], reference: Reference
) -> None:
    driver = Driver(BatchLoop(model, {1}, max_batch_size=2))
    for index in range(3):
        driver.loop.add(index, prompts[index], greedy())
    driver.step()
    assert (driver.loop.running, driver.loop.waiting) == (2, 1)

    driver.loop.cancel(2)

    assert (driver.loop.running, driver.loop.waiting) == (2, 0)
    driver.run()
    assert 2 not in driver.outputs
    assert driver.tokens(0) == reference(0)
    assert driver.tokens(1) == reference(1)


def test_cancelling_a_running_request_frees_its_slot_and_leaves_the_others_unchanged(
    model: Any, prompts: list[list[int]], reference: Reference
) -> None:
    longest = max(range(len(prompts)), key=lambda i: len(prompts[i]))
    others = [i for i in range(len(prompts)) if i != longest][:3]
    driver = Driver(BatchLoop(model, {1}, max_batch_size=4))
    driver.loop.add(others[0], prompts[others[0]], greedy())
    driver.loop.add(longest, prompts[longest], greedy())  # the widest row: leaving trims the batch's padding
    driver.loop.add(others[1], prompts[others[1]], greedy())
    driver.step(4)
    assert driver.loop.running == 3

    driver.loop.cancel(longest)

    assert driver.loop.running == 2
    given = len(driver.outputs[longest])
    driver.loop.add(others[2], prompts[others[2]], greedy())  # the freed slot takes a new request
    driver.run()
    assert len(driver.outputs[longest]) == given
    for index in others:
        assert driver.tokens(index) == reference(index), f"request {index}"


def test_cancelling_every_running_request_leaves_an_empty_loop_that_still_works(
    model: Any, prompts: list[list[int]], reference: Reference
) -> None:
    driver = Driver(BatchLoop(model, {1}, max_batch_size=4))
    driver.loop.add(0, prompts[0], greedy())
    driver.loop.add(1, prompts[1], greedy())
    driver.step(2)

    driver.loop.cancel(0)
    driver.loop.cancel(1)

    assert driver.loop.idle
    assert driver.loop.step() == []
    driver.loop.add(2, prompts[2], greedy())
    driver.run()
    assert driver.tokens(2) == reference(2)


def test_cancelling_an_unknown_request_changes_nothing(model: Any, prompts: list[list[int]]) -> None:
    loop = BatchLoop(model, {1}, max_batch_size=1)
    loop.add(0, prompts[0], greedy())
    loop.add(1, prompts[1], greedy())
    loop.step()

    loop.cancel(99)

    assert (loop.running, loop.waiting) == (1, 1)


# --- admission ---------------------------------------------------------------------------------------------------


def test_max_batch_size_is_respected_and_waiting_requests_join_when_a_slot_frees(
    model: Any, prompts: list[list[int]], reference: Reference
) -> None:
    lengths = [3, N, 5, N]
    driver = Driver(BatchLoop(model, {1}, max_batch_size=2))
    for index, length in enumerate(lengths):
        driver.loop.add(index, prompts[index], greedy(length))

    driver.step()
    assert (driver.loop.running, driver.loop.waiting) == (2, 2)
    driver.step(2)  # request 0 gets its third and last token
    assert (driver.loop.running, driver.loop.waiting) == (1, 2)
    driver.step()  # its slot goes to request 2
    assert (driver.loop.running, driver.loop.waiting) == (2, 1)
    assert 3 not in driver.outputs
    driver.run()

    assert driver.max_running == 2
    for index, length in enumerate(lengths):
        assert driver.tokens(index) == reference(index)[:length], f"request {index}"


def test_prefill_token_budget_splits_admission_across_steps(model: Any, prompts: list[list[int]]) -> None:
    first, second = len(prompts[1]), len(prompts[4])
    loop = BatchLoop(model, {1}, max_batch_size=8, prefill_token_budget=first + second - 1)
    loop.add(0, prompts[1], greedy())
    loop.add(1, prompts[4], greedy())

    assert [o.request_id for o in loop.step()] == [0]
    assert (loop.last.kind, loop.running, loop.waiting) == ("prefill", 1, 1)
    assert [o.request_id for o in loop.step()] == [1]  # prefilled alone, ahead of the running row's token
    assert (loop.last.kind, loop.running, loop.waiting) == ("prefill", 2, 0)
    assert sorted(o.request_id for o in loop.step()) == [0, 1]
    assert loop.last.kind == "decode"


def test_new_prompts_run_ahead_of_decoding_rows_but_never_twice_in_a_row(model: Any, prompts: list[list[int]]) -> None:
    """A joiner's first token waits for its own prefill only; a steady stream of joiners cannot starve the batch."""
    loop = BatchLoop(model, {1}, max_batch_size=8)
    loop.add(0, prompts[1], greedy())
    loop.step()
    loop.add(1, prompts[2], greedy())
    assert [o.request_id for o in loop.step()] == [1]  # the new prompt alone
    loop.add(2, prompts[3], greedy())
    assert sorted(o.request_id for o in loop.step()) == [0, 1, 2]  # then everyone, the next joiner included
    loop.add(3, prompts[4], greedy())
    assert [o.request_id for o in loop.step()] == [3]


def test_a_prompt_longer_than_the_prefill_budget_is_still_admitted(model: Any, prompts: list[list[int]]) -> None:
    loop = BatchLoop(model, {1}, max_batch_size=8, prefill_token_budget=2)
    loop.add(0, prompts[2], greedy())

    assert [o.request_id for o in loop.step()] == [0]
    assert loop.running == 1


def test_an_idle_loop_steps_to_nothing(model: Any) -> None:
    loop = BatchLoop(model, {1}, max_batch_size=4)

    assert loop.idle
    assert loop.step() == []
    assert loop.last.kind == "idle"


# --- chunked prefill ---------------------------------------------------------------------------------------------

CHUNK = 4


def streaming_then(
    model: Any, stream: list[int], stream_tokens: int, long: list[int], max_batch_size: int = 8, eos: int = 1
) -> Driver:
    """A chunking loop with one request already streaming (`stream`, its prefill stepped), then `long` added."""
    driver = Driver(BatchLoop(model, {eos}, max_batch_size=max_batch_size, prefill_chunk_tokens=CHUNK))
    driver.loop.add(0, stream, SamplingParams(max_tokens=stream_tokens, temperature=0.0, ignore_eos=eos == 1))
    driver.step()
    driver.loop.add(1, long, SamplingParams(max_tokens=N, temperature=0.0, ignore_eos=eos == 1))
    return driver


def test_a_long_prompt_arriving_while_others_stream_is_prefilled_a_chunk_a_step_between_their_tokens(
    model: Any, prompts: list[list[int]], reference: Reference
) -> None:
    long = prompts[2]
    chunks = math.ceil(len(long) / CHUNK)
    assert chunks >= 3
    driver = streaming_then(model, prompts[0], N + chunks, long)  # it streams for longer than the chunks take
    loop = driver.loop

    for chunk in range(chunks):
        before = len(driver.tokens(0))
        driver.step()
        assert loop.last.kind == "chunk"
        assert len(driver.tokens(0)) == before + 1  # the running stream got its token in this step too
        assert len(driver.tokens(1)) == (1 if chunk == chunks - 1 else 0)  # the first token comes with the last chunk
        assert (loop.running, loop.waiting) == (2, 0)  # the prefilling request holds its batch slot
    driver.step()
    assert loop.last.kind == "decode"  # it joined the batch
    driver.run()

    assert driver.tokens(1) == reference(2)  # exactly the tokens it gets alone, prefilled whole
    assert driver.tokens(0)[:N] == reference(0)


def test_on_an_idle_loop_a_long_prompt_is_prefilled_whole(
    model: Any, prompts: list[list[int]], reference: Reference
) -> None:
    loop = BatchLoop(model, {1}, max_batch_size=8, prefill_chunk_tokens=CHUNK)
    driver = Driver(loop)
    loop.add(0, prompts[2], greedy())

    driver.step()
    assert (loop.last.kind, len(driver.tokens(0))) == ("prefill", 1)  # nobody streams: one pass to its first token
    driver.run()
    assert driver.tokens(0) == reference(2)


def test_one_prompt_is_prefilled_in_chunks_at_a_time_and_shorter_requests_go_ahead_of_the_next(
    model: Any, prompts: list[list[int]], reference: Reference
) -> None:
    driver = streaming_then(model, prompts[5], 3 * N, prompts[2])
    loop = driver.loop
    loop.add(2, prompts[4], greedy())  # long too: waits for the chunk slot, keeping its place
    loop.add(3, prompts[0], greedy())  # short: not held up behind the long ones

    driver.step()
    assert (loop.last.kind, loop.running, loop.waiting) == ("prefill", 3, 1)
    assert len(driver.tokens(3)) == 1
    first_token_kind = {}
    while not loop.idle:
        had = {request: len(driver.tokens(request)) for request in (1, 2)}
        driver.step()
        for request in (1, 2):
            if had[request] == 0 and driver.tokens(request):
                first_token_kind[request] = loop.last.kind
    assert first_token_kind == {1: "chunk", 2: "chunk"}  # both were prefilled in chunks, one after the other
    for request, index in ((1, 2), (2, 4), (3, 0)):
        assert driver.tokens(request)[:N] == reference(index), f"request {request}"


def test_a_burst_of_long_prompts_on_an_idle_loop_is_prefilled_together_whole(
    model: Any, prompts: list[list[int]], reference: Reference
) -> None:
    loop = BatchLoop(model, {1}, max_batch_size=8, prefill_chunk_tokens=CHUNK)
    driver = Driver(loop)
    for request, index in enumerate((2, 4, 1)):
        loop.add(request, prompts[index], greedy())

    driver.step()
    assert (loop.last.kind, loop.last.rows) == ("prefill", 3)  # nobody streams yet: one group, no chunks
    assert all(len(driver.tokens(request)) == 1 for request in range(3))
    driver.run()
    for request, index in enumerate((2, 4, 1)):
        assert driver.tokens(request) == reference(index)


def test_when_the_streams_end_mid_chunks_the_rest_is_prefilled_in_one_pass(
    model: Any, prompts: list[list[int]], reference: Reference
) -> None:
    driver = streaming_then(model, prompts[5], 2, prompts[2])  # its last token comes with the first chunk step
    loop = driver.loop
    assert math.ceil(len(prompts[2]) / CHUNK) >= 3

    driver.step()
    assert (loop.last.kind, driver.tokens(1)) == ("chunk", [])
    driver.step()  # nobody streams any more: the remaining chunks in one pass, and its first token
    assert (loop.last.kind, len(driver.tokens(1))) == ("chunk", 1)
    driver.run()
    assert driver.tokens(1) == reference(2)


def test_a_chunked_prompt_whose_first_token_ends_it_leaves_the_others_streaming(
    model: Any, prompts: list[list[int]], reference: Reference
) -> None:
    eos = reference(2)[0]  # the long prompt's first greedy token: declared end-of-sequence here
    assert eos not in reference(0)[:N]
    driver = streaming_then(model, prompts[0], N, prompts[2], eos=eos)
    driver.run()

    assert driver.finishes(1) == [FinishReason.STOP] and driver.outputs[1][0].is_eos
    assert driver.tokens(0) == reference(0)


def test_cancelling_a_request_during_its_chunked_prefill_frees_its_slot(
    model: Any, prompts: list[list[int]], reference: Reference
) -> None:
    driver = streaming_then(model, prompts[5], 3 * N, prompts[2], max_batch_size=2)
    loop = driver.loop
    driver.step()
    assert loop.running == 2

    loop.cancel(1)
    assert loop.running == 1
    driver.step()
    assert loop.last.kind == "decode"
    loop.add(2, prompts[4], greedy())  # the freed slot (max_batch_size 2) takes the next long prompt
    driver.run()
    assert driver.tokens(1) == []
    assert driver.tokens(2) == reference(4)


def test_reset_during_a_chunked_prefill_reports_it_among_the_dropped(model: Any, prompts: list[list[int]]) -> None:
    loop = BatchLoop(model, {1}, max_batch_size=8, prefill_chunk_tokens=CHUNK)
    loop.add(0, prompts[5], greedy())
    loop.step()
    loop.add(1, prompts[2], greedy())
    loop.step()

    assert sorted(loop.reset()) == [0, 1]
    assert loop.idle
