"""Benchmark the server on the built-in model, or load-test any running endpoint.

    python -m bench                                   # starts a local server on the built-in model, measures it
    python -m bench --base-url http://LB:80 --api-key KEY --model NAME   # measures a deployed endpoint
    python -m bench --gpu-suite                       # on a CUDA machine: the 7B-shape figures

Printed in one run: throughput of N concurrent streams x M new tokens (EOS ignored) against the same N requests
sent one after another (the ratio is what continuous batching buys), p50/p99 time to first token under
concurrency, p99 concurrent TTFT divided by a lone request's TTFT, and the cost of structured outputs: the same
concurrent requests constrained by a json_schema response_format, their tokens/s divided by the unconstrained.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass

from bench.client import Connection, Result
from bench.local_server import local_server, resident_mib

PROMPT = "Explain, step by step, how continuous batching raises the throughput of an inference server."

# The constrained phase's response_format: a list of objects (strings, bounded integers, enums) so long that no
# output finishes within max_tokens, so the constrained requests generate as many tokens as the unconstrained ones.
CONSTRAINED_FORMAT: dict[str, object] = {
    "type": "json_schema",
    "json_schema": {
        "name": "districts",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {
                "districts": {
                    "type": "array",
                    "minItems": 1000,
                    "items": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string", "maxLength": 16},
                            "population": {"type": "integer", "minimum": 0, "maximum": 1000000},
                            "kind": {"enum": ["old town", "harbour", "market"]},
                        },
                        "required": ["name", "population", "kind"],
                    },
                }
            },
            "required": ["districts"],
        },
    },
}


@dataclass
class Report:
    endpoint: str
    concurrency: int
    max_tokens: int
    sequential_tokens_per_s: float
    concurrent_tokens_per_s: float
    throughput_ratio: float
    lone_ttft_ms: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    ttft_ratio: float
    # The same concurrent requests under a json_schema response_format, and its tokens/s ÷ the unconstrained ones'
    constrained_tokens_per_s: float
    constrained_ratio: float
    failed: int
    server_resident_mib: float | None = None  # after the run, HTTP and engine processes together (local only)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def measure(base_url: str, api_key: str | None, model: str | None, concurrency: int, max_tokens: int) -> Report:
    connections = [Connection(base_url, api_key) for _ in range(concurrency)]
    first = connections[0]
    try:
        if model is None:
            listing = await first.get_json("/v1/models")
            assert isinstance(listing, dict)
            model = str(listing["data"][0]["id"])
        # Open every connection first, as a load balancer keeps them open, so the concurrent figures measure
        # the server rather than 32 TCP handshakes at once; this also warms the server up.
        await asyncio.gather(*(c.chat_stream(model, PROMPT, 1) for c in connections))
        lone = [await first.chat_stream(model, PROMPT, 8) for _ in range(5)]
        lone_ttft = statistics.median(r.ttft for r in lone)

        started = time.perf_counter()
        sequential: list[Result] = [await first.chat_stream(model, PROMPT, max_tokens) for _ in range(concurrency)]
        sequential_time = time.perf_counter() - started

        # The sequential phase can outlast the server's keep-alive (75 s; ~70 s on a CPU without native bf16), and
        # the server then closes the idle connections: open any it closed again, outside the measured time.
        await asyncio.gather(*(c.chat_stream(model, PROMPT, 1) for c in connections))
        started = time.perf_counter()
        concurrent = await asyncio.gather(*(c.chat_stream(model, PROMPT, max_tokens) for c in connections))
        concurrent_time = time.perf_counter() - started

        started = time.perf_counter()
        constrained = await asyncio.gather(
            *(c.chat_stream(model, PROMPT, max_tokens, response_format=CONSTRAINED_FORMAT) for c in connections)
        )
        constrained_time = time.perf_counter() - started
    finally:
        await asyncio.gather(*(c.close() for c in connections))

    ok = [r for r in concurrent if r.status == 200]
    failed = len(concurrent) - len(ok) + sum(r.status != 200 for r in (*sequential, *constrained))
    ttfts = [r.ttft for r in ok] or [0.0]
    sequential_rate = sum(r.completion_tokens for r in sequential) / sequential_time
    concurrent_rate = sum(r.completion_tokens for r in ok) / concurrent_time
    constrained_rate = sum(r.completion_tokens for r in constrained if r.status == 200) / constrained_time
    p99 = percentile(ttfts, 99)
    return Report(
        endpoint=base_url,
        concurrency=concurrency,
        max_tokens=max_tokens,
        sequential_tokens_per_s=round(sequential_rate, 1),
        concurrent_tokens_per_s=round(concurrent_rate, 1),
        throughput_ratio=round(concurrent_rate / sequential_rate, 2) if sequential_rate else 0.0,
        lone_ttft_ms=round(lone_ttft * 1000, 1),
        ttft_p50_ms=round(percentile(ttfts, 50) * 1000, 1),
        ttft_p99_ms=round(p99 * 1000, 1),
        ttft_ratio=round(p99 / lone_ttft, 2) if lone_ttft else 0.0,
        constrained_tokens_per_s=round(constrained_rate, 1),
        constrained_ratio=round(constrained_rate / concurrent_rate, 2) if concurrent_rate else 0.0,
        failed=failed,
    )


FIGURES = (
    ("sequential_tokens_per_s", "sequential tokens/s", "{:.1f}"),
    ("concurrent_tokens_per_s", "concurrent tokens/s", "{:.1f}"),
    ("throughput_ratio", "throughput ratio (x)", "{:.2f}"),
    ("lone_ttft_ms", "lone TTFT (ms)", "{:.1f}"),
    ("ttft_p50_ms", "TTFT p50 (ms)", "{:.1f}"),
    ("ttft_p99_ms", "TTFT p99 (ms)", "{:.1f}"),
    ("ttft_ratio", "TTFT ratio (x, p99 / lone)", "{:.2f}"),
    ("constrained_tokens_per_s", "json_schema tokens/s", "{:.1f}"),
    ("constrained_ratio", "constrained ratio (x)", "{:.2f}"),
)


def print_reports(reports: list[Report], hardware: str | None) -> None:
    """One column per run and the median: on a small shared machine one run alone is noisy."""
    first = reports[0]
    print(f"endpoint: {first.endpoint}")
    print(hardware or "hardware: the endpoint's (not known here)")
    print(
        f"{first.concurrency} concurrent streams vs the same {first.concurrency} requests one after another, "
        f"{first.max_tokens} new tokens each (EOS ignored, temperature 0); lone TTFT: median of 5"
    )
    runs = "".join(f"{'run ' + str(n + 1):>10s}" for n in range(len(reports)))
    print(f"{'':28s}{runs}{'median':>10s}")
    for field, label, style in FIGURES:
        values = [float(getattr(report, field)) for report in reports]
        cells = "".join(f"{style.format(value):>10s}" for value in values)
        print(f"{label:28s}{cells}{style.format(statistics.median(values)):>10s}")
    print(f"{'failed requests':28s}{''.join(f'{r.failed:>10d}' for r in reports)}")
    if first.server_resident_mib is not None:
        print(f"server memory after the runs: {reports[-1].server_resident_mib:.0f} MiB resident (HTTP + engine)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base-url", help="measure this running endpoint instead of starting a local server")
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"), help="bearer key (env OPENAI_API_KEY)")
    parser.add_argument("--model", help="model name (default: the first one /v1/models lists)")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent streams (default 32)")
    parser.add_argument("--max-tokens", type=int, default=64, help="new tokens per request (default 64)")
    parser.add_argument("--runs", type=int, default=3, help="repeat the measurement, report each and the median")
    parser.add_argument("--server-arg", action="append", default=[], help="extra flag for the local server")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--gpu-suite", action="store_true", help="run the CUDA 7B-shape suite (bench/gpu.py)")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.max_tokens < 1 or args.runs < 1:
        parser.error("--concurrency, --max-tokens and --runs must be at least 1")
    if args.gpu_suite:
        from bench.gpu import run_gpu_suite

        return run_gpu_suite(args.json)

    def measure_runs(base: str, key: str | None, model: str | None) -> list[Report]:
        return [asyncio.run(measure(base, key, model, args.concurrency, args.max_tokens)) for _ in range(args.runs)]

    described = None
    if args.base_url:
        reports = measure_runs(args.base_url, args.api_key, args.model)
    else:
        from app.model import hardware  # torch, in this client process only: the server is measured apart

        described = hardware.describe()
        with local_server(args.server_arg) as (base, pid):
            reports = measure_runs(base, None, None)
            reports[-1].server_resident_mib = round(resident_mib(pid), 1)
            reports[0].server_resident_mib = reports[-1].server_resident_mib
    print_reports(reports, described)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump([asdict(report) for report in reports], handle, indent=2)
    return 0 if all(report.failed == 0 for report in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
