"""Every pinned chart, add-on and image version of the stack, each with the reason it was chosen.

Several people edit this module: add or change one constant at a time and keep the reason next to it.
Upgrading a chart: read its changelog for value-key renames, bump the constant, run the offline plan
(`scripts/plan dev`) and the test suite, then `pulumi preview` against a real stack.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HelmChart:
    """One chart, pinned: its name in the repository, its version and the repository's URL."""

    name: str
    version: str
    repository: str


# --- Kubernetes layer: Helm charts ---------------------------------------------------------------------------------

PROMETHEUS_COMMUNITY = "https://prometheus-community.github.io/helm-charts"

# NVIDIA device plugin, official chart. 0.20.0 is the newest release (Aug 2026); it still ships the `config.map`
# time-slicing settings and the `nodeSelector`/`affinity`/`tolerations` values we set to keep it on GPU nodes.
NVIDIA_DEVICE_PLUGIN_CHART = HelmChart("nvidia-device-plugin", "0.20.0", "https://nvidia.github.io/k8s-device-plugin")

# DCGM exporter, official chart. 4.8.2 (DCGM 4.5.3) is the newest release; its ServiceMonitor has `honorLabels`,
# which keeps the `pod`/`namespace` labels that name the workload using each GPU.
DCGM_EXPORTER_CHART = HelmChart("dcgm-exporter", "4.8.2", "https://nvidia.github.io/dcgm-exporter/helm-charts")

# kube-prometheus-stack (Prometheus Operator v0.93, Grafana, Alertmanager, node-exporter, kube-state-metrics).
# 88.5.3 is the newest release; the `*SelectorNilUsesHelmValues` keys we rely on are unchanged in it.
KUBE_PROMETHEUS_STACK_CHART = HelmChart("kube-prometheus-stack", "88.5.3", PROMETHEUS_COMMUNITY)

# prometheus-adapter 5.3.0 (adapter v0.12.0), the newest release: serves our gauges on custom.metrics.k8s.io.
PROMETHEUS_ADAPTER_CHART = HelmChart("prometheus-adapter", "5.3.0", PROMETHEUS_COMMUNITY)

# --- Kubernetes layer: images --------------------------------------------------------------------------------------

# AWS CLI for the init container that copies model weights from S3 into the model cache (only with an S3 model
# source). A fixed 2.x release: `aws s3 sync` flags are stable across 2.x; bump with the other images.
AWS_CLI_IMAGE = "public.ecr.aws/aws-cli/aws-cli:2.27.49"

# --- Image build -----------------------------------------------------------------------------------------------

# The Pulumi Docker Build provider (buildx/BuildKit) that builds and pushes the server image in `pulumi up`.
# 0.0.22 is the newest release; the Python SDK of the same version is pinned in infra/requirements.txt (a test keeps
# the two equal) and the program asks the engine for exactly this plugin version.
DOCKER_BUILD_PROVIDER_VERSION = "0.0.22"

# --- AWS layer ------------------------------------------------------------------------------------------------------

# cluster-autoscaler, official chart (kubernetes/autoscaler). 9.52.1 (Oct 2025) has the `autoDiscovery.tags`,
# `fullnameOverride` and `extraArgs` values we set, and runs the image below through `image.tag`.
CLUSTER_AUTOSCALER_CHART = HelmChart("cluster-autoscaler", "9.52.1", "https://kubernetes.github.io/autoscaler")

# The autoscaler's minor version must match the control plane's (its scheduler simulation is compiled against
# that Kubernetes release), so the image tag follows `cluster.version`. Each tag is a released patch of its minor,
# chosen when the minor was added here; it is not re-checked for newer patches: bump a tag deliberately, with the
# autoscaler's release notes. The keys are also the Kubernetes versions the stack config accepts.
CLUSTER_AUTOSCALER_IMAGE_TAGS: dict[str, str] = {
    "1.32": "v1.32.3",
    "1.33": "v1.33.1",
    "1.34": "v1.34.0",
    "1.35": "v1.35.0",
}

# New stacks get the newest minor that every pinned chart and the autoscaler above support.
DEFAULT_KUBERNETES_VERSION = "1.35"

# When EKS standard support of each minor ends (AWS's published calendar); after it a cluster runs on extended
# support at USD 0.60 per cluster-hour instead of 0.10, and the program warns on every run. None: not yet announced.
KUBERNETES_STANDARD_SUPPORT_ENDS: dict[str, str | None] = {
    "1.32": "2026-03-23",
    "1.33": "2026-07-29",
    "1.34": "2026-12-02",
    "1.35": None,
}

# EKS managed add-ons (vpc-cni, kube-proxy, coredns, eks-pod-identity-agent, aws-ebs-csi-driver) are not pinned
# here: their valid versions depend on the cluster version, and EKS installs its tested default for that version.
# Pin one per stack with `cluster.addonVersions` (see `aws eks describe-addon-versions`).

# --- Real engines for the test suite ------------------------------------------------------------------------------
# Built from the Go module proxy by `scripts/engines` into ~/.cache/deepseek-inference/bin (tests/cluster/build.py).
# Each is the newest release the proxy serves here at the stacks' Kubernetes minor; a refused version is final.

# The test cluster's control plane: the minor the stacks deploy (DEFAULT_KUBERNETES_VERSION). v1.35.8 is the newest
# 1.35 patch the proxy serves; its 29 staging modules are served at v0.35.8.
TEST_KUBERNETES_VERSION = "1.35.8"
# etcd for that control plane: the 3.6 line (Kubernetes 1.35 is tested against 3.6); v3.6.16 is the newest served.
TEST_ETCD_VERSION = "v3.6.16"
# kwok: fakes the kubelets of the test cluster's nodes (Ready, pods Running) and starts the control plane
# (kwokctl, binary runtime, loopback only). v0.7.0 is the only 0.7 release served.
TEST_KWOK_VERSION = "v0.7.0"
# controller-gen renders the Prometheus Operator's CRDs (ServiceMonitor, PrometheusRule) from its Go API types, for
# the test cluster's "existing monitoring"; 0.23.0 is the newest controller-tools release served.
TEST_CONTROLLER_GEN_VERSION = "v0.23.0"
# The Prometheus Operator API module whose types become those CRDs: v0.95.2 is the newest served (the operator's
# main module is not served here, so its prebuilt CRD files are out of reach; the types are the source anyway).
TEST_PROMETHEUS_OPERATOR_API_VERSION = "v0.95.2"
# promtool checks the PromQL of the alerts, the adapter rules and the dashboard with Prometheus' own parser. The
# module's v0.316.0 is Prometheus 3.16, the newest served; the chart's Prometheus is of the same 3.x line.
TEST_PROMTOOL_VERSION = "v0.316.0"
# The Pulumi CLI for the real `pulumi up` on the test cluster. The proxy refuses pkg/v3 v3.270.0-v3.273.x, so not the
# SDK's 3.272.0: v3.274.1 is the nearest served release (a newer CLI runs older SDKs).
TEST_PULUMI_CLI_VERSION = "v3.274.1"
# The Kubernetes provider plugin. Its module has no semver tags, and the only pseudo-version the proxy serves is the
# v4.25.0 release commit, so the SDK's 4.34.2 cannot be built here: the tests install this build in the 4.34.2 slot
# and the engine warns that the plugin is older than the SDK.
TEST_PULUMI_KUBERNETES_PROVIDER = ("v4.0.0-20260115033456-f47bc2d6f199", "4.25.0")
