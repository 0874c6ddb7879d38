"""The `addons` and `inference` config models: defaults, and one clear error per mistake."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from stack.config import ConfigError
from stack.config.kubernetes import AddonsConfig, InferenceConfig, check_api_keys, parse_quantity


def error_of(model: type[InferenceConfig] | type[AddonsConfig], data: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(data)
    return str(caught.value)


def test_defaults_describe_one_7b_model_on_one_gpu() -> None:
    config = InferenceConfig()
    assert config.gpu_count == 1
    assert config.model.id.startswith("deepseek-ai/")
    assert (config.resources.cpu_request, config.resources.memory_limit) == ("2", "32Gi")
    assert config.require_api_keys is False
    assert AddonsConfig().device_plugin.time_slicing_replicas == 1


def test_stack_file_keys_are_camel_case() -> None:
    config = InferenceConfig.model_validate(
        {"gpuCount": 2, "autoscaling": {"maxReplicas": 5}, "service": {"loadBalancerSourceRanges": ["10.0.0.0/8"]}}
    )
    assert config.gpu_count == 2
    assert config.autoscaling.max_replicas == 5
    assert config.service.load_balancer_source_ranges == ("10.0.0.0/8",)


def test_unknown_keys_are_refused() -> None:
    assert "gpuCont" in error_of(InferenceConfig, {"gpuCont": 2})
    assert "timeSlicing" in error_of(AddonsConfig, {"devicePlugin": {"timeSlicing": 2}})


def test_strings_are_not_numbers() -> None:
    assert "valid integer" in error_of(InferenceConfig, {"gpuCount": "1"})


@pytest.mark.parametrize("image", ["repo/server", "repo/server:latest", "repo/server@sha256:abc"])
def test_image_must_be_pinned(image: str) -> None:
    assert "image" in error_of(InferenceConfig, {"image": image})


def test_pinned_images_pass() -> None:
    assert InferenceConfig(image="registry:5000/team/server:1.2.3").image == "registry:5000/team/server:1.2.3"
    assert InferenceConfig(image="server@sha256:" + "0" * 64).image == "server@sha256:" + "0" * 64
    assert InferenceConfig().image is None, "no image: the stack builds one"


def test_s3_source_needs_an_s3_uri() -> None:
    assert "model.s3Uri" in error_of(InferenceConfig, {"model": {"source": "s3"}})
    assert "model.s3Uri" in error_of(InferenceConfig, {"model": {"source": "s3", "s3Uri": "https://bucket/x"}})
    assert "set source: s3" in error_of(InferenceConfig, {"model": {"s3Uri": "s3://bucket/x"}})


def test_requests_within_limits() -> None:
    assert "cpu request 8 is above its limit 4" in error_of(InferenceConfig, {"resources": {"cpuRequest": "8"}})
    message = error_of(InferenceConfig, {"resources": {"memoryRequest": "40Gi"}})
    assert "memory request 40Gi is above its limit 32Gi" in message
    assert "not a Kubernetes quantity" in error_of(InferenceConfig, {"resources": {"cpuLimit": "four"}})


def test_parse_quantity() -> None:
    assert parse_quantity("500m") == parse_quantity("0.5")
    assert parse_quantity("1Gi") == 1024 * parse_quantity("1Mi")


def test_min_replicas_not_above_max() -> None:
    assert "minReplicas 3 > maxReplicas 2" in error_of(InferenceConfig, {"autoscaling": {"minReplicas": 3}})


def test_cidrs_are_validated() -> None:
    assert "not a network CIDR" in error_of(InferenceConfig, {"service": {"loadBalancerSourceRanges": ["10.0.0.1/8"]}})
    assert "at least one CIDR" in error_of(InferenceConfig, {"service": {"loadBalancerSourceRanges": []}})


def test_existing_claim_needs_a_claim_name() -> None:
    assert "claimName" in error_of(InferenceConfig, {"modelCache": {"type": "existingClaim"}})


def test_names_are_dns_labels() -> None:
    assert "DNS label" in error_of(InferenceConfig, {"namespace": "Deepseek_Prod"})
    assert "DNS label" in error_of(AddonsConfig, {"monitoringNamespace": "-monitoring"})


def test_grace_period_covers_pause_and_drain() -> None:
    lifecycle = InferenceConfig.model_validate(
        {"lifecycle": {"preStopSleepSeconds": 20, "drainTimeoutSeconds": 60}}
    ).lifecycle
    assert lifecycle.termination_grace_period_seconds == 85


def test_prometheus_retention_format() -> None:
    assert "duration like '15d'" in error_of(AddonsConfig, {"prometheus": {"retention": "15 days"}})
    assert "size like '45GB'" in error_of(AddonsConfig, {"prometheus": {"retentionSize": "45Gi"}})


def test_required_api_keys() -> None:
    required = InferenceConfig(require_api_keys=True)
    with pytest.raises(ValueError, match="apiKeys"):
        check_api_keys(required, None)
    with pytest.raises(ValueError, match="apiKeys"):
        check_api_keys(required, " , ")
    check_api_keys(required, "key-1")
    check_api_keys(InferenceConfig(), None)


def test_prod_stack_requires_api_keys(load_config: Any) -> None:
    assert load_config("prod").inference.require_api_keys is True
    with pytest.raises(ConfigError, match="apiKeys"):
        load_config("prod", secrets={"apiKeys": " "})
    assert load_config("dev", secrets={"apiKeys": " "}).inference.require_api_keys is False
