"""The test cluster's nodes, made from the same code the AWS node pools use (stack.nodes and the instance table),
so the labels, taints and allocatable resources the real scheduler sees cannot drift from what EKS nodes carry."""

from __future__ import annotations

from typing import Any

from stack.config.aws import GpuNodePoolConfig, NodePoolConfig, NodePoolsConfig
from stack.config.instance_types import GPU_INSTANCE_TYPES, GpuInstanceShape, allocatable
from stack.nodes import (
    CAPACITY_TYPE_LABEL,
    GPU_ON_DEMAND_POOL,
    GPU_RESOURCE,
    GPU_SPOT_POOL,
    GPU_TAINT,
    HOSTNAME_LABEL,
    SYSTEM_POOL,
    ZONE_LABEL,
    capacity_type,
    pool_labels,
)

# kwok manages (fakes the kubelet of) nodes with this annotation: Ready, and their pods Running.
KWOK_NODE_ANNOTATION = {"kwok.x-k8s.io/node": "fake"}
# The system pool's types are general purpose (not in the GPU table): m6i/m7i.large and .xlarge shapes.
_SYSTEM_SHAPES = {"large": (2, 8), "xlarge": (4, 16), "2xlarge": (8, 32)}
MAX_PODS = 110


def _system_shape(instance_type: str) -> GpuInstanceShape:
    vcpus, memory = _SYSTEM_SHAPES[instance_type.split(".", 1)[1]]
    return GpuInstanceShape(vcpus=vcpus, memory_gib=memory, gpus=0, accelerator="")


def node_manifests(node_pools: NodePoolsConfig, zones: list[str], per_zone: int = 1) -> list[dict[str, Any]]:
    """`per_zone` nodes of each pool in each zone, shaped like the pool's first instance type."""
    pools: list[tuple[str, NodePoolConfig, bool]] = [
        (SYSTEM_POOL, node_pools.system, False),
        (GPU_ON_DEMAND_POOL, node_pools.gpu_on_demand, False),
        (GPU_SPOT_POOL, node_pools.gpu_spot, True),
    ]
    nodes = []
    for pool, pool_config, spot in pools:
        gpu_pool = pool_config if isinstance(pool_config, GpuNodePoolConfig) else None
        instance_type = pool_config.instance_types[0]
        shape = GPU_INSTANCE_TYPES[instance_type] if gpu_pool else _system_shape(instance_type)
        for zone in zones:
            for index in range(per_zone):
                name = f"{pool}-{zone}-{index}"
                labels = {
                    **pool_labels(pool, spot=spot, accelerator=gpu_pool.accelerator if gpu_pool else None),
                    CAPACITY_TYPE_LABEL: capacity_type(spot),
                    ZONE_LABEL: zone,
                    HOSTNAME_LABEL: name,
                    "node.kubernetes.io/instance-type": instance_type,
                    "type": "kwok",
                }
                nodes.append(_node(name, labels, shape, gpu=gpu_pool is not None))
    return nodes


def _node(name: str, labels: dict[str, str], shape: GpuInstanceShape, *, gpu: bool) -> dict[str, Any]:
    cpu, memory = allocatable(shape)
    resources = {"cpu": f"{int(cpu * 1000)}m", "memory": str(int(memory)), "pods": str(MAX_PODS)}
    capacity = {"cpu": str(shape.vcpus), "memory": f"{shape.memory_gib}Gi", "pods": str(MAX_PODS)}
    if gpu:
        resources[GPU_RESOURCE] = capacity[GPU_RESOURCE] = str(shape.gpus)
    spec: dict[str, Any] = {}
    if gpu:
        spec["taints"] = [{"key": GPU_TAINT.key, "value": GPU_TAINT.value, "effect": GPU_TAINT.kubernetes_effect}]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": dict(KWOK_NODE_ANNOTATION)},
        "spec": spec,
        "status": {"allocatable": resources, "capacity": capacity},
    }
