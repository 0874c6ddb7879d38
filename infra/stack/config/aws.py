"""AWS sections of the stack config: `network`, `cluster`, `nodePools`, `clusterAutoscaler`, `imageRegistry`.

Every value is checked here, once, with an error that names the fix; the components in `stack.aws` trust their args.
"""

from __future__ import annotations

import datetime
import itertools
import re
from ipaddress import IPv4Network
from typing import Annotated, Literal, Self

from pydantic import Field, field_validator, model_validator

from stack.config.base import IAM_ARN, ConfigSection
from stack.config.instance_types import GPU_INSTANCE_TYPES, GpuInstanceShape
from stack.versions import (
    CLUSTER_AUTOSCALER_IMAGE_TAGS,
    DEFAULT_KUBERNETES_VERSION,
    KUBERNETES_STANDARD_SUPPORT_ENDS,
)

_INSTANCE_TYPE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
_ZONE = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-[0-9][a-z]$")
_CLUSTER_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9_-]{0,99}$")
_DURATION = re.compile(r"^[0-9]+[smh]$")
_ECR_NAME = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$")
_ADDONS = ("vpc-cni", "kube-proxy", "coredns", "eks-pod-identity-agent", "aws-ebs-csi-driver")


# ------------------------------------------------------------------------------------------------------- network


# A CIDR is written as a string in the stack file and parsed here: the one conversion the strict sections allow.
Cidr = Annotated[IPv4Network, Field(strict=False)]


class ZoneConfig(ConfigSection):
    """One availability zone: a public subnet (load balancers, NAT) and a private subnet (nodes)."""

    name: str = Field(description="The zone's name, e.g. `us-west-2a` (a zone of `aws:region`).")
    public_subnet_cidr: Cidr = Field(description="The public subnet (load balancers, NAT gateways), inside `vpcCidr`.")
    private_subnet_cidr: Cidr = Field(description="The private subnet (the nodes), inside `vpcCidr`.")

    @field_validator("name")
    @classmethod
    def _zone_name(cls, value: str) -> str:
        if not _ZONE.match(value):
            raise ValueError(f"{value!r} is not an availability zone name; write one like 'us-west-2a'")
        return value


class NetworkConfig(ConfigSection):
    vpc_cidr: Cidr = Field(description="The VPC's IPv4 CIDR; every subnet lies inside it.")
    # Listed in the stack file, not looked up: the program makes no provider calls while it runs.
    zones: list[ZoneConfig] = Field(
        description="The availability zones, at least 2 (EKS needs subnets in two); subnets may not overlap."
    )
    nat_gateways: Literal["single", "perZone"] = Field(
        "single",
        description="`single`: one NAT gateway for all zones (cheap; a zone outage cuts egress). `perZone`: one per "
        "zone (survives a zone outage).",
    )

    @field_validator("zones")
    @classmethod
    def _enough_zones(cls, zones: list[ZoneConfig]) -> list[ZoneConfig]:
        if len(zones) < 2:
            raise ValueError(f"lists {len(zones)} zone(s) but EKS needs subnets in at least 2; add another zone")
        names = [zone.name for zone in zones]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"zone {duplicates[0]!r} is listed twice; list each zone once")
        return zones

    @model_validator(mode="after")
    def _subnets_fit(self) -> Self:
        subnets = [
            (f"zones[{index}].{kind}", cidr)
            for index, zone in enumerate(self.zones)
            for kind, cidr in (
                ("publicSubnetCidr", zone.public_subnet_cidr),
                ("privateSubnetCidr", zone.private_subnet_cidr),
            )
        ]
        for key, cidr in subnets:
            if not cidr.subnet_of(self.vpc_cidr):
                raise ValueError(f"{key} {cidr} is outside vpcCidr {self.vpc_cidr}; pick a subnet inside the VPC")
        for (key_a, cidr_a), (key_b, cidr_b) in itertools.combinations(subnets, 2):
            if cidr_a.overlaps(cidr_b):
                raise ValueError(f"{key_a} {cidr_a} overlaps {key_b} {cidr_b}; give every subnet its own range")
        return self


# ------------------------------------------------------------------------------------------------------- cluster


