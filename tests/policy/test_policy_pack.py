"""Every rule of the policy pack: a passing and a failing fixture, and no violation over the dev and prod stacks."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import deepseek_policies as rules
import pytest
from pulumi_policy import ResourceValidationArgs, ResourceValidationPolicy

POLICIES = {policy.name: policy for policy in rules.POLICIES}


def violations(policy: str, resource_type: str, props: dict[str, Any], stack: str = "dev") -> list[str]:
    found: list[str] = []
    name = "fixture"
    args = ResourceValidationArgs(
        resource_type, props, f"urn:pulumi:{stack}::deepseek-inference::{resource_type}::{name}", name, None, None
    )
    POLICIES[policy].validate(args, lambda message, urn=None: found.append(message))
    return found


CLUSTER = {
    "encryptionConfig": {"resources": ["secrets"], "provider": {"keyArn": "arn:aws:kms:us-east-1:1:key/k"}},
    "enabledClusterLogTypes": ["api", "audit", "authenticator"],
    "vpcConfig": {"endpointPublicAccess": True, "publicAccessCidrs": ["203.0.113.0/24"]},
    "tags": {"environment": "prod"},
}
TEMPLATE = {
    "metadataOptions": {"httpTokens": "required", "httpPutResponseHopLimit": 1},
    "blockDeviceMappings": [{"deviceName": "/dev/xvda", "ebs": {"encrypted": "true", "volumeType": "gp3"}}],
}
GPU_GROUP = {
    "amiType": "AL2023_x86_64_NVIDIA",
    "labels": {"nvidia.com/gpu.present": "true"},
    "taints": [{"key": "nvidia.com/gpu", "value": "true", "effect": "NO_SCHEDULE"}],
    "launchTemplate": {"id": "lt-1", "version": "1"},
}


def test_every_rule_is_registered_and_mandatory() -> None:
    assert set(POLICIES) == {
        "eks-secrets-encryption",
        "eks-audit-logs",
        "eks-prod-endpoint-restricted",
        "imdsv2-required",
        "gpu-node-groups-tainted",
        "root-volumes-encrypted",
        "no-ssh-from-anywhere",
        "prod-load-balancer-restricted",
    }
    assert all(isinstance(policy, ResourceValidationPolicy) for policy in rules.POLICIES)
    assert all(str(policy.enforcement_level.value) == "mandatory" for policy in rules.POLICIES)


def test_secrets_encryption() -> None:
    assert violations("eks-secrets-encryption", rules.EKS_CLUSTER, CLUSTER) == []
    assert violations("eks-secrets-encryption", rules.EKS_CLUSTER, {**CLUSTER, "encryptionConfig": None})
    assert violations(
        "eks-secrets-encryption", rules.EKS_CLUSTER, {**CLUSTER, "encryptionConfig": {"resources": ["secrets"]}}
    )


def test_audit_logs() -> None:
    assert violations("eks-audit-logs", rules.EKS_CLUSTER, CLUSTER) == []
    (message,) = violations("eks-audit-logs", rules.EKS_CLUSTER, {**CLUSTER, "enabledClusterLogTypes": ["api"]})
    assert "add 'audit'" in message


@pytest.mark.parametrize("cidrs", [["0.0.0.0/0"], [], ["203.0.113.0/24", "0.0.0.0/0"]])
def test_prod_endpoint_open_to_the_world_fails(cidrs: list[str]) -> None:
    props = {**CLUSTER, "vpcConfig": {"endpointPublicAccess": True, "publicAccessCidrs": cidrs}}
    assert violations("eks-prod-endpoint-restricted", rules.EKS_CLUSTER, props)


def test_prod_endpoint_restricted_or_private_passes() -> None:
    assert violations("eks-prod-endpoint-restricted", rules.EKS_CLUSTER, CLUSTER) == []
    private = {**CLUSTER, "vpcConfig": {"endpointPublicAccess": False, "endpointPrivateAccess": True}}
    assert violations("eks-prod-endpoint-restricted", rules.EKS_CLUSTER, private) == []


def test_prod_is_recognised_by_tag_or_stack_name() -> None:
    open_dev = {**CLUSTER, "tags": {"environment": "dev"}, "vpcConfig": {"publicAccessCidrs": ["0.0.0.0/0"]}}
    assert violations("eks-prod-endpoint-restricted", rules.EKS_CLUSTER, open_dev) == []
    untagged = {**open_dev, "tags": {}}
    assert violations("eks-prod-endpoint-restricted", rules.EKS_CLUSTER, untagged, stack="prod")


def test_imdsv2_required() -> None:
    assert violations("imdsv2-required", rules.LAUNCH_TEMPLATE, TEMPLATE) == []
    assert violations(
        "imdsv2-required", rules.LAUNCH_TEMPLATE, {**TEMPLATE, "metadataOptions": {"httpTokens": "optional"}}
    )
    assert violations("imdsv2-required", rules.LAUNCH_TEMPLATE, {})


def test_gpu_node_groups_tainted() -> None:
    assert violations("gpu-node-groups-tainted", rules.NODE_GROUP, GPU_GROUP) == []
    assert violations("gpu-node-groups-tainted", rules.NODE_GROUP, {**GPU_GROUP, "taints": []})
    wrong_effect = [{"key": "nvidia.com/gpu", "value": "true", "effect": "PREFER_NO_SCHEDULE"}]
    assert violations("gpu-node-groups-tainted", rules.NODE_GROUP, {**GPU_GROUP, "taints": wrong_effect})
    system = {"amiType": "AL2023_x86_64_STANDARD", "labels": {}, "launchTemplate": {"id": "lt"}}
    assert violations("gpu-node-groups-tainted", rules.NODE_GROUP, system) == []


def test_root_volumes_encrypted() -> None:
    assert violations("root-volumes-encrypted", rules.LAUNCH_TEMPLATE, TEMPLATE) == []
    plain = {**TEMPLATE, "blockDeviceMappings": [{"deviceName": "/dev/xvda", "ebs": {"encrypted": "false"}}]}
    assert violations("root-volumes-encrypted", rules.LAUNCH_TEMPLATE, plain)
    assert violations("root-volumes-encrypted", rules.LAUNCH_TEMPLATE, {**TEMPLATE, "blockDeviceMappings": []})
    assert violations("root-volumes-encrypted", rules.INSTANCE, {"rootBlockDevice": {"encrypted": True}}) == []
    assert violations("root-volumes-encrypted", rules.INSTANCE, {})
    assert violations("root-volumes-encrypted", rules.NODE_GROUP, {"diskSize": 100})


def test_no_ssh_from_anywhere() -> None:
    ssh_world = {"fromPort": 22, "toPort": 22, "protocol": "tcp", "cidrBlocks": ["0.0.0.0/0"]}
    https_world = {"fromPort": 443, "toPort": 443, "protocol": "tcp", "cidrBlocks": ["0.0.0.0/0"]}
    ssh_office = {**ssh_world, "cidrBlocks": ["203.0.113.0/24"]}
    assert violations("no-ssh-from-anywhere", rules.SECURITY_GROUP, {"ingress": [https_world, ssh_office]}) == []
    assert violations("no-ssh-from-anywhere", rules.SECURITY_GROUP, {"ingress": [ssh_world]})
    all_traffic = {"fromPort": 0, "toPort": 0, "protocol": "-1", "ipv6CidrBlocks": ["::/0"]}
    assert violations("no-ssh-from-anywhere", rules.SECURITY_GROUP, {"ingress": [all_traffic]})
    assert violations("no-ssh-from-anywhere", rules.SECURITY_GROUP_RULE, {"type": "ingress", **ssh_world})
    assert violations("no-ssh-from-anywhere", rules.SECURITY_GROUP_RULE, {"type": "egress", **ssh_world}) == []
    ingress = {"fromPort": 20, "toPort": 25, "ipProtocol": "tcp", "cidrIpv4": "0.0.0.0/0"}
    assert violations("no-ssh-from-anywhere", rules.INGRESS_RULE, ingress)
    assert violations("no-ssh-from-anywhere", rules.NODE_GROUP, {"remoteAccess": {"ec2SshKey": "k"}})
    restricted = {"remoteAccess": {"ec2SshKey": "k", "sourceSecurityGroupIds": ["sg-1"]}}
    assert violations("no-ssh-from-anywhere", rules.NODE_GROUP, restricted) == []


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_the_stacks_pass_every_rule(mocked_stacks: dict[str, Any], stack: str) -> None:
    resources = mocked_stacks[stack]["resources"]
    checked_types = {r["type"] for r in resources} & {rules.EKS_CLUSTER, rules.NODE_GROUP, rules.LAUNCH_TEMPLATE}
    assert checked_types == {rules.EKS_CLUSTER, rules.NODE_GROUP, rules.LAUNCH_TEMPLATE}
    found = [
        f"{policy}: {resource['type']} {resource['name']}: {message}"
        for resource in resources
        for policy in POLICIES
        for message in violations(policy, resource["type"], resource["inputs"], stack=stack)
    ]
    assert found == []


def test_an_open_prod_endpoint_in_the_prod_stack_is_caught(mocked_stacks: dict[str, Any]) -> None:
    (cluster,) = [r for r in mocked_stacks["prod"]["resources"] if r["type"] == rules.EKS_CLUSTER]
    props = {**cluster["inputs"], "vpcConfig": {**cluster["inputs"]["vpcConfig"], "publicAccessCidrs": ["0.0.0.0/0"]}}
    assert violations("eks-prod-endpoint-restricted", rules.EKS_CLUSTER, props, stack="prod")


def test_production_load_balancers_admit_only_listed_clients() -> None:
    service = {"spec": {"type": "LoadBalancer", "loadBalancerSourceRanges": ["198.51.100.0/24"]}}
    rule = "prod-load-balancer-restricted"
    assert violations(rule, rules.SERVICE, service, stack="prod") == []
    open_service = {"spec": {"type": "LoadBalancer", "loadBalancerSourceRanges": ["0.0.0.0/0"]}}
    assert violations(rule, rules.SERVICE, open_service, stack="prod")
    assert violations(rule, rules.SERVICE, {"spec": {"type": "LoadBalancer"}}, stack="prod")
    assert violations(rule, rules.SERVICE, open_service, stack="dev") == [], "dev may be open"
    assert violations(rule, rules.SERVICE, {"spec": {"type": "ClusterIP"}}, stack="prod") == []


def test_the_gpu_taint_rule_checks_the_node_pools_own_taint() -> None:
    """The node contract is written once (infra/stack/nodes.py); the pack, in its own environment, keeps the key it
    checks, and this test holds the two together."""
    contract = Path(__file__).resolve().parents[2] / "infra" / "stack" / "nodes.py"
    spec = importlib.util.spec_from_file_location("node_contract", contract)
    assert spec is not None and spec.loader is not None
    nodes = importlib.util.module_from_spec(spec)
    sys.modules["node_contract"] = nodes  # dataclasses look their module up while the class is made
    spec.loader.exec_module(nodes)
    assert nodes.GPU_TAINT.key == rules.GPU_TAINT_KEY
    assert nodes.GPU_TAINT.effect == "NO_SCHEDULE"
