"""The EKS control plane: KMS envelope encryption, control-plane logs, endpoint access, access entries and the
add-ons that must run before any node joins (vpc-cni, kube-proxy, eks-pod-identity-agent)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from stack.aws.iam import AWS_MANAGED, service_trust_policy
from stack.aws.kubeconfig import render_kubeconfig

CLUSTER_ADMIN_POLICY = "arn:aws:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy"
CLUSTER_VIEW_POLICY = "arn:aws:eks::aws:cluster-access-policy/AmazonEKSViewPolicy"
# Networking and credentials for pods: needed before nodes can become Ready.
BOOTSTRAP_ADDONS = ("vpc-cni", "kube-proxy", "eks-pod-identity-agent")
# Add-on settings (the add-on's configuration schema: `aws eks describe-addon-configuration`). vpc-cni enforces
# NetworkPolicy only with its network policy agent on; without it every NetworkPolicy is decoration.
ADDON_CONFIGURATION: dict[str, dict[str, str]] = {"vpc-cni": {"enableNetworkPolicy": "true"}}


@dataclass(frozen=True)
class ClusterArgs:
    name: str
    version: str
    region: str
    subnet_ids: pulumi.Input[Sequence[str]]
    endpoint_private_access: bool
    endpoint_public_access: bool
    public_access_cidrs: Sequence[str]
    admin_principal_arns: Sequence[str]
    # Read-only principals (AmazonEKSViewPolicy on the whole cluster), e.g. the pull-request preview role.
    viewer_principal_arns: Sequence[str]
    bootstrap_creator_admin: bool
    log_types: Sequence[str]
    log_retention_days: int
    tags: Mapping[str, str]
    addon_versions: Mapping[str, str] = field(default_factory=dict)


class Cluster(pulumi.ComponentResource):
    name: pulumi.Output[str]
    version: pulumi.Output[str]
    arn: pulumi.Output[str]
    endpoint: pulumi.Output[str]
    certificate_authority_data: pulumi.Output[str]
    kubeconfig: pulumi.Output[str]
    oidc_issuer: pulumi.Output[str]
    # The cluster security group EKS attaches to managed nodes.
    node_security_group_id: pulumi.Output[str]
    # Resources the first node group must wait for (networking and Pod Identity add-ons).
    bootstrap_addons: list[aws.eks.Addon]

    def __init__(self, name: str, args: ClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("deepseek:aws:Cluster", name, None, opts)
        if "audit" not in args.log_types:
            raise ValueError("Cluster: the audit log must be enabled")
        if args.endpoint_public_access and not args.public_access_cidrs:
            raise ValueError("Cluster: a public endpoint needs publicAccessCidrs")
        child = pulumi.ResourceOptions(parent=self)
        tags = dict(args.tags)

        role = aws.iam.Role(
            f"{name}-control-plane",
            assume_role_policy=service_trust_policy("eks.amazonaws.com", tag_session=True),
            tags=tags,
            opts=child,
        )
        policy = aws.iam.RolePolicyAttachment(
            f"{name}-control-plane", role=role.name, policy_arn=f"{AWS_MANAGED}/AmazonEKSClusterPolicy", opts=child
        )
        key = aws.kms.Key(
            f"{name}-secrets",
            description=f"EKS {args.name}: envelope encryption of Kubernetes secrets",
            enable_key_rotation=True,
            deletion_window_in_days=30,
            tags=tags,
            opts=child,
        )
        aws.kms.Alias(f"{name}-secrets", name=f"alias/eks/{args.name}-secrets", target_key_id=key.key_id, opts=child)
        # EKS writes to this group; creating it first sets a retention (EKS's own group never expires).
        log_group = aws.cloudwatch.LogGroup(
            f"{name}-control-plane-logs",
            name=f"/aws/eks/{args.name}/cluster",
            retention_in_days=args.log_retention_days,
            tags=tags,
            opts=child,
        )

        cluster = aws.eks.Cluster(
            name,
            name=args.name,
            version=args.version,
            role_arn=role.arn,
            vpc_config=aws.eks.ClusterVpcConfigArgs(
                subnet_ids=args.subnet_ids,
                endpoint_private_access=args.endpoint_private_access,
                endpoint_public_access=args.endpoint_public_access,
                public_access_cidrs=list(args.public_access_cidrs) if args.endpoint_public_access else None,
            ),
            encryption_config=aws.eks.ClusterEncryptionConfigArgs(
                provider=aws.eks.ClusterEncryptionConfigProviderArgs(key_arn=key.arn), resources=["secrets"]
            ),
            enabled_cluster_log_types=list(args.log_types),
            access_config=aws.eks.ClusterAccessConfigArgs(
                authentication_mode="API",
                bootstrap_cluster_creator_admin_permissions=args.bootstrap_creator_admin,
            ),
            # Managed add-ons below replace the self-managed defaults; EKS installs them only when asked.
            bootstrap_self_managed_addons=False,
            tags=tags,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[policy, log_group]),
        )

        for index, principal in enumerate(args.admin_principal_arns):
            self._access_entry(f"{name}-admin-{index}", cluster.name, principal, CLUSTER_ADMIN_POLICY, tags)
        for index, principal in enumerate(args.viewer_principal_arns):
            self._access_entry(f"{name}-viewer-{index}", cluster.name, principal, CLUSTER_VIEW_POLICY, tags)

        self.bootstrap_addons = [
            aws.eks.Addon(
                f"{name}-{addon}",
                cluster_name=cluster.name,
                addon_name=addon,
                addon_version=args.addon_versions.get(addon),
                configuration_values=json.dumps(ADDON_CONFIGURATION[addon]) if addon in ADDON_CONFIGURATION else None,
                resolve_conflicts_on_create="OVERWRITE",
                resolve_conflicts_on_update="OVERWRITE",
                tags=tags,
                opts=child,
            )
            for addon in BOOTSTRAP_ADDONS
        ]

        self.name = cluster.name
        self.version = cluster.version
        self.arn = cluster.arn
        self.endpoint = cluster.endpoint
        self.certificate_authority_data = cluster.certificate_authority.apply(lambda ca: str(ca.data))
        self.oidc_issuer = cluster.identities.apply(lambda ids: str(ids[0].oidcs[0].issuer))  # type: ignore[index]
        self.node_security_group_id = cluster.vpc_config.apply(lambda vpc: str(vpc.cluster_security_group_id))
        region = args.region
        self.kubeconfig = pulumi.Output.secret(
            pulumi.Output.all(cluster.name, cluster.endpoint, self.certificate_authority_data).apply(
                lambda values: render_kubeconfig(values[0], values[1], values[2], region)
            )
        )
        self.register_outputs(
            {
                "name": self.name,
                "version": self.version,
                "arn": self.arn,
                "endpoint": self.endpoint,
                "certificateAuthorityData": self.certificate_authority_data,
                "kubeconfig": self.kubeconfig,
                "oidcIssuer": self.oidc_issuer,
                "nodeSecurityGroupId": self.node_security_group_id,
            }
        )

    def _access_entry(
        self, name: str, cluster_name: pulumi.Output[str], principal: str, access_policy: str, tags: dict[str, str]
    ) -> None:
        """An access entry for `principal` with one cluster-wide access policy (admin or view)."""
        child = pulumi.ResourceOptions(parent=self)
        entry = aws.eks.AccessEntry(
            name, cluster_name=cluster_name, principal_arn=principal, type="STANDARD", tags=tags, opts=child
        )
        aws.eks.AccessPolicyAssociation(
            name,
            cluster_name=cluster_name,
            principal_arn=entry.principal_arn,
            policy_arn=access_policy,
            access_scope=aws.eks.AccessPolicyAssociationAccessScopeArgs(type="cluster"),
            opts=child,
        )
