"""GPU add-ons and the monitoring stack: the Helm releases the dev stack installs, and the dashboard."""

from __future__ import annotations

import json
from typing import Any

import yaml
from stack import versions
from stack.kubernetes import metrics
from stack.kubernetes.monitoring import (
    DASHBOARD_FILE,
    MonitoringArgs,
    alertmanager_values,
    kube_prometheus_stack_values,
)
from stack.testing import ProgramRun, run_stack

RELEASE = "kubernetes:helm.sh/v3:Release"
GPU_NODES_ONLY = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "nvidia.com/gpu.present", "operator": "In", "values": ["true"]}]}
            ]
        }
    }
}


def release(run: ProgramRun, chart: str) -> dict[str, Any]:
    found = [r.inputs for r in run.of_type(RELEASE) if r.inputs["chart"] == chart]
    assert len(found) == 1, f"expected one release of {chart}"
    return found[0]


def test_device_plugin_runs_only_on_gpu_nodes(dev_run: ProgramRun) -> None:
    plugin = release(dev_run, "nvidia-device-plugin")
    assert plugin["version"] == versions.NVIDIA_DEVICE_PLUGIN_CHART.version
    assert plugin["repositoryOpts"]["repo"] == "https://nvidia.github.io/k8s-device-plugin"
    assert plugin["values"]["affinity"] == GPU_NODES_ONLY
    assert plugin["values"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert "config" not in plugin["values"], "no time-slicing by default"


def test_device_plugin_time_slicing(variant_run: ProgramRun) -> None:
    config = release(variant_run, "nvidia-device-plugin")["values"]["config"]
    assert config["default"] == "time-slicing"
    assert "replicas: 4" in config["map"]["time-slicing"]
    assert "name: nvidia.com/gpu" in config["map"]["time-slicing"]


def test_dcgm_exporter_keeps_pod_and_namespace_labels(dev_run: ProgramRun) -> None:
    exporter = release(dev_run, "dcgm-exporter")
    assert exporter["values"]["affinity"] == GPU_NODES_ONLY
    assert exporter["values"]["serviceMonitor"] == {"enabled": True, "interval": "15s", "honorLabels": True}


def test_prometheus_selects_monitors_and_rules_everywhere(dev_run: ProgramRun) -> None:
    spec = release(dev_run, "kube-prometheus-stack")["values"]["prometheus"]["prometheusSpec"]
    for key in (
        "serviceMonitorSelectorNilUsesHelmValues",
        "podMonitorSelectorNilUsesHelmValues",
        "ruleSelectorNilUsesHelmValues",
    ):
        assert spec[key] is False, key
    assert spec["serviceMonitorNamespaceSelector"] == {}
    assert spec["ruleNamespaceSelector"] == {}


def test_prometheus_retention_and_storage_from_config(dev_run: ProgramRun, variant_run: ProgramRun) -> None:
    spec = release(dev_run, "kube-prometheus-stack")["values"]["prometheus"]["prometheusSpec"]
    assert (spec["retention"], spec["retentionSize"]) == ("7d", "18GB")
    claim = spec["storageSpec"]["volumeClaimTemplate"]["spec"]
    assert claim["resources"]["requests"]["storage"] == "20Gi"
    assert "storageClassName" not in claim
    variant = release(variant_run, "kube-prometheus-stack")["values"]["prometheus"]["prometheusSpec"]
    assert variant["storageSpec"]["volumeClaimTemplate"]["spec"]["storageClassName"] == "gp3"


def test_adapter_serves_the_metric_the_hpa_uses(dev_run: ProgramRun) -> None:
    adapter = release(dev_run, "prometheus-adapter")["values"]
    assert adapter["prometheus"]["url"] == "http://kps-prometheus.monitoring.svc"
    assert adapter["rules"]["default"] is False
    served = {rule["name"]["as"]: rule for rule in adapter["rules"]["custom"]}
    assert set(served) == {metrics.WAITING, metrics.RUNNING, metrics.IN_FLIGHT}
    in_flight = served[metrics.IN_FLIGHT]["metricsQuery"]
    assert metrics.WAITING in in_flight
    assert metrics.RUNNING in in_flight
    assert " + " in in_flight
    for rule in served.values():
        assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}


def test_chart_versions_come_from_the_versions_module(dev_run: ProgramRun) -> None:
    charts = {r.inputs["chart"]: r.inputs["version"] for r in dev_run.of_type(RELEASE)}
    assert charts["kube-prometheus-stack"] == versions.KUBE_PROMETHEUS_STACK_CHART.version
    assert charts["prometheus-adapter"] == versions.PROMETHEUS_ADAPTER_CHART.version
    assert charts["dcgm-exporter"] == versions.DCGM_EXPORTER_CHART.version


def test_grafana_loads_the_dashboard_from_a_labelled_config_map(dev_run: ProgramRun) -> None:
    grafana = release(dev_run, "kube-prometheus-stack")["values"]["grafana"]
    assert grafana["sidecar"]["dashboards"]["label"] == "grafana_dashboard"
    (config_map,) = [
        r.inputs for r in dev_run.of_type("kubernetes:core/v1:ConfigMap") if r.name == "monitoring-dashboard"
    ]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"][DASHBOARD_FILE.name])
    assert dashboard["uid"] == "deepseek-inference"


