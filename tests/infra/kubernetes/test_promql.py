"""The stack's PromQL, checked by the real promtool (built by scripts/engines): Prometheus' own parser and rule
evaluator, not substrings.

- The PrometheusRule's groups pass `promtool check rules`, and its alerts fire in `promtool test rules` on series
  labelled as the server really labels them (rendered by its own registry), so a renamed label fails here.
- The adapter's queries (as prometheus-adapter expands them) and every dashboard query parse.
- The server's own exposition passes `promtool check metrics` (naming and type conventions).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from stack.kubernetes import metrics as stack_metrics
from stack.kubernetes.inference_alerts import LATENCY_P99_SECONDS, alert_rules
from stack.kubernetes.monitoring import DASHBOARD_FILE

from tests.cluster.build import engine_binary
from tests.server_metrics import touched_exposition

NAMESPACE = "deepseek-inference"
DEPLOYMENT = "deepseek"
MODEL = "deepseek-r1"
# What Prometheus adds to every scraped series of a pod (the ServiceMonitor's target labels).
SCRAPE_LABELS = {"namespace": NAMESPACE, "pod": "deepseek-0", "job": "deepseek", "instance": "10.0.0.1:8000"}


@pytest.fixture(scope="module")
def promtool() -> Path:
    return engine_binary("promtool")


def _run(promtool: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(promtool), *args], input=stdin, capture_output=True, text=True, timeout=120, check=False)


def _server_exposition() -> str:
    return touched_exposition(MODEL)


def _server_series(name: str) -> list[dict[str, str]]:
    """The label sets the server renders for series `name`, as Prometheus stores them (scrape labels added)."""
    found = []
    for line in _server_exposition().splitlines():
        match = re.match(rf"^{re.escape(name)}(\{{(?P<labels>[^}}]*)\}})? ", line)
        if match:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"] or ""))
            found.append({**labels, **SCRAPE_LABELS})
    assert found, f"the server renders no {name} series"
    return found


def _series_text(name: str, labels: dict[str, str]) -> str:
    return name + "{" + ", ".join(f'{key}="{value}"' for key, value in sorted(labels.items())) + "}"


# -------------------------------------------------------------------------------------------------------- alerts


def _rules() -> list[dict[str, Any]]:
    groups: Any = alert_rules(NAMESPACE, DEPLOYMENT, startup_timeout_seconds=1200)["groups"]
    return list(groups[0]["rules"])


def _rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(alert_rules(NAMESPACE, DEPLOYMENT, startup_timeout_seconds=1200)))
    return path


def test_the_alert_rules_pass_promtool_check_rules(promtool: Path, tmp_path: Path) -> None:
    done = _run(promtool, "check", "rules", str(_rules_file(tmp_path)))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 5 rules found" in done.stdout


def test_promtool_refuses_a_broken_rule(promtool: Path, tmp_path: Path) -> None:
    # The control for the test above: the checker really parses what it is given.
    rules = alert_rules(NAMESPACE, DEPLOYMENT, startup_timeout_seconds=1200)
    rules["groups"][0]["rules"][0]["expr"] = "sum by (pod) (rate(deepseek_requests_total[5m])"  # type: ignore[index]
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(rules))
    done = _run(promtool, "check", "rules", str(path))
    assert done.returncode != 0
    assert "unclosed left parenthesis" in done.stdout + done.stderr


def _alert_test(tmp_path: Path, series: list[dict[str, str]], alert: str, at: str, expect: Sequence[object]) -> Path:
    test = {
        "rule_files": [str(_rules_file(tmp_path))],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [{"eval_time": at, "alertname": alert, "exp_alerts": expect}],
            }
        ],
    }
    path = tmp_path / "test.yaml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    return path


def test_the_latency_alert_fires_on_the_servers_own_histogram(promtool: Path, tmp_path: Path) -> None:
    name = f"{stack_metrics.TIME_TO_FIRST_TOKEN}_bucket"
    series = []
    for labels in _server_series(name):
        # Every request takes ~0.5 s to its first token: the buckets from 0.5 s up count them all, those under none.
        le = float(labels["le"])
        slow = le >= 0.5
        series.append({"series": _series_text(name, labels), "values": "0+10x40" if slow else "0x40"})
    # histogram_quantile interpolates inside the bucket that holds the 99th percentile: from the bucket under 0.5 s.
    below = max(float(labels["le"]) for labels in _server_series(name) if float(labels["le"]) < 0.5)
    p99 = below + (0.5 - below) * 0.99
    assert p99 > LATENCY_P99_SECONDS
    summary = (
        f"p99 time to first token of {MODEL} is {p99 * 1000:.4g}ms (objective {LATENCY_P99_SECONDS * 1000:.0f} ms)"
    )
    expect = [{"exp_labels": {"severity": "warning", "model_name": MODEL}, "exp_annotations": {"summary": summary}}]
    done = _run(promtool, "test", "rules", str(_alert_test(tmp_path, series, "DeepSeekLatencyP99High", "20m", expect)))
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_queue_alert_fires_on_the_servers_own_gauge(promtool: Path, tmp_path: Path) -> None:
    name = stack_metrics.WAITING
    series = [{"series": _series_text(name, labels), "values": "0+1x40"} for labels in _server_series(name)]
    summary = next(rule["annotations"] for rule in _rules() if rule["alert"] == "DeepSeekQueueGrowing")
    expect = [{"exp_labels": {"severity": "warning"}, "exp_annotations": summary}]
    test = _alert_test(tmp_path, series, "DeepSeekQueueGrowing", "30m", expect)
    done = _run(promtool, "test", "rules", str(test))
    assert done.returncode == 0, done.stdout + done.stderr
    # And stays quiet on a queue that holds steady.
    steady = [{"series": _series_text(name, labels), "values": "3x40"} for labels in _server_series(name)]
    done = _run(promtool, "test", "rules", str(_alert_test(tmp_path, steady, "DeepSeekQueueGrowing", "30m", [])))
    assert done.returncode == 0, done.stdout + done.stderr


# ----------------------------------------------------------------------------------- adapter and dashboard PromQL


def _adapter_queries() -> Iterator[str]:
    """Each adapter rule's queries as prometheus-adapter sends them (its <<.X>> placeholders filled in)."""
    for rule in stack_metrics.adapter_rules():
        yield str(rule["seriesQuery"])
        series = str(rule["seriesQuery"]).split("{", 1)[0]
        yield (
            str(rule["metricsQuery"])
            .replace("<<.Series>>", series)
            .replace("<<.LabelMatchers>>", f'namespace="{NAMESPACE}",pod=~"deepseek-0|deepseek-1"')
            .replace("<<.GroupBy>>", "pod")
        )


