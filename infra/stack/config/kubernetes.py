"""Kubernetes sections of the stack config: the `addons` and `inference` Pulumi config objects.

Both models are built from the JSON the Pulumi CLI hands over (`Config.require_object`), use the camelCase keys
written in `Pulumi.<stack>.yaml`, reject unknown keys, and are constructible with no arguments (the defaults
describe a single 7B DeepSeek model on one GPU). Every value is validated here, once; components trust their args.
"""

from __future__ import annotations

import ipaddress
import re
from decimal import Decimal
from typing import Annotated, Literal, Self

from pydantic import Field, field_validator, model_validator

from stack.config.base import IAM_ARN, ConfigSection
from stack.config.model_sizes import published_weights_gib, startup_budget_seconds

_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY = re.compile(r"^(?P<number>[0-9]+(\.[0-9]+)?)(?P<suffix>m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
_SUFFIX_FACTOR = {
    None: Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
}
_S3_URI = re.compile(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\s]*)?$")
_PROMETHEUS_DURATION = re.compile(r"^[0-9]+(ms|s|m|h|d|w|y)$")
_PROMETHEUS_SIZE = re.compile(r"^[0-9]+(B|KB|MB|GB|TB|PB|EB)$")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
# The weight files the server's loader reads (app/model/loader.py: LOADABLE_WEIGHTS): safetensors only.
DEFAULT_MODEL_ID = "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"

# What the S3 download init container asks for (stack.kubernetes.inference_pod); the config model's fit check counts
# it too, since a pod's effective request is the larger of its init container's and its containers'.
S3_DOWNLOAD_REQUESTS = {"cpu": "500m", "memory": "512Mi"}
AlertReceiver = Literal["none", "slack", "pagerduty", "webhook"]


def _split_quantity(value: str) -> tuple[Decimal, str | None]:
    """A Kubernetes resource quantity's number and suffix: "16Gi" is (16, "Gi"), "2" is (2, None)."""
    match = _QUANTITY.match(value)
    if match is None:
        raise ValueError(f"{value!r} is not a Kubernetes quantity; write e.g. '2', '500m', '16Gi'")
    return Decimal(match["number"]), match["suffix"]


def parse_quantity(value: str) -> Decimal:
    """A Kubernetes resource quantity ("500m", "16Gi", "2") as a number, for comparisons."""
    number, suffix = _split_quantity(value)
    return number * _SUFFIX_FACTOR[suffix]


def scale_quantity(value: str, factor: int) -> str:
    """'16Gi' times 3 is '48Gi', '500m' times 3 is '1500m': the number scaled, the suffix kept."""
    number, suffix = _split_quantity(value)
    return f"{(number * factor).normalize():f}{suffix or ''}"


def _quantity(value: str) -> str:
    parse_quantity(value)
    return value


def _dns_label(value: str) -> str:
    if len(value) > 40 or not _DNS_LABEL.match(value):
        raise ValueError(f"{value!r} must be a lowercase DNS label (a-z, 0-9, '-'; starts with a letter; ≤ 40 chars)")
    return value


# --------------------------------------------------------------------------------------------------------- addons


class DevicePluginConfig(ConfigSection):
    enabled: bool = Field(
        True, description="Install the NVIDIA device plugin (turn it off where the NVIDIA GPU Operator runs it)."
    )
    time_slicing_replicas: int = Field(
        1,
        ge=1,
        le=48,
        description="1: every pod gets whole GPUs. N > 1: each GPU is advertised N times (CUDA time-slicing: "
        "no memory isolation between the pods that share it).",
    )


class DcgmExporterConfig(ConfigSection):
    enabled: bool = Field(
        True, description="Install the DCGM exporter (GPU metrics; turn it off where the GPU Operator runs it)."
    )


class PrometheusConfig(ConfigSection):
    retention: str = Field("15d", description="How long Prometheus keeps samples: a duration (`ms s m h d w y`).")
    retention_size: str = Field(
        "45GB", description="Prometheus deletes the oldest blocks past this size; keep it under `storageSize`."
    )
    storage_size: str = Field("50Gi", description="Size of Prometheus' volume (a Kubernetes quantity).")
    storage_class_name: str | None = Field(
        None,
        description="StorageClass of that volume. Unset: the cluster's default (on stacks that create their "
        "cluster: the encrypted gp3 class). Required with `clusterSource: existing`: EKS 1.30+ marks no class "
        "default, and an unbound volume stalls the whole update.",
    )
    scrape_control_plane: bool = Field(
        False,
        description="Scrape kube-controller-manager, kube-scheduler, etcd and kube-proxy (and keep their alerts). "
        "Off: managed control planes (EKS, GKE, AKS) do not expose them, and their Down alerts would fire forever.",
    )

    @field_validator("retention")
    @classmethod
    def _duration(cls, value: str) -> str:
        if not _PROMETHEUS_DURATION.match(value):
            raise ValueError(f"prometheus.retention {value!r} must be a duration like '15d'")
        return value

    @field_validator("retention_size")
    @classmethod
    def _size(cls, value: str) -> str:
        if not _PROMETHEUS_SIZE.match(value):
            raise ValueError(f"prometheus.retentionSize {value!r} must be a size like '45GB'")
        return value

    @field_validator("storage_size")
    @classmethod
    def _storage(cls, value: str) -> str:
        return _quantity(value)


