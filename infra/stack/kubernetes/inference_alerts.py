"""Alerting rules for one InferenceService (the spec of its PrometheusRule)."""

from __future__ import annotations

from stack.kubernetes import metrics

# Time to first token is what a streaming client feels as latency; 200 ms at p99 is the service objective.
LATENCY_P99_SECONDS = 0.2
# GPU utilisation thresholds (percent, DCGM) for "idle" (paying for nothing) and "saturated" (add replicas).
GPU_IDLE_PERCENT = 5
GPU_SATURATED_PERCENT = 95


def alert_rules(namespace: str, deployment: str, startup_timeout_seconds: int) -> dict[str, object]:
    """PrometheusRule spec: latency, queue growth, GPU idle/saturated, pods not ready."""
    scope = f'namespace="{namespace}"'
    not_ready_for = f"{startup_timeout_seconds // 60 + 10}m"  # longer than a model load, so rollouts stay quiet
    rules = [
        _alert(
            "DeepSeekLatencyP99High",
            f"histogram_quantile(0.99, sum by (le, model_name) "
            f"(rate({metrics.TIME_TO_FIRST_TOKEN}_bucket{{{scope}}}[5m]))) > {LATENCY_P99_SECONDS}",
            "10m",
            "warning",
            f"p99 time to first token of {{{{ $labels.model_name }}}} is {{{{ $value | humanizeDuration }}}} "
            f"(objective {int(LATENCY_P99_SECONDS * 1000)} ms)",
        ),
        _alert(
            "DeepSeekQueueGrowing",
            f"sum({metrics.WAITING}{{{scope}}}) > 0 and deriv(sum({metrics.WAITING}{{{scope}}})[10m:1m]) > 0",
            "10m",
            "warning",
            "Requests are queueing faster than they are served for 10 minutes: the HPA is at its maximum "
            "or new GPU nodes are not coming up",
        ),
        _alert(
            "DeepSeekGpuIdle",
            f"avg by (pod) ({metrics.GPU_UTIL}{{{scope}}}) < {GPU_IDLE_PERCENT}",
            "30m",
            "info",
            "GPU of {{ $labels.pod }} is under 5% busy for 30 minutes: lower autoscaling.minReplicas",
        ),
        _alert(
            "DeepSeekGpuSaturated",
            f"avg by (pod) ({metrics.GPU_UTIL}{{{scope}}}) > {GPU_SATURATED_PERCENT}",
            "15m",
            "warning",
            "GPU of {{ $labels.pod }} is over 95% busy for 15 minutes",
        ),
        _alert(
            "DeepSeekPodsNotReady",
            f'kube_deployment_status_replicas_available{{{scope}, deployment="{deployment}"}} '
            f'< kube_deployment_spec_replicas{{{scope}, deployment="{deployment}"}}',
            not_ready_for,
            "critical",
            f"Deployment {deployment} has had fewer ready pods than wanted for {not_ready_for}",
        ),
    ]
    return {"groups": [{"name": f"{deployment}.rules", "rules": rules}]}


def _alert(name: str, expr: str, for_: str, severity: str, summary: str) -> dict[str, object]:
    return {
        "alert": name,
        "expr": expr,
        "for": for_,
        "labels": {"severity": severity},
        "annotations": {"summary": summary},
    }
