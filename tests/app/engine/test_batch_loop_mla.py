"""DeepSeek-V3's architecture (multi-head latent attention, mixture of experts) through the batch loop: requests
joining at different steps get exactly what `generate` gives each alone. transformers' own continuous batching
fails on this architecture, which is why the server has its own loop."""

from __future__ import annotations

import pytest
import torch
from transformers import DeepseekV3ForCausalLM

from app.engine.batch_loop import BatchLoop
from app.engine.types import SamplingParams
from tests.app.engine.loop_helpers import tiny_deepseek_v3

PROMPTS = {0: [5, 6, 7, 8, 9], 1: [11, 12], 2: [20, 21, 22, 23, 24, 25, 26, 27]}
NEW_TOKENS = 10


@pytest.fixture(scope="module")
def model() -> DeepseekV3ForCausalLM:
    return tiny_deepseek_v3()


def test_mla_requests_joining_mid_batch_match_generate_alone(model: DeepseekV3ForCausalLM) -> None:
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
    loop = BatchLoop(model, eos_token_ids={999}, max_batch_size=8)
    produced: dict[int, list[int]] = {request: [] for request in PROMPTS}
    loop.add(0, PROMPTS[0], params)
    for _ in range(2):  # request 0 is two tokens ahead when the others join
        for output in loop.step():
            produced[output.request_id].append(output.token)
    loop.add(1, PROMPTS[1], params)
    loop.add(2, PROMPTS[2], params)
    while not loop.idle:
        for output in loop.step():
            produced[output.request_id].append(output.token)
    with torch.no_grad():
        for request, prompt in PROMPTS.items():
            alone = model.generate(
                torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False
            )
            assert produced[request] == alone[0, len(prompt) :].tolist(), f"request {request}"


def generate_alone(model: DeepseekV3ForCausalLM, prompt: list[int], new: int = NEW_TOKENS) -> list[int]:
    with torch.no_grad():
        output = model.generate(torch.tensor([prompt]), max_new_tokens=new, min_new_tokens=new, do_sample=False)
    return [int(t) for t in output[0, len(prompt) :].tolist()]


def run(loop: BatchLoop, prompts: dict[int, list[int]], new: int = NEW_TOKENS) -> dict[int, list[int]]:
    produced: dict[int, list[int]] = {request: [] for request in prompts}
    for request, prompt in prompts.items():
        loop.add(request, prompt, SamplingParams(max_tokens=new, temperature=0.0, ignore_eos=True))
    for _ in range(500):
        if loop.idle:
            return produced
        for output in loop.step():
            produced[output.request_id].append(output.token)
    raise AssertionError("the loop never went idle")


@pytest.mark.parametrize("caching", [True, False])
def test_mla_prefix_cache_on_and_off_gives_the_tokens_of_generate(model: DeepseekV3ForCausalLM, caching: bool) -> None:
    shared = list(range(100, 120))  # five blocks of four
    first, second = [*shared, 7, 8, 9], [*shared, 30, 31]
    loop = BatchLoop(model, eos_token_ids={999}, max_batch_size=4, block_size=4, prefix_caching=caching)
    assert run(loop, {0: first})[0] == generate_alone(model, first)
    assert run(loop, {1: second})[1] == generate_alone(model, second)
    assert loop.kv.prefix_hits == (20 if caching else 0)


def test_mla_rows_preempted_under_a_tiny_kv_budget_resume_with_the_tokens_of_generate(
    model: DeepseekV3ForCausalLM,
) -> None:
    new = 16
    loop = BatchLoop(model, eos_token_ids={999}, max_batch_size=8, block_size=4, kv_cache_tokens=40)
    produced = run(loop, PROMPTS, new)
    assert loop.kv.preemptions > 0
    for request, prompt in PROMPTS.items():
        assert produced[request] == generate_alone(model, prompt, new), f"request {request}"