class GrafanaConfig(ConfigSection):
    enabled: bool = Field(True, description="Install Grafana, with the server's dashboard.")


class AlertmanagerConfig(ConfigSection):
    enabled: bool = Field(True, description="Install Alertmanager.")
    receiver: AlertReceiver = Field(
        "none",
        description="Where alerts go. `none`: they show in Alertmanager's and Prometheus' UIs and are delivered "
        "nowhere. `slack`, `pagerduty`, `webhook`: the credential (Slack incoming-webhook URL, PagerDuty Events v2 "
        "routing key, webhook URL) is the `alertReceiverCredential` secret.",
    )
    slack_channel: str | None = Field(
        None, description="The Slack channel, with `receiver: slack` only. Unset: the webhook's own channel."
    )

    @model_validator(mode="after")
    def _channel_for_slack(self) -> Self:
        if self.slack_channel is not None and self.receiver != "slack":
            raise ValueError("alertmanager.slackChannel is set but alertmanager.receiver is not 'slack'")
        if self.receiver != "none" and not self.enabled:
            raise ValueError(f"alertmanager.receiver is {self.receiver!r} but alertmanager.enabled is false")
        return self


class AddonsConfig(ConfigSection):
    """Cluster add-ons: GPU plumbing and the monitoring stack (the `addons` config object)."""

    gpu_namespace: str = Field(
        "nvidia",
        description="Namespace of the device plugin and the DCGM exporter (Pod Security `privileged`: they read "
        "host devices).",
    )
    monitoring_namespace: str = Field(
        "monitoring", description="Namespace of the monitoring stack (Pod Security `privileged`: node-exporter)."
    )
    monitoring: Literal["install", "existing"] = Field(
        "install",
        description="`install`: kube-prometheus-stack and prometheus-adapter from the pinned charts. `existing`: "
        "the cluster already runs the Prometheus Operator (its CRDs) and a prometheus-adapter in "
        "`monitoringNamespace`; the stack creates only its ServiceMonitor, PrometheusRule, dashboard ConfigMap and a "
        "ConfigMap of adapter rules to merge.",
    )
    monitor_labels: dict[str, str] = Field(
        {},
        description="Labels put on the ServiceMonitor and PrometheusRule, for an existing Prometheus whose "
        "selectors ask for them (kube-prometheus-stack's default: `release: <its release name>`).",
    )
    device_plugin: DevicePluginConfig = Field(DevicePluginConfig(), description="The NVIDIA device plugin.")
    dcgm_exporter: DcgmExporterConfig = Field(DcgmExporterConfig(), description="The DCGM exporter.")
    prometheus: PrometheusConfig = Field(PrometheusConfig(), description="Prometheus' retention and volume.")
    grafana: GrafanaConfig = Field(GrafanaConfig(), description="Grafana.")
    alertmanager: AlertmanagerConfig = Field(AlertmanagerConfig(), description="Alertmanager and where it sends.")

    @field_validator("gpu_namespace", "monitoring_namespace")
    @classmethod
    def _namespaces(cls, value: str) -> str:
        return _dns_label(value)

    @field_validator("monitor_labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, label in value.items():
            if not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(label):
                raise ValueError(f"monitorLabels {key}: {label!r} is not a valid Kubernetes label")
        return value

    @model_validator(mode="after")
    def _installed_monitoring_only(self) -> Self:
        if self.monitoring == "existing" and self.alertmanager.receiver != "none":
            raise ValueError(
                "alertmanager.receiver configures the Alertmanager this stack installs; with monitoring 'existing' "
                "route alerts in your own Alertmanager and set receiver: none"
            )
        return self


# ------------------------------------------------------------------------------------------------------ inference


class ModelConfig(ConfigSection):
    source: Literal["huggingface", "s3"] = Field(
        "huggingface",
        description="Where the weights come from: `huggingface` (the server downloads `id`) or `s3` (an init "
        "container copies `s3Uri` into the model cache; the pods need read access to it).",
    )
    # The default: DeepSeek-R1's 7B distillation (Qwen2 architecture), published as safetensors.
    id: str = Field(
        DEFAULT_MODEL_ID,
        description="Hugging Face model id. The server loads `*.safetensors` weights only and refuses a "
        "repository without them in one line.",
    )
    s3_uri: str | None = Field(None, description="`s3://bucket/prefix` of the weights, with `source: s3`.")
    served_model_name: str | None = Field(
        None,
        description="The model name clients put in requests (`SERVED_MODEL_NAME`). Unset: the model id, or the "
        "last part of the S3 path.",
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32", "fp8"] = Field(
        "bfloat16",
        description="Weight and compute dtype (`DTYPE`). `fp8`: DeepSeek-V3/R1's own block-quantized FP8 weights as "
        "they ship, or a bf16 checkpoint quantized on load; Ada or Hopper GPUs (L40S, L4, H100, H200).",
    )
    weights_gib: Annotated[float, Field(gt=0, strict=False)] | None = Field(
        None,
        description="Size of the weights in GiB, which sets the pods' startup budget (`lifecycle."
        "startupTimeoutSeconds`). Unset: known for DeepSeek's published checkpoints (e.g. ~625 for DeepSeek-R1 in "
        "FP8, ~131 for R1-Distill-Llama-70B), else the budget is the small model's.",
    )
    max_model_len: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Longest prompt plus completion in tokens (`MAX_MODEL_LEN`). Unset: the server's default."
    )
    max_batch_size: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Most sequences decoded together (`MAX_BATCH_SIZE`). Unset: the server's default (32)."
    )
    max_queue: Annotated[int, Field(ge=1)] | None = Field(
        None,
        description="Most requests waiting for a batch slot; past it requests get 429 (`MAX_QUEUE`). Unset: the "
        "server's default (256).",
    )

    @model_validator(mode="after")
    def _source_matches(self) -> Self:
        if self.source == "s3" and (self.s3_uri is None or not _S3_URI.match(self.s3_uri)):
            raise ValueError("model.source 's3' needs model.s3Uri like 's3://bucket/prefix'")
        if self.source == "huggingface" and self.s3_uri is not None:
            raise ValueError("model.s3Uri is set but model.source is 'huggingface'; set source: s3 or drop s3Uri")
        return self


