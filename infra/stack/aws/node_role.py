"""The IAM role every node assumes: only what the kubelet, the VPC CNI and image pulls need."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from stack.aws.iam import AWS_MANAGED, service_trust_policy

# Least privilege for EKS nodes: join the cluster, run the VPC CNI, pull images (read-only). No SSM, no S3:
# workloads get their own permissions through Pod Identity, and IMDS hop limit 1 keeps pods off the node role.
NODE_POLICIES: dict[str, str] = {
    "worker": f"{AWS_MANAGED}/AmazonEKSWorkerNodePolicy",
    "cni": f"{AWS_MANAGED}/AmazonEKS_CNI_Policy",
    "ecr-pull": f"{AWS_MANAGED}/AmazonEC2ContainerRegistryPullOnly",
}


@dataclass(frozen=True)
class NodeRoleArgs:
    tags: Mapping[str, str]


class NodeRole(pulumi.ComponentResource):
    arn: pulumi.Output[str]
    name: pulumi.Output[str]

    def __init__(self, name: str, args: NodeRoleArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("deepseek:aws:NodeRole", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        role = aws.iam.Role(
            name,
            assume_role_policy=service_trust_policy("ec2.amazonaws.com"),
            description="EKS managed node groups: kubelet, VPC CNI, image pulls",
            tags=dict(args.tags),
            opts=child,
        )
        attachments = [
            aws.iam.RolePolicyAttachment(f"{name}-{suffix}", role=role.name, policy_arn=arn, opts=child)
            for suffix, arn in NODE_POLICIES.items()
        ]
        # Node groups must not start before the role can do its job.
        self.arn = pulumi.Output.all(role.arn, *[a.id for a in attachments]).apply(lambda values: str(values[0]))
        self.name = role.name
        self.register_outputs({"arn": self.arn, "name": self.name})
