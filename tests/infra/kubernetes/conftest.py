"""Whole-program runs for the Kubernetes layer's tests (session-scoped: each program run takes a second or two).

`dev_run` and `prod_run` come from tests/infra/conftest.py. Here: a variant of dev with every non-default
Kubernetes option switched on, and dev on an existing cluster.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from stack.plan import PLACEHOLDER_SECRETS, to_manifest
from stack.testing import ProgramRun, run_stack

Objects = Callable[[ProgramRun, str], list[dict[str, Any]]]

VARIANT_INFERENCE = {
    "name": "r1-distill",
    "namespace": "r1",
    "image": "123456789012.dkr.ecr.us-west-2.amazonaws.com/deepseek-inference@sha256:" + "a" * 64,
    "gpuCount": 2,
    "model": {"source": "s3", "s3Uri": "s3://models-bucket/deepseek/r1-distill-qwen-14b/", "dtype": "float16"},
    "modelCache": {"type": "ephemeral", "size": "100Gi", "storageClassName": "gp3"},
    "autoscaling": {"minReplicas": 2, "maxReplicas": 6, "targetRequestsPerPod": 12},
    "scheduling": {"capacityType": "any", "zoneSpread": "required"},
    "service": {
        "loadBalancerSourceRanges": ["198.51.100.0/24"],
        "extraClientCidrs": ["10.20.0.0/16"],
        "internal": True,
        "tlsCertificateArn": "arn:aws:acm:us-west-2:123456789012:certificate/abc",
    },
}
VARIANT_ADDONS = {"devicePlugin": {"timeSlicingReplicas": 4}, "prometheus": {"storageClassName": "gp3"}}
# Two GPUs per pod need pools of 4-GPU nodes (one shape per pool).
VARIANT_POOLS = {
    "system": {"instanceTypes": ["m6i.large", "m7i.large"], "minSize": 1, "maxSize": 3},
    "gpuOnDemand": {"instanceTypes": ["g6e.12xlarge"], "minSize": 0, "maxSize": 2},
    "gpuSpot": {"instanceTypes": ["g6.12xlarge", "g5.12xlarge"], "minSize": 0, "maxSize": 3},
}
# An existing cluster names what it has: a prebuilt image and the StorageClass for Prometheus.
EXISTING_CLUSTER = {
    "clusterSource": "existing",
    "inference": {"image": "registry.example.com/deepseek/server:1.2.3"},
    "addons": {"prometheus": {"storageClassName": "standard"}},
}
# An existing cluster that already runs the Prometheus Operator and prometheus-adapter.
EXISTING_MONITORING = {
    **EXISTING_CLUSTER,
    "addons": {"monitoring": "existing", "monitorLabels": {"release": "kube-prometheus-stack"}},
}


@pytest.fixture(scope="session")
def variant_run() -> ProgramRun:
    return run_stack(
        "dev", overrides={"inference": VARIANT_INFERENCE, "addons": VARIANT_ADDONS, "nodePools": VARIANT_POOLS}
    )


@pytest.fixture(scope="session")
def existing_run() -> ProgramRun:
    return run_stack("dev", overrides=EXISTING_CLUSTER, secrets=PLACEHOLDER_SECRETS)


@pytest.fixture(scope="session")
def existing_monitoring_run() -> ProgramRun:
    return run_stack("dev", overrides=EXISTING_MONITORING, secrets=PLACEHOLDER_SECRETS)


@pytest.fixture(scope="session")
def objects() -> Objects:
    """`objects(run, "Deployment")`: the run's Kubernetes objects of that kind, as manifests (ints, camelCase)."""

    def find(run: ProgramRun, kind: str) -> list[dict[str, Any]]:
        return [
            to_manifest(resource)
            for resource in run.resources
            if resource.type.startswith("kubernetes:") and resource.type.endswith(f":{kind}")
        ]

    return find
