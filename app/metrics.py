"""Prometheus metrics, named in vLLM's style with a `deepseek_` prefix (colons are reserved for recording rules).

| metric | type | meaning |
| --- | --- | --- |
| deepseek_num_requests_waiting | gauge | requests queued for a batch slot (the autoscaler uses waiting + running) |
| deepseek_num_requests_running | gauge | requests in the running batch |
| deepseek_batch_size | gauge | rows in the last forward pass |
| deepseek_requests_total{endpoint,status} | counter | finished HTTP requests to /v1 routes by status code |
| deepseek_e2e_request_latency_seconds | histogram | request arrival to last byte, generation routes |
| deepseek_time_to_first_token_seconds | histogram | request queued to first token |
| deepseek_inter_token_latency_seconds | histogram | gap between consecutive tokens of one request |
| deepseek_prompt_tokens_total | counter | prompt tokens of accepted requests |
| deepseek_generation_tokens_total | counter | generated tokens |
| deepseek_model_loaded | gauge | 1 once the model is loaded |

Every metric carries `model_name`. Each server owns its registry, so tests can run several apps in one process.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from app.engine.client import EngineObserver

TTFT_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1)
E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 120, 300, 600)


class Metrics(EngineObserver):
    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry()
        labels = ["model_name"]
        r = self.registry
        self._waiting = Gauge("deepseek_num_requests_waiting", "Requests waiting for a batch slot.", labels, registry=r)
        self._running = Gauge("deepseek_num_requests_running", "Requests in the running batch.", labels, registry=r)
        self._batch = Gauge("deepseek_batch_size", "Rows in the last forward pass.", labels, registry=r)
        self._loaded = Gauge("deepseek_model_loaded", "1 once the model is loaded and serving.", labels, registry=r)
        self._requests = Counter(
            "deepseek_requests",
            "Finished /v1 requests by endpoint and status.",
            [*labels, "endpoint", "status"],
            registry=r,
        )
        self._e2e = Histogram(
            "deepseek_e2e_request_latency_seconds",
            "Request arrival to last byte.",
            labels,
            buckets=E2E_BUCKETS,
            registry=r,
        )
        self._ttft = Histogram(
            "deepseek_time_to_first_token_seconds",
            "Request queued to first token.",
            labels,
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self._itl = Histogram(
            "deepseek_inter_token_latency_seconds",
            "Gap between consecutive tokens.",
            labels,
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self._prompt_tokens = Counter("deepseek_prompt_tokens", "Prompt tokens.", labels, registry=r)
        self._generation_tokens = Counter("deepseek_generation_tokens", "Generated tokens.", labels, registry=r)
        self._model = model_name
        for gauge in (self._waiting, self._running, self._batch, self._loaded):
            gauge.labels(model_name).set(0)

    # EngineObserver hooks, called on the event loop as steps arrive from the engine process
    def on_queue(self, waiting: int, running: int) -> None:
        self._waiting.labels(self._model).set(waiting)
        self._running.labels(self._model).set(running)

    def on_step(self, rows: int) -> None:
        self._batch.labels(self._model).set(rows)

    def on_first_token(self, seconds: float) -> None:
        self._ttft.labels(self._model).observe(seconds)

    def on_token_gap(self, seconds: float) -> None:
        self._itl.labels(self._model).observe(seconds)

    # event loop
    def model_loaded(self) -> None:
        self._loaded.labels(self._model).set(1)

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
