"""Why the server has its own batch loop: transformers' continuous batching against it, in one process, on the
built-in model, 32 requests x 64 greedy tokens each (EOS ignored).

    python -m bench.compare_engines
"""

from __future__ import annotations

import time
from typing import Any

import torch
from transformers import AutoModelForCausalLM, GenerationConfig

from app.engine.batch_loop import BatchLoop
from app.engine.types import SamplingParams
from app.model.builtin import ensure_builtin_model
from app.model.loader import load_tokenizer

REQUESTS, NEW_TOKENS = 32, 64


def prompt_ids(directory: Any) -> list[int]:
    tokenizer = load_tokenizer(directory, lambda _: None)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Explain how continuous batching raises the throughput of a server."}],
        add_generation_prompt=True,
        tokenize=False,
    )
    ids: list[int] = tokenizer.encode(text, add_special_tokens=False)
    return ids


def batch_loop(directory: Any, ids: list[int]) -> float:
    model = AutoModelForCausalLM.from_pretrained(directory, dtype="auto", attn_implementation="eager")
    loop = BatchLoop(model, {1}, max_batch_size=REQUESTS)
    for request in range(REQUESTS):
        loop.add(request, ids, SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True))
    started, tokens = time.perf_counter(), 0
    while not loop.idle:
        tokens += len(loop.step())
    return tokens / (time.perf_counter() - started)


def transformers_cb(directory: Any, ids: list[int], attention: str) -> float:
    model = AutoModelForCausalLM.from_pretrained(directory, dtype="auto", attn_implementation=attention)
    config = GenerationConfig(max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=-1, pad_token_id=1)  # type: ignore[no-untyped-call]
    started = time.perf_counter()
    outputs = model.generate_batch(inputs=[ids] * REQUESTS, generation_config=config)
    tokens = sum(len(output.generated_tokens) for output in outputs.values())
    return tokens / (time.perf_counter() - started)


def main() -> None:
    torch.set_num_threads(1)  # as the engine process runs on a 2-core machine
    directory = ensure_builtin_model()
    ids = prompt_ids(directory)
    print(f"{REQUESTS} requests x {NEW_TOKENS} tokens, built-in model, CPU, 1 thread")
    print(f"  app.engine.BatchLoop                     {batch_loop(directory, ids):8.0f} tokens/s")
    for attention in ("sdpa", "paged|eager"):
        rate = transformers_cb(directory, ids, attention)
        print(f"  transformers generate_batch ({attention:11s}) {rate:8.0f} tokens/s")


if __name__ == "__main__":
    main()