class ResourcesConfig(ConfigSection):
    # The defaults size a 7B model in bfloat16: 2-4 CPU, 16-32 Gi of host memory (weights are staged in RAM).
    cpu_request: str = Field("2", description='CPU request per pod (a quantity string: `"2"`, `"500m"`).')
    cpu_limit: str = Field("4", description="CPU limit per pod.")
    memory_request: str = Field("16Gi", description="Host memory request per pod (weights are staged in RAM).")
    memory_limit: str = Field("32Gi", description="Host memory limit per pod.")
    shm_size: str = Field(
        "2Gi",
        description="Size of `/dev/shm` (a memory-backed emptyDir that PyTorch and NCCL use); it counts against "
        "`memoryLimit`.",
    )

    @field_validator("cpu_request", "cpu_limit", "memory_request", "memory_limit", "shm_size")
    @classmethod
    def _quantities(cls, value: str) -> str:
        return _quantity(value)

    @model_validator(mode="after")
    def _requests_within_limits(self) -> Self:
        for what, request, limit in (
            ("cpu", self.cpu_request, self.cpu_limit),
            ("memory", self.memory_request, self.memory_limit),
        ):
            if parse_quantity(request) > parse_quantity(limit):
                raise ValueError(f"resources: {what} request {request} is above its limit {limit}")
        if parse_quantity(self.shm_size) >= parse_quantity(self.memory_limit):
            raise ValueError(f"resources: shmSize {self.shm_size} must be well under memoryLimit {self.memory_limit}")
        return self


class ModelCacheConfig(ConfigSection):
    type: Literal["emptyDir", "ephemeral", "existingClaim"] = Field(
        "emptyDir",
        description="`emptyDir`: node-local scratch, downloaded again by every new pod. `ephemeral`: a fresh PVC "
        "per pod from `storageClassName` (survives container restarts, not rescheduling). `existingClaim`: a shared "
        "ReadWriteMany claim (e.g. EFS) that every replica mounts: the weights are downloaded once.",
    )
    size: str = Field("60Gi", description="Size limit of the emptyDir, or size of the ephemeral PVC.")
    storage_class_name: str | None = Field(
        None,
        description="StorageClass of `ephemeral` PVCs. Unset: the cluster's default (required with "
        "`clusterSource: existing`).",
    )
    claim_name: str | None = Field(None, description="The claim, with `type: existingClaim` and only then.")

    @field_validator("size")
    @classmethod
    def _size(cls, value: str) -> str:
        return _quantity(value)

    @model_validator(mode="after")
    def _claim_given(self) -> Self:
        if (self.type == "existingClaim") != (self.claim_name is not None):
            raise ValueError("modelCache.claimName is required with type 'existingClaim' and only then")
        return self


