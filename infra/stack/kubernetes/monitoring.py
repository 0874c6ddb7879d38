"""Monitoring: kube-prometheus-stack (Prometheus, Alertmanager, Grafana), prometheus-adapter and our dashboard.

`mode="existing"` installs neither chart (a cluster that already runs them would get a second adapter, whose
APIService `v1beta1.custom.metrics.k8s.io` fails the install): it adds the dashboard and a ConfigMap of the adapter
rules the HPA needs, for the cluster's own adapter to load."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pulumi
import pulumi_kubernetes as k8s
import yaml

from stack import versions
from stack.config.kubernetes import AlertReceiver
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
# With mode "existing": the ConfigMap holding our prometheus-adapter rules, in the adapter's config format.
ADAPTER_RULES_CONFIGMAP = "deepseek-inference-adapter-rules"
# The Secret with the alert receiver's credential; the Prometheus Operator mounts it into Alertmanager here.
ALERT_RECEIVER_SECRET = "alert-receiver"
ALERT_RECEIVER_KEY = "credential"
ALERT_RECEIVER_FILE = f"/etc/alertmanager/secrets/{ALERT_RECEIVER_SECRET}/{ALERT_RECEIVER_KEY}"
# The kube-prometheus-stack components that scrape the control plane and kube-proxy (and own their alerts).
CONTROL_PLANE_SCRAPES = ("kubeControllerManager", "kubeScheduler", "kubeEtcd", "kubeProxy")


@dataclass(frozen=True)
class MonitoringArgs:
    namespace: str
    retention: str
    retention_size: str
    storage_size: str
    storage_class_name: str | None = None
    grafana: bool = True
    alertmanager: bool = True
    # install: the pinned charts. existing: the cluster's own Prometheus Operator and adapter (see module doc).
    mode: Literal["install", "existing"] = "install"
    scrape_control_plane: bool = False
    alert_receiver: AlertReceiver = "none"
    slack_channel: str | None = None
    # Slack/webhook URL or PagerDuty routing key (a Pulumi secret); required unless alert_receiver is "none".
    alert_receiver_credential: pulumi.Input[str] | None = None


class Monitoring(pulumi.ComponentResource):
    """The cluster's monitoring: picks up ServiceMonitors and PrometheusRules from every namespace."""

    namespace: pulumi.Output[str]
    grafana_service: pulumi.Output[str]
    prometheus_url: pulumi.Output[str]

    def __init__(self, name: str, args: MonitoringArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("deepseek:kubernetes:Monitoring", name, None, opts)
        if (args.alert_receiver == "none") != (args.alert_receiver_credential is None):
            raise ValueError(f"Monitoring {name}: an alert receiver needs its credential, and only then")
        self._releases: list[k8s.helm.v3.Release] = []
        prometheus_url = f"http://{PROMETHEUS_SERVICE}.{args.namespace}.svc"
        if args.mode == "install":
            # Privileged: node-exporter needs the host's network, PID namespace and filesystem.
            namespace = k8s.core.v1.Namespace(
                f"{name}-namespace",
                metadata=k8s.meta.v1.ObjectMetaArgs(
                    name=args.namespace, labels={**MANAGED_BY, "pod-security.kubernetes.io/enforce": "privileged"}
                ),
                opts=pulumi.ResourceOptions(parent=self),
            )
            in_namespace = pulumi.ResourceOptions(parent=self, depends_on=[namespace])
            self.namespace = namespace.metadata.apply(lambda metadata: metadata.name or args.namespace)
            self._install_charts(name, args, prometheus_url, namespace)
        else:
            in_namespace = pulumi.ResourceOptions(parent=self)
            self.namespace = pulumi.Output.from_input(args.namespace)
            k8s.core.v1.ConfigMap(
                f"{name}-adapter-rules",
                metadata=k8s.meta.v1.ObjectMetaArgs(
                    name=ADAPTER_RULES_CONFIGMAP, namespace=args.namespace, labels=MANAGED_BY
                ),
                data={"config.yaml": adapter_rules_config()},
                opts=in_namespace,
            )
        k8s.core.v1.ConfigMap(
            f"{name}-dashboard",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name="deepseek-inference-dashboard",
                namespace=args.namespace,
                labels={**MANAGED_BY, DASHBOARD_LABEL[0]: DASHBOARD_LABEL[1]},
            ),
            data={DASHBOARD_FILE.name: load_dashboard()},
            opts=in_namespace,
        )
        self.grafana_service = pulumi.Output.from_input(GRAFANA_SERVICE if args.mode == "install" else "")
        self.prometheus_url = pulumi.Output.from_input(f"{prometheus_url}:9090" if args.mode == "install" else "")
        self.register_outputs(
            {
                "namespace": self.namespace,
                "grafanaService": self.grafana_service,
                "prometheusUrl": self.prometheus_url,
            }
        )

    def _install_charts(
        self, name: str, args: MonitoringArgs, prometheus_url: str, namespace: k8s.core.v1.Namespace
    ) -> None:
        depends: list[pulumi.Resource] = [namespace]
        if args.alert_receiver_credential is not None:
            depends.append(
                k8s.core.v1.Secret(
                    f"{name}-alert-receiver",
                    metadata=k8s.meta.v1.ObjectMetaArgs(
                        name=ALERT_RECEIVER_SECRET, namespace=args.namespace, labels=MANAGED_BY
                    ),
                    type="Opaque",
                    string_data={ALERT_RECEIVER_KEY: args.alert_receiver_credential},
                    opts=pulumi.ResourceOptions(
                        parent=self, depends_on=[namespace], additional_secret_outputs=["stringData"]
                    ),
                )
            )
        stack_release = pinned_release(
            f"{name}-kube-prometheus-stack",
            versions.KUBE_PROMETHEUS_STACK_CHART,
            namespace=args.namespace,
            values=kube_prometheus_stack_values(args),
            opts=pulumi.ResourceOptions(parent=self, depends_on=depends),
            # The CRDs and the operator take a while on a fresh cluster.
            timeout=900,
        )
        adapter_release = pinned_release(
            f"{name}-prometheus-adapter",
            versions.PROMETHEUS_ADAPTER_CHART,
            namespace=args.namespace,
            values=prometheus_adapter_values(prometheus_url),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[stack_release]),
        )
        self._releases = [stack_release, adapter_release]

    @property
    def releases(self) -> list[k8s.helm.v3.Release]:
        """What CRD users (ServiceMonitor, PrometheusRule) and custom-metric users (HPA) must wait for; none when
        the cluster's own monitoring is used (its CRDs and adapter are already there)."""
        return list(self._releases)


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
    values: dict[str, object] = {
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
                # The volume goes with Prometheus (`pulumi destroy`, or monitoring turned off) instead of staying
                # behind as an orphaned, billed EBS volume; scaling down keeps it.
                "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete", "whenScaled": "Retain"},
            }
        },
        "alertmanager": alertmanager_values(args),
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
    if not args.scrape_control_plane:
        # Managed control planes expose none of these: their scrapes fail and their "Down" alerts fire forever.
        # The chart gates both the scrape and the alert rules on the same flag.
        values |= {component: {"enabled": False} for component in CONTROL_PLANE_SCRAPES}
    return values


