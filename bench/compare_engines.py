"""The engine choice, measured: this server's paged batch loop against transformers' continuous batching
(`generate_batch`: its paged cache and scheduler), in one process, on two model shapes and two input shapes.

    python -m bench.compare_engines

Models: the built-in one as the server loads it on this machine (dtype and attention follow the hardware), and a
small DeepSeek-V3 shape (multi-head latent attention, shared and routed experts; random weights, float32).
Workloads, each with distinct prompts (so no engine gains from a shared prefix): 32 short prompts (~30 tokens)
x 64 new tokens, and 8 long ones (~1,000 tokens) x 32 new tokens; greedy, EOS ignored. Both engines get every core.
Each line gives tokens/s over the whole workload (prefill included) and whether its greedy tokens match this loop's.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from typing import Any

import torch
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM, GenerationConfig
from transformers.generation.configuration_utils import ContinuousBatchingConfig

from app.engine.batch_loop import BatchLoop
from app.engine.types import SamplingParams
from app.model import hardware
from app.model.builtin import ensure_builtin_model
from app.model.loader import load_weights
from app.model.source import WeightsSpec

Workload = tuple[str, list[list[int]], int]  # name, prompts, new tokens each


def workloads(vocab: int) -> list[Workload]:
    chooser = random.Random(0)

    def prompts(count: int, length: int) -> list[list[int]]:
        return [[chooser.randrange(100, vocab) for _ in range(length)] for _ in range(count)]

    return [
        ("32 x 30-token prompts, 64 new", prompts(32, 30), 64),
        ("8 x 1,000-token prompts, 32 new", prompts(8, 1000), 32),
    ]


def batch_loop(model: Any, prompts: list[list[int]], new_tokens: int) -> tuple[float, list[list[int]]]:
    loop = BatchLoop(model, {-1}, max_batch_size=len(prompts))
    for request, prompt in enumerate(prompts):
        loop.add(request, prompt, SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True))
    produced: list[list[int]] = [[] for _ in prompts]
    started = time.perf_counter()
    while not loop.idle:
        for output in loop.step():
            produced[output.request_id].append(output.token)
    return sum(map(len, produced)) / (time.perf_counter() - started), produced


class _Errors(logging.Handler):
    """transformers' continuous batching logs a failed step and returns what it has: keep the first error."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.first: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if self.first is None and "psutil" not in message:
            self.first = message


def transformers_cb(model: Any, prompts: list[list[int]], new_tokens: int) -> tuple[float, list[list[int]]]:
    config = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=-1, pad_token_id=0)  # type: ignore[no-untyped-call]
    # Its cache sized to the workload (by default it takes a share of the machine's memory, which on a CPU
    # without psutil ran this machine out of memory).
    page = 256
    blocks = sum(math.ceil((len(prompt) + new_tokens) / page) + 1 for prompt in prompts)
    batching = ContinuousBatchingConfig(page_size=page, num_blocks=blocks)
    errors = _Errors()
    logger = logging.getLogger("ContinuousBatchingLogger")
    logger.addHandler(errors)
    try:
        started = time.perf_counter()
        outputs = model.generate_batch(inputs=prompts, generation_config=config, continuous_batching_config=batching)
        seconds = time.perf_counter() - started
    finally:
        logger.removeHandler(errors)
    by_order = [outputs[key] for key in sorted(outputs, key=lambda key: int(str(key).rsplit("_", 1)[-1]))]
    produced = [list(output.generated_tokens) for output in by_order]
    if sum(map(len, produced)) < len(prompts) * new_tokens:
        raise RuntimeError(errors.first or "fewer tokens than asked for, and no error logged")
    return sum(map(len, produced)) / seconds, produced


def with_attention(model: Any, implementation: str) -> Any:
    model.set_attn_implementation(implementation)
    return model


def tiny_deepseek_v3() -> DeepseekV3ForCausalLM:
    torch.manual_seed(0)
    config = DeepseekV3Config(
        vocab_size=32000,
        hidden_size=256,
        intermediate_size=512,
        moe_intermediate_size=128,
        num_hidden_layers=4,
        first_k_dense_replace=1,
        num_attention_heads=8,
        num_key_value_heads=8,
        n_routed_experts=8,
        n_shared_experts=1,
        num_experts_per_tok=2,
        n_group=1,
        topk_group=1,
        kv_lora_rank=64,
        q_lora_rank=128,
        qk_rope_head_dim=16,
        qk_nope_head_dim=32,
        v_head_dim=32,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    model = DeepseekV3ForCausalLM(config)
    model.train(False)
    return model


def compare(name: str, build: Callable[[], Any], vocab: int, transformers_attention: tuple[str, ...]) -> None:
    print(f"{name}")
    for label, prompts, new_tokens in workloads(vocab):
        ours, reference = batch_loop(build(), prompts, new_tokens)
        print(f"  {label}")
        print(f"    app.engine BatchLoop (paged)            {ours:8.0f} tokens/s")
        for attention in transformers_attention:
            try:
                rate, produced = transformers_cb(with_attention(build(), attention), prompts, new_tokens)
            except Exception as error:  # a failure is a result here: print it in one line and go on
                print(f"    transformers generate_batch ({attention:11s}) fails: {type(error).__name__}: {error}"[:200])
                continue
            same = "same tokens" if produced == reference else "different tokens"
            print(f"    transformers generate_batch ({attention:11s}) {rate:8.0f} tokens/s ({same})")


def main() -> None:
    torch.set_num_threads(hardware.cpu_count())
    print(hardware.describe())
    print(f"torch threads: {torch.get_num_threads()}")
    directory = ensure_builtin_model()
    loaded = load_weights(WeightsSpec(str(directory), "auto", "cpu", 4096), lambda _: None)
    print(f"built-in model as served here: {loaded.description}")

    def builtin() -> Any:
        return load_weights(WeightsSpec(str(directory), "auto", "cpu", 4096), lambda _: None).model

    compare("built-in model (Qwen2 shape)", builtin, loaded.model.config.vocab_size, ("sdpa", "paged|eager"))
    compare("DeepSeek-V3 shape (MLA + MoE), float32", tiny_deepseek_v3, 32000, ("sdpa", "paged|eager"))


if __name__ == "__main__":
    main()
