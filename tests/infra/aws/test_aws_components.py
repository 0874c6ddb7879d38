"""Unit tests of the AWS components, each run alone under mocks with hand-written args."""

from __future__ import annotations

import json

import pytest
import yaml
from stack.aws.cluster import Cluster, ClusterArgs
from stack.aws.cluster_autoscaler import autoscaler_policy, default_priorities, priorities_document
from stack.aws.image_registry import ImageRegistry, ImageRegistryArgs, lifecycle_policy
from stack.aws.kubeconfig import render_kubeconfig
from stack.aws.network import Network, NetworkArgs, ZoneSubnets
from stack.aws.node_pool import NodePool, NodePoolArgs
from stack.aws.pod_identity_role import PodIdentityRole, PodIdentityRoleArgs
from stack.nodes import Taint
from stack.testing import ProgramRun, run_program

TAGS = {"environment": "test"}
ZONES = [
    ZoneSubnets("us-west-2a", "10.0.0.0/20", "10.0.128.0/19"),
    ZoneSubnets("us-west-2b", "10.0.16.0/20", "10.0.160.0/19"),
    ZoneSubnets("us-west-2c", "10.0.32.0/20", "10.0.192.0/19"),
]


def run(build: object) -> ProgramRun:
    return run_program({}, stack="test", program=build)  # type: ignore[arg-type]


