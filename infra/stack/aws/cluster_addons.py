"""EKS managed add-ons that need running nodes: coredns and the EBS CSI driver (its AWS role via Pod Identity)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws

from stack.aws.iam import AWS_MANAGED
from stack.aws.pod_identity_role import PodIdentityRole, PodIdentityRoleArgs

EBS_CSI_SERVICE_ACCOUNT = "ebs-csi-controller-sa"


@dataclass(frozen=True)
class ClusterAddonsArgs:
    cluster_name: pulumi.Input[str]
    tags: Mapping[str, str]
    addon_versions: Mapping[str, str] = field(default_factory=dict)


class ClusterAddons(pulumi.ComponentResource):
    ebs_csi_role_arn: pulumi.Output[str]

    def __init__(self, name: str, args: ClusterAddonsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("deepseek:aws:ClusterAddons", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = dict(args.tags)

        def addon(addon_name: str, **extra: Any) -> aws.eks.Addon:
            # OVERWRITE: the stack's settings win over any edits made to the add-on's objects by hand.
            return aws.eks.Addon(
                f"{name}-{addon_name}",
                cluster_name=args.cluster_name,
                addon_name=addon_name,
                addon_version=args.addon_versions.get(addon_name),
                resolve_conflicts_on_create="OVERWRITE",
                resolve_conflicts_on_update="OVERWRITE",
                tags=tags,
                opts=child,
                **extra,
            )

        addon("coredns")
        ebs_role = PodIdentityRole(
            f"{name}-ebs-csi",
            PodIdentityRoleArgs(
                cluster_name=args.cluster_name,
                namespace="kube-system",
                service_account=EBS_CSI_SERVICE_ACCOUNT,
                managed_policy_arns=[f"{AWS_MANAGED}/service-role/AmazonEBSCSIDriverPolicy"],
                # The add-on makes the association itself (podIdentityAssociations below).
                associate=False,
                tags=tags,
            ),
            opts=child,
        )
        addon(
            "aws-ebs-csi-driver",
            pod_identity_associations=[
                aws.eks.AddonPodIdentityAssociationArgs(role_arn=ebs_role.arn, service_account=EBS_CSI_SERVICE_ACCOUNT)
            ],
        )
        self.ebs_csi_role_arn = ebs_role.arn
        self.register_outputs({"ebsCsiRoleArn": self.ebs_csi_role_arn})
