"""`StackConfig`: the one validated config model, read once from `pulumi.Config` by `load_stack_config()`."""

from __future__ import annotations

import json
from typing import Any, Literal, Self

import pulumi
import yaml
from pydantic import ConfigDict, Field, ValidationError, model_validator

from stack.config.aws import (
    ClusterAutoscalerConfig,
    ClusterConfig,
    ImageRegistryConfig,
    NetworkConfig,
    NodePoolsConfig,
)
from stack.config.base import ConfigSection
from stack.config.cross_checks import cross_check
from stack.config.errors import ConfigError, from_validation_error, key_path
from stack.config.kubernetes import AddonsConfig, InferenceConfig, check_api_keys

# Pulumi config keys (namespace: the project name) that hold YAML objects, and the StackConfig field of each.
OBJECT_KEYS: dict[str, str] = {
    "network": "network",
    "cluster": "cluster",
    "nodePools": "node_pools",
    "clusterAutoscaler": "cluster_autoscaler",
    "imageRegistry": "image_registry",
    "addons": "addons",
    "inference": "inference",
}
SCALAR_KEYS: dict[str, str] = {"clusterSource": "cluster_source", "environment": "environment"}
SECRET_KEYS: tuple[str, ...] = ("kubeconfig", "apiKeys", "alertReceiverCredential")


