"""Monitoring: kube-prometheus-stack (Prometheus, Alertmanager, Grafana), prometheus-adapter and our dashboard."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_kubernetes as k8s

from stack import versions
from stack.helm import pinned_release
from stack.kubernetes import metrics
from stack.kubernetes.common import MANAGED_BY

# Names fixed through fullnameOverride, so other objects can refer to them.
PROMETHEUS_SERVICE = "kps-prometheus"
GRAFANA_SERVICE = "grafana"
# Labels the Prometheus Operator puts on Prometheus pods (for NetworkPolicies that admit scrapes).
PROMETHEUS_POD_LABELS = {"app.kubernetes.io/name": "prometheus"}
# The Grafana sidecar loads every ConfigMap with this label, from every namespace.
DASHBOARD_LABEL = ("grafana_dashboard", "1")
DASHBOARD_FILE = Path(__file__).resolve().parents[3] / "dashboards" / "deepseek-inference.json"


@dataclass(frozen=True)
class MonitoringArgs:
    namespace: str
    retention: str
    retention_size: str
    storage_size: str
    storage_class_name: str | None = None
    grafana: bool = True
    alertmanager: bool = True


class Monitoring(pulumi.ComponentResource):
    """The cluster's monitoring: picks up ServiceMonitors and PrometheusRules from every namespace."""

    namespace: pulumi.Output[str]
    grafana_service: pulumi.Output[str]
    prometheus_url: pulumi.Output[str]

    def __init__(self, name: str, args: MonitoringArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("deepseek:kubernetes:Monitoring", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        # Privileged: node-exporter needs the host's network, PID namespace and filesystem.
        namespace = k8s.core.v1.Namespace(
            f"{name}-namespace",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=args.namespace, labels={**MANAGED_BY, "pod-security.kubernetes.io/enforce": "privileged"}
            ),
            opts=child,
        )
        after_namespace = pulumi.ResourceOptions(parent=self, depends_on=[namespace])
        self.stack_release = pinned_release(
            f"{name}-kube-prometheus-stack",
            versions.KUBE_PROMETHEUS_STACK_CHART,
            namespace=args.namespace,
            values=kube_prometheus_stack_values(args),
            opts=after_namespace,
            # The CRDs and the operator take a while on a fresh cluster.
            timeout=900,
        )
        prometheus_url = f"http://{PROMETHEUS_SERVICE}.{args.namespace}.svc"
        self.adapter_release = pinned_release(
            f"{name}-prometheus-adapter",
            versions.PROMETHEUS_ADAPTER_CHART,
            namespace=args.namespace,
            values=prometheus_adapter_values(prometheus_url),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.stack_release]),
        )
        k8s.core.v1.ConfigMap(
            f"{name}-dashboard",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name="deepseek-inference-dashboard",
                namespace=args.namespace,
                labels={**MANAGED_BY, DASHBOARD_LABEL[0]: DASHBOARD_LABEL[1]},
            ),
            data={DASHBOARD_FILE.name: load_dashboard()},
            opts=after_namespace,
        )
        self.namespace = namespace.metadata.apply(lambda metadata: metadata.name or args.namespace)
        self.grafana_service = pulumi.Output.from_input(GRAFANA_SERVICE)
        self.prometheus_url = pulumi.Output.from_input(f"{prometheus_url}:9090")
        self.register_outputs(
            {
                "namespace": self.namespace,
                "grafana_service": self.grafana_service,
                "prometheus_url": self.prometheus_url,
            }
        )

    @property
    def releases(self) -> list[k8s.helm.v3.Release]:
        """What CRD users (ServiceMonitor, PrometheusRule) and custom-metric users (HPA) must wait for."""
        return [self.stack_release, self.adapter_release]


def load_dashboard() -> str:
    """The inference dashboard (dashboards/deepseek-inference.json), checked to be JSON, compact."""
    return json.dumps(json.loads(DASHBOARD_FILE.read_text(encoding="utf-8")), separators=(",", ":"))


def kube_prometheus_stack_values(args: MonitoringArgs) -> dict[str, object]:
    storage: dict[str, object] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": args.storage_size}},
    }
    if args.storage_class_name is not None:
        storage["storageClassName"] = args.storage_class_name
    return {
        "fullnameOverride": "kps",
        "prometheus": {
            "prometheusSpec": {
                # Select every ServiceMonitor/PodMonitor/PrometheusRule/Probe in every namespace, not only the
                # ones labelled with this release.
                "serviceMonitorSelectorNilUsesHelmValues": False,
                "podMonitorSelectorNilUsesHelmValues": False,
                "ruleSelectorNilUsesHelmValues": False,
                "probeSelectorNilUsesHelmValues": False,
                "serviceMonitorNamespaceSelector": {},
                "podMonitorNamespaceSelector": {},
                "ruleNamespaceSelector": {},
                "retention": args.retention,
                "retentionSize": args.retention_size,
                "storageSpec": {"volumeClaimTemplate": {"spec": storage}},
            }
        },
        "alertmanager": {"enabled": args.alertmanager},
        "grafana": {
            "enabled": args.grafana,
            "fullnameOverride": GRAFANA_SERVICE,
            "sidecar": {
                "dashboards": {
                    "enabled": True,
                    "label": DASHBOARD_LABEL[0],
                    "labelValue": DASHBOARD_LABEL[1],
                    "searchNamespace": "ALL",
                }
            },
        },
    }


def prometheus_adapter_values(prometheus_url: str) -> dict[str, object]:
    """Serves only our metrics on custom.metrics.k8s.io (the chart's default rules would add hundreds)."""
    return {
        "prometheus": {"url": prometheus_url, "port": 9090},
        "rules": {"default": False, "custom": metrics.adapter_rules()},
        "replicas": 2,
        "podDisruptionBudget": {"enabled": True, "maxUnavailable": 1},
    }
