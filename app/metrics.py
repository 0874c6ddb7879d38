"""Prometheus metrics, named in vLLM's style with a `deepseek_` prefix (colons are reserved for recording rules).

METRICS is the one place each metric is named and described: the registry is built from it, the reference page
(docs/server/metrics.md, `scripts/docs`) is generated from it, and a test checks every name the stack's
autoscaler, alerts and dashboard read against what the server really exposes. Every metric carries `model_name`.
Each server owns its registry, so tests can run several apps in one process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from app.engine.client import EngineObserver
from app.engine.types import CacheConfig, KVStats

TTFT_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1)
E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 120, 300, 600)


@dataclass(frozen=True)
class MetricSpec:
    """One metric as Prometheus exposes it: counters gain `_total`, histograms `_bucket`, `_sum` and `_count`."""

    name: str  # the exposed name (a counter's with its `_total`)
    kind: Literal["gauge", "counter", "histogram"]
    meaning: str
    labels: tuple[str, ...] = ()  # besides model_name

    @property
    def base_name(self) -> str:
        """The name prometheus_client is given (it appends `_total` to a counter itself)."""
        return self.name.removesuffix("_total") if self.kind == "counter" else self.name


WAITING = MetricSpec(
    "deepseek_num_requests_waiting",
    "gauge",
    "requests queued for a batch slot (the autoscaler scales on waiting + running)",
)
RUNNING = MetricSpec("deepseek_num_requests_running", "gauge", "requests in the running batch")
BATCH_SIZE = MetricSpec("deepseek_batch_size", "gauge", "rows in the last forward pass")
MODEL_LOADED = MetricSpec("deepseek_model_loaded", "gauge", "1 once the model is loaded and serving")
REQUESTS = MetricSpec(
    "deepseek_requests_total", "counter", "finished HTTP requests to /v1 routes by status code", ("endpoint", "status")
)
E2E_LATENCY = MetricSpec(
    "deepseek_e2e_request_latency_seconds", "histogram", "request arrival to last byte, generation routes (200s)"
)
TIME_TO_FIRST_TOKEN = MetricSpec("deepseek_time_to_first_token_seconds", "histogram", "request queued to first token")
INTER_TOKEN_LATENCY = MetricSpec(
    "deepseek_inter_token_latency_seconds", "histogram", "gap between consecutive tokens of one request"
)
KV_CACHE_USAGE = MetricSpec(
    "deepseek_kv_cache_usage_perc", "gauge", "fraction of the KV cache's blocks held by live sequences (0 to 1)"
)
PREFIX_CACHE_QUERIES = MetricSpec(
    "deepseek_prefix_cache_queries_total", "counter", "prompt tokens looked up in the prefix cache at admission"
)
PREFIX_CACHE_HITS = MetricSpec(
    "deepseek_prefix_cache_hits_total", "counter", "prompt tokens found in the prefix cache (not recomputed)"
)
PREEMPTIONS = MetricSpec(
    "deepseek_num_preemptions_total", "counter", "sequences sent back to the queue because the KV cache was full"
)
CACHE_CONFIG = MetricSpec(
    "deepseek_cache_config_info",
    "gauge",
    "1, labelled with the KV cache's shape once the model is loaded: capacity in tokens = num_blocks × block_size",
    ("num_blocks", "block_size", "enable_prefix_caching"),
)
PROMPT_TOKENS = MetricSpec("deepseek_prompt_tokens_total", "counter", "prompt tokens of accepted requests")
GENERATION_TOKENS = MetricSpec("deepseek_generation_tokens_total", "counter", "generated tokens")

METRICS = (
    WAITING,
    RUNNING,
    BATCH_SIZE,
    KV_CACHE_USAGE,
    PREFIX_CACHE_QUERIES,
    PREFIX_CACHE_HITS,
    PREEMPTIONS,
    CACHE_CONFIG,
    REQUESTS,
    E2E_LATENCY,
    TIME_TO_FIRST_TOKEN,
    INTER_TOKEN_LATENCY,
    PROMPT_TOKENS,
    GENERATION_TOKENS,
    MODEL_LOADED,
)


def describe() -> str:
    """The Markdown table of every metric, for docs/server/metrics.md."""
    rows = ["| metric | type | meaning |", "| --- | --- | --- |"]
    for spec in METRICS:
        labels = "{" + ",".join(spec.labels) + "}" if spec.labels else ""
        rows.append(f"| `{spec.name}{labels}` | {spec.kind} | {spec.meaning} |")
    return "\n".join(rows)


class Metrics(EngineObserver):
    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry()
        r = self.registry

        def gauge(spec: MetricSpec) -> Gauge:
            return Gauge(spec.base_name, spec.meaning, ["model_name", *spec.labels], registry=r)

        def counter(spec: MetricSpec) -> Counter:
            return Counter(spec.base_name, spec.meaning, ["model_name", *spec.labels], registry=r)

        def histogram(spec: MetricSpec, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(spec.base_name, spec.meaning, ["model_name", *spec.labels], buckets=buckets, registry=r)

        self._waiting = gauge(WAITING)
        self._running = gauge(RUNNING)
        self._batch = gauge(BATCH_SIZE)
        self._loaded = gauge(MODEL_LOADED)
        self._requests = counter(REQUESTS)
        self._e2e = histogram(E2E_LATENCY, E2E_BUCKETS)
        self._ttft = histogram(TIME_TO_FIRST_TOKEN, TTFT_BUCKETS)
        self._itl = histogram(INTER_TOKEN_LATENCY, ITL_BUCKETS)
        self._prompt_tokens = counter(PROMPT_TOKENS)
        self._generation_tokens = counter(GENERATION_TOKENS)
        self._kv_usage = gauge(KV_CACHE_USAGE)
        self._prefix_queries = counter(PREFIX_CACHE_QUERIES)
        self._prefix_hits = counter(PREFIX_CACHE_HITS)
        self._preemptions = counter(PREEMPTIONS)
        self._cache_config = gauge(CACHE_CONFIG)
        self._kv_seen = KVStats(0.0, 0, 0, 0)
        self._model = model_name
        for zeroed in (self._waiting, self._running, self._batch, self._loaded, self._kv_usage):
            zeroed.labels(model_name).set(0)
        for started in (self._prefix_queries, self._prefix_hits, self._preemptions):
            started.labels(model_name)  # exposed at 0 before the first request, as rate() needs

    # EngineObserver hooks, called on the event loop as steps arrive from the engine process
    def on_queue(self, waiting: int, running: int) -> None:
        self._waiting.labels(self._model).set(waiting)
        self._running.labels(self._model).set(running)

    def on_step(self, rows: int) -> None:
        self._batch.labels(self._model).set(rows)

    def on_kv(self, stats: KVStats) -> None:
        """The engine reports cumulative counts; the counters advance by what is new since its last report."""
        seen, self._kv_seen = self._kv_seen, stats
        self._kv_usage.labels(self._model).set(stats.usage)
        for counter, now, before in (
            (self._prefix_queries, stats.prefix_queries, seen.prefix_queries),
            (self._prefix_hits, stats.prefix_hits, seen.prefix_hits),
            (self._preemptions, stats.preemptions, seen.preemptions),
        ):
            if now > before:
                counter.labels(self._model).inc(now - before)

    def on_first_token(self, seconds: float) -> None:
        self._ttft.labels(self._model).observe(seconds)

    def on_token_gap(self, seconds: float) -> None:
        self._itl.labels(self._model).observe(seconds)

    # event loop
    def model_loaded(self, cache: CacheConfig) -> None:
        self._loaded.labels(self._model).set(1)
        prefix_caching = "true" if cache.prefix_caching else "false"
        self._cache_config.labels(self._model, str(cache.num_blocks), str(cache.block_size), prefix_caching).set(1)

    def request_finished(
        self, endpoint: str, status: int, seconds: float, prompt_tokens: int, completion_tokens: int
    ) -> None:
        self._requests.labels(self._model, endpoint, str(status)).inc()
        if status == 200 and endpoint in ("/v1/chat/completions", "/v1/completions"):
            self._e2e.labels(self._model).observe(seconds)
        if prompt_tokens:
            self._prompt_tokens.labels(self._model).inc(prompt_tokens)
        if completion_tokens:
            self._generation_tokens.labels(self._model).inc(completion_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)