def _dashboard_queries() -> Iterator[str]:
    """Every query of the dashboard, its Grafana variables given values as Grafana substitutes them."""
    variables = {"$__rate_interval": "5m", "$namespace": NAMESPACE, "$model_name": MODEL}

    def walk(value: object) -> Iterator[str]:
        if isinstance(value, dict):
            for key, item in value.items():
                if key == "expr" and isinstance(item, str):
                    yield item
                elif key != "templating":  # label_values(...) is Grafana's, not PromQL: its selector is below
                    yield from walk(item)
        elif isinstance(value, list):
            for item in value:
                yield from walk(item)

    dashboard = json.loads(DASHBOARD_FILE.read_text())
    for query in walk(dashboard):
        for variable, value in variables.items():
            query = query.replace(variable, value)
        assert "$" not in query, f"a dashboard variable this test does not know: {query}"
        yield query
    for variable in dashboard["templating"]["list"]:
        if isinstance(variable.get("query"), dict):  # label_values(<selector>, <label>): check the selector
            selector = re.fullmatch(r"label_values\((.*), *\w+\)", variable["query"]["query"])
            assert selector is not None
            yield selector[1].replace("$namespace", NAMESPACE)


@pytest.mark.parametrize(
    "source",
    ["adapter", "dashboard"],
)
def test_every_query_parses(promtool: Path, source: str) -> None:
    queries = list(_adapter_queries() if source == "adapter" else _dashboard_queries())
    assert len(queries) >= (6 if source == "adapter" else 15)
    failures = []
    for query in queries:
        done = _run(promtool, "--experimental", "promql", "format", query)
        if done.returncode != 0:
            failures.append(f"{query}: {done.stderr.strip()}")
    assert failures == []


def test_promql_format_refuses_a_broken_query(promtool: Path) -> None:
    done = _run(promtool, "--experimental", "promql", "format", 'sum by (pod) (x{namespace="a"}')
    assert done.returncode != 0


# --------------------------------------------------------------------------------------------- the server's side


def test_the_servers_exposition_passes_promtool_check_metrics(promtool: Path) -> None:
    done = _run(promtool, "check", "metrics", stdin=_server_exposition())
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "" and done.stderr.strip() == ""


def _server_labels() -> set[str]:
    """Every label name on the server's series, plus those Prometheus adds at scrape."""
    names = set(SCRAPE_LABELS)
    for line in _server_exposition().splitlines():
        match = re.match(r"^deepseek_\w+\{(?P<labels>[^}]*)\} ", line)
        if match:
            names |= set(re.findall(r'(\w+)="', match["labels"]))
    return names


def _labels_used(query: str) -> set[str]:
    matchers = set(re.findall(r'(\w+)\s*(?:=~|!~|!=|=)\s*"', query))
    clauses = re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", query)
    grouped = {name.strip() for clause in clauses for name in clause.split(",") if name.strip()}
    return matchers | grouped | set(re.findall(r"\$labels\.(\w+)", query))


def test_the_readers_use_only_labels_the_server_series_carry() -> None:
    alert_texts = [f"{rule['expr']} {rule['annotations']['summary']}" for rule in _rules()]
    queries = [*_dashboard_queries(), *alert_texts, *_adapter_queries()]
    ours = [query for query in queries if "deepseek_" in query and "kube_" not in query and "DCGM_" not in query]
    assert len(ours) >= 15
    known = _server_labels()
    assert {"model_name", "le", "status"} <= known
    unknown = {query: _labels_used(query) - known for query in ours if _labels_used(query) - known}
    assert unknown == {}
