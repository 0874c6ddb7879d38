"""One EKS managed node group across all private subnets, with its launch template (IMDSv2, encrypted gp3 root
volume) and the cluster-autoscaler's scale-from-zero hints on its Auto Scaling group."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import pulumi
import pulumi_aws as aws

from stack.nodes import GPU_RESOURCE, Taint

_TEMPLATE_PREFIX = "k8s.io/cluster-autoscaler/node-template"


@dataclass(frozen=True)
class NodePoolArgs:
    cluster_name: pulumi.Input[str]
    node_role_arn: pulumi.Input[str]
    subnet_ids: pulumi.Input[Sequence[str]]
    capacity_type: Literal["ON_DEMAND", "SPOT"]
    # An EKS-optimized AMI type, e.g. AL2023_x86_64_STANDARD or AL2023_x86_64_NVIDIA (no SSM lookup needed).
    ami_type: str
    instance_types: Sequence[str]
    min_size: int
    max_size: int
    desired_size: int
    disk_size_gib: int
    tags: Mapping[str, str]
    # The control plane's Kubernetes version: the nodes follow it when the cluster is upgraded.
    kubernetes_version: pulumi.Input[str]
    # gp3 throughput (MiB/s) and IOPS of the root volume (validated by the config model).
    disk_throughput_mibps: int = 125
    disk_iops: int = 3000
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: Sequence[Taint] = ()
    # GPUs per node: advertised to the autoscaler so it can scale this pool up from zero nodes.
    gpus_per_node: int = 0


class NodePool(pulumi.ComponentResource):
    node_group_name: pulumi.Output[str]
    auto_scaling_group_name: pulumi.Output[str]
    launch_template_id: pulumi.Output[str]

    def __init__(self, name: str, args: NodePoolArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("deepseek:aws:NodePool", name, None, opts)
        if not args.min_size <= args.desired_size <= args.max_size:
            raise ValueError(f"NodePool {name}: need min <= desired <= max")
        if args.capacity_type == "SPOT" and len(args.instance_types) < 2:
            raise ValueError(f"NodePool {name}: spot needs at least two instance types")
        child = pulumi.ResourceOptions(parent=self)
        tags = {**args.tags, "Name": name}

        launch_template = aws.ec2.LaunchTemplate(
            name,
            description=f"EKS node pool {name}: IMDSv2 only, encrypted gp3 root volume",
            update_default_version=True,
            metadata_options=aws.ec2.LaunchTemplateMetadataOptionsArgs(
                http_endpoint="enabled",
                http_tokens="required",
                # 1: containers cannot reach IMDS (and the node role); they use Pod Identity instead.
                http_put_response_hop_limit=1,
            ),
            block_device_mappings=[
                aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
                    # Root device of the AL2023 EKS AMIs.
                    device_name="/dev/xvda",
                    ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(
                        volume_size=args.disk_size_gib,
                        volume_type="gp3",
                        throughput=args.disk_throughput_mibps,
                        iops=args.disk_iops,
                        encrypted="true",
                        delete_on_termination="true",
                    ),
                )
            ],
            tag_specifications=[
                aws.ec2.LaunchTemplateTagSpecificationArgs(resource_type=kind, tags=tags)
                for kind in ("instance", "volume")
            ],
            tags=tags,
            opts=child,
        )

        node_group = aws.eks.NodeGroup(
            name,
            cluster_name=args.cluster_name,
            node_role_arn=args.node_role_arn,
            subnet_ids=args.subnet_ids,
            # The AMI type picks the image; the version follows the control plane's (one minor upgrade at a time).
            version=args.kubernetes_version,
            capacity_type=args.capacity_type,
            ami_type=args.ami_type,
            instance_types=list(args.instance_types),
            scaling_config=aws.eks.NodeGroupScalingConfigArgs(
                min_size=args.min_size, max_size=args.max_size, desired_size=args.desired_size
            ),
            update_config=aws.eks.NodeGroupUpdateConfigArgs(max_unavailable=1),
            launch_template=aws.eks.NodeGroupLaunchTemplateArgs(
                id=launch_template.id, version=launch_template.latest_version.apply(str)
            ),
            labels=dict(args.labels),
            taints=[aws.eks.NodeGroupTaintArgs(key=t.key, value=t.value, effect=t.effect) for t in args.taints],
            tags=tags,
            opts=pulumi.ResourceOptions(
                parent=self,
                # The cluster-autoscaler owns the desired size once the pool exists.
                ignore_changes=["scalingConfig.desiredSize"],
            ),
        )

        asg_name = node_group.resources.apply(lambda resources: str(resources[0].autoscaling_groups[0].name))  # type: ignore[index]
        for key, value in self.node_template_tags(args).items():
            aws.autoscaling.Tag(
                f"{name}-{key.removeprefix(_TEMPLATE_PREFIX + '/').replace('/', '-')}",
                autoscaling_group_name=asg_name,
                tag=aws.autoscaling.TagTagArgs(key=key, value=value, propagate_at_launch=False),
                opts=child,
            )

        self.node_group_name = node_group.node_group_name
        self.auto_scaling_group_name = asg_name
        self.launch_template_id = launch_template.id
        self.register_outputs(
            {
                "nodeGroupName": self.node_group_name,
                "autoScalingGroupName": self.auto_scaling_group_name,
                "launchTemplateId": self.launch_template_id,
            }
        )

    @staticmethod
    def node_template_tags(args: NodePoolArgs) -> dict[str, str]:
        """What a node of this pool will look like, for a pool with no node to look at (scale from zero).

        Managed node groups do not copy their tags to the Auto Scaling group, so these go on the group itself.
        """
        tags = {f"{_TEMPLATE_PREFIX}/label/{key}": value for key, value in args.labels.items()}
        for taint in args.taints:
            tags[f"{_TEMPLATE_PREFIX}/taint/{taint.key}"] = f"{taint.value}:{taint.kubernetes_effect}"
        if args.gpus_per_node:
            tags[f"{_TEMPLATE_PREFIX}/resources/{GPU_RESOURCE}"] = str(args.gpus_per_node)
        return tags
