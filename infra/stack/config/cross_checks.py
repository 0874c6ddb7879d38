"""Checks that read more than one section of the stack config (each section validated itself first).

Each raises `ConfigError` naming the key to change: what a first `pulumi up` would otherwise find out the hard way,
after the cluster exists (a volume that never binds, a pod no node can hold, an image nobody pushed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stack.config.errors import ConfigError, key_path
from stack.config.instance_types import pod_fits
from stack.config.kubernetes import S3_DOWNLOAD_REQUESTS, parse_quantity

if TYPE_CHECKING:
    from stack.config.loader import StackConfig


def cross_check(config: StackConfig, alert_receiver_credential: str | None) -> None:
    """Raises ConfigError for the first combination of keys that cannot work together."""
    ns = config.project
    _check_alert_receiver(config, alert_receiver_credential, ns)
    if config.cluster_source == "existing":
        _check_existing_cluster(config, ns)
    else:
        _check_created_cluster(config, ns)


def _check_alert_receiver(config: StackConfig, credential: str | None, ns: str) -> None:
    receiver = config.addons.alertmanager.receiver
    has_credential = bool((credential or "").strip())
    if receiver != "none" and not has_credential:
        raise ConfigError(
            key_path(ns, ["alertReceiverCredential"]),
            f"addons.alertmanager.receiver is {receiver!r} but the secret is not set",
            "run `pulumi config set --secret alertReceiverCredential <url or routing key>`",
        )
    if receiver == "none" and has_credential:
        raise ConfigError(
            key_path(ns, ["addons", "alertmanager", "receiver"]),
            "is 'none' but the alertReceiverCredential secret is set, so alerts would silently go nowhere",
            "set receiver to slack, pagerduty or webhook, or remove the secret",
        )


def _check_existing_cluster(config: StackConfig, ns: str) -> None:
    inference = config.inference
    if inference.image is None:
        raise ConfigError(
            key_path(ns, ["inference", "image"]),
            "is required with clusterSource 'existing' (the image is built only into the ECR repository of a "
            "stack that creates its cluster)",
            "push docker/Dockerfile.cuda's image to a registry your nodes can pull from and set its tag or digest",
        )
    if config.addons.monitoring == "install" and config.addons.prometheus.storage_class_name is None:
        raise ConfigError(
            key_path(ns, ["addons", "prometheus", "storageClassName"]),
            "is required with clusterSource 'existing': EKS 1.30+ marks no StorageClass default, and Prometheus' "
            "volume would never bind",
            "set it to one of `kubectl get storageclass` (or monitoring: existing)",
        )
    cache = inference.model_cache
    if cache.type == "ephemeral" and cache.storage_class_name is None:
        raise ConfigError(
            key_path(ns, ["inference", "modelCache", "storageClassName"]),
            "is required for an 'ephemeral' model cache with clusterSource 'existing' (the cluster may have no "
            "default StorageClass)",
            "set it to one of `kubectl get storageclass`",
        )


def _check_created_cluster(config: StackConfig, ns: str) -> None:
    inference = config.inference
    if inference.service_account_role_arn is not None:
        raise ConfigError(
            key_path(ns, ["inference", "serviceAccountRoleArn"]),
            "is for clusterSource 'existing' (IRSA); a cluster this stack creates has no OIDC provider, and it "
            "grants the pods S3 read access through EKS Pod Identity by itself",
            "remove it",
        )
    resources = inference.resources
    cpu = parse_quantity(resources.cpu_request)
    memory = parse_quantity(resources.memory_request)
    if inference.model.source == "s3":
        cpu = max(cpu, parse_quantity(S3_DOWNLOAD_REQUESTS["cpu"]))
        memory = max(memory, parse_quantity(S3_DOWNLOAD_REQUESTS["memory"]))
    # Every type of a pool has one shape (GpuNodePoolConfig checks it), so its first type stands for the pool.
    for key, pool in (("gpuOnDemand", config.node_pools.gpu_on_demand), ("gpuSpot", config.node_pools.gpu_spot)):
        problem = pod_fits(pool.shape, cpu, memory, inference.gpu_count)
        if problem is not None:
            raise ConfigError(
                key_path(ns, ["nodePools", key, "instanceTypes"]),
                f"the inference pod cannot fit on {pool.instance_types[0]}: it {problem}",
                "use a larger instance type or lower inference.resources / inference.gpuCount",
            )
