"""GpuAddons: the NVIDIA device plugin and the DCGM exporter, both only on GPU nodes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_kubernetes as k8s

from stack import versions
from stack.helm import pinned_release
from stack.kubernetes.common import MANAGED_BY, gpu_node_affinity, gpu_node_tolerations


@dataclass(frozen=True)
class GpuAddonsArgs:
    namespace: str
    device_plugin: bool = True
    dcgm_exporter: bool = True
    # > 1 advertises each GPU that many times (CUDA time-slicing).
    time_slicing_replicas: int = 1
    # The monitoring stack: its CRDs (ServiceMonitor) must exist before the DCGM exporter's chart is installed.
    depends_on: Sequence[pulumi.Resource] = field(default_factory=tuple)


class GpuAddons(pulumi.ComponentResource):
    """Helm releases of the NVIDIA device plugin (advertises nvidia.com/gpu) and the DCGM exporter (GPU metrics)."""

    namespace: pulumi.Output[str]

    def __init__(self, name: str, args: GpuAddonsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("deepseek:kubernetes:GpuAddons", name, None, opts)
        if args.time_slicing_replicas < 1:
            raise ValueError(f"time_slicing_replicas must be ≥ 1, got {args.time_slicing_replicas}")
        child = pulumi.ResourceOptions(parent=self)

        # Privileged: both daemons read host devices and the kubelet's pod-resources socket through hostPath.
        namespace = k8s.core.v1.Namespace(
            f"{name}-namespace",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=args.namespace,
                labels={**MANAGED_BY, "pod-security.kubernetes.io/enforce": "privileged"},
            ),
            opts=child,
        )
        after_namespace = pulumi.ResourceOptions(parent=self, depends_on=[namespace, *args.depends_on])
        wanted = [
            (
                args.device_plugin,
                "device-plugin",
                versions.NVIDIA_DEVICE_PLUGIN_CHART,
                device_plugin_values(args.time_slicing_replicas),
            ),
            (args.dcgm_exporter, "dcgm-exporter", versions.DCGM_EXPORTER_CHART, dcgm_exporter_values()),
        ]
        self.releases: list[k8s.helm.v3.Release] = [
            pinned_release(f"{name}-{suffix}", chart, namespace=args.namespace, values=values, opts=after_namespace)
            for enabled, suffix, chart, values in wanted
            if enabled
        ]
        self.namespace = namespace.metadata.apply(lambda metadata: metadata.name or args.namespace)
        self.register_outputs({"namespace": self.namespace})


def device_plugin_values(time_slicing_replicas: int) -> dict[str, object]:
    """Chart values: schedule only on GPU nodes (our label, not NFD's), optionally share GPUs by time-slicing."""
    values: dict[str, object] = {
        "nodeSelector": {},
        # Replaces the chart's default affinity (NFD labels we do not run) with our GPU node label.
        "affinity": gpu_node_affinity(),
        "tolerations": gpu_node_tolerations(),
        "priorityClassName": "system-node-critical",
    }
    if time_slicing_replicas > 1:
        values["config"] = {
            "default": "time-slicing",
            "map": {
                "time-slicing": (
                    "version: v1\n"
                    "sharing:\n"
                    "  timeSlicing:\n"
                    "    resources:\n"
                    "    - name: nvidia.com/gpu\n"
                    f"      replicas: {time_slicing_replicas}\n"
                )
            },
        }
    return values


def dcgm_exporter_values() -> dict[str, object]:
    """Chart values: GPU nodes only; the ServiceMonitor keeps the exporter's pod/namespace labels (honorLabels).

    DCGM labels each GPU's series with the pod, namespace and container using it; without honorLabels Prometheus
    would rename them exported_pod/exported_namespace and overwrite pod/namespace with the exporter's own.
    """
    return {
        "affinity": gpu_node_affinity(),
        "tolerations": gpu_node_tolerations(),
        "serviceMonitor": {"enabled": True, "interval": "15s", "honorLabels": True},
    }
