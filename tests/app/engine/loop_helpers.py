"""What the batch-loop tests share: prompts, the greedy parameters, and a driver that files outputs by request."""

from __future__ import annotations

from collections import defaultdict

import torch
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

from app.engine.batch_loop import BatchLoop, StepOutput
from app.engine.types import FinishReason, SamplingParams

TEXTS = [
    "Hello",
    "The quick brown fox jumps over the lazy dog.",
    "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15",
    "你好，世界",
    "Once upon a time in a land far away there lived",
    "a",
]
N = 12  # tokens in every reference


def greedy(max_tokens: int = N, ignore_eos: bool = True) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=ignore_eos)


class Driver:
    """Steps a BatchLoop and files each output under its request."""

    def __init__(self, loop: BatchLoop) -> None:
        self.loop = loop
        self.outputs: dict[int, list[StepOutput]] = defaultdict(list)
        self.max_running = 0

    def step(self, times: int = 1) -> None:
        for _ in range(times):
            for output in self.loop.step():
                self.outputs[output.request_id].append(output)
            self.max_running = max(self.max_running, self.loop.running)

    def run(self, limit: int = 200) -> None:
        for _ in range(limit):
            if self.loop.idle:
                return
            self.step()
        raise AssertionError("the loop never went idle")

    def tokens(self, request_id: int) -> list[int]:
        return [o.token for o in self.outputs[request_id]]

    def finishes(self, request_id: int) -> list[FinishReason | None]:
        return [o.finish for o in self.outputs[request_id]]


def tiny_deepseek_v3(vocab_size: int = 1000) -> DeepseekV3ForCausalLM:
    """DeepSeek-V3's architecture at toy size: multi-head latent attention, shared and routed experts (top 2 of 4)."""
    torch.manual_seed(0)
    config = DeepseekV3Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=32,
        num_hidden_layers=3,
        first_k_dense_replace=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        n_routed_experts=4,
        n_shared_experts=1,
        num_experts_per_tok=2,
        n_group=1,
        topk_group=1,
        kv_lora_rank=16,
        q_lora_rank=32,
        qk_rope_head_dim=8,
        qk_nope_head_dim=16,
        v_head_dim=16,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    model = DeepseekV3ForCausalLM(config)
    model.train(False)  # inference mode for dropout and the router
    return model
