"""The AWS half of the stack, wired from the validated config: network, cluster, node pools, add-ons, registry.

Plain composition (no component of its own): `infra/__main__.py` calls `deploy_aws_platform()` and hands the
cluster's kubeconfig and readiness to the Kubernetes layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from stack.aws.cluster import Cluster, ClusterArgs
from stack.aws.cluster_addons import ClusterAddons, ClusterAddonsArgs
from stack.aws.cluster_autoscaler import ClusterAutoscaler, ClusterAutoscalerArgs, default_priorities
from stack.aws.image_registry import ImageRegistry, ImageRegistryArgs
from stack.aws.network import Network, NetworkArgs, ZoneSubnets
from stack.aws.node_pool import (
    CAPACITY_LABEL,
    GPU_PRESENT_LABEL,
    GPU_TAINT_KEY,
    NODE_POOL_LABEL,
    NodePool,
    NodePoolArgs,
    Taint,
)
from stack.aws.node_role import NodeRole, NodeRoleArgs
from stack.config import StackConfig
from stack.config.aws import NodePoolConfig

SYSTEM_POOL = "system"
GPU_ON_DEMAND_POOL = "gpu-on-demand"
GPU_SPOT_POOL = "gpu-spot"
GPU_TAINT = Taint(key=GPU_TAINT_KEY, value="true", effect="NO_SCHEDULE")


@dataclass(frozen=True)
class AwsPlatform:
    network: Network
    cluster: Cluster
    node_pools: dict[str, NodePool]
    addons: ClusterAddons
    image_registry: ImageRegistry

    @property
    def ready(self) -> list[pulumi.Resource]:
        """What Kubernetes resources wait for: the control plane, every node pool and the node add-ons."""
        return [self.cluster, *self.node_pools.values(), self.addons]

    @property
    def node_group_names(self) -> pulumi.Output[list[str]]:
        return pulumi.Output.all(*[pool.node_group_name for pool in self.node_pools.values()])


def deploy_aws_platform(config: StackConfig) -> AwsPlatform:
    if config.cluster_source != "eks" or config.network is None or config.cluster is None or config.region is None:
        raise ValueError("deploy_aws_platform needs clusterSource 'eks' with network, cluster and aws:region")
    tags = config.tags
    cluster_name = config.cluster_name

    network = Network(
        "network",
        NetworkArgs(
            cidr_block=str(config.network.vpc_cidr),
            zones=[
                ZoneSubnets(zone.name, str(zone.public_subnet_cidr), str(zone.private_subnet_cidr))
                for zone in config.network.zones
            ],
            nat_gateway_per_zone=config.network.nat_gateways == "perZone",
            cluster_name=cluster_name,
            tags=tags,
        ),
    )
    cluster = Cluster(
        "eks",
        ClusterArgs(
            name=cluster_name,
            version=config.cluster.version,
            region=config.region,
            subnet_ids=network.private_subnet_ids,
            endpoint_private_access=config.cluster.endpoint_private_access,
            endpoint_public_access=config.cluster.endpoint_public_access,
            public_access_cidrs=[str(cidr) for cidr in config.cluster.public_access_cidrs],
            admin_principal_arns=config.cluster.admins,
            bootstrap_creator_admin=config.cluster.bootstrap_creator_admin,
            log_types=config.cluster.log_types,
            log_retention_days=config.cluster.log_retention_days,
            addon_versions=config.cluster.addon_versions,
            tags=tags,
        ),
    )
    node_role = NodeRole("eks-nodes", NodeRoleArgs(tags=tags))

    def pool(name: str, pool_config: NodePoolConfig, *, spot: bool, gpus: int) -> NodePool:
        labels = {NODE_POOL_LABEL: name}
        if gpus:
            labels |= {GPU_PRESENT_LABEL: "true", CAPACITY_LABEL: "spot" if spot else "on-demand"}
        return NodePool(
            name,
            NodePoolArgs(
                cluster_name=cluster.name,
                node_role_arn=node_role.arn,
                subnet_ids=network.private_subnet_ids,
                capacity_type="SPOT" if spot else "ON_DEMAND",
                ami_type="AL2023_x86_64_NVIDIA" if gpus else "AL2023_x86_64_STANDARD",
                instance_types=pool_config.instance_types,
                min_size=pool_config.min_size,
                max_size=pool_config.max_size,
                desired_size=pool_config.initial_size,
                disk_size_gib=pool_config.disk_size_gib,
                labels=labels,
                taints=[GPU_TAINT] if gpus else [],
                gpus_per_node=gpus,
                tags=tags,
            ),
            # Nodes join only once pod networking and Pod Identity are installed.
            opts=pulumi.ResourceOptions(depends_on=cluster.bootstrap_addons),
        )

    pools = config.node_pools
    node_pools = {
        SYSTEM_POOL: pool(SYSTEM_POOL, pools.system, spot=False, gpus=0),
        GPU_ON_DEMAND_POOL: pool(
            GPU_ON_DEMAND_POOL, pools.gpu_on_demand, spot=False, gpus=pools.gpu_on_demand.gpus_per_node
        ),
        GPU_SPOT_POOL: pool(GPU_SPOT_POOL, pools.gpu_spot, spot=True, gpus=pools.gpu_spot.gpus_per_node),
    }
    addons = ClusterAddons(
        "eks-addons",
        ClusterAddonsArgs(cluster_name=cluster.name, addon_versions=config.cluster.addon_versions, tags=tags),
        # coredns and the EBS CSI controller need nodes to run on (the untainted system pool).
        opts=pulumi.ResourceOptions(depends_on=[node_pools[SYSTEM_POOL]]),
    )
    registry = ImageRegistry(
        "images",
        ImageRegistryArgs(
            repository_name=config.image_registry.name,
            keep_images=config.image_registry.keep_images,
            encryption=config.image_registry.encryption,
            force_delete=config.image_registry.force_delete,
            tags=tags,
        ),
    )
    return AwsPlatform(network, cluster, node_pools, addons, registry)


def deploy_cluster_autoscaler(config: StackConfig, platform: AwsPlatform, provider: k8s.Provider) -> ClusterAutoscaler:
    if config.cluster is None or config.region is None:
        raise ValueError("deploy_cluster_autoscaler needs clusterSource 'eks'")
    settings = config.cluster_autoscaler
    return ClusterAutoscaler(
        "cluster-autoscaler",
        ClusterAutoscalerArgs(
            cluster_name=platform.cluster.name,
            region=config.region,
            kubernetes_version=config.cluster.version,
            provider=provider,
            priorities=default_priorities(GPU_SPOT_POOL, GPU_ON_DEMAND_POOL),
            scale_down_unneeded_time=settings.scale_down_unneeded_time,
            scale_down_delay_after_add=settings.scale_down_delay_after_add,
            scale_down_utilization_threshold=settings.scale_down_utilization_threshold,
            max_node_provision_time=settings.max_node_provision_time,
            node_selector={NODE_POOL_LABEL: SYSTEM_POOL},
            tags=config.tags,
        ),
        opts=pulumi.ResourceOptions(depends_on=platform.ready),
    )
