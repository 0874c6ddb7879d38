"""Contracts between the server and the stack, checked where the other side reads them.

The server names its metrics once (app/metrics.py: METRICS). The stack's autoscaler (prometheus-adapter rules and
the HPA), alerts (PrometheusRule) and dashboard (dashboards/deepseek-inference.json) read them by name: every
`deepseek_*` series they query must be one the server really exposes, as rendered by its own registry.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
from stack.kubernetes import metrics as stack_metrics
from stack.kubernetes.inference_alerts import alert_rules
from stack.kubernetes.monitoring import load_dashboard

from app.metrics import METRICS
from tests.server_metrics import touched_exposition

SERIES = re.compile(r"\bdeepseek_[a-z_]+\b")
# Made by prometheus-adapter from two of the server's gauges (its rule's `as`), not by the server.
ADAPTER_MADE = {stack_metrics.IN_FLIGHT}


def exposed() -> set[str]:
    """Every series name the server's registry renders once each metric has been touched."""
    names = set()
    for line in touched_exposition("m").splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def queried(value: object) -> set[str]:
    return {name for text in _strings(value) for name in SERIES.findall(text)}


def test_every_declared_metric_is_exposed() -> None:
    names = exposed()
    for spec in METRICS:
        wanted = f"{spec.name}_bucket" if spec.kind == "histogram" else spec.name
        assert wanted in names, f"{spec.name} is declared but not exposed"


def test_the_stack_names_only_metrics_the_server_exposes() -> None:
    declared = {
        value
        for name, value in vars(stack_metrics).items()
        if name.isupper() and isinstance(value, str) and value.startswith("deepseek_")
    }
    assert declared - ADAPTER_MADE, "the stack's metrics module names no server metric"
    # A histogram is named by its family; its series carry _bucket, _sum and _count.
    series = exposed()
    families = series | {name.removesuffix("_bucket") for name in series if name.endswith("_bucket")}
    assert declared - ADAPTER_MADE <= families


@pytest.mark.parametrize(
    "reader",
    ["adapter rules", "alerts", "dashboard"],
)
def test_every_series_a_reader_queries_is_exposed(reader: str) -> None:
    source: object = {
        "adapter rules": stack_metrics.adapter_rules(),
        "alerts": alert_rules("ns", "deepseek", 1200),
        "dashboard": json.loads(load_dashboard()),
    }[reader]
    names = queried(source) - ADAPTER_MADE
    assert names, f"the {reader} query no deepseek_* series"
    missing = names - exposed()
    assert not missing, f"the {reader} query series the server does not expose: {sorted(missing)}"


def test_the_hpa_scales_on_what_the_adapter_serves() -> None:
    served = {rule["name"]["as"] for rule in stack_metrics.adapter_rules()}  # type: ignore[index]
    assert stack_metrics.IN_FLIGHT in served
