"""The node contract: the labels, taint and resource names the node pools put on their nodes, and that the
Kubernetes layer selects, tolerates and requests. Written once here: the AWS node pools set it, the Kubernetes
layer reads it, and the test cluster's nodes are made from it. Other clusters label and taint GPU nodes the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# Pool names: node group names, the node-pool label's values and the autoscaler's priority patterns.
SYSTEM_POOL = "system"
GPU_ON_DEMAND_POOL = "gpu-on-demand"
GPU_SPOT_POOL = "gpu-spot"

GPU_PRESENT_LABEL = "nvidia.com/gpu.present"
NODE_POOL_LABEL = "deepseek.io/node-pool"
# spot | on-demand: for people (`kubectl get nodes -L deepseek.io/capacity`) and other clusters' tooling; the
# inference pods select on EKS's own capacity-type label below, which every managed node carries.
CAPACITY_LABEL = "deepseek.io/capacity"
# cluster-autoscaler's GPU label on AWS: a node carrying it counts as unready until its GPUs are allocatable, so the
# autoscaler waits for the device plugin instead of scaling out again while a new GPU node boots.
ACCELERATOR_LABEL = "k8s.amazonaws.com/accelerator"
# Set by EKS on managed nodes: SPOT or ON_DEMAND.
CAPACITY_TYPE_LABEL = "eks.amazonaws.com/capacityType"
ZONE_LABEL = "topology.kubernetes.io/zone"
HOSTNAME_LABEL = "kubernetes.io/hostname"
GPU_RESOURCE = "nvidia.com/gpu"

TaintEffect = Literal["NO_SCHEDULE", "NO_EXECUTE", "PREFER_NO_SCHEDULE"]
# EKS API taint effects and their Kubernetes spelling (nodes, tolerations, the autoscaler's node-template tags).
KUBERNETES_EFFECT: dict[TaintEffect, str] = {
    "NO_SCHEDULE": "NoSchedule",
    "NO_EXECUTE": "NoExecute",
    "PREFER_NO_SCHEDULE": "PreferNoSchedule",
}


@dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: TaintEffect

    @property
    def kubernetes_effect(self) -> str:
        return KUBERNETES_EFFECT[self.effect]


# Keeps everything but GPU workloads off GPU nodes.
GPU_TAINT = Taint(key=GPU_RESOURCE, value="true", effect="NO_SCHEDULE")


def capacity_type(spot: bool) -> Literal["SPOT", "ON_DEMAND"]:
    """The node group's capacity type, which EKS also writes into CAPACITY_TYPE_LABEL."""
    return "SPOT" if spot else "ON_DEMAND"


def pool_labels(pool: str, *, spot: bool, accelerator: str | None) -> dict[str, str]:
    """The labels a pool's nodes get; `accelerator` (the GPU model) only for GPU pools."""
    labels = {NODE_POOL_LABEL: pool}
    if accelerator is not None:
        labels |= {
            GPU_PRESENT_LABEL: "true",
            CAPACITY_LABEL: "spot" if spot else "on-demand",
            ACCELERATOR_LABEL: accelerator,
        }
    return labels
