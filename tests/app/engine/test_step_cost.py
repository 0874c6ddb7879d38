"""The step cost model: what a token costs at a depth of context, from the loaded model's own shapes, and the chunks
of a long prompt it sizes."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import DeepseekV3ForCausalLM

from app.engine.batch_loop import PARALLEL_STEP_FLOPS, BatchLoop, step_threads
from app.engine.step_cost import StepCost, matrix_flops_per_token
from app.engine.types import SamplingParams
from tests.app.engine.loop_helpers import Driver, greedy, tiny_deepseek_v3


@pytest.fixture(scope="module")
def mla_model() -> DeepseekV3ForCausalLM:
    return tiny_deepseek_v3()


def test_the_built_in_models_break_even_context_follows_from_its_config(model: Any) -> None:
    config = model.config
    hidden, heads, kv_heads = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
    head = hidden // heads
    per_layer = (
        hidden * heads * head * 2  # q and o
        + hidden * kv_heads * head * 2  # k and v
        + hidden * config.intermediate_size * 3  # gate, up, down
    )
    matrices = 2 * per_layer * config.num_hidden_layers
    attention = 2 * config.num_hidden_layers * heads * (head + head)
    assert matrix_flops_per_token(model) == matrices  # the embeddings and the output head are not counted
    loop = BatchLoop(model, {1}, max_batch_size=2, kv_cache_tokens=64)
    assert loop.step_cost.break_even_context == pytest.approx(matrices / attention)


def test_experts_count_by_the_share_a_token_is_routed_to(mla_model: DeepseekV3ForCausalLM) -> None:
    config = mla_model.config
    moe_layers = config.num_hidden_layers - int(config.first_k_dense_replace or 0)
    bank = moe_layers * config.n_routed_experts * 3 * config.hidden_size * config.moe_intermediate_size
    routed = matrix_flops_per_token(mla_model)
    config.num_experts_per_tok = config.n_routed_experts  # every expert for every token
    try:
        every = matrix_flops_per_token(mla_model)
    finally:
        config.num_experts_per_tok = 2
    assert every - routed == pytest.approx(2 * bank * (1 - 2 / config.n_routed_experts))


def test_mla_attention_is_counted_at_the_width_it_attends_with(mla_model: DeepseekV3ForCausalLM) -> None:
    config = mla_model.config
    loop = BatchLoop(mla_model, {999}, max_batch_size=2, kv_cache_tokens=64)
    query = int(config.qk_nope_head_dim or 0) + int(config.qk_rope_head_dim or 0)
    attention = 2 * config.num_hidden_layers * config.num_attention_heads * (query + int(config.v_head_dim or 0))
    assert loop.step_cost.break_even_context == pytest.approx(matrix_flops_per_token(mla_model) / attention)


def test_a_chunk_costs_its_budget_at_any_depth() -> None:
    cost = StepCost(break_even_context=300, flops_per_token=2e6)
    assert cost.chunk(256, 0, 16) == 256
    sizes = [cost.chunk(256, context, 16) for context in (0, 500, 1000, 2000, 4000, 100_000)]
    assert sizes == sorted(sizes, reverse=True) and sizes[1] < 256
    for context, size in zip((0, 500, 1000, 2000, 4000), sizes, strict=False):
        assert cost.tokens(size, context) <= cost.tokens(256, 0) < cost.tokens(size + 1, context)
    assert sizes[-1] == 16  # the minimum: a chunk always makes progress
    with pytest.raises(ValueError, match="positive"):
        StepCost(0, 2e6)
    with pytest.raises(ValueError, match="positive"):
        StepCost(300, 0)  # a cost without FLOPs would quietly keep every step off the second core


def test_chunks_shrink_as_a_long_prompt_deepens_and_the_tokens_stay_exact(model: Any) -> None:
    long = [(7 * i) % 5000 + 100 for i in range(600)]
    alone = model.generate(
        torch.tensor([long]),
        attention_mask=torch.ones((1, len(long)), dtype=torch.long),
        do_sample=False,
        max_new_tokens=6,
        min_new_tokens=6,
    )[0, len(long) :].tolist()
    loop = BatchLoop(model, {1}, max_batch_size=4, prefill_chunk_tokens=128)
    driver = Driver(loop)
    loop.add(0, [5, 6, 7], SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True))
    driver.step()
    loop.add(1, long, greedy(6))
    chunks = []
    while not driver.tokens(1):
        before = loop._chunking.computed if loop._chunking is not None else 0
        driver.step()
        assert loop.last.kind == "chunk"
        chunks.append((loop._chunking.computed if loop._chunking is not None else len(long)) - before)
    assert chunks[0] == 128 and chunks == sorted(chunks, reverse=True) and chunks[-2] < 128
    assert sum(chunks) == len(long)
    while len(driver.tokens(1)) < 6:
        driver.step()
    assert driver.tokens(1) == alone


def test_a_steps_threads_follow_its_work_in_flops_not_its_tokens(model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The built-in model's small steps leave a core to the HTTP process; a real model's every step is worth both
    (its one-row decode is ~1,500x the built-in model's work per token)."""
    assert step_threads(PARALLEL_STEP_FLOPS, (2, 1)) == 2
    assert step_threads(PARALLEL_STEP_FLOPS * 0.99, (2, 1)) == 1
    loop = BatchLoop(model, {1}, max_batch_size=4, kv_cache_tokens=4096, cpu_threads=(2, 1))
    assert loop.step_cost.flops(10, 100) == loop.step_cost.tokens(10, 100) * matrix_flops_per_token(model)
    chosen: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", chosen.append)
    loop.add(0, list(range(100, 120)), greedy(2))  # a short prompt, then one decode row: small steps
    Driver(loop).run()
    long = [(7 * i) % 5000 + 100 for i in range(600)]
    loop.add(1, long, greedy(1))  # 600 tokens: ~1.2 GFLOPs on the built-in model
    Driver(loop).run()
    assert chosen == [1, 1, 2]
    real = StepCost(loop.step_cost.break_even_context, flops_per_token=3e9)  # DeepSeek-R1-Distill-Qwen-1.5B's size
    loop._cost = real
    chosen.clear()
    loop.add(2, [100, 101], greedy(2))
    Driver(loop).run()
    assert chosen == [2, 2]