class AutoscalingConfig(ConfigSection):
    min_replicas: int = Field(1, ge=1, description="Fewest pods the HPA keeps.")
    max_replicas: int = Field(
        2, ge=1, description="Most pods the HPA makes (the ResourceQuota allows one more, for a rollout's surge)."
    )
    target_requests_per_pod: int = Field(
        8,
        ge=1,
        description="The HPA's target: average waiting + running requests per pod. Well under the server's batch "
        "size keeps per-token latency low; nearer it packs the GPUs fuller.",
    )
    scale_down_stabilization_seconds: int = Field(
        600,
        ge=0,
        le=3600,
        description="Pods are added at once but removed only after load stayed below target this long (loading "
        "a model takes minutes, so flapping is dear).",
    )

    @model_validator(mode="after")
    def _min_le_max(self) -> Self:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"autoscaling.minReplicas {self.min_replicas} > maxReplicas {self.max_replicas}")
        return self


class SchedulingConfig(ConfigSection):
    capacity_type: Literal["on-demand", "spot", "any"] = Field(
        "on-demand",
        description="Preferred (not required) node capacity, from the `eks.amazonaws.com/capacityType` label EKS "
        "puts on managed nodes.",
    )
    zone_spread: Literal["required", "preferred"] = Field(
        "preferred",
        description="`required`: never two pods in one zone while another zone has fewer (pods stay Pending when "
        "a zone has no GPU node). `preferred`: spread when the scheduler can.",
    )
    priority: int = Field(100_000, ge=0, le=1_000_000_000, description="The pods' PriorityClass value.")


class LifecycleConfig(ConfigSection):
    startup_timeout_seconds: Annotated[int, Field(ge=60, le=7200)] | None = Field(
        None,
        description="Time the startup probe allows for the model's download and load before the pod is restarted. "
        "Unset: from the size of the weights (`model.weightsGib`, or the published size of a DeepSeek checkpoint): "
        "600 s plus 12 s a GiB, at least 1,200 s and at most 7,200 s (infra/stack/config/model_sizes.py).",
    )
    drain_timeout_seconds: int = Field(
        25,
        ge=1,
        le=600,
        description="How long in-flight requests may run after SIGTERM (the server's `DRAIN_TIMEOUT`).",
    )
    pre_stop_sleep_seconds: int = Field(
        15,
        ge=0,
        le=120,
        description="Pause before SIGTERM, while the endpoints and the load balancer stop sending new requests.",
    )

    @property
    def termination_grace_period_seconds(self) -> int:
        """Covers the preStop pause, the drain and 5 s for the process to exit."""
        return self.pre_stop_sleep_seconds + self.drain_timeout_seconds + 5


# A JSON list in the stack file, kept as an immutable tuple (strict mode alone would refuse the list).
_Cidrs = Annotated[tuple[str, ...], Field(strict=False)]


class ServiceConfig(ConfigSection):
    load_balancer_source_ranges: _Cidrs = Field(
        ("0.0.0.0/0",),
        description="Client CIDRs allowed through the load balancer and by the NetworkPolicy. A prod stack must "
        "restrict them (policy `prod-load-balancer-restricted`).",
    )
    internal: bool = Field(False, description="An NLB reachable only inside the VPC.")
    tls_certificate_arn: str | None = Field(
        None,
        description="An ACM certificate ARN: the NLB terminates TLS on 443. Unset: the Service listens on plain "
        "port 80.",
    )
    extra_client_cidrs: _Cidrs = Field(
        (),
        description="More client CIDRs the NetworkPolicy admits without going through the load balancer (clients "
        "inside the cluster or the VPC).",
    )

    @field_validator("load_balancer_source_ranges", "extra_client_cidrs")
    @classmethod
    def _cidrs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=True)
            except ValueError as error:
                raise ValueError(f"{cidr!r} is not a network CIDR like '10.0.0.0/8' ({error})") from None
        return value

    @field_validator("load_balancer_source_ranges")
    @classmethod
    def _not_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("service.loadBalancerSourceRanges must list at least one CIDR ('0.0.0.0/0' = anyone)")
        return value


