"""cluster-autoscaler for the EKS managed node groups: Helm chart (pinned), AWS permissions through Pod Identity,
Auto Scaling group auto-discovery, and the priority expander (spot GPUs first, on-demand GPUs as the fallback)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s
import yaml

from stack.aws.pod_identity_role import PodIdentityRole, PodIdentityRoleArgs
from stack.helm import pinned_release
from stack.versions import CLUSTER_AUTOSCALER_CHART, CLUSTER_AUTOSCALER_IMAGE_TAGS

NAMESPACE = "kube-system"
SERVICE_ACCOUNT = "cluster-autoscaler"
# The autoscaler reads its priorities from this ConfigMap, by this exact name, in its own namespace.
PRIORITY_CONFIGMAP = "cluster-autoscaler-priority-expander"


@dataclass(frozen=True)
class ExpanderPriority:
    priority: int
    # Regular expressions over Auto Scaling group names (managed node groups: "eks-<node group name>-<uuid>").
    patterns: Sequence[str]


@dataclass(frozen=True)
class ClusterAutoscalerArgs:
    cluster_name: pulumi.Input[str]
    region: str
    kubernetes_version: str
    provider: k8s.Provider
    priorities: Sequence[ExpanderPriority]
    scale_down_unneeded_time: str
    scale_down_delay_after_add: str
    scale_down_utilization_threshold: float
    max_node_provision_time: str
    tags: Mapping[str, str]
    # The autoscaler runs on these nodes (the untainted system pool).
    node_selector: Mapping[str, str] | None = None


def autoscaler_policy(cluster_name: str) -> str:
    """Read everything it needs to plan; change only the Auto Scaling groups this cluster owns."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "Describe",
                    "Effect": "Allow",
                    "Action": [
                        "autoscaling:DescribeAutoScalingGroups",
                        "autoscaling:DescribeAutoScalingInstances",
                        "autoscaling:DescribeLaunchConfigurations",
                        "autoscaling:DescribeScalingActivities",
                        "autoscaling:DescribeTags",
                        "ec2:DescribeImages",
                        "ec2:DescribeInstanceTypes",
                        "ec2:DescribeLaunchTemplateVersions",
                        "ec2:GetInstanceTypesFromInstanceRequirements",
                        # Labels and taints of managed node groups, for scale-from-zero.
                        "eks:DescribeNodegroup",
                    ],
                    "Resource": "*",
                },
                {
                    "Sid": "ScaleOwnGroups",
                    "Effect": "Allow",
                    "Action": ["autoscaling:SetDesiredCapacity", "autoscaling:TerminateInstanceInAutoScalingGroup"],
                    "Resource": "*",
                    "Condition": {
                        "StringEquals": {f"aws:ResourceTag/k8s.io/cluster-autoscaler/{cluster_name}": "owned"}
                    },
                },
            ],
        }
    )


def priorities_document(priorities: Sequence[ExpanderPriority]) -> str:
    """The priority expander's YAML: higher numbers win; a group matching no pattern is never preferred."""
    return yaml.safe_dump({item.priority: list(item.patterns) for item in priorities}, sort_keys=True)


class ClusterAutoscaler(pulumi.ComponentResource):
    role_arn: pulumi.Output[str]
    release_name: pulumi.Output[str | None]

    def __init__(self, name: str, args: ClusterAutoscalerArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("deepseek:aws:ClusterAutoscaler", name, None, opts)
        if args.kubernetes_version not in CLUSTER_AUTOSCALER_IMAGE_TAGS:
            raise ValueError(f"ClusterAutoscaler: no pinned image for Kubernetes {args.kubernetes_version}")
        if not args.priorities:
            raise ValueError("ClusterAutoscaler: the priority expander needs at least one priority")
        child = pulumi.ResourceOptions(parent=self)
        on_cluster = pulumi.ResourceOptions(parent=self, provider=args.provider)
        cluster_name = pulumi.Output.from_input(args.cluster_name)

        role = PodIdentityRole(
            f"{name}-role",
            PodIdentityRoleArgs(
                cluster_name=cluster_name,
                namespace=NAMESPACE,
                service_account=SERVICE_ACCOUNT,
                inline_policy=cluster_name.apply(autoscaler_policy),
                tags=args.tags,
                description="cluster-autoscaler: scale this cluster's node groups",
            ),
            opts=child,
        )
        priorities = k8s.core.v1.ConfigMap(
            f"{name}-priorities",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=PRIORITY_CONFIGMAP, namespace=NAMESPACE),
            data={"priorities": priorities_document(args.priorities)},
            opts=on_cluster,
        )
        values: dict[str, object] = {
            "cloudProvider": "aws",
            "awsRegion": args.region,
            "fullnameOverride": "cluster-autoscaler",
            "autoDiscovery": {
                "clusterName": cluster_name,
                # Managed node groups tag their Auto Scaling groups with both.
                "tags": [
                    "k8s.io/cluster-autoscaler/enabled",
                    cluster_name.apply(lambda n: f"k8s.io/cluster-autoscaler/{n}"),
                ],
            },
            "rbac": {"serviceAccount": {"create": True, "name": SERVICE_ACCOUNT}},
            "image": {"tag": CLUSTER_AUTOSCALER_IMAGE_TAGS[args.kubernetes_version]},
            "priorityClassName": "system-cluster-critical",
            "extraArgs": {
                # priority: spot GPU groups before on-demand; least-waste breaks ties inside one priority.
                "expander": "priority,least-waste",
                "balance-similar-node-groups": True,
                "skip-nodes-with-local-storage": False,
                "scale-down-unneeded-time": args.scale_down_unneeded_time,
                "scale-down-delay-after-add": args.scale_down_delay_after_add,
                "scale-down-utilization-threshold": args.scale_down_utilization_threshold,
                # A spot group that cannot deliver a node within this time is backed off: the next priority wins.
                "max-node-provision-time": args.max_node_provision_time,
            },
            "resources": {"requests": {"cpu": "100m", "memory": "300Mi"}, "limits": {"memory": "600Mi"}},
        }
        if args.node_selector:
            values["nodeSelector"] = dict(args.node_selector)
        release = pinned_release(
            name,
            CLUSTER_AUTOSCALER_CHART,
            namespace=NAMESPACE,
            values=values,
            opts=pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=[priorities, role]),
        )
        self.role_arn = role.arn
        self.release_name = release.name
        self.register_outputs({"roleArn": self.role_arn, "releaseName": self.release_name})


def default_priorities(spot_pool: str, on_demand_pool: str) -> list[ExpanderPriority]:
    """Spot GPUs first, on-demand GPUs next, anything else (the system pool) last."""
    return [
        ExpanderPriority(100, [f".*-{spot_pool}-.*"]),
        ExpanderPriority(50, [f".*-{on_demand_pool}-.*"]),
        ExpanderPriority(1, [".*"]),
    ]