def alertmanager_values(args: MonitoringArgs) -> dict[str, object]:
    """Alertmanager, with the receiver the stack names. The chart's default routes everything to a "null"
    receiver: without one, alerts show in the UIs and reach nobody."""
    values: dict[str, object] = {"enabled": args.alertmanager}
    if args.alert_receiver == "none":
        return values
    receiver: dict[str, object] = {"name": args.alert_receiver}
    if args.alert_receiver == "slack":
        slack: dict[str, object] = {"api_url_file": ALERT_RECEIVER_FILE, "send_resolved": True}
        if args.slack_channel is not None:
            slack["channel"] = args.slack_channel
        receiver["slack_configs"] = [slack]
    elif args.alert_receiver == "pagerduty":
        receiver["pagerduty_configs"] = [{"routing_key_file": ALERT_RECEIVER_FILE, "send_resolved": True}]
    else:
        receiver["webhook_configs"] = [{"url_file": ALERT_RECEIVER_FILE, "send_resolved": True}]
    values["alertmanagerSpec"] = {"secrets": [ALERT_RECEIVER_SECRET]}
    values["config"] = {
        "route": {
            "receiver": args.alert_receiver,
            "group_by": ["namespace", "alertname"],
            # The chart's always-firing heartbeat and its inhibition helper stay out of people's channels.
            "routes": [
                {"receiver": "null", "matchers": ['alertname = "Watchdog"']},
                {"receiver": "null", "matchers": ['alertname = "InfoInhibitor"']},
            ],
        },
        "receivers": [{"name": "null"}, receiver],
    }
    return values


def adapter_rules_config() -> str:
    """Our prometheus-adapter rules in the adapter's own config-file format (what its `--config` file holds)."""
    return yaml.safe_dump({"rules": metrics.adapter_rules()}, sort_keys=False)


def prometheus_adapter_values(prometheus_url: str) -> dict[str, object]:
    """Serves only our metrics on custom.metrics.k8s.io (the chart's default rules would add hundreds)."""
    return {
        "prometheus": {"url": prometheus_url, "port": 9090},
        "rules": {"default": False, "custom": metrics.adapter_rules()},
        "replicas": 2,
        "podDisruptionBudget": {"enabled": True, "maxUnavailable": 1},
    }
