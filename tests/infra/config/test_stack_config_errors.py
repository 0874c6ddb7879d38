"""Every broken stack file fails with one line naming the key and the fix (no traceback, no pydantic dump)."""

from __future__ import annotations

import copy
from typing import Any

import pulumi
import pytest
from stack.config import ConfigError
from stack.testing import run_stack
from stack.testing.harness import stack_settings

NS = "deepseek-inference"


def dev_section(key: str) -> Any:
    return copy.deepcopy(stack_settings("dev")[f"{NS}:{key}"])


def broken(load_config: Any, overrides: dict[str, Any], stack: str = "dev", **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(stack, overrides, **kwargs)
    message = str(caught.value)
    assert "\n" not in message, message
    assert "Traceback" not in message
    assert "validation error" not in message, "pydantic's multi-line dump must not leak"
    return message


def test_both_stack_files_load(load_config: Any) -> None:
    assert load_config("dev").cluster_source == "eks"
    assert load_config("prod").environment == "prod"


def test_missing_section_names_the_key(load_config: Any) -> None:
    message = broken(load_config, {"network": None})
    assert message.startswith(f"config key '{NS}'")
    assert "needs the 'network' key" in message
    assert "add it to the stack file" in message


def test_missing_nested_key_names_its_path(load_config: Any) -> None:
    network = dev_section("network")
    del network["vpcCidr"]
    message = broken(load_config, {"network": network})
    assert message == f"config key '{NS}:network.vpcCidr': is required but missing; fix: add this key to the stack file"


def test_missing_region(load_config: Any) -> None:
    message = broken(load_config, {"aws:region": None})
    assert "needs the 'aws:region' key" in message


def test_wrong_type(load_config: Any) -> None:
    pools = dev_section("nodePools")
    pools["system"]["minSize"] = "two"
    message = broken(load_config, {"nodePools": pools})
    assert f"'{NS}:nodePools.system.minSize'" in message
    assert "fix: write a whole number" in message
    assert "'two'" in message


def test_unknown_key_is_a_typo(load_config: Any) -> None:
    pools = dev_section("nodePools")
    pools["gpuSpot"]["maxNodes"] = 3
    message = broken(load_config, {"nodePools": pools})
    assert f"'{NS}:nodePools.gpuSpot.maxNodes': is not a known key; fix: remove it or correct its spelling" in message


@pytest.mark.parametrize("cidr", ["10.20.0.0/33", "10.20.0.1/16", "not-a-cidr"])
def test_bad_cidr(load_config: Any, cidr: str) -> None:
    network = dev_section("network")
    network["vpcCidr"] = cidr
    message = broken(load_config, {"network": network})
    assert f"'{NS}:network.vpcCidr'" in message
    assert "fix: write an IPv4 network in CIDR notation" in message


def test_subnet_outside_vpc(load_config: Any) -> None:
    network = dev_section("network")
    network["zones"][1]["privateSubnetCidr"] = "10.99.0.0/19"
    message = broken(load_config, {"network": network})
    assert f"'{NS}:network'" in message
    assert "zones[1].privateSubnetCidr 10.99.0.0/19 is outside vpcCidr 10.20.0.0/16" in message
    assert "pick a subnet inside the VPC" in message


def test_overlapping_subnets(load_config: Any) -> None:
    network = dev_section("network")
    network["zones"][1]["publicSubnetCidr"] = "10.20.8.0/21"
    message = broken(load_config, {"network": network})
    assert "zones[0].publicSubnetCidr 10.20.0.0/20 overlaps zones[1].publicSubnetCidr 10.20.8.0/21" in message
    assert "give every subnet its own range" in message


def test_fewer_zones_than_eks_needs(load_config: Any) -> None:
    network = dev_section("network")
    network["zones"] = network["zones"][:1]
    message = broken(load_config, {"network": network})
    assert f"'{NS}:network.zones'" in message
    assert "lists 1 zone(s) but EKS needs subnets in at least 2; add another zone" in message


def test_zone_outside_region(load_config: Any) -> None:
    message = broken(load_config, {"aws:region": "eu-west-1"})
    assert "zone 'us-west-2a' is not in aws:region 'eu-west-1'" in message


def test_min_greater_than_max(load_config: Any) -> None:
    pools = dev_section("nodePools")
    pools["gpuOnDemand"] |= {"minSize": 3, "maxSize": 1}
    message = broken(load_config, {"nodePools": pools})
    assert f"'{NS}:nodePools.gpuOnDemand'" in message
    assert "minSize 3 > maxSize 1; make minSize <= maxSize" in message


def test_non_gpu_instance_in_gpu_pool(load_config: Any) -> None:
    pools = dev_section("nodePools")
    pools["gpuSpot"]["instanceTypes"] = ["g6e.xlarge", "m6i.large"]
    message = broken(load_config, {"nodePools": pools})
    assert f"'{NS}:nodePools.gpuSpot.instanceTypes'" in message
    assert "'m6i.large' is not an NVIDIA GPU instance type" in message
    assert "use e.g. g6e.xlarge" in message


def test_gpu_pool_mixing_gpu_counts(load_config: Any) -> None:
    pools = dev_section("nodePools")
    pools["gpuSpot"]["instanceTypes"] = ["g6e.xlarge", "g6e.12xlarge"]
    message = broken(load_config, {"nodePools": pools})
    assert "mixes node sizes: g6e.12xlarge has 48 vCPU / 384 GiB / 4 GPU" in message


def test_spot_pool_needs_two_types(load_config: Any) -> None:
    pools = dev_section("nodePools")
    pools["gpuSpot"]["instanceTypes"] = ["g6e.xlarge"]
    message = broken(load_config, {"nodePools": pools})
    assert "spot needs at least 2 diversified GPU types" in message


def test_public_endpoint_without_cidrs(load_config: Any) -> None:
    cluster = dev_section("cluster")
    cluster["publicAccessCidrs"] = []
    message = broken(load_config, {"cluster": cluster})
    assert f"'{NS}:cluster'" in message
    assert "list the CIDRs allowed to reach the API" in message


def test_unsupported_kubernetes_version(load_config: Any) -> None:
    cluster = dev_section("cluster")
    cluster["version"] = "1.20"
    message = broken(load_config, {"cluster": cluster})
    assert f"'{NS}:cluster.version'" in message
    assert "use one of 1.32, 1.33, 1.34" in message


def test_bad_admin_arn(load_config: Any) -> None:
    cluster = dev_section("cluster")
    cluster["admins"] = ["alice"]
    message = broken(load_config, {"cluster": cluster})
    assert f"'{NS}:cluster.admins'" in message
    assert "is not an IAM role or user ARN" in message


def test_bad_cluster_source(load_config: Any) -> None:
    message = broken(load_config, {"clusterSource": "gke"})
    assert f"'{NS}:clusterSource'" in message
    assert "fix: use one of the values listed" in message


def test_existing_cluster_needs_kubeconfig(load_config: Any) -> None:
    message = broken(load_config, {"clusterSource": "existing"})
    assert "needs the 'kubeconfig' secret" in message
    assert "pulumi config set --secret kubeconfig" in message


def test_kubeconfig_must_be_a_kubeconfig(load_config: Any) -> None:
    message = broken(load_config, {"clusterSource": "existing"}, secrets={"kubeconfig": "hello", "apiKeys": "k"})
    assert f"'{NS}:kubeconfig': is not a kubeconfig" in message


def test_prod_requires_api_keys(load_config: Any) -> None:
    message = broken(load_config, {}, stack="prod", secrets={"other": "x"})
    assert f"'{NS}:apiKeys'" in message
    assert "pulumi config set --secret apiKeys" in message


def test_object_key_given_as_text(load_config: Any) -> None:
    message = broken(load_config, {"network": "10.0.0.0/16"})
    assert f"'{NS}:network': is not a YAML mapping" in message


def test_program_fails_with_run_error_not_traceback() -> None:
    """Under the CLI a RunError prints its message alone; the program converts ConfigError into one."""
    with pytest.raises(pulumi.RunError) as caught:
        run_stack("dev", overrides={"network": None})
    assert "needs the 'network' key" in str(caught.value)
    assert caught.value.__cause__ is None