class ClusterConfig(ConfigSection):
    # Fixed up front, not left to the provider: subnet tags and the autoscaler's discovery need it.
    name: str | None = Field(None, description="The EKS cluster's name. Unset: `<project>-<stack>`.")
    version: str = Field(
        DEFAULT_KUBERNETES_VERSION,
        description="Kubernetes minor version of the control plane and the node groups: one the pinned "
        "cluster-autoscaler images support. Nodes follow it: raising it upgrades the control plane, then every node "
        "group, in one `pulumi up`. Past EKS standard support the program warns.",
    )
    endpoint_private_access: bool = Field(
        True,
        description="The API is reachable from inside the VPC (nodes join through it; false is refused while "
        "`publicAccessCidrs` is restricted).",
    )
    endpoint_public_access: bool = Field(
        True, description="The API is reachable from the internet, from `publicAccessCidrs` only."
    )
    public_access_cidrs: list[Cidr] = Field(
        [],
        description="CIDRs allowed to reach the public endpoint; required while it is on, so it is never open to "
        "the world by accident.",
    )
    admins: list[str] = Field([], description="IAM role or user ARNs given cluster-admin through EKS access entries.")
    viewers: list[str] = Field(
        [],
        description="IAM role or user ARNs given read-only access (`AmazonEKSViewPolicy`, whole cluster), e.g. the "
        "pull-request preview role. Never the identity that runs `pulumi up`.",
    )
    bootstrap_creator_admin: bool = Field(
        True,
        description="Give the identity that runs `pulumi up` cluster-admin (it must not also be listed in `admins`).",
    )
    extra_log_types: list[Literal["controllerManager", "scheduler"]] = Field(
        [], description="Control-plane logs beyond the always-on api, audit and authenticator."
    )
    log_retention_days: Literal[1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1827, 3653] = Field(
        30, description="CloudWatch retention of the control-plane logs, in days."
    )
    addon_versions: dict[str, str] = Field(
        {},
        description="Pinned versions of managed add-ons (`vpc-cni`, `kube-proxy`, `coredns`, "
        "`eks-pod-identity-agent`, `aws-ebs-csi-driver`); one not listed gets the EKS default for the cluster version.",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not _CLUSTER_NAME.match(value):
            raise ValueError(f"{value!r} is not a valid EKS cluster name; use letters, digits, '-' and '_'")
        return value

    @field_validator("version")
    @classmethod
    def _supported_version(cls, value: str) -> str:
        if value not in CLUSTER_AUTOSCALER_IMAGE_TAGS:
            supported = ", ".join(sorted(CLUSTER_AUTOSCALER_IMAGE_TAGS))
            raise ValueError(f"Kubernetes version {value!r} is not supported here; use one of {supported}")
        return value

    @field_validator("admins", "viewers")
    @classmethod
    def _principals(cls, values: list[str]) -> list[str]:
        for value in values:
            if not IAM_ARN.match(value):
                raise ValueError(
                    f"{value!r} is not an IAM role or user ARN like 'arn:aws:iam::123456789012:role/admin'"
                )
        return values

    @field_validator("addon_versions")
    @classmethod
    def _known_addons(cls, values: dict[str, str]) -> dict[str, str]:
        for name in values:
            if name not in _ADDONS:
                raise ValueError(f"{name!r} is not a managed add-on of this stack; use one of {', '.join(_ADDONS)}")
        return values

    @model_validator(mode="after")
    def _endpoint_reachable(self) -> Self:
        if not (self.endpoint_public_access or self.endpoint_private_access):
            raise ValueError("endpointPublicAccess and endpointPrivateAccess are both false; enable at least one")
        if self.endpoint_public_access and not self.public_access_cidrs:
            raise ValueError(
                "endpointPublicAccess is true but publicAccessCidrs is empty (EKS would open it to 0.0.0.0/0); "
                "list the CIDRs allowed to reach the API"
            )
        world = IPv4Network("0.0.0.0/0")
        if not self.endpoint_private_access and world not in self.public_access_cidrs:
            raise ValueError(
                "endpointPrivateAccess is false and publicAccessCidrs is restricted: nodes reach the API from the "
                "NAT gateways' addresses, which are not listed, so they could never join; set "
                "endpointPrivateAccess: true"
            )
        both = sorted(set(self.admins) & set(self.viewers))
        if both:
            raise ValueError(f"{both[0]!r} is listed in both admins and viewers; list each principal once")
        return self

    def support_warning(self, today: datetime.date) -> str | None:
        """A warning once EKS standard support of `version` has ended (extended support is billed 6x)."""
        ends = KUBERNETES_STANDARD_SUPPORT_ENDS.get(self.version)
        if ends is None or today < datetime.date.fromisoformat(ends):
            return None
        return (
            f"cluster.version {self.version}: EKS standard support ended on {ends}; the control plane now bills "
            f"extended support (USD 0.60 instead of 0.10 per cluster-hour). Upgrade one minor at a time, up to "
            f"{DEFAULT_KUBERNETES_VERSION}"
        )

    @property
    def log_types(self) -> list[str]:
        return ["api", "audit", "authenticator", *self.extra_log_types]


# ---------------------------------------------------------------------------------------------------- node pools


class NodePoolConfig(ConfigSection):
    instance_types: list[str] = Field(
        description="EC2 instance types of the pool. GPU pools take NVIDIA x86_64 types of one shape (same vCPUs, "
        "memory and GPUs) that hold the inference pod (`infra/stack/config/instance_types.py`)."
    )
    min_size: int = Field(ge=0, description="The autoscaler's lower bound.")
    max_size: int = Field(ge=1, description="The autoscaler's upper bound (at least `minSize`).")
    desired_size: Annotated[int, Field(ge=0)] | None = Field(
        None, description="The initial size only: afterwards the cluster-autoscaler owns it. Unset: `minSize`."
    )
    disk_size_gib: int = Field(100, ge=20, le=16384, description="The encrypted gp3 root volume, in GiB.")
    # 125 and 3000 are gp3's free baseline; GPU pools default higher (billed per MiB/s above it).
    disk_throughput_mibps: int = Field(
        125,
        ge=125,
        le=1000,
        description="gp3 throughput of the root volume in MiB/s: a GPU node's cold start writes the image and the "
        "model at this rate.",
    )
    disk_iops: int = Field(
        3000, ge=3000, le=16000, description="gp3 IOPS of the root volume: at least 4 × the throughput."
    )

    @field_validator("instance_types")
    @classmethod
    def _instance_types(cls, values: list[str]) -> list[str]:
        if not values:
            raise ValueError("is empty; list at least one EC2 instance type")
        for value in values:
            if not _INSTANCE_TYPE.match(value):
                raise ValueError(f"{value!r} is not an EC2 instance type like 'm6i.large'")
        if len(set(values)) != len(values):
            raise ValueError("lists an instance type twice; list each once")
        return values

    @model_validator(mode="after")
    def _sizes(self) -> Self:
        if self.min_size > self.max_size:
            raise ValueError(f"minSize {self.min_size} > maxSize {self.max_size}; make minSize <= maxSize")
        desired = self.initial_size
        if not self.min_size <= desired <= self.max_size:
            raise ValueError(f"desiredSize {desired} is outside minSize..maxSize ({self.min_size}..{self.max_size})")
        if self.disk_throughput_mibps * 4 > self.disk_iops:
            raise ValueError(
                f"diskThroughputMibps {self.disk_throughput_mibps} needs at least {self.disk_throughput_mibps * 4} "
                f"diskIops (gp3 allows 0.25 MiB/s per IOPS); raise diskIops or lower the throughput"
            )
        return self

    @property
    def initial_size(self) -> int:
        return self.min_size if self.desired_size is None else self.desired_size


class GpuNodePoolConfig(NodePoolConfig):
    disk_size_gib: int = Field(
        200,
        ge=100,
        le=16384,
        description="The encrypted gp3 root volume, in GiB: GPU nodes hold multi-GiB inference images and model "
        "caches.",
    )
    # 500 MiB/s writes a ~6 GB image plus a ~15 GB model in under a minute instead of ~3 (about USD 15 per node-month).
    disk_throughput_mibps: int = Field(
        500,
        ge=125,
        le=1000,
        description="gp3 throughput of the root volume in MiB/s: a GPU node's cold start writes the image and the "
        "model at this rate.",
    )

    @field_validator("instance_types")
    @classmethod
    def _gpu_types(cls, values: list[str]) -> list[str]:
        for value in values:
            if value not in GPU_INSTANCE_TYPES:
                raise ValueError(
                    f"{value!r} is not an NVIDIA GPU instance type (x86_64); use e.g. g6e.xlarge, g5.2xlarge, "
                    "p5.48xlarge (see GPU_INSTANCE_TYPES in infra/stack/config/instance_types.py)"
                )
        first = GPU_INSTANCE_TYPES[values[0]]
        for value in values[1:]:
            shape = GPU_INSTANCE_TYPES[value]
            if shape.sizing != first.sizing:
                raise ValueError(
                    f"mixes node sizes: {value} has {_describe(shape)} but {values[0]} has {_describe(first)}; "
                    "the cluster-autoscaler sizes a pool from its first type, so list types of one shape "
                    "(e.g. g6.2xlarge and g5.2xlarge)"
                )
        return values

    @property
    def shape(self) -> GpuInstanceShape:
        """The pool's node shape (every type has the same vCPUs, memory and GPUs)."""
        return GPU_INSTANCE_TYPES[self.instance_types[0]]

    @property
    def gpus_per_node(self) -> int:
        return self.shape.gpus

    @property
    def accelerator(self) -> str:
        """The `k8s.amazonaws.com/accelerator` label: the GPU model, or `nvidia` when the types' GPUs differ."""
        models = {GPU_INSTANCE_TYPES[value].accelerator for value in self.instance_types}
        return models.pop() if len(models) == 1 else "nvidia"


def _describe(shape: GpuInstanceShape) -> str:
    return f"{shape.vcpus} vCPU / {shape.memory_gib} GiB / {shape.gpus} GPU"


class SpotGpuNodePoolConfig(GpuNodePoolConfig):
    @field_validator("instance_types")
    @classmethod
    def _diversified(cls, values: list[str]) -> list[str]:
        if len(values) < 2:
            raise ValueError("lists one instance type; spot needs at least 2 diversified GPU types to find capacity")
        return values


class NodePoolsConfig(ConfigSection):
    system: NodePoolConfig = Field(
        NodePoolConfig(instance_types=["m6i.large", "m7i.large"], min_size=2, max_size=4),
        description="General purpose, on demand, untainted: cluster add-ons, monitoring, the autoscaler.",
    )
    gpu_on_demand: GpuNodePoolConfig = Field(
        GpuNodePoolConfig(instance_types=["g6e.xlarge"], min_size=0, max_size=2),
        description="The GPU baseline, on demand (tainted for GPU pods). `minSize` 0 lets a dev stack idle without "
        "paying for a GPU; prod needs at least 1.",
    )
    gpu_spot: SpotGpuNodePoolConfig = Field(
        SpotGpuNodePoolConfig(instance_types=["g6.2xlarge", "g5.2xlarge"], min_size=0, max_size=4),
        description="GPU burst capacity on spot, at least 2 instance types, preferred by the autoscaler; it falls "
        "back to `gpuOnDemand` when spot is short.",
    )


# ---------------------------------------------------------------------------------------- autoscaler, registry


def duration_seconds(value: str) -> int:
    """'10m' -> 600 (a duration the validators below accepted)."""
    return int(value[:-1]) * {"s": 1, "m": 60, "h": 3600}[value[-1]]


class ClusterAutoscalerConfig(ConfigSection):
    enabled: bool = Field(True, description="Deploy the cluster-autoscaler.")
    scale_down_unneeded_time: str = Field(
        "10m", description="How long a node must be unneeded before it is removed (`90s`, `10m`, `1h`)."
    )
    scale_down_delay_after_add: str = Field(
        "10m",
        description="No scale-down this long after a scale-up (GPU nodes take minutes to become useful).",
    )
    # strict=False: `pulumi config set --path ... 0.6` stores a fraction as the string "0.6" (only whole numbers and
    # booleans become typed values); it is read as the number it is.
    scale_down_utilization_threshold: float = Field(
        0.5,
        gt=0,
        le=1,
        strict=False,
        description="A node below this fraction of requested CPU, memory and GPU is a scale-down candidate.",
    )
    max_node_provision_time: str = Field(
        "10m",
        description="How long to wait for a node before giving up on a node group: how fast spot falls back to on "
        "demand (and part of the inference rollout's await budget).",
    )

    @field_validator("scale_down_unneeded_time", "scale_down_delay_after_add", "max_node_provision_time")
    @classmethod
    def _duration(cls, value: str) -> str:
        if not _DURATION.match(value):
            raise ValueError(f"{value!r} is not a duration; write e.g. '10m', '90s' or '1h'")
        return value


class ImageRegistryConfig(ConfigSection):
    name: str = Field("deepseek-inference", description="The ECR repository of the inference server image.")
    keep_images: int = Field(
        30, ge=1, le=10000, description="The lifecycle policy keeps the newest this many images and expires the rest."
    )
    encryption: Literal["KMS", "AES256"] = Field(
        "KMS", description="Encryption at rest: `KMS` (the AWS-managed key) or `AES256`."
    )
    force_delete: bool = Field(
        False, description="Let `pulumi destroy` delete the repository while it still holds images."
    )

    @field_validator("name")
    @classmethod
    def _repository_name(cls, value: str) -> str:
        if not (2 <= len(value) <= 256 and _ECR_NAME.match(value)):
            raise ValueError(f"{value!r} is not an ECR repository name; use lowercase letters, digits, '-', '_', '/'")
        return value
