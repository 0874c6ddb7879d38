"""The CUDA suite: a 7B shape (Qwen2-7B config, random bf16 weights) served by the real server, measured over HTTP.

Reports single-stream decode tokens/s against the HBM roofline (every decode step reads every weight once, so
tokens/s cannot exceed bandwidth / weight bytes), aggregate tokens/s at 64 streams, and p99 time to first token at
16 streams with 512-token prompts. Targets on an H200: >= 50 % of roofline, >= 2,000 tokens/s, <= 200 ms.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass

from bench.client import Connection
from bench.local_server import local_server

SHAPE = "qwen2-7b"
# Peak HBM bandwidth in bytes/s by device name, from the vendors' data sheets.
HBM_BANDWIDTH = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12, "L40S": 0.864e12, "A10G": 0.6e12}
LONG_PROMPT = " ".join(["The quick brown fox jumps over the lazy dog while the model measures its latency."] * 34)


@dataclass
class GpuReport:
    device: str
    parameters_billion: float
    single_stream_tokens_per_s: float
    roofline_tokens_per_s: float
    roofline_fraction: float
    aggregate_tokens_per_s_64: float
    ttft_p99_ms_16x512: float
    prompt_tokens_16x512: int


def weight_bytes(shape: str) -> tuple[int, int]:
    """(parameters, bytes in bf16) of a built-in random shape, counted on the meta device (no memory)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from app.model.builtin import RANDOM_SHAPES

    config = AutoConfig.for_model(**RANDOM_SHAPES[shape])
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    parameters = sum(p.numel() for p in model.parameters())
    return parameters, parameters * 2


def bandwidth_for(device_name: str) -> float:
    for key, value in HBM_BANDWIDTH.items():
        if key in device_name:
            return value
    raise SystemExit(f"no HBM bandwidth on record for {device_name!r}; add it to bench/gpu.py HBM_BANDWIDTH")


async def _measure(base_url: str, parameters: int, roofline: float, device: str) -> GpuReport:
    connections = [Connection(base_url, None) for _ in range(64)]
    model = str((await connections[0].get_json("/v1/models"))["data"][0]["id"])  # type: ignore[index]
    await asyncio.gather(*(c.chat_stream(model, "warm up", 4) for c in connections))

    single = await connections[0].chat_stream(model, "Count slowly.", 512)
    single_rate = (single.completion_tokens - 1) / (single.latency - single.ttft)

    started = time.perf_counter()
    results = await asyncio.gather(*(c.chat_stream(model, "Tell a long story.", 256) for c in connections))
    aggregate = sum(r.completion_tokens for r in results) / (time.perf_counter() - started)

    long_results = await asyncio.gather(*(c.chat_stream(model, LONG_PROMPT, 16) for c in connections[:16]))
    ttfts = sorted(r.ttft for r in long_results)
    await asyncio.gather(*(c.close() for c in connections))
    return GpuReport(
        device=device,
        parameters_billion=round(parameters / 1e9, 2),
        single_stream_tokens_per_s=round(single_rate, 1),
        roofline_tokens_per_s=round(roofline, 1),
        roofline_fraction=round(single_rate / roofline, 3),
        aggregate_tokens_per_s_64=round(aggregate, 1),
        ttft_p99_ms_16x512=round(ttfts[-1] * 1000, 1),
        prompt_tokens_16x512=long_results[0].prompt_tokens,
    )


def run_gpu_suite(json_path: str | None) -> int:
    import torch

    if not torch.cuda.is_available():
        print("the GPU suite needs a CUDA device; torch sees none", file=sys.stderr)
        return 2
    device = torch.cuda.get_device_name(0)
    parameters, size = weight_bytes(SHAPE)
    roofline = bandwidth_for(device) / size
    server_args = ["--model", f"builtin:{SHAPE}", "--max-batch-size", "64", "--max-model-len", "4096"]
    with local_server(server_args, ready_timeout=900) as (base, _pid):
        report = asyncio.run(_measure(base, parameters, roofline, device))
    for key, value in asdict(report).items():
        print(f"{key:32s} {value}")
    if json_path:
        with open(json_path, "w") as handle:
            json.dump(asdict(report), handle, indent=2)
    return 0