class StackConfig(ConfigSection):
    """Everything the program needs, validated; components get typed pieces of it, never `pulumi.Config`."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    # The Pulumi project and stack names (not stack-file keys).
    project: str
    stack: str
    environment: str = Field(
        description="Tagged on every AWS resource; `prod` holds the stack to the policy pack's strictest rules. "
        "Unset: the stack's name."
    )
    cluster_source: Literal["eks", "existing"] = Field(
        "eks",
        description="`eks`: this program creates the VPC, the EKS cluster and its node pools. `existing`: deploy "
        "the Kubernetes layer into the cluster of the `kubeconfig` secret, and create no AWS resource.",
    )
    region: str | None = Field(
        None, description="The AWS region every zone lies in; required with `clusterSource: eks`."
    )
    network: NetworkConfig | None = Field(
        None, description="The VPC and its zones; required with `clusterSource: eks`."
    )
    cluster: ClusterConfig | None = Field(
        None, description="The EKS control plane and who may reach it; required with `clusterSource: eks`."
    )
    node_pools: NodePoolsConfig = Field(NodePoolsConfig(), description="The three managed node groups.")
    cluster_autoscaler: ClusterAutoscalerConfig = Field(
        ClusterAutoscalerConfig(), description="The cluster-autoscaler (stacks that create their cluster)."
    )
    image_registry: ImageRegistryConfig = Field(
        ImageRegistryConfig(), description="The ECR repository `pulumi up` builds the server image into."
    )
    addons: AddonsConfig = Field(AddonsConfig(), description="GPU plumbing and the monitoring stack.")
    inference: InferenceConfig = Field(InferenceConfig(), description="The model deployment.")
    # Secrets, as secret Outputs (never printed, encrypted in state).
    kubeconfig: pulumi.Output[str] | None = Field(
        default=None,
        exclude=True,
        description="The kubeconfig of an existing cluster (`clusterSource: existing`): "
        "`pulumi config set --secret kubeconfig < file`.",
    )
    api_keys: pulumi.Output[str] | None = Field(
        default=None,
        exclude=True,
        description="Comma-separated API keys the server accepts (`pulumi config set --secret apiKeys k1,k2`); "
        "required when `inference.requireApiKeys`. Unset: an open endpoint.",
    )
    alert_receiver_credential: pulumi.Output[str] | None = Field(
        default=None,
        exclude=True,
        description="The Slack incoming-webhook URL, PagerDuty Events v2 routing key or webhook URL of "
        "`addons.alertmanager.receiver`.",
    )

    @model_validator(mode="after")
    def _source_needs(self) -> Self:
        if self.cluster_source == "existing":
            if self.kubeconfig is None:
                raise ValueError(
                    "clusterSource 'existing' needs the 'kubeconfig' secret: "
                    "run `pulumi config set --secret kubeconfig < path/to/kubeconfig`"
                )
            return self
        for key, value in (("aws:region", self.region), ("network", self.network), ("cluster", self.cluster)):
            if value is None:
                raise ValueError(f"clusterSource 'eks' needs the '{key}' key; add it to the stack file")
        for zone in self.network.zones if self.network is not None else []:
            if self.region is not None and not zone.name.startswith(self.region):
                raise ValueError(
                    f"network zone {zone.name!r} is not in aws:region {self.region!r}; list zones of that region"
                )
        return self

    @property
    def cluster_name(self) -> str:
        if self.cluster is not None and self.cluster.name is not None:
            return self.cluster.name
        return f"{self.project}-{self.stack}"

    @property
    def tags(self) -> dict[str, str]:
        """Tags for every AWS resource (cost allocation, and the policy pack's notion of environment)."""
        return {
            "project": self.project,
            "stack": self.stack,
            "environment": self.environment,
            "managed-by": "pulumi",
        }


def _read_object(config: pulumi.Config, key: str) -> Any:
    text = config.get(key)
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        problem, fix = "is not a YAML mapping", "write it as a nested YAML mapping"
        raise ConfigError(key_path(config.name, [key]), problem, fix) from None


def load_stack_config(config: pulumi.Config | None = None, aws_config: pulumi.Config | None = None) -> StackConfig:
    """Reads and validates the whole stack config once. Raises `ConfigError` (one line: key and fix)."""
    config = config or pulumi.Config()
    aws_config = aws_config or pulumi.Config("aws")
    namespace = config.name

    raw: dict[str, Any] = {"project": pulumi.get_project(), "stack": pulumi.get_stack()}
    for key, field in {**OBJECT_KEYS, **SCALAR_KEYS}.items():
        value = _read_object(config, key) if key in OBJECT_KEYS else config.get(key)
        if value is not None:
            raw[field] = value
    raw.setdefault("environment", raw["stack"])
    raw["region"] = aws_config.get("region")

    kubeconfig = config.get("kubeconfig")
    if kubeconfig is not None:
        _check_kubeconfig(namespace, kubeconfig)
        raw["kubeconfig"] = pulumi.Output.secret(kubeconfig)
    api_keys = config.get("apiKeys")
    if api_keys is not None:
        raw["api_keys"] = pulumi.Output.secret(api_keys)
    alert_credential = config.get("alertReceiverCredential")
    if alert_credential is not None:
        raw["alert_receiver_credential"] = pulumi.Output.secret(alert_credential)

    try:
        stack_config = StackConfig.model_validate(raw)
    except ValidationError as error:
        raise _to_config_error(error, namespace) from None
    try:
        check_api_keys(stack_config.inference, api_keys)
    except ValueError as error:
        raise ConfigError(key_path(namespace, ["apiKeys"]), str(error)) from None
    cross_check(stack_config, alert_credential)
    return stack_config


_FIELD_TO_KEY = {field: key for key, field in {**OBJECT_KEYS, **SCALAR_KEYS}.items()}


def _to_config_error(error: ValidationError, namespace: str) -> ConfigError:
    """Maps StackConfig's field names back to the keys written in the stack file."""
    loc = list(error.errors(include_url=False)[0]["loc"])
    if loc and isinstance(loc[0], str) and loc[0] in _FIELD_TO_KEY:
        loc[0] = _FIELD_TO_KEY[loc[0]]
    if not loc:
        # A cross-section check: its message names the key itself.
        details = error.errors(include_url=False)[0]
        return ConfigError(namespace, details["msg"].removeprefix("Value error, "))
    converted = from_validation_error(error, namespace)
    return ConfigError(key_path(namespace, loc), converted.problem, converted.fix)


def _check_kubeconfig(namespace: str, text: str) -> None:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError:
        document = None
    if not isinstance(document, dict) or not document.get("clusters"):
        raise ConfigError(
            key_path(namespace, ["kubeconfig"]),
            "is not a kubeconfig with a 'clusters' entry",
            "run `pulumi config set --secret kubeconfig < path/to/kubeconfig`",
        )
