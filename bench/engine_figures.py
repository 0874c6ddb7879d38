"""The engine's memory and scheduling figures over HTTP: long prompts, repeated prefixes, prompts that arrive while
others stream.

    python -m bench.engine_figures                     # a local server on the built-in model
    python -m bench.engine_figures --base-url URL      # a running endpoint
    python -m bench.engine_figures --figure prefix --server-arg=--model=builtin:qwen2-1.5b   # one figure, a real shape

Each figure is a ratio (or a time) measured in one run, printed with the hardware it ran on:
- long prompt: TTFT of a lone ~1,300-token prompt on an idle server (median of 3, each prompt new).
- prefix: TTFT of a ~1,500-token prompt whose first ~1,450 tokens were sent before ÷ a cold one of the same length.
- joiner: TTFT of a short request while 12 streams with ~1,000-token prompts decode ÷ the same on an idle server
  (medians of 3: three probes, one after another, while the same 12 streams decode).
- stall: while 8 streams decode and a ~3,000-token prompt arrives, the longest gap between two tokens of a running
  stream ÷ their median gap (the median of 3 such arrivals, each beside 8 new streams).
- memory: while one ~3,000-token and 31 short sequences decode, KV bytes held ÷ KV bytes their live tokens need. The
  server's metrics give the blocks held (deepseek_kv_cache_usage_perc × the cache's num_blocks × block_size, from
  deepseek_cache_config_info); the streams give the live tokens (prompt tokens + tokens received by then).

Joiner and stall are medians: one probe's TTFT depends on where in the running step it lands (a 12-row decode step
over 1,000-token contexts takes 30-50 ms on 2 cores), and one sample swung between 2.2 and 4.5 on the same server.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import re
import statistics
import sys
import time

from bench.client import Connection, Result
from bench.local_server import local_server

# Words of ordinary English: each becomes about one token, and random choices keep prompts from sharing prefixes.
_WORDS = (
    "model",
    "server",
    "token",
    "batch",
    "cache",
    "prompt",
    "stream",
    "request",
    "memory",
    "block",
    "latency",
    "throughput",
    "kernel",
    "tensor",
    "layer",
    "cluster",
    "replica",
    "node",
    "queue",
    "answer",
    "question",
    "context",
    "history",
    "system",
    "user",
    "reasoning",
    "policy",
    "budget",
    "chunk",
    "step",
)


def text(words: int, seed: int) -> str:
    chooser = random.Random(seed)
    return " ".join(chooser.choice(_WORDS) for _ in range(words))


class Figures:
    def __init__(self, base_url: str, api_key: str | None, model: str) -> None:
        self.base_url, self.api_key, self.model = base_url, api_key, model
        self._seed = 0

    def fresh(self, words: int) -> str:
        self._seed += 1
        return text(words, self._seed)

    async def _one(self, prompt: str, max_tokens: int) -> Result:
        connection = Connection(self.base_url, self.api_key)
        try:
            return await connection.chat_stream(self.model, prompt, max_tokens)
        finally:
            await connection.close()

    async def long_prompt(self) -> tuple[float, int]:
        results = [await self._one(self.fresh(1300), 4) for _ in range(3)]
        return statistics.median(r.ttft for r in results), results[0].prompt_tokens

    async def prefix(self) -> float:
        ratios = []
        for _ in range(3):
            shared = self.fresh(1450)
            cold = await self._one(f"{shared} {self.fresh(50)}", 4)
            warm = await self._one(f"{shared} {self.fresh(50)}", 4)
            ratios.append(warm.ttft / cold.ttft)
        return statistics.median(ratios)

    async def _while_streaming(
        self, streams: int, stream_words: int, probe_words: int, probes: int = 1
    ) -> tuple[list[Result], list[Result]]:
        """`streams` long-running streams; once every one of them is decoding, `probes` requests of `probe_words`,
        one after another."""
        decoding = [asyncio.Event() for _ in range(streams)]

        async def stream(index: int) -> Result:
            connection = Connection(self.base_url, self.api_key)
            try:
                prompt = self.fresh(stream_words)
                return await connection.chat_stream(self.model, prompt, 400, first_token=decoding[index])
            finally:
                await connection.close()

        running = [asyncio.create_task(stream(index)) for index in range(streams)]
        await asyncio.gather(*(event.wait() for event in decoding))
        sent = [await self._one(self.fresh(probe_words), 4) for _ in range(probes)]
        return sent, list(await asyncio.gather(*running))

    async def joiner(self) -> float:
        idle = statistics.median([(await self._one(self.fresh(20), 4)).ttft for _ in range(3)])
        probes, _ = await self._while_streaming(streams=12, stream_words=1000, probe_words=20, probes=3)
        return statistics.median(probe.ttft for probe in probes) / idle

    async def memory(self) -> float:
        decoding = [asyncio.Event() for _ in range(32)]
        starts = [0.0] * 32

        async def stream(index: int) -> Result:
            connection = Connection(self.base_url, self.api_key)
            try:
                prompt = self.fresh(3000 if index == 0 else 20)
                starts[index] = time.perf_counter()
                return await connection.chat_stream(self.model, prompt, 200, first_token=decoding[index])
            finally:
                await connection.close()

        running = [asyncio.create_task(stream(index)) for index in range(32)]
        await asyncio.gather(*(event.wait() for event in decoding))
        sampled = time.perf_counter()
        held = await self._kv_tokens_held()
        results = await asyncio.gather(*running)
        live = sum(
            r.prompt_tokens + sum(1 for t in r.token_times if start + t <= sampled)
            for r, start in zip(results, starts, strict=True)
        )
        return held / live

    async def _kv_tokens_held(self) -> float:
        return kv_tokens_held(await Connection(self.base_url, self.api_key).get_text("/metrics"))

    async def stall(self) -> float:
        ratios = []
        for _ in range(3):
            _, streams = await self._while_streaming(streams=8, stream_words=20, probe_words=3000)
            gaps = [later - earlier for r in streams for earlier, later in itertools.pairwise(r.token_times)]
            ratios.append(max(gaps) / statistics.median(gaps))
        return statistics.median(ratios)


def kv_tokens_held(text: str) -> float:
    """Tokens' worth of KV blocks held, from a server's /metrics text: usage × num_blocks × block_size."""
    usage = re.search(r"^deepseek_kv_cache_usage_perc\{[^}]*\} (\S+)$", text, re.MULTILINE)
    info = re.search(r"^deepseek_cache_config_info\{([^}]*)\}", text, re.MULTILINE)
    if usage is None or info is None:
        raise RuntimeError("the server's /metrics reports no KV cache usage or cache config")
    labels = dict(re.findall(r'(\w+)="([^"]*)"', info[1]))
    return float(usage[1]) * int(labels["num_blocks"]) * int(labels["block_size"])


FIGURES = ("long", "prefix", "joiner", "stall", "memory")


async def run(base_url: str, api_key: str | None, model: str | None, chosen: tuple[str, ...] = FIGURES) -> None:
    if model is None:
        listing = await Connection(base_url, api_key).get_json("/v1/models")
        assert isinstance(listing, dict)
        model = str(listing["data"][0]["id"])
    figures = Figures(base_url, api_key, model)
    await figures._one("warm up", 4)
    if "long" in chosen:
        long_ttft, long_tokens = await figures.long_prompt()
        line = f"long prompt   lone TTFT of a {long_tokens}-token prompt: {long_ttft:.2f} s (target ≤ 0.4 s)"
        print(line, flush=True)
    if "prefix" in chosen:
        print(f"prefix        warm ÷ cold TTFT, ~1,500 tokens: {await figures.prefix():.2f} (target ≤ 0.2)", flush=True)
    if "joiner" in chosen:
        joiner = await figures.joiner()
        print(f"joiner        TTFT beside 12 long streams ÷ idle: {joiner:.2f} (target ≤ 3)", flush=True)
    if "stall" in chosen:
        print(
            f"stall         longest ÷ median token gap, 3,000-token arrival: {await figures.stall():.2f} (target ≤ 4)",
            flush=True,
        )
    if "memory" in chosen:
        memory = await figures.memory()
        print(f"memory        KV held ÷ needed, one 3,000-token + 31 short: {memory:.2f} (target ≤ 1.25)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.engine_figures", description=__doc__)
    parser.add_argument("--base-url", help="measure this running endpoint instead of starting a local server")
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"), help="bearer key (env OPENAI_API_KEY)")
    parser.add_argument("--model", help="model name (default: the first one /v1/models lists)")
    parser.add_argument("--server-arg", action="append", default=[], help="extra flag for the local server")
    parser.add_argument(
        "--figure", action="append", choices=FIGURES, help="measure only this figure (repeatable; default: all)"
    )
    args = parser.parse_args(argv)
    chosen = tuple(args.figure or FIGURES)
    if args.base_url:
        print(f"endpoint: {args.base_url} (its hardware is the server's; not known here)")
        asyncio.run(run(args.base_url, args.api_key, args.model, chosen))
        return 0
    from app.model import hardware

    print(f"local server on the built-in model {' '.join(args.server_arg)}".rstrip())
    print(hardware.describe())
    with local_server(args.server_arg) as (base, _pid):
        asyncio.run(run(base, None, None, chosen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
