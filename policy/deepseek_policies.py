"""The stack's guardrails as pulumi-policy resource rules (importable without starting the policy server).

Each rule reads the engine's camelCase inputs (`args.props`) of one resource type and reports what is wrong and
how to fix it. The tests in tests/policy run every rule over a passing and a failing fixture and over the mocked
resources of the dev and prod stacks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pulumi_policy import EnforcementLevel, ReportViolation, ResourceValidationArgs, ResourceValidationPolicy

EKS_CLUSTER = "aws:eks/cluster:Cluster"
NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
INSTANCE = "aws:ec2/instance:Instance"
SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
SECURITY_GROUP_RULE = "aws:ec2/securityGroupRule:SecurityGroupRule"
INGRESS_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
SERVICE = "kubernetes:core/v1:Service"
WORLD = ("0.0.0.0/0", "::/0")
GPU_TAINT_KEY = "nvidia.com/gpu"


def _is_true(value: Any) -> bool:
    """Booleans arrive as bools, except where the provider types them as strings ("true")."""
    return value is True or (isinstance(value, str) and value.lower() == "true")


def _stack_of(urn: str) -> str:
    """`urn:pulumi:<stack>::<project>::<type>::<name>` -> stack."""
    parts = urn.split(":")
    return parts[2] if len(parts) > 2 and parts[0] == "urn" else ""


def _open_to_world(cidrs: Iterable[str] | None) -> bool:
    """An allow-list that is empty (AWS then admits everyone) or names the whole internet."""
    listed = list(cidrs or [])
    return not listed or any(cidr in WORLD for cidr in listed)


def is_production(args: ResourceValidationArgs) -> bool:
    tags: Mapping[str, Any] = args.props.get("tags") or {}
    environment = tags.get("environment") or _stack_of(args.urn or "")
    return str(environment).lower() in ("prod", "production")


# ------------------------------------------------------------------------------------------------------- EKS


def _secrets_encryption(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != EKS_CLUSTER:
        return
    encryption = args.props.get("encryptionConfig") or {}
    key_arn = (encryption.get("provider") or {}).get("keyArn")
    if "secrets" not in (encryption.get("resources") or []) or not key_arn:
        report(
            "EKS secrets are not envelope-encrypted: set encryptionConfig {resources: [secrets], provider.keyArn}.",
            None,
        )


def _audit_logs(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != EKS_CLUSTER:
        return
    if "audit" not in (args.props.get("enabledClusterLogTypes") or []):
        report("EKS audit logs are off: add 'audit' to enabledClusterLogTypes.", None)


def _prod_endpoint_not_public(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != EKS_CLUSTER or not is_production(args):
        return
    vpc = args.props.get("vpcConfig") or {}
    if vpc.get("endpointPublicAccess") is False:
        return
    # No CIDRs with a public endpoint means EKS opens it to 0.0.0.0/0.
    if _open_to_world(vpc.get("publicAccessCidrs")):
        report(
            "The production EKS API endpoint is open to 0.0.0.0/0: list restricted publicAccessCidrs "
            "or set endpointPublicAccess false.",
            None,
        )


def _gpu_node_groups_tainted(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != NODE_GROUP:
        return
    labels: Mapping[str, Any] = args.props.get("labels") or {}
    is_gpu = "NVIDIA" in str(args.props.get("amiType") or "") or labels.get("nvidia.com/gpu.present") == "true"
    if not is_gpu:
        return
    taints: Iterable[Mapping[str, Any]] = args.props.get("taints") or []
    if not any(t.get("key") == GPU_TAINT_KEY and t.get("effect") == "NO_SCHEDULE" for t in taints):
        report(
            f"GPU node group without the {GPU_TAINT_KEY}=true:NoSchedule taint: non-GPU pods would take GPU nodes; "
            "add the taint.",
            None,
        )


# ------------------------------------------------------------------------------------------------------- EC2


def _imdsv2_required(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type not in (LAUNCH_TEMPLATE, INSTANCE):
        return
    metadata = args.props.get("metadataOptions") or {}
    if metadata.get("httpTokens") != "required":
        report("IMDSv1 is allowed: set metadataOptions.httpTokens to 'required' (IMDSv2 only).", None)


def _root_volumes_encrypted(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type == LAUNCH_TEMPLATE:
        mappings = args.props.get("blockDeviceMappings") or []
        if not mappings:
            report(
                "Launch template leaves the root volume to the AMI default: add an encrypted blockDeviceMapping.", None
            )
        for mapping in mappings:
            if not _is_true((mapping.get("ebs") or {}).get("encrypted")):
                report(f"EBS volume {mapping.get('deviceName')} is not encrypted: set ebs.encrypted 'true'.", None)
    elif args.resource_type == INSTANCE:
        if not _is_true((args.props.get("rootBlockDevice") or {}).get("encrypted")):
            report("EC2 instance root volume is not encrypted: set rootBlockDevice.encrypted true.", None)
    elif args.resource_type == NODE_GROUP and not args.props.get("launchTemplate"):
        report("Node group without a launch template: its root volumes follow the account default; use one.", None)


def _opens_ssh(from_port: Any, to_port: Any, protocol: Any) -> bool:
    if str(protocol) in ("-1", "all"):
        return True
    if str(protocol) not in ("tcp", "6"):
        return False
    try:
        return int(from_port) <= 22 <= int(to_port)
    except (TypeError, ValueError):
        return False


def _no_ssh_from_anywhere(args: ResourceValidationArgs, report: ReportViolation) -> None:
    message = "SSH (port 22) is open to the internet: remove the rule or restrict its source."
    props = args.props
    if args.resource_type == SECURITY_GROUP:
        for rule in props.get("ingress") or []:
            world = any(c in WORLD for c in [*(rule.get("cidrBlocks") or []), *(rule.get("ipv6CidrBlocks") or [])])
            if world and _opens_ssh(rule.get("fromPort"), rule.get("toPort"), rule.get("protocol")):
                report(message, None)
    elif args.resource_type == SECURITY_GROUP_RULE and props.get("type") == "ingress":
        world = any(c in WORLD for c in [*(props.get("cidrBlocks") or []), *(props.get("ipv6CidrBlocks") or [])])
        if world and _opens_ssh(props.get("fromPort"), props.get("toPort"), props.get("protocol")):
            report(message, None)
    elif args.resource_type == INGRESS_RULE:
        world = props.get("cidrIpv4") in WORLD or props.get("cidrIpv6") in WORLD
        if world and _opens_ssh(props.get("fromPort"), props.get("toPort"), props.get("ipProtocol")):
            report(message, None)
    elif args.resource_type == NODE_GROUP:
        remote = props.get("remoteAccess")
        # remoteAccess with a key and no source security groups opens port 22 to 0.0.0.0/0.
        if remote and remote.get("ec2SshKey") and not remote.get("sourceSecurityGroupIds"):
            report(message, None)


# ------------------------------------------------------------------------------------------------ Kubernetes


def _prod_load_balancer_restricted(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != SERVICE or not is_production(args):
        return
    spec = args.props.get("spec") or {}
    if spec.get("type") != "LoadBalancer":
        return
    # No source ranges: the load balancer admits everyone.
    if _open_to_world(spec.get("loadBalancerSourceRanges")):
        report(
            "A production LoadBalancer Service is open to the whole internet: list the clients' CIDRs in "
            "inference.service.loadBalancerSourceRanges (or set service.internal: true).",
            None,
        )


def _policy(name: str, description: str, validate: Any) -> ResourceValidationPolicy:
    return ResourceValidationPolicy(
        name=name, description=description, validate=validate, enforcement_level=EnforcementLevel.MANDATORY
    )


POLICIES: list[ResourceValidationPolicy] = [
    _policy("eks-secrets-encryption", "EKS secrets are envelope-encrypted with a KMS key.", _secrets_encryption),
    _policy("eks-audit-logs", "EKS control-plane audit logs are enabled.", _audit_logs),
    _policy(
        "eks-prod-endpoint-restricted",
        "The production EKS API endpoint is not open to 0.0.0.0/0.",
        _prod_endpoint_not_public,
    ),
    _policy("imdsv2-required", "Launch templates and instances require IMDSv2.", _imdsv2_required),
    _policy(
        "gpu-node-groups-tainted",
        "GPU node groups carry the nvidia.com/gpu NoSchedule taint.",
        _gpu_node_groups_tainted,
    ),
    _policy("root-volumes-encrypted", "Node root volumes are encrypted.", _root_volumes_encrypted),
    _policy(
        "no-ssh-from-anywhere", "No security group or node group opens SSH to the internet.", _no_ssh_from_anywhere
    ),
    _policy(
        "prod-load-balancer-restricted",
        "A production LoadBalancer Service admits only listed client CIDRs, never 0.0.0.0/0.",
        _prod_load_balancer_restricted,
    ),
]
