"""The batch loop's paged KV memory (app/engine/batch_loop.py, kv_blocks.py, paged_attention.py) with the built-in
model: prefix caching, admission and preemption under a small KV budget, blocks freed on cancel, eviction.

Every request's greedy tokens must be exactly the ones `generate` gives it alone, whatever the cache did for it.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from app.engine.batch_loop import BatchLoop
from app.engine.types import SamplingParams
from tests.app.engine.loop_helpers import Driver, greedy

BLOCK = 4
NEW = 10


def alone(model: Any, prompt: list[int], new: int = NEW) -> list[int]:
    output = model.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones((1, len(prompt)), dtype=torch.long),
        do_sample=False,
        max_new_tokens=new,
        min_new_tokens=new,
    )
    return [int(t) for t in output[0, len(prompt) :].tolist()]


def prefixed(prompts: list[list[int]]) -> tuple[list[int], list[int]]:
    """Two prompts that share a prefix of several blocks, then differ."""
    shared = (prompts[1] + prompts[4] + prompts[2])[: 5 * BLOCK + 2]
    return shared + prompts[3], shared + prompts[0]


def run_one(loop: BatchLoop, request_id: int, prompt: list[int], new: int = NEW) -> list[int]:
    driver = Driver(loop)
    loop.add(request_id, prompt, greedy(new))
    driver.run()
    return driver.tokens(request_id)


@pytest.mark.parametrize("caching", [True, False])
def test_a_prompt_that_starts_like_an_earlier_one_gets_the_same_tokens_with_and_without_the_prefix_cache(
    model: Any, prompts: list[list[int]], caching: bool
) -> None:
    first, second = prefixed(prompts)
    loop = BatchLoop(model, {1}, max_batch_size=4, block_size=BLOCK, prefix_caching=caching)
    assert run_one(loop, 0, first) == alone(model, first)
    hits = loop.kv.prefix_hits
    assert run_one(loop, 1, second) == alone(model, second)

    assert loop.kv.prefix_hits - hits == (5 * BLOCK if caching else 0)  # the shared full blocks, not recomputed
    assert loop.kv.prefix_queries == len(first) + len(second)


def test_a_request_sharing_blocks_with_a_running_one_leaves_both_exact(model: Any, prompts: list[list[int]]) -> None:
    first, second = prefixed(prompts)
    loop = BatchLoop(model, {1}, max_batch_size=4, block_size=BLOCK)
    driver = Driver(loop)
    loop.add(0, first, greedy(3 * NEW))
    driver.step(2)  # the first is prefilled and decoding: its prompt's full blocks are named
    loop.add(1, second, greedy(NEW))
    driver.run()

    assert loop.kv.prefix_hits == 5 * BLOCK
    assert driver.tokens(0) == alone(model, first, 3 * NEW)
    assert driver.tokens(1) == alone(model, second)


def test_requests_with_one_prompt_compute_it_once_and_share_its_blocks(model: Any, prompts: list[list[int]]) -> None:
    """The n choices of one request: the first is prefilled, the others wait a step and take its full blocks."""
    prompt = (prompts[1] + prompts[4])[: 5 * BLOCK + 2]
    loop = BatchLoop(model, {1}, max_batch_size=8, block_size=BLOCK)
    driver = Driver(loop)
    for request in range(4):
        loop.add(request, prompt, greedy(NEW))
    driver.step()
    assert (loop.running, loop.waiting) == (1, 3)
    driver.step()
    assert (loop.last.kind, loop.running, loop.waiting) == ("prefill", 4, 0)
    driver.run()

    assert loop.kv.prefix_hits == 3 * 5 * BLOCK  # only the last, partial block computed again by each copy
    expected = alone(model, prompt)
    assert all(driver.tokens(request) == expected for request in range(4))


def test_under_a_small_kv_budget_requests_queue_then_rows_are_preempted_and_resumed_with_nothing_lost(
    model: Any, prompts: list[list[int]]
) -> None:
    chosen = [prompts[1], prompts[4], prompts[2], prompts[3]]
    new = 16
    need = max(len(p) for p in chosen) + new
    loop = BatchLoop(model, {1}, max_batch_size=8, block_size=BLOCK, kv_cache_tokens=need + 3 * BLOCK)
    driver = Driver(loop)
    for request, prompt in enumerate(chosen):
        loop.add(request, prompt, greedy(new))
    driver.step()
    assert loop.waiting > 0  # not every prompt's blocks fit: the rest wait, nobody is failed
    driver.run(limit=500)

    assert loop.kv.preemptions > 0
    for request, prompt in enumerate(chosen):
        assert driver.tokens(request) == alone(model, prompt, new), f"request {request}"
    assert loop.kv.usage == 0.0


def test_cancelling_running_requests_frees_their_blocks(model: Any, prompts: list[list[int]]) -> None:
    loop = BatchLoop(model, {1}, max_batch_size=4, block_size=BLOCK)
    driver = Driver(loop)
    loop.add(0, prompts[2], greedy(3 * NEW))
    loop.add(1, prompts[4], greedy(3 * NEW))
    driver.step(3)
    both = loop.kv.usage
    loop.cancel(0)
    assert 0 < loop.kv.usage < both
    loop.cancel(1)
    assert loop.kv.usage == 0.0 and loop.idle


def test_cached_blocks_no_request_holds_are_evicted_for_new_ones(model: Any, prompts: list[list[int]]) -> None:
    first, _ = prefixed(prompts)
    other = prompts[2] + prompts[1]
    size = max(len(first), len(other)) + NEW
    loop = BatchLoop(model, {1}, max_batch_size=4, block_size=BLOCK, kv_cache_tokens=size + BLOCK)
    run_one(loop, 0, first)
    run_one(loop, 1, other)  # takes nearly the whole pool: the first prompt's cached blocks are evicted
    hits = loop.kv.prefix_hits
    assert run_one(loop, 2, first) == alone(model, first)
    assert loop.kv.prefix_hits - hits < 5 * BLOCK  # not all found any more: recomputed, with the same tokens


def test_the_memory_held_follows_the_live_tokens_not_the_longest_row(model: Any, prompts: list[list[int]]) -> None:
    loop = BatchLoop(model, {1}, max_batch_size=8, block_size=16)
    long = (prompts[1] + prompts[2] + prompts[4]) * 6
    shorts = [prompts[0], prompts[3], prompts[5]]
    driver = Driver(loop)
    loop.add(0, long, greedy(NEW))
    for request, prompt in enumerate(shorts, start=1):
        loop.add(request, prompt, greedy(NEW))
    driver.step(3)

    live = sum(len(p) + 2 for p in [long, *shorts])  # prompt and two tokens computed, after three steps
    held_tokens = loop.kv_bytes_held // loop.kv_bytes_per_token
    assert live <= held_tokens < live + 4 * 16  # under one block of slack per sequence
    assert held_tokens < 4 * len(long)  # what a batch padded to its longest row would hold


def test_a_request_larger_than_the_whole_cache_is_refused_in_one_line(model: Any, prompts: list[list[int]]) -> None:
    loop = BatchLoop(model, {1}, max_batch_size=4, block_size=BLOCK, kv_cache_tokens=8)
    with pytest.raises(ValueError, match=r"needs \d+ tokens of KV cache .* --kv-cache-memory"):
        loop.add(0, prompts[1], SamplingParams(max_tokens=4))
    assert loop.idle
