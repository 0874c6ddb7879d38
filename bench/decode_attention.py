"""How decode rows should attend on this CPU: SDPA against two matmuls (app.engine.paged_attention.matmul_attention),
per head layout, number of rows and context depth, in bf16 and float32, and which of the two the engine picks.

    python -m bench.decode_attention

Layouts: the built-in model's (4 heads of 16 on 2 KV heads), DeepSeek-R1-Distill-Qwen-1.5B's (12 heads of 128 on
2) and DeepSeek-V3's multi-head latent attention as it is attended (16 heads, 192-wide queries, 128-wide values).
On one thread (the built-in model's decode steps) and on every core (a real model's: batch_loop.step_threads);
each figure is the best of 3 runs of up to 50 calls. The thresholds in
paged_attention.decode_by_matmul follow what this prints.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from app.engine.paged_attention import decode_by_matmul, matmul_attention
from app.model import hardware

# (name, KV heads, query heads per KV head, query width, value width)
LAYOUTS = (
    ("built-in, 4 heads of 16 on 2", 2, 2, 16, 16),
    ("R1-Distill-Qwen-1.5B, 12 heads of 128 on 2", 2, 6, 128, 128),
    ("DeepSeek-V3 MLA, 16 heads, 192 / 128 wide", 16, 1, 192, 128),
)
ROWS = (1, 2, 4, 8, 16, 32)
KEYS = (60, 1000)


def microseconds(call: Callable[[], object]) -> float:
    call()  # first-call allocations and kernel selection
    started = time.perf_counter()
    call()
    calls = max(1, min(50, int(0.05 / (time.perf_counter() - started))))  # ~50 ms a run (MLA's SDPA: ~0.3 s a call)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(calls):
            call()
        best = min(best, (time.perf_counter() - started) / calls)
    return best * 1e6


def compare(dtype: torch.dtype, kv_heads: int, group: int, width: int, value_width: int, rows: int, keys: int) -> str:
    generator = torch.Generator().manual_seed(0)
    q = torch.randn((rows, kv_heads, group, width), generator=generator).to(dtype)
    k = torch.randn((rows, kv_heads, keys, width), generator=generator).to(dtype)
    v = torch.randn((rows, kv_heads, keys, value_width), generator=generator).to(dtype)
    # rows of several depths, as a batch has them: every row but the first padded and masked
    lengths = torch.randint(keys // 2, keys + 1, (rows,), generator=generator)
    lengths[0] = keys
    hidden = torch.arange(keys).view(1, keys) >= lengths.view(rows, 1)
    mask = torch.zeros((rows, 1, 1, keys), dtype=dtype).masked_fill_(hidden.view(rows, 1, 1, keys), float("-inf"))
    sdpa = microseconds(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    matmuls = microseconds(lambda: matmul_attention(q, k, v, mask, None))
    chosen = "matmuls" if decode_by_matmul(q, k, v) else "SDPA"
    figures = f"SDPA {sdpa:>8.0f} us   matmuls {matmuls:>7.0f} us   ({sdpa / matmuls:5.2f}x)"
    return f"{rows:>4} x {keys:>5}  {figures}   engine: {chosen}"


def main() -> None:
    print(hardware.describe())
    for threads in sorted({1, hardware.cpu_count()}):
        torch.set_num_threads(threads)
        for dtype in (torch.bfloat16, torch.float32):
            for name, kv_heads, group, width, value_width in LAYOUTS:
                print(f"{name}, {str(dtype).removeprefix('torch.')}, {threads} thread(s)  (rows x keys)")
                for rows in ROWS:
                    for keys in KEYS:
                        print("  " + compare(dtype, kv_heads, group, width, value_width, rows, keys), flush=True)


if __name__ == "__main__":
    main()