class InferenceConfig(ConfigSection):
    """One model deployment: the `inference` config object."""

    name: str = Field("deepseek", description="Name of the Deployment, Service, HPA and the rest (a DNS label).")
    namespace: str = Field("deepseek-inference", description="Namespace of the model deployment.")
    image: str | None = Field(
        None,
        description="A prebuilt server image (`docker/Dockerfile.cuda`): a fixed tag or an `@sha256:` digest, never "
        "`latest`. Unset: `pulumi up` builds the image, pushes it to the stack's ECR repository and deploys it by "
        "digest. Required with `clusterSource: existing`.",
    )
    gpu_count: int = Field(1, ge=1, le=8, description="GPUs per pod; every GPU pool's instance type must have as many.")
    tensor_parallel_size: int | None = Field(
        None,
        ge=1,
        le=8,
        description="GPUs the model is split across by tensor parallelism (the server's `--tensor-parallel-size`), at "
        "most `gpuCount`. Unset: `gpuCount`, so every GPU of the pod serves. The server refuses a size that does not "
        "divide the model's attention heads.",
    )
    require_api_keys: bool = Field(
        False, description="Refuse to deploy without the `apiKeys` secret (set it true for production stacks)."
    )
    service_account_role_arn: str | None = Field(
        None,
        description="Existing clusters only: an IAM role for the pods' ServiceAccount (IRSA annotation), e.g. read "
        "access to the S3 model prefix. Stacks that create their cluster grant that through EKS Pod Identity.",
    )
    model: ModelConfig = Field(ModelConfig(), description="The model and the server's batch limits.")
    resources: ResourcesConfig = Field(ResourcesConfig(), description="CPU and host memory per pod.")
    model_cache: ModelCacheConfig = Field(ModelCacheConfig(), description="Where the weights are kept on the node.")
    autoscaling: AutoscalingConfig = Field(AutoscalingConfig(), description="The HorizontalPodAutoscaler.")
    scheduling: SchedulingConfig = Field(SchedulingConfig(), description="Where the pods land.")
    lifecycle: LifecycleConfig = Field(LifecycleConfig(), description="Startup and shutdown timing.")
    service: ServiceConfig = Field(ServiceConfig(), description="The LoadBalancer Service and who may call it.")

    @field_validator("name", "namespace")
    @classmethod
    def _names(cls, value: str) -> str:
        return _dns_label(value)

    @model_validator(mode="after")
    def _ranks_fit_the_pod(self) -> InferenceConfig:
        if self.tensor_parallel_size is not None and self.tensor_parallel_size > self.gpu_count:
            raise ValueError(
                f"tensorParallelSize {self.tensor_parallel_size} needs as many GPUs, and gpuCount is {self.gpu_count}"
            )
        return self

    @property
    def ranks(self) -> int:
        """Tensor-parallel ranks per pod: one per GPU unless set lower."""
        return self.tensor_parallel_size or self.gpu_count

    @property
    def startup_seconds(self) -> int:
        """The pods' startup budget: as set, else from the size of the weights."""
        if self.lifecycle.startup_timeout_seconds is not None:
            return self.lifecycle.startup_timeout_seconds
        gib = self.model.weights_gib
        if gib is None and self.model.source == "huggingface":
            gib = published_weights_gib(self.model.id)
        return startup_budget_seconds(gib)

    @field_validator("image")
    @classmethod
    def _pinned_image(cls, value: str | None) -> str | None:
        if value is None:
            return None
        name, _, digest = value.partition("@")
        last = name.rsplit("/", 1)[-1]
        tag = last.partition(":")[2]
        if digest:
            if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
                raise ValueError(f"image {value!r}: a digest must be 'sha256:' and 64 hex digits")
        elif not tag or tag == "latest":
            raise ValueError(f"image {value!r} must carry a fixed tag or a digest (never 'latest' or none)")
        return value

    @field_validator("service_account_role_arn")
    @classmethod
    def _role_arn(cls, value: str | None) -> str | None:
        if value is not None and ((arn := IAM_ARN.match(value)) is None or arn["kind"] != "role"):
            raise ValueError(f"serviceAccountRoleArn {value!r} is not an IAM role ARN")
        return value


def check_api_keys(inference: InferenceConfig, api_keys: str | None) -> None:
    """Raises when the stack requires API keys (production) and the `apiKeys` secret is missing or empty."""
    keys = [key for key in (api_keys or "").split(",") if key.strip()]
    if inference.require_api_keys and not keys:
        raise ValueError(
            "inference.requireApiKeys is true but the 'apiKeys' secret is empty: "
            "run `pulumi config set --secret apiKeys <key1,key2>`"
        )
