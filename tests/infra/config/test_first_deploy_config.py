"""Stack configs that would deploy and then fail (or silently not work) are refused up front, in one line."""

from __future__ import annotations

import copy
import datetime
from decimal import Decimal
from ipaddress import IPv4Network
from typing import Any

import pytest
from stack.config import ConfigError
from stack.config.aws import ClusterConfig
from stack.config.instance_types import GPU_INSTANCE_TYPES, allocatable, pod_fits
from stack.config.kubernetes import DEFAULT_MODEL_ID, InferenceConfig, scale_quantity
from stack.plan import PLACEHOLDER_SECRETS
from stack.testing.harness import stack_settings
from stack.versions import CLUSTER_AUTOSCALER_IMAGE_TAGS, DEFAULT_KUBERNETES_VERSION

NS = "deepseek-inference"
OFFICE = [IPv4Network("10.0.0.0/8")]
EXISTING = {"clusterSource": "existing", "inference": {"image": "registry.example.com/deepseek/server:1.2.3"}}


def section(stack: str, key: str) -> Any:
    return copy.deepcopy(stack_settings(stack)[f"{NS}:{key}"])


def refused(load_config: Any, overrides: dict[str, Any], stack: str = "dev", **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(stack, overrides, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and "validation error" not in message
    return message


# --- existing clusters: storage class (item 3) and image ----------------------------------------------------------


def test_existing_cluster_must_name_prometheus_storage_class(load_config: Any) -> None:
    message = refused(load_config, EXISTING, secrets=PLACEHOLDER_SECRETS)
    assert message.startswith(f"config key '{NS}:addons.prometheus.storageClassName': is required")
    assert "kubectl get storageclass" in message
    named = {**EXISTING, "addons": {"prometheus": {"storageClassName": "standard"}}}
    assert load_config("dev", named, secrets=PLACEHOLDER_SECRETS).addons.prometheus.storage_class_name == "standard"


def test_existing_cluster_with_its_own_monitoring_needs_no_storage_class(load_config: Any) -> None:
    overrides = {**EXISTING, "addons": {"monitoring": "existing"}}
    assert load_config("dev", overrides, secrets=PLACEHOLDER_SECRETS).addons.monitoring == "existing"


def test_existing_cluster_ephemeral_model_cache_needs_a_storage_class(load_config: Any) -> None:
    overrides = {
        "clusterSource": "existing",
        "inference": {"image": "registry.example.com/s:1", "modelCache": {"type": "ephemeral"}},
        "addons": {"monitoring": "existing"},
    }
    message = refused(load_config, overrides, secrets=PLACEHOLDER_SECRETS)
    assert message.startswith(f"config key '{NS}:inference.modelCache.storageClassName'")


def test_existing_cluster_needs_a_prebuilt_image(load_config: Any) -> None:
    overrides = {"clusterSource": "existing", "addons": {"monitoring": "existing"}}
    message = refused(load_config, overrides, secrets=PLACEHOLDER_SECRETS)
    assert message.startswith(f"config key '{NS}:inference.image': is required with clusterSource 'existing'")


# --- GPU pools of one shape that hold the pod (item 6, and gpuCount) ---------------------------------------------


def test_prod_pod_does_not_fit_a_4_vcpu_spot_type(load_config: Any) -> None:
    pools = section("prod", "nodePools")
    pools["gpuSpot"]["instanceTypes"] = ["g6.xlarge", "g5.xlarge"]  # 4 vCPU each, prod requests 4 CPU
    message = refused(load_config, {"nodePools": pools}, stack="prod")
    assert message.startswith(f"config key '{NS}:nodePools.gpuSpot.instanceTypes'")
    assert "cannot fit on g6.xlarge: it requests 4 CPU" in message


def test_the_old_prod_spot_pool_mixing_sizes_is_refused(load_config: Any) -> None:
    pools = section("prod", "nodePools")
    pools["gpuSpot"]["instanceTypes"] = ["g6e.2xlarge", "g6e.4xlarge", "g6e.xlarge", "g5.4xlarge"]
    message = refused(load_config, {"nodePools": pools}, stack="prod")
    assert "mixes node sizes: g6e.4xlarge has 16 vCPU / 128 GiB / 1 GPU but g6e.2xlarge has 8 vCPU / 64 GiB" in message


def test_memory_that_no_node_can_offer_is_refused(load_config: Any) -> None:
    inference = section("dev", "inference")
    inference["resources"] = {"memoryRequest": "31Gi", "memoryLimit": "32Gi"}
    message = refused(load_config, {"inference": inference})
    assert "requests 31.0 GiB of memory" in message


def test_gpu_count_above_the_pools_gpus_is_refused(load_config: Any) -> None:
    inference = section("dev", "inference")
    inference["gpuCount"] = 2
    message = refused(load_config, {"inference": inference})
    assert "asks for 2 GPUs but the type has 1" in message


def test_allocatable_follows_the_eks_reservations() -> None:
    cpu, memory = allocatable(GPU_INSTANCE_TYPES["g6e.xlarge"])
    assert cpu == Decimal("3.92")  # 4 cores less 6 % + 1 % + 0.5 % + 0.5 % of one core
    assert memory == (32 * 1024 - (255 + 11 * 110) - 100) * 2**20
    assert pod_fits(GPU_INSTANCE_TYPES["g6e.2xlarge"], Decimal(4), Decimal(24 * 2**30), 1) is None


def test_every_gpu_shape_is_self_consistent() -> None:
    for name, shape in GPU_INSTANCE_TYPES.items():
        assert shape.gpus in (1, 4, 8), name
        assert shape.memory_gib >= 4 * shape.vcpus - 1, name
        assert shape.accelerator.startswith("nvidia-"), name


# --- Kubernetes versions (item 12) and endpoint access ------------------------------------------------------------


def test_1_35_is_accepted_and_the_default() -> None:
    assert DEFAULT_KUBERNETES_VERSION == "1.35" == ClusterConfig(public_access_cidrs=OFFICE).version
    assert "1.35" in CLUSTER_AUTOSCALER_IMAGE_TAGS
    assert section("dev", "cluster")["version"] == section("prod", "cluster")["version"] == "1.35"


def test_a_version_past_standard_support_warns_of_extended_support_cost() -> None:
    old = ClusterConfig(version="1.33", public_access_cidrs=OFFICE)
    warning = old.support_warning(datetime.date(2026, 12, 1))
    assert warning is not None and "USD 0.60 instead of 0.10 per cluster-hour" in warning
    assert ClusterConfig(version="1.34", public_access_cidrs=OFFICE).support_warning(datetime.date(2026, 12, 1)) is None
    assert ClusterConfig(public_access_cidrs=OFFICE).support_warning(datetime.date(2026, 12, 1)) is None


def test_private_endpoint_off_with_restricted_public_cidrs_is_refused(load_config: Any) -> None:
    cluster = section("dev", "cluster") | {"endpointPrivateAccess": False}
    message = refused(load_config, {"cluster": cluster})
    assert "nodes reach the API from the NAT gateways' addresses" in message
    assert "set endpointPrivateAccess: true" in message


def test_viewers_must_be_iam_principals(load_config: Any) -> None:
    cluster = section("dev", "cluster") | {"viewers": ["ci-preview"]}
    assert "is not an IAM role or user ARN" in refused(load_config, {"cluster": cluster})


# --- the rest -------------------------------------------------------------------------------------------------------


def test_default_model_is_r1_distill_qwen_7b_in_safetensors() -> None:
    assert InferenceConfig().model.id == DEFAULT_MODEL_ID == "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"


def test_irsa_role_arn_is_refused_on_a_cluster_this_stack_creates(load_config: Any) -> None:
    inference = section("dev", "inference") | {"serviceAccountRoleArn": "arn:aws:iam::123456789012:role/reader"}
    message = refused(load_config, {"inference": inference})
    assert message.startswith(f"config key '{NS}:inference.serviceAccountRoleArn': is for clusterSource 'existing'")


def test_gp3_throughput_needs_enough_iops(load_config: Any) -> None:
    pools = section("dev", "nodePools")
    pools["gpuSpot"]["diskThroughputMibps"] = 1000
    message = refused(load_config, {"nodePools": pools})
    assert "needs at least 4000 diskIops" in message
    pools["gpuSpot"]["diskIops"] = 4000
    assert load_config("dev", {"nodePools": pools}).node_pools.gpu_spot.disk_throughput_mibps == 1000


def test_alert_receiver_and_its_secret_go_together(load_config: Any) -> None:
    addons = section("dev", "addons") | {"alertmanager": {"receiver": "slack", "slackChannel": "#llm"}}
    message = refused(load_config, {"addons": addons})
    assert message.startswith(f"config key '{NS}:alertReceiverCredential'")
    assert "pulumi config set --secret alertReceiverCredential" in message
    secrets = {"apiKeys": "k", "alertReceiverCredential": "https://hooks.slack.com/services/T/B/X"}
    assert load_config("dev", {"addons": addons}, secrets=secrets).addons.alertmanager.receiver == "slack"
    lonely = refused(load_config, {}, secrets=secrets)
    assert "alerts would silently go nowhere" in lonely


USER_ARN = "arn:aws:iam::123456789012:user/reader"


def test_the_pods_iam_role_must_be_a_role_not_a_user(load_config: Any) -> None:
    inference = {"image": "registry.example.com/deepseek/server:1.2.3", "serviceAccountRoleArn": USER_ARN}
    message = refused(load_config, EXISTING | {"inference": inference}, secrets=PLACEHOLDER_SECRETS)
    assert message.startswith(f"config key '{NS}:inference.serviceAccountRoleArn': serviceAccountRoleArn")
    assert "is not an IAM role ARN" in message


def test_quantities_scale_with_their_suffix_kept() -> None:
    assert [scale_quantity(q, n) for q, n in (("16Gi", 3), ("500m", 3), ("1.5Gi", 2), ("2", 6))] == [
        "48Gi",
        "1500m",
        "3Gi",
        "12",
    ]


def test_a_fraction_set_with_pulumi_config_path_is_read_as_a_number(load_config: Any) -> None:
    """`pulumi config set --path clusterAutoscaler.scaleDownUtilizationThreshold 0.6` stores the string "0.6"."""
    autoscaler = section("dev", "clusterAutoscaler") | {"scaleDownUtilizationThreshold": "0.6"}
    config = load_config("dev", {"clusterAutoscaler": autoscaler})
    assert config.cluster_autoscaler.scale_down_utilization_threshold == 0.6


def test_an_arn_with_a_trailing_newline_is_refused(load_config: Any) -> None:
    cluster = section("dev", "cluster") | {"viewers": ["arn:aws:iam::123456789012:role/ci-preview\n"]}
    assert "is not an IAM role or user ARN" in refused(load_config, {"cluster": cluster})


def test_tensor_parallel_size_above_the_pods_gpus_is_refused(load_config: Any) -> None:
    inference = section("dev", "inference")
    inference["tensorParallelSize"] = 2
    message = refused(load_config, {"inference": inference})
    assert message.startswith(f"config key '{NS}:inference'")
    assert "tensorParallelSize 2 needs as many GPUs, and gpuCount is 1" in message