def pool_args(**overrides: object) -> NodePoolArgs:
    values: dict[str, object] = {
        "cluster_name": "c",
        "node_role_arn": "arn:aws:iam::123456789012:role/node",
        "subnet_ids": ["subnet-a", "subnet-b"],
        "capacity_type": "SPOT",
        "ami_type": "AL2023_x86_64_NVIDIA",
        "instance_types": ["g6e.xlarge", "g6e.2xlarge"],
        "min_size": 0,
        "max_size": 3,
        "desired_size": 0,
        "disk_size_gib": 200,
        "tags": TAGS,
        "labels": {"nvidia.com/gpu.present": "true"},
        "taints": [Taint("nvidia.com/gpu", "true", "NO_SCHEDULE")],
        "gpus_per_node": 1,
        "kubernetes_version": "1.35",
    }
    values.update(overrides)
    return NodePoolArgs(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(("per_zone", "expected_nats"), [(True, 3), (False, 1)])
def test_network_nat_gateways(per_zone: bool, expected_nats: int) -> None:
    result = run(lambda: Network("net", NetworkArgs("10.0.0.0/16", ZONES, per_zone, "c", TAGS)))
    assert len(result.of_type("aws:ec2/natGateway:NatGateway")) == expected_nats
    assert len(result.of_type("aws:ec2/eip:Eip")) == expected_nats
    assert len(result.of_type("aws:ec2/subnet:Subnet")) == 6
    # One public route table shared by all zones, one private route table per zone.
    assert len(result.of_type("aws:ec2/routeTable:RouteTable")) == 4


def test_network_refuses_a_single_zone() -> None:
    with pytest.raises(ValueError, match="at least two zones"):
        run(lambda: Network("net", NetworkArgs("10.0.0.0/16", ZONES[:1], False, "c", TAGS)))


def test_node_pool_refuses_spot_with_one_type() -> None:
    with pytest.raises(ValueError, match="spot needs at least two instance types"):
        run(lambda: NodePool("gpu", pool_args(instance_types=["g6e.xlarge"])))


def test_node_pool_refuses_desired_outside_bounds() -> None:
    with pytest.raises(ValueError, match="min <= desired <= max"):
        run(lambda: NodePool("gpu", pool_args(desired_size=5)))


def test_node_template_tags_describe_a_gpu_node() -> None:
    assert NodePool.node_template_tags(pool_args()) == {
        "k8s.io/cluster-autoscaler/node-template/label/nvidia.com/gpu.present": "true",
        "k8s.io/cluster-autoscaler/node-template/taint/nvidia.com/gpu": "true:NoSchedule",
        "k8s.io/cluster-autoscaler/node-template/resources/nvidia.com/gpu": "1",
    }
    assert NodePool.node_template_tags(pool_args(labels={}, taints=[], gpus_per_node=0)) == {}


def test_node_pool_tags_its_autoscaling_group() -> None:
    result = run(lambda: NodePool("gpu", pool_args()))
    tags = result.of_type("aws:autoscaling/tag:Tag")
    assert {t.inputs["autoscalingGroupName"] for t in tags} == {"eks-gpu-mock-mock-uuid"}
    assert len(tags) == 3


def test_node_pool_follows_the_cluster_version_and_sets_root_volume_throughput() -> None:
    result = run(lambda: NodePool("gpu", pool_args(kubernetes_version="1.35", disk_throughput_mibps=500)))
    assert result.one("aws:eks/nodeGroup:NodeGroup").inputs["version"] == "1.35"
    ebs = result.one("aws:ec2/launchTemplate:LaunchTemplate").inputs["blockDeviceMappings"][0]["ebs"]
    assert (ebs["throughput"], ebs["iops"]) == (500, 3000)


def cluster_args(**overrides: object) -> ClusterArgs:
    values: dict[str, object] = {
        "name": "c",
        "version": "1.35",
        "region": "us-west-2",
        "subnet_ids": ["subnet-a", "subnet-b"],
        "endpoint_private_access": True,
        "endpoint_public_access": True,
        "public_access_cidrs": ["203.0.113.0/24"],
        "admin_principal_arns": [],
        "viewer_principal_arns": [],
        "bootstrap_creator_admin": True,
        "log_types": ["api", "audit", "authenticator"],
        "log_retention_days": 7,
        "tags": TAGS,
    }
    values.update(overrides)
    return ClusterArgs(**values)  # type: ignore[arg-type]


def test_cluster_refuses_missing_audit_log() -> None:
    with pytest.raises(ValueError, match="audit log"):
        run(lambda: Cluster("eks", cluster_args(log_types=["api"])))


def test_cluster_refuses_public_endpoint_without_cidrs() -> None:
    with pytest.raises(ValueError, match="publicAccessCidrs"):
        run(lambda: Cluster("eks", cluster_args(public_access_cidrs=[])))


def test_private_only_cluster_sends_no_public_cidrs() -> None:
    result = run(lambda: Cluster("eks", cluster_args(endpoint_public_access=False, public_access_cidrs=[])))
    vpc = result.one("aws:eks/cluster:Cluster").inputs["vpcConfig"]
    assert vpc["endpointPublicAccess"] is False
    assert "publicAccessCidrs" not in vpc
    addons = {a.inputs["addonName"] for a in result.of_type("aws:eks/addon:Addon")}
    assert addons == {"vpc-cni", "kube-proxy", "eks-pod-identity-agent"}


def test_vpc_cni_enforces_network_policies() -> None:
    result = run(lambda: Cluster("eks", cluster_args()))
    (vpc_cni,) = [a for a in result.of_type("aws:eks/addon:Addon") if a.inputs["addonName"] == "vpc-cni"]
    assert json.loads(vpc_cni.inputs["configurationValues"]) == {"enableNetworkPolicy": "true"}
    others = [a for a in result.of_type("aws:eks/addon:Addon") if a.inputs["addonName"] != "vpc-cni"]
    assert all("configurationValues" not in addon.inputs for addon in others)


def test_viewers_get_view_only_access_entries() -> None:
    viewer = "arn:aws:iam::123456789012:role/preview"
    admin = "arn:aws:iam::123456789012:role/admin"
    result = run(lambda: Cluster("eks", cluster_args(admin_principal_arns=[admin], viewer_principal_arns=[viewer])))
    policies = {
        association.inputs["principalArn"]: association.inputs["policyArn"]
        for association in result.of_type("aws:eks/accessPolicyAssociation:AccessPolicyAssociation")
    }
    assert policies == {
        admin: "arn:aws:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy",
        viewer: "arn:aws:eks::aws:cluster-access-policy/AmazonEKSViewPolicy",
    }
    assert {entry.name for entry in result.of_type("aws:eks/accessEntry:AccessEntry")} == {
        "eks-admin-0",
        "eks-viewer-0",
    }


def test_image_registry_lifecycle_and_encryption() -> None:
    policy = json.loads(lifecycle_policy(7))
    assert policy["rules"][0]["selection"] == {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": 7}
    result = run(lambda: ImageRegistry("images", ImageRegistryArgs("repo", 7, "AES256", False, TAGS)))
    repository = result.one("aws:ecr/repository:Repository").inputs
    assert repository["encryptionConfigurations"] == [{"encryptionType": "AES256"}]
    # Every tag is immutable except the build cache, which each `pulumi up` rewrites.
    assert repository["imageTagMutability"] == "IMMUTABLE_WITH_EXCLUSION"
    assert repository["imageTagMutabilityExclusionFilters"] == [{"filter": "buildcache", "filterType": "WILDCARD"}]


def test_pod_identity_role_trusts_pods_and_associates() -> None:
    args = PodIdentityRoleArgs(cluster_name="c", namespace="ns", service_account="sa", tags=TAGS, inline_policy="{}")
    result = run(lambda: PodIdentityRole("role", args))
    trust = json.loads(result.one("aws:iam/role:Role").inputs["assumeRolePolicy"])["Statement"][0]
    assert trust["Principal"] == {"Service": "pods.eks.amazonaws.com"}
    assert set(trust["Action"]) == {"sts:AssumeRole", "sts:TagSession"}
    association = result.one("aws:eks/podIdentityAssociation:PodIdentityAssociation").inputs
    assert (association["namespace"], association["serviceAccount"]) == ("ns", "sa")


def test_kubeconfig_uses_aws_eks_get_token() -> None:
    config = yaml.safe_load(render_kubeconfig("c", "https://e", "Q0E=", "eu-west-1"))
    assert config["clusters"][0]["cluster"] == {"server": "https://e", "certificate-authority-data": "Q0E="}
    assert config["users"][0]["user"]["exec"]["args"] == [
        "eks",
        "get-token",
        "--cluster-name",
        "c",
        "--region",
        "eu-west-1",
        "--output",
        "json",
    ]
    assert config["current-context"] == "c"


def test_autoscaler_may_only_scale_groups_of_its_cluster() -> None:
    statements = json.loads(autoscaler_policy("c"))["Statement"]
    scale = next(s for s in statements if "autoscaling:SetDesiredCapacity" in s["Action"])
    assert scale["Condition"] == {"StringEquals": {"aws:ResourceTag/k8s.io/cluster-autoscaler/c": "owned"}}
    describe = next(s for s in statements if s["Sid"] == "Describe")
    assert "eks:DescribeNodegroup" in describe["Action"]


def test_priorities_document_ranks_spot_first() -> None:
    document = yaml.safe_load(priorities_document(default_priorities("gpu-spot", "gpu-on-demand")))
    assert document == {100: [".*-gpu-spot-.*"], 50: [".*-gpu-on-demand-.*"], 1: [".*"]}
