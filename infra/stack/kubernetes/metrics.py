"""The server's Prometheus metric names (app/ contract) and the custom metrics the HPA scales on."""

from __future__ import annotations

WAITING = "deepseek_num_requests_waiting"
RUNNING = "deepseek_num_requests_running"
BATCH_SIZE = "deepseek_batch_size"
REQUESTS_TOTAL = "deepseek_requests_total"
E2E_LATENCY = "deepseek_e2e_request_latency_seconds"
TIME_TO_FIRST_TOKEN = "deepseek_time_to_first_token_seconds"
INTER_TOKEN_LATENCY = "deepseek_inter_token_latency_seconds"
PROMPT_TOKENS = "deepseek_prompt_tokens_total"
GENERATION_TOKENS = "deepseek_generation_tokens_total"
KV_CACHE_USAGE = "deepseek_kv_cache_usage_perc"
PREFIX_CACHE_QUERIES = "deepseek_prefix_cache_queries_total"
PREFIX_CACHE_HITS = "deepseek_prefix_cache_hits_total"
PREEMPTIONS = "deepseek_num_preemptions_total"
# 1 from the moment the model is loaded: the one series every serving pod has before its first request.
MODEL_LOADED = "deepseek_model_loaded"
# DCGM exporter: GPU utilisation in percent, labelled with the pod using the GPU (honorLabels keeps them).
GPU_UTIL = "DCGM_FI_DEV_GPU_UTIL"

# Served by prometheus-adapter on custom.metrics.k8s.io per pod: waiting + running requests. The HPA's target.
IN_FLIGHT = "deepseek_num_requests_inflight"

_PER_POD = {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}


def adapter_rules() -> list[dict[str, object]]:
    """prometheus-adapter `rules.custom`: the two gauges as they are, and their per-pod sum for the HPA."""
    gauges: list[dict[str, object]] = [
        {
            "seriesQuery": f'{gauge}{{namespace!="",pod!=""}}',
            "resources": {"overrides": _PER_POD},
            "name": {"matches": f"^{gauge}$", "as": gauge},
            "metricsQuery": "sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)",
        }
        for gauge in (WAITING, RUNNING)
    ]
    in_flight: dict[str, object] = {
        "seriesQuery": f'{RUNNING}{{namespace!="",pod!=""}}',
        "resources": {"overrides": _PER_POD},
        "name": {"matches": f"^{RUNNING}$", "as": IN_FLIGHT},
        "metricsQuery": (
            f"sum by (<<.GroupBy>>) ({RUNNING}{{<<.LabelMatchers>>}})"
            f" + sum by (<<.GroupBy>>) ({WAITING}{{<<.LabelMatchers>>}})"
        ),
    }
    return [*gauges, in_flight]
