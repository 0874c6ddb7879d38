"""The AWS half of the stack, wired from the validated config: network, cluster, node pools, add-ons, registry.

Plain composition (no component of its own): `infra/__main__.py` calls `deploy_aws_platform()` and hands the
cluster's kubeconfig and readiness to the Kubernetes layer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from stack.aws.cluster import Cluster, ClusterArgs
from stack.aws.cluster_addons import ClusterAddons, ClusterAddonsArgs
from stack.aws.cluster_autoscaler import ClusterAutoscaler, ClusterAutoscalerArgs, default_priorities
from stack.aws.image_registry import ImageRegistry, ImageRegistryArgs
from stack.aws.network import Network, NetworkArgs, ZoneSubnets
from stack.aws.node_pool import NodePool, NodePoolArgs
from stack.aws.node_role import NodeRole, NodeRoleArgs
from stack.aws.pod_identity_role import PodIdentityRole, PodIdentityRoleArgs
from stack.aws.server_image import ServerImage, ServerImageArgs
from stack.config import StackConfig
from stack.config.aws import GpuNodePoolConfig, NodePoolConfig
from stack.config.kubernetes import ModelConfig
from stack.image import context as image_context
from stack.nodes import (
    GPU_ON_DEMAND_POOL,
    GPU_SPOT_POOL,
    GPU_TAINT,
    NODE_POOL_LABEL,
    SYSTEM_POOL,
    capacity_type,
    pool_labels,
)


@dataclass(frozen=True)
class AwsPlatform:
    network: Network
    cluster: Cluster
    node_pools: dict[str, NodePool]
    addons: ClusterAddons
    image_registry: ImageRegistry
    # Built from docker/Dockerfile.cuda in this run unless the stack names a prebuilt `inference.image`.
    server_image: ServerImage | None
    # S3 read access for the inference pods (model.source s3), through EKS Pod Identity.
    model_reader: PodIdentityRole | None
    prebuilt_image: str | None

    @property
    def ready(self) -> list[pulumi.Resource]:
        """What Kubernetes resources wait for: the control plane, every node pool, the node add-ons and the pods' AWS
        role (Pod Identity injects credentials only into pods created after the association exists)."""
        return [
            self.cluster,
            *self.node_pools.values(),
            self.addons,
            *([self.model_reader] if self.model_reader is not None else []),
        ]

    @property
    def image(self) -> pulumi.Input[str]:
        """The image the inference pods run: the one built in this run (by digest), or the stack's prebuilt one."""
        if self.server_image is not None:
            return self.server_image.ref
        assert self.prebuilt_image is not None  # no build exactly when inference.image is set
        return self.prebuilt_image

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
            viewer_principal_arns=config.cluster.viewers,
            bootstrap_creator_admin=config.cluster.bootstrap_creator_admin,
            log_types=config.cluster.log_types,
            log_retention_days=config.cluster.log_retention_days,
            addon_versions=config.cluster.addon_versions,
            tags=tags,
        ),
    )
    node_role = NodeRole("eks-nodes", NodeRoleArgs(tags=tags))

    def pool(name: str, pool_config: NodePoolConfig, *, spot: bool) -> NodePool:
        gpu_pool = pool_config if isinstance(pool_config, GpuNodePoolConfig) else None
        return NodePool(
            name,
            NodePoolArgs(
                cluster_name=cluster.name,
                node_role_arn=node_role.arn,
                subnet_ids=network.private_subnet_ids,
                capacity_type=capacity_type(spot),
                ami_type="AL2023_x86_64_NVIDIA" if gpu_pool else "AL2023_x86_64_STANDARD",
                instance_types=pool_config.instance_types,
                min_size=pool_config.min_size,
                max_size=pool_config.max_size,
                desired_size=pool_config.initial_size,
                disk_size_gib=pool_config.disk_size_gib,
                disk_throughput_mibps=pool_config.disk_throughput_mibps,
                disk_iops=pool_config.disk_iops,
                kubernetes_version=cluster.version,
                labels=pool_labels(name, spot=spot, accelerator=gpu_pool.accelerator if gpu_pool else None),
                taints=[GPU_TAINT] if gpu_pool else [],
                gpus_per_node=gpu_pool.gpus_per_node if gpu_pool else 0,
                tags=tags,
            ),
            # Nodes join only once pod networking and Pod Identity are installed.
            opts=pulumi.ResourceOptions(depends_on=cluster.bootstrap_addons),
        )

    pools = config.node_pools
    node_pools = {
        SYSTEM_POOL: pool(SYSTEM_POOL, pools.system, spot=False),
        GPU_ON_DEMAND_POOL: pool(GPU_ON_DEMAND_POOL, pools.gpu_on_demand, spot=False),
        GPU_SPOT_POOL: pool(GPU_SPOT_POOL, pools.gpu_spot, spot=True),
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
    server_image = None
    if config.inference.image is None:
        server_image = ServerImage(
            "server-image",
            ServerImageArgs(
                repository_url=registry.repository_url,
                registry_id=registry.registry_id,
                context_dir=image_context.REPO_ROOT,
                dockerfile=image_context.DOCKERFILE,
                target=image_context.BUILD_TARGET,
                platform=image_context.PLATFORM,
                tag=image_context.context_tag(),
            ),
        )
    model_reader = None
    model = config.inference.model
    if model.source == "s3":
        model_reader = PodIdentityRole(
            "model-reader",
            PodIdentityRoleArgs(
                cluster_name=cluster.name,
                namespace=config.inference.namespace,
                # The inference ServiceAccount is named after the deployment (stack.kubernetes.inference_service).
                service_account=config.inference.name,
                inline_policy=s3_read_policy(model),
                description=f"Reads the model weights under {model.s3_uri}",
                tags=tags,
            ),
        )
    return AwsPlatform(
        network, cluster, node_pools, addons, registry, server_image, model_reader, config.inference.image
    )


def s3_read_policy(model: ModelConfig) -> str:
    """Read-only access to the model's S3 prefix: list it, get its objects (what `aws s3 sync` needs)."""
    bucket, _, prefix = (model.s3_uri or "").removeprefix("s3://").partition("/")
    prefix = prefix.rstrip("/")
    objects = f"arn:aws:s3:::{bucket}/{prefix}/*" if prefix else f"arn:aws:s3:::{bucket}/*"
    listing: dict[str, object] = {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": f"arn:aws:s3:::{bucket}"}
    if prefix:
        listing["Condition"] = {"StringLike": {"s3:prefix": [prefix, f"{prefix}/*"]}}
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [listing, {"Effect": "Allow", "Action": "s3:GetObject", "Resource": objects}],
        }
    )


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
