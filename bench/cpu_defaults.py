"""Which dtype and attention kernel a CPU should run, measured on the built-in model over short and long prompts.

    python -m bench.cpu_defaults

For bfloat16 and float32, each with eager and SDPA attention: prefills of 32 short prompts (28 tokens, a chat
turn), of 4 mid-sized ones (256) and of one long prompt (1,300 tokens, a document or a long history), and decode
steps of 32 rows with short contexts and of 8 rows 1,000 tokens deep.
Threads as the engine sets them (app.engine.worker.cpu_threads: all cores for large prefills, fewer for decode).
The server's CPU defaults (app.model.loader.resolve_dtype, cpu_attention) follow what this prints; the hardware is
printed with the figures, since the answer differs between CPUs with and without native bf16.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from transformers import AutoModelForCausalLM, DynamicCache

from app.engine.worker import cpu_threads
from app.model import hardware
from app.model.builtin import ensure_builtin_model

# (rows, tokens): prefills of chat turns, of a few mid-sized prompts and of one long prompt; decode steps of many
# rows with short contexts and of a few rows deep into long contexts.
PREFILLS = ((32, 28), (4, 256), (1, 1300))
DECODES = ((32, 28), (8, 1000))
DECODE_STEPS, REPEATS = 8, 3


def _median_seconds(run: Callable[[], object]) -> float:
    run()  # warm-up: first-call allocations and kernel selection
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


@torch.inference_mode()
def measure(model: Any, attention: str) -> list[float]:
    """Seconds of each prefill in PREFILLS, then seconds per step of each decode in DECODES."""
    model.set_attn_implementation(attention)
    generator = torch.Generator().manual_seed(0)
    vocab = int(model.config.vocab_size) - 1000  # clear of the special tokens at the top
    prefill_threads, decode_threads = cpu_threads()
    figures = []
    torch.set_num_threads(prefill_threads)
    for rows, tokens in PREFILLS:
        ids = torch.randint(1000, vocab, (rows, tokens), generator=generator)

        def prefill(ids: torch.Tensor = ids) -> None:
            model(input_ids=ids, use_cache=True, logits_to_keep=1)

        figures.append(_median_seconds(prefill))
    for rows, context in DECODES:
        torch.set_num_threads(prefill_threads)
        cache = DynamicCache(config=model.config)
        ids = torch.randint(1000, vocab, (rows, context), generator=generator)
        next_ids = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits.argmax(-1)
        torch.set_num_threads(decode_threads)

        def decode(cache: Any = cache, first: Any = next_ids) -> None:
            token = first
            for _ in range(DECODE_STEPS):
                token = model(input_ids=token, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)

        figures.append(_median_seconds(decode) / DECODE_STEPS)
    return figures


def main() -> None:
    logging.disable(logging.WARNING)  # transformers' loading progress and notices would interleave with the table
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    directory = ensure_builtin_model()
    print(hardware.describe())
    print(f"built-in model; threads for prefill / decode {cpu_threads()}; ms, median of {REPEATS} after a warm-up")
    columns = [f"prefill {r}x{n}" for r, n in PREFILLS] + [f"decode {r}@{n}" for r, n in DECODES]
    print(f"{'dtype':10s}{'attention':>10s}" + "".join(f"{c:>16s}" for c in columns))
    for dtype in (torch.bfloat16, torch.float32):
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, attn_implementation="eager")
        model.eval()  # type: ignore[no-untyped-call]
        for attention in ("eager", "sdpa"):
            figures = measure(model, attention)
            name = str(dtype).removeprefix("torch.")
            print(f"{name:10s}{attention:>10s}" + "".join(f"{s * 1000:>16.1f}" for s in figures), flush=True)
        started = time.perf_counter()
        for _ in range(10):
            model.set_attn_implementation("eager")
            model.set_attn_implementation("sdpa")
        switch_ms = (time.perf_counter() - started) / 20 * 1000
    print(f"switching the attention implementation between steps: {switch_ms:.2f} ms a switch")


if __name__ == "__main__":
    main()
