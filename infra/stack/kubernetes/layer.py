"""The Kubernetes layer: monitoring, GPU add-ons and the inference service, on any cluster's provider."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from stack.config import StackConfig
from stack.config.aws import duration_seconds
from stack.kubernetes.gpu_addons import GpuAddons, GpuAddonsArgs
from stack.kubernetes.inference_pod import ServerPodArgs
from stack.kubernetes.inference_service import InferenceService, InferenceServiceArgs
from stack.kubernetes.monitoring import PROMETHEUS_POD_LABELS, Monitoring, MonitoringArgs
from stack.kubernetes.rollout import DEFAULT_NODE_PROVISION_SECONDS
from stack.kubernetes.storage import ClusterStorage


@dataclass(frozen=True)
class KubernetesLayerOutputs:
    inference_endpoint: pulumi.Output[str]
    inference_namespace: pulumi.Output[str]
    monitoring_namespace: pulumi.Output[str]
    grafana_service: pulumi.Output[str]

    def exports(self) -> dict[str, pulumi.Output[str]]:
        """Stack output names: `for key, value in layer.exports().items(): pulumi.export(key, value)`."""
        return {
            "inferenceEndpoint": self.inference_endpoint,
            "inferenceNamespace": self.inference_namespace,
            "monitoringNamespace": self.monitoring_namespace,
            "grafanaService": self.grafana_service,
        }


def deploy_kubernetes_layer(
    config: StackConfig, provider: k8s.Provider, depends_on: Sequence[pulumi.Resource], image: pulumi.Input[str]
) -> KubernetesLayerOutputs:
    """Builds every Kubernetes component with `provider` (the EKS cluster's, or an existing cluster's); the
    inference pods run `image` (built in this run, or the stack's prebuilt one).

    Order: on a cluster this stack made, a default StorageClass first (volumes); then the monitoring stack (its
    CRDs back every ServiceMonitor and PrometheusRule, its adapter the HPA's metric); then the GPU add-ons (the DCGM
    exporter ships a ServiceMonitor); then the inference service.
    Everything also waits for `depends_on` (the cluster and its node pools) through the provider.
    """
    addons = config.addons
    opts = pulumi.ResourceOptions(providers=[provider], depends_on=list(depends_on))
    if config.cluster_source == "eks":
        storage = ClusterStorage("storage", opts=opts)
        opts = pulumi.ResourceOptions(providers=[provider], depends_on=[*depends_on, storage])
    monitoring = Monitoring(
        "monitoring",
        MonitoringArgs(
            namespace=addons.monitoring_namespace,
            retention=addons.prometheus.retention,
            retention_size=addons.prometheus.retention_size,
            storage_size=addons.prometheus.storage_size,
            storage_class_name=addons.prometheus.storage_class_name,
            grafana=addons.grafana.enabled,
            alertmanager=addons.alertmanager.enabled,
            mode=addons.monitoring,
            scrape_control_plane=addons.prometheus.scrape_control_plane,
            alert_receiver=addons.alertmanager.receiver,
            slack_channel=addons.alertmanager.slack_channel,
            alert_receiver_credential=config.alert_receiver_credential,
        ),
        opts=opts,
    )
    GpuAddons(
        "gpu-addons",
        GpuAddonsArgs(
            namespace=addons.gpu_namespace,
            device_plugin=addons.device_plugin.enabled,
            dcgm_exporter=addons.dcgm_exporter.enabled,
            time_slicing_replicas=addons.device_plugin.time_slicing_replicas,
            depends_on=monitoring.releases,
        ),
        opts=opts,
    )
    node_provision_seconds = DEFAULT_NODE_PROVISION_SECONDS
    if config.cluster_source == "eks":
        node_provision_seconds = duration_seconds(config.cluster_autoscaler.max_node_provision_time)
    spec = config.inference
    inference = InferenceService(
        f"inference-{spec.name}",
        InferenceServiceArgs(
            name=spec.name,
            namespace=spec.namespace,
            image=image,
            # Unset `inference.image`: this run builds the image and deploys it by digest.
            image_by_digest=spec.image is None or "@" in spec.image,
            pod=ServerPodArgs(
                gpu_count=spec.gpu_count,
                tensor_parallel_size=spec.ranks,
                model=spec.model,
                resources=spec.resources,
                model_cache=spec.model_cache,
                scheduling=spec.scheduling,
                lifecycle=spec.lifecycle,
                startup_seconds=spec.startup_seconds,
            ),
            autoscaling=spec.autoscaling,
            service=spec.service,
            require_api_keys=spec.require_api_keys,
            service_account_role_arn=spec.service_account_role_arn,
            node_provision_seconds=node_provision_seconds,
            api_keys=config.api_keys,
            monitoring_namespace=addons.monitoring_namespace,
            prometheus_pod_labels=PROMETHEUS_POD_LABELS,
            monitor_labels=addons.monitor_labels,
            depends_on=monitoring.releases,
        ),
        opts=opts,
    )
    return KubernetesLayerOutputs(
        inference_endpoint=inference.endpoint,
        inference_namespace=inference.namespace,
        monitoring_namespace=monitoring.namespace,
        grafana_service=monitoring.grafana_service,
    )
