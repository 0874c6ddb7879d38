"""An IAM role for one Kubernetes service account through EKS Pod Identity (no OIDC provider, no IMDS)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from stack.aws.iam import service_trust_policy


@dataclass(frozen=True)
class PodIdentityRoleArgs:
    cluster_name: pulumi.Input[str]
    namespace: str
    service_account: str
    tags: Mapping[str, str]
    managed_policy_arns: Sequence[str] = ()
    # An inline policy document (JSON), for permissions no managed policy scopes tightly enough.
    inline_policy: pulumi.Input[str] | None = None
    # False when the association is made elsewhere (an EKS add-on's `podIdentityAssociations`).
    associate: bool = True
    description: str = field(default="")


class PodIdentityRole(pulumi.ComponentResource):
    arn: pulumi.Output[str]

    def __init__(self, name: str, args: PodIdentityRoleArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("deepseek:aws:PodIdentityRole", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        role = aws.iam.Role(
            name,
            assume_role_policy=service_trust_policy("pods.eks.amazonaws.com", tag_session=True),
            description=args.description or f"Pod Identity: {args.namespace}/{args.service_account}",
            tags=dict(args.tags),
            opts=child,
        )
        dependencies: list[pulumi.Output[str]] = []
        for index, policy_arn in enumerate(args.managed_policy_arns):
            attachment = aws.iam.RolePolicyAttachment(
                f"{name}-{index}", role=role.name, policy_arn=policy_arn, opts=child
            )
            dependencies.append(attachment.id)
        if args.inline_policy is not None:
            inline = aws.iam.RolePolicy(f"{name}-inline", role=role.id, policy=args.inline_policy, opts=child)
            dependencies.append(inline.id)
        if args.associate:
            association = aws.eks.PodIdentityAssociation(
                name,
                cluster_name=args.cluster_name,
                namespace=args.namespace,
                service_account=args.service_account,
                role_arn=role.arn,
                tags=dict(args.tags),
                opts=child,
            )
            dependencies.append(association.id)
        # Consumers of `arn` wait until the role's permissions and association exist.
        self.arn = pulumi.Output.all(role.arn, *dependencies).apply(lambda values: str(values[0]))
        self.register_outputs({"arn": self.arn})