def test_dashboard_charts_the_server_metrics() -> None:
    dashboard = json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))
    expressions = " ".join(target["expr"] for panel in dashboard["panels"] for target in panel["targets"])
    for metric in (
        metrics.WAITING,
        metrics.RUNNING,
        metrics.BATCH_SIZE,
        metrics.REQUESTS_TOTAL,
        metrics.E2E_LATENCY,
        metrics.TIME_TO_FIRST_TOKEN,
        metrics.INTER_TOKEN_LATENCY,
        metrics.PROMPT_TOKENS,
        metrics.GENERATION_TOKENS,
        metrics.KV_CACHE_USAGE,
        metrics.PREFIX_CACHE_QUERIES,
        metrics.PREFIX_CACHE_HITS,
        metrics.PREEMPTIONS,
        metrics.GPU_UTIL,
    ):
        assert metric in expressions, metric
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


# --- first deploy: monitoring that works on EKS and on clusters that already have it ------------------------------


def test_control_plane_scrapes_are_off_on_eks(dev_run: ProgramRun, prod_run: ProgramRun) -> None:
    for run in (dev_run, prod_run):
        values = release(run, "kube-prometheus-stack")["values"]
        for component in ("kubeControllerManager", "kubeScheduler", "kubeEtcd", "kubeProxy"):
            # The chart gates the scrape and its "Down" alert rules on this one flag.
            assert values[component] == {"enabled": False}, component


def test_control_plane_scrapes_can_be_turned_on_for_self_managed_clusters() -> None:
    args = MonitoringArgs("monitoring", "15d", "45GB", "50Gi", scrape_control_plane=True)
    assert "kubeScheduler" not in kube_prometheus_stack_values(args)


def test_prometheus_volume_goes_with_prometheus(dev_run: ProgramRun) -> None:
    spec = release(dev_run, "kube-prometheus-stack")["values"]["prometheus"]["prometheusSpec"]
    assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Delete", "whenScaled": "Retain"}


def test_without_a_receiver_alertmanager_keeps_the_charts_null_route(dev_run: ProgramRun) -> None:
    alertmanager = release(dev_run, "kube-prometheus-stack")["values"]["alertmanager"]
    assert alertmanager == {"enabled": True}
    assert not [r for r in dev_run.of_type("kubernetes:core/v1:Secret") if r.name == "monitoring-alert-receiver"]


def test_slack_receiver_reads_its_url_from_a_mounted_secret() -> None:
    url = "https://hooks.slack.com/services/T000/B000/XXXX"
    addons = {"alertmanager": {"receiver": "slack", "slackChannel": "#llm-alerts"}}
    run = run_stack("dev", overrides={"addons": addons}, secrets={"apiKeys": "k", "alertReceiverCredential": url})
    values = release(run, "kube-prometheus-stack")["values"]["alertmanager"]
    assert values["alertmanagerSpec"] == {"secrets": ["alert-receiver"]}
    route = values["config"]["route"]
    assert route["receiver"] == "slack"
    (slack,) = next(r for r in values["config"]["receivers"] if r["name"] == "slack")["slack_configs"]
    assert slack == {
        "api_url_file": "/etc/alertmanager/secrets/alert-receiver/credential",
        "send_resolved": True,
        "channel": "#llm-alerts",
    }
    assert url not in json.dumps(values), "the URL stays in the Secret, out of the Helm values"
    secret = run.one("kubernetes:core/v1:Secret", "monitoring-alert-receiver").inputs
    assert secret["stringData"] == {"credential": url}
    assert secret["metadata"]["namespace"] == "monitoring"


def test_pagerduty_and_webhook_receivers_use_their_file_fields() -> None:
    for receiver, field, key in (
        ("pagerduty", "pagerduty_configs", "routing_key_file"),
        ("webhook", "webhook_configs", "url_file"),
    ):
        args = MonitoringArgs("m", "15d", "45GB", "50Gi", alert_receiver=receiver, alert_receiver_credential="x")  # type: ignore[arg-type]
        config: Any = alertmanager_values(args)["config"]
        (entry,) = next(r for r in config["receivers"] if r["name"] == receiver)[field]
        assert entry[key] == "/etc/alertmanager/secrets/alert-receiver/credential"


def test_existing_monitoring_installs_no_chart_and_no_second_adapter(existing_monitoring_run: ProgramRun) -> None:
    charts = {r.inputs["chart"] for r in existing_monitoring_run.of_type(RELEASE)}
    assert "kube-prometheus-stack" not in charts and "prometheus-adapter" not in charts
    namespaces = {r.inputs["metadata"]["name"] for r in existing_monitoring_run.of_type("kubernetes:core/v1:Namespace")}
    assert "monitoring" not in namespaces, "the cluster's monitoring namespace is used, not created"


def test_existing_monitoring_gets_our_objects_as_the_cluster_expects(existing_monitoring_run: ProgramRun) -> None:
    run = existing_monitoring_run
    for kind in ("ServiceMonitor", "PrometheusRule"):
        (monitor,) = [r for r in run.resources if r.inputs.get("kind") == kind]
        assert monitor.inputs["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    rules = run.one("kubernetes:core/v1:ConfigMap", "monitoring-adapter-rules").inputs
    assert rules["metadata"]["namespace"] == "monitoring"
    assert yaml.safe_load(rules["data"]["config.yaml"]) == {"rules": metrics.adapter_rules()}
    dashboard = run.one("kubernetes:core/v1:ConfigMap", "monitoring-dashboard").inputs
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    hpa = run.one("kubernetes:autoscaling/v2:HorizontalPodAutoscaler")
    assert run.options_of(hpa).depends_on == [], "nothing to wait for: the adapter is already there"


def test_dashboard_variables_read_a_series_that_exists_before_the_first_request() -> None:
    dashboard = json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))
    for variable in dashboard["templating"]["list"]:
        if variable.get("type") == "query":
            assert metrics.MODEL_LOADED in variable["definition"], variable["name"]
