"""The whole program under mocks, for both stack files: the invariants the issue asks of the AWS layer."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml
from stack.testing import ProgramRun, RecordedResource, run_stack
from stack.testing.harness import stack_settings
from stack.versions import CLUSTER_AUTOSCALER_CHART, CLUSTER_AUTOSCALER_IMAGE_TAGS

NS = "deepseek-inference"
NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
TEMPLATE = "k8s.io/cluster-autoscaler/node-template"


@pytest.fixture(params=["dev", "prod"])
def run(request: pytest.FixtureRequest, dev_run: ProgramRun, prod_run: ProgramRun) -> ProgramRun:
    return dev_run if request.param == "dev" else prod_run


def settings(stack: str, key: str) -> Any:
    return stack_settings(stack)[f"{NS}:{key}"]


def node_group(run: ProgramRun, pool: str) -> RecordedResource:
    return run.one(NODE_GROUP, pool)


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_the_whole_program_previews_as_it_updates(stack: str, dev_run: ProgramRun, prod_run: ProgramRun) -> None:
    """`pulumi preview` runs the program with outputs it cannot know yet (unknowns): it plans the same resources."""
    run = dev_run if stack == "dev" else prod_run
    previewed = run_stack(stack, preview=True)
    assert sorted((r.type, r.name) for r in previewed.resources) == sorted((r.type, r.name) for r in run.resources)


def test_the_only_provider_function_is_the_image_push_credential(run: ProgramRun) -> None:
    # No lookups steer the plan; the build's ECR login token is the one call (nothing is built on preview).
    assert [call.token for call in run.calls if call.token.startswith("aws:")] == [
        "aws:ecr/getAuthorizationToken:getAuthorizationToken"
    ]


def test_stack_outputs(run: ProgramRun) -> None:
    for key in ("clusterName", "kubeconfig", "clusterEndpoint", "nodeGroupNames", "vpcId", "imageRepositoryUrl"):
        assert run.outputs[key], key
    assert run.outputs["clusterName"] == f"{NS}-{run.stack}"
    assert "kubeconfig" in run.secret_outputs
    kubeconfig = yaml.safe_load(run.outputs["kubeconfig"])
    assert kubeconfig["users"][0]["user"]["exec"]["args"][:4] == [
        "eks",
        "get-token",
        "--cluster-name",
        f"{NS}-{run.stack}",
    ]
    assert len(run.outputs["nodeGroupNames"]) == 3
    # Stack outputs are camelCase, like the stack file's keys and the components' registered outputs.
    assert [key for key in run.outputs if not re.fullmatch(r"[a-z][a-zA-Z0-9]*", key)] == []


def test_subnets_in_every_listed_zone(run: ProgramRun) -> None:
    zones = [zone["name"] for zone in settings(run.stack, "network")["zones"]]
    subnets = run.of_type("aws:ec2/subnet:Subnet")
    public = [s for s in subnets if s.inputs["tags"].get("kubernetes.io/role/elb") == "1"]
    private = [s for s in subnets if s.inputs["tags"].get("kubernetes.io/role/internal-elb") == "1"]
    assert sorted(s.inputs["availabilityZone"] for s in public) == sorted(zones)
    assert sorted(s.inputs["availabilityZone"] for s in private) == sorted(zones)
    assert len(subnets) == 2 * len(zones)
    for subnet in subnets:
        assert subnet.inputs["tags"][f"kubernetes.io/cluster/{NS}-{run.stack}"] == "shared"
        assert subnet.inputs.get("mapPublicIpOnLaunch") is not True


def test_zone_counts(dev_run: ProgramRun, prod_run: ProgramRun) -> None:
    assert len(dev_run.of_type("aws:ec2/subnet:Subnet")) == 4
    assert len(prod_run.of_type("aws:ec2/subnet:Subnet")) == 6


def test_nat_gateways_one_in_dev_one_per_zone_in_prod(dev_run: ProgramRun, prod_run: ProgramRun) -> None:
    assert len(dev_run.of_type("aws:ec2/natGateway:NatGateway")) == 1
    assert len(prod_run.of_type("aws:ec2/natGateway:NatGateway")) == 3
    for run in (dev_run, prod_run):
        private_defaults = [r for r in run.of_type("aws:ec2/route:Route") if r.inputs.get("natGatewayId")]
        assert len(private_defaults) == len(settings(run.stack, "network")["zones"])
        assert len({route.inputs["natGatewayId"] for route in private_defaults}) == (1 if run.stack == "dev" else 3)
        assert len(run.of_type("aws:ec2/internetGateway:InternetGateway")) == 1


def test_three_pools_with_their_capacity_and_ami(run: ProgramRun) -> None:
    expected = {
        "system": ("ON_DEMAND", "AL2023_x86_64_STANDARD"),
        "gpu-on-demand": ("ON_DEMAND", "AL2023_x86_64_NVIDIA"),
        "gpu-spot": ("SPOT", "AL2023_x86_64_NVIDIA"),
    }
    assert {group.name for group in run.of_type(NODE_GROUP)} == set(expected)
    for pool, (capacity, ami) in expected.items():
        group = node_group(run, pool)
        assert group.inputs["capacityType"] == capacity
        assert group.inputs["amiType"] == ami
        assert len(group.inputs["subnetIds"]) == len(settings(run.stack, "network")["zones"])
        assert "remoteAccess" not in group.inputs


def test_instance_types_and_sizes_come_from_the_stack_file(run: ProgramRun) -> None:
    pools = settings(run.stack, "nodePools")
    for pool, key in (("system", "system"), ("gpu-on-demand", "gpuOnDemand"), ("gpu-spot", "gpuSpot")):
        group = node_group(run, pool)
        assert group.inputs["instanceTypes"] == pools[key]["instanceTypes"]
        scaling = group.inputs["scalingConfig"]
        assert scaling["minSize"] == pools[key]["minSize"]
        assert scaling["maxSize"] == pools[key]["maxSize"]
        assert scaling["desiredSize"] == pools[key].get("desiredSize", pools[key]["minSize"])
    assert len(node_group(run, "gpu-spot").inputs["instanceTypes"]) >= 2


def test_gpu_baseline(dev_run: ProgramRun, prod_run: ProgramRun) -> None:
    assert node_group(dev_run, "gpu-on-demand").inputs["scalingConfig"]["minSize"] == 0
    assert node_group(prod_run, "gpu-on-demand").inputs["scalingConfig"]["minSize"] >= 1
    assert (
        node_group(prod_run, "gpu-spot").inputs["scalingConfig"]["maxSize"]
        > node_group(dev_run, "gpu-spot").inputs["scalingConfig"]["maxSize"]
    )


def test_gpu_pools_are_labelled_and_tainted(run: ProgramRun) -> None:
    for pool, capacity in (("gpu-on-demand", "on-demand"), ("gpu-spot", "spot")):
        group = node_group(run, pool)
        assert group.inputs["labels"]["nvidia.com/gpu.present"] == "true"
        assert group.inputs["labels"]["deepseek.io/capacity"] == capacity
        assert group.inputs["taints"] == [{"key": "nvidia.com/gpu", "value": "true", "effect": "NO_SCHEDULE"}]
    system = node_group(run, "system")
    assert "taints" not in system.inputs or system.inputs["taints"] == []
    assert "nvidia.com/gpu.present" not in system.inputs["labels"]


def test_launch_templates_require_imdsv2_and_encrypt_gp3_roots(run: ProgramRun) -> None:
    pools = settings(run.stack, "nodePools")
    templates = {t.name: t for t in run.of_type(LAUNCH_TEMPLATE)}
    assert set(templates) == {"system", "gpu-on-demand", "gpu-spot"}
    for pool, key in (("system", "system"), ("gpu-on-demand", "gpuOnDemand"), ("gpu-spot", "gpuSpot")):
        template = templates[pool].inputs
        assert template["metadataOptions"]["httpTokens"] == "required"
        assert template["metadataOptions"]["httpPutResponseHopLimit"] == 1
        (root,) = template["blockDeviceMappings"]
        assert root["deviceName"] == "/dev/xvda"
        assert root["ebs"]["encrypted"] == "true"
        assert root["ebs"]["volumeType"] == "gp3"
        assert root["ebs"]["volumeSize"] == pools[key]["diskSizeGib"]
        assert node_group(run, pool).inputs["launchTemplate"]["id"] == f"{pool}-id"
    assert all(templates[p].inputs["blockDeviceMappings"][0]["ebs"]["volumeSize"] >= 200 for p in ("gpu-spot",))


def test_desired_size_is_left_to_the_autoscaler() -> None:
    # ignore_changes is a resource option the mocks do not see: assert it on the component's source of truth.
    import inspect

    from stack.aws import node_pool

    assert 'ignore_changes=["scalingConfig.desiredSize"]' in inspect.getsource(node_pool.NodePool)


def test_secrets_encrypted_with_a_rotating_kms_key(run: ProgramRun) -> None:
    (key,) = run.of_type("aws:kms/key:Key")
    assert key.inputs["enableKeyRotation"] is True
    cluster = run.one("aws:eks/cluster:Cluster")
    encryption = cluster.inputs["encryptionConfig"]
    assert encryption["resources"] == ["secrets"]
    assert encryption["provider"]["keyArn"].startswith("arn:aws:mock:")


def test_control_plane_logs_and_version(run: ProgramRun) -> None:
    cluster = run.one("aws:eks/cluster:Cluster").inputs
    assert {"api", "audit", "authenticator"} <= set(cluster["enabledClusterLogTypes"])
    assert cluster["version"] == settings(run.stack, "cluster")["version"]
    assert cluster["accessConfig"]["authenticationMode"] == "API"
    log_group = run.one("aws:cloudwatch/logGroup:LogGroup").inputs
    assert log_group["name"] == f"/aws/eks/{NS}-{run.stack}/cluster"


def test_endpoint_access(dev_run: ProgramRun, prod_run: ProgramRun) -> None:
    for run in (dev_run, prod_run):
        vpc = run.one("aws:eks/cluster:Cluster").inputs["vpcConfig"]
        assert vpc["endpointPublicAccess"] is True
        assert vpc["publicAccessCidrs"] == settings(run.stack, "cluster")["publicAccessCidrs"]
        assert "0.0.0.0/0" not in vpc["publicAccessCidrs"]
    assert prod_run.one("aws:eks/cluster:Cluster").inputs["vpcConfig"]["endpointPrivateAccess"] is True


def test_cluster_admins_get_access_entries() -> None:
    cluster = dict(settings("dev", "cluster"), admins=["arn:aws:iam::123456789012:role/platform-admin"])
    run = run_stack("dev", overrides={"cluster": cluster})
    entry = run.one("aws:eks/accessEntry:AccessEntry").inputs
    assert entry["principalArn"] == "arn:aws:iam::123456789012:role/platform-admin"
    association = run.one("aws:eks/accessPolicyAssociation:AccessPolicyAssociation").inputs
    assert association["policyArn"].endswith("/AmazonEKSClusterAdminPolicy")
    assert association["accessScope"] == {"type": "cluster"}


def test_managed_addons(run: ProgramRun) -> None:
    addons = {a.inputs["addonName"]: a.inputs for a in run.of_type("aws:eks/addon:Addon")}
    assert set(addons) == {"vpc-cni", "coredns", "kube-proxy", "eks-pod-identity-agent", "aws-ebs-csi-driver"}
    (association,) = addons["aws-ebs-csi-driver"]["podIdentityAssociations"]
    assert association["serviceAccount"] == "ebs-csi-controller-sa"
    ebs_role = run.one("aws:iam/role:Role", "eks-addons-ebs-csi").inputs
    assert json.loads(ebs_role["assumeRolePolicy"])["Statement"][0]["Principal"] == {
        "Service": "pods.eks.amazonaws.com"
    }


def test_node_role_is_least_privilege(run: ProgramRun) -> None:
    attached = {
        a.inputs["policyArn"].rsplit("/", 1)[-1]
        for a in run.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
        if a.name.startswith("eks-nodes-")
    }
    assert attached == {"AmazonEKSWorkerNodePolicy", "AmazonEKS_CNI_Policy", "AmazonEC2ContainerRegistryPullOnly"}


def test_every_aws_resource_is_tagged_with_its_environment(run: ProgramRun) -> None:
    tagged = [r for r in run.resources if r.type.startswith("aws:") and "tags" in r.inputs]
    assert len(tagged) > 20
    for resource in tagged:
        assert resource.inputs["tags"]["environment"] == run.stack, resource.name


def test_scale_from_zero_hints_on_the_gpu_autoscaling_groups(run: ProgramRun) -> None:
    tags = run.of_type("aws:autoscaling/tag:Tag")
    for pool in ("gpu-on-demand", "gpu-spot"):
        asg = f"eks-{pool}-mock-mock-uuid"
        hints = {
            t.inputs["tag"]["key"]: t.inputs["tag"]["value"] for t in tags if t.inputs["autoscalingGroupName"] == asg
        }
        assert hints[f"{TEMPLATE}/label/nvidia.com/gpu.present"] == "true"
        assert hints[f"{TEMPLATE}/taint/nvidia.com/gpu"] == "true:NoSchedule"
        assert hints[f"{TEMPLATE}/resources/nvidia.com/gpu"] == "1"
        assert all(t.inputs["tag"]["propagateAtLaunch"] is False for t in tags)


def test_cluster_autoscaler(run: ProgramRun) -> None:
    release = run.one("kubernetes:helm.sh/v3:Release", "cluster-autoscaler").inputs
    assert release["chart"] == "cluster-autoscaler"
    assert release["version"] == CLUSTER_AUTOSCALER_CHART.version
    values = release["values"]
    assert values["autoDiscovery"]["clusterName"] == f"{NS}-{run.stack}"
    assert f"k8s.io/cluster-autoscaler/{NS}-{run.stack}" in values["autoDiscovery"]["tags"]
    assert values["extraArgs"]["expander"].startswith("priority")
    scaling = settings(run.stack, "clusterAutoscaler")
    assert values["extraArgs"]["scale-down-unneeded-time"] == scaling["scaleDownUnneededTime"]
    assert values["extraArgs"]["max-node-provision-time"] == scaling["maxNodeProvisionTime"]
    assert values["image"]["tag"] == CLUSTER_AUTOSCALER_IMAGE_TAGS[settings(run.stack, "cluster")["version"]]
    association = [
        a.inputs
        for a in run.of_type("aws:eks/podIdentityAssociation:PodIdentityAssociation")
        if a.inputs["serviceAccount"] == "cluster-autoscaler"
    ]
    assert len(association) == 1
    assert association[0]["namespace"] == "kube-system"


def test_priority_expander_prefers_spot_then_on_demand(run: ProgramRun) -> None:
    configmap = run.one("kubernetes:core/v1:ConfigMap", "cluster-autoscaler-priorities").inputs
    assert configmap["metadata"] == {"name": "cluster-autoscaler-priority-expander", "namespace": "kube-system"}
    priorities = yaml.safe_load(configmap["data"]["priorities"])
    ranked = [patterns for _, patterns in sorted(priorities.items(), reverse=True)]
    assert ranked[0] == [".*-gpu-spot-.*"]
    assert ranked[1] == [".*-gpu-on-demand-.*"]


def test_image_registry(run: ProgramRun) -> None:
    repository = run.one("aws:ecr/repository:Repository").inputs
    assert repository["imageTagMutability"] == "IMMUTABLE_WITH_EXCLUSION"
    assert repository["imageScanningConfiguration"] == {"scanOnPush": True}
    assert repository["encryptionConfigurations"][0]["encryptionType"] == "KMS"
    policy = json.loads(run.one("aws:ecr/lifecyclePolicy:LifecyclePolicy").inputs["policy"])
    assert policy["rules"][0]["selection"]["countNumber"] == settings(run.stack, "imageRegistry")["keepImages"]


def test_existing_cluster_creates_no_aws_resources() -> None:
    kubeconfig = yaml.safe_dump({"apiVersion": "v1", "clusters": [{"name": "c", "cluster": {"server": "https://k"}}]})
    run = run_stack(
        "dev",
        overrides={
            "clusterSource": "existing",
            "network": None,
            "cluster": None,
            "aws:region": None,
            "inference": {"image": "registry.example.com/deepseek/server:1.2.3"},
            "addons": {"prometheus": {"storageClassName": "standard"}},
        },
        secrets={"kubeconfig": kubeconfig, "apiKeys": "k1"},
    )
    assert [r.type for r in run.resources if r.type.startswith("aws:")] == []
    (provider,) = run.of_type("pulumi:providers:kubernetes")
    assert provider.inputs["kubeconfig"] == kubeconfig
    assert "clusterName" not in run.outputs


# --- first deploy ------------------------------------------------------------------------------------------------


def test_gpu_pools_carry_the_autoscalers_gpu_label(run: ProgramRun) -> None:
    tags = run.of_type("aws:autoscaling/tag:Tag")
    for pool in ("gpu-on-demand", "gpu-spot"):
        accelerator = node_group(run, pool).inputs["labels"]["k8s.amazonaws.com/accelerator"]
        # The GPU model, or plain "nvidia" for a pool whose types carry different GPUs (dev's L4 + A10G spot pool).
        assert accelerator.startswith("nvidia")
        # ... and so does the node template a pool scaled to zero is judged by.
        asg = f"eks-{pool}-mock-mock-uuid"
        hints = {
            t.inputs["tag"]["key"]: t.inputs["tag"]["value"] for t in tags if t.inputs["autoscalingGroupName"] == asg
        }
        assert hints[f"{TEMPLATE}/label/k8s.amazonaws.com/accelerator"] == accelerator
    assert "k8s.amazonaws.com/accelerator" not in node_group(run, "system").inputs["labels"]


def test_node_groups_follow_the_cluster_version(run: ProgramRun) -> None:
    version = run.one("aws:eks/cluster:Cluster").inputs["version"]
    assert version == "1.35"
    for pool in ("system", "gpu-on-demand", "gpu-spot"):
        assert node_group(run, pool).inputs["version"] == version


def test_gpu_root_volumes_get_more_throughput_than_the_system_pool(run: ProgramRun) -> None:
    templates = {t.name: t.inputs["blockDeviceMappings"][0]["ebs"] for t in run.of_type(LAUNCH_TEMPLATE)}
    assert templates["system"]["throughput"] == 125
    assert templates["gpu-spot"]["throughput"] == templates["gpu-on-demand"]["throughput"] == 500


def test_s3_models_are_read_through_pod_identity() -> None:
    inference = dict(settings("dev", "inference"), model={"source": "s3", "s3Uri": "s3://models/deepseek/r1-7b/"})
    run = run_stack("dev", overrides={"inference": inference})
    (association,) = [
        a.inputs
        for a in run.of_type("aws:eks/podIdentityAssociation:PodIdentityAssociation")
        if a.inputs["namespace"] == "deepseek-inference"
    ]
    assert association["serviceAccount"] == "deepseek"
    account = run.one("kubernetes:core/v1:ServiceAccount").inputs["metadata"]
    assert account["name"] == association["serviceAccount"] and account["namespace"] == association["namespace"]
    policy = json.loads(run.one("aws:iam/rolePolicy:RolePolicy", "model-reader-inline").inputs["policy"])
    listing, reading = policy["Statement"]
    assert listing["Resource"] == "arn:aws:s3:::models"
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["deepseek/r1-7b", "deepseek/r1-7b/*"]}}
    assert (reading["Action"], reading["Resource"]) == ("s3:GetObject", "arn:aws:s3:::models/deepseek/r1-7b/*")
    # The pods start only once the association exists (credentials are injected at pod creation).
    deployment = run.one("kubernetes:apps/v1:Deployment")
    provider = run.one("pulumi:providers:kubernetes", "eks")
    dependencies = run.options_of(provider).depends_on
    assert "aws:eks/podIdentityAssociation:PodIdentityAssociation model-reader" in dependencies
    assert (deployment.provider or "").split("::")[-2] == "eks", "the Deployment goes through that provider"


def test_viewers_from_the_stack_file_get_read_only_access() -> None:
    cluster = dict(settings("dev", "cluster"), viewers=["arn:aws:iam::123456789012:role/github-preview"])
    run = run_stack("dev", overrides={"cluster": cluster})
    association = run.one("aws:eks/accessPolicyAssociation:AccessPolicyAssociation").inputs
    assert association["principalArn"] == "arn:aws:iam::123456789012:role/github-preview"
    assert association["policyArn"].endswith("/AmazonEKSViewPolicy")
