"""The one stack both real-engine suites run: prod's inference settings on a cluster it did not create, whose
monitoring (Prometheus Operator CRDs, adapter) already runs and whose GPU add-ons are already there, with a
prebuilt image; and a test cluster whose nodes carry prod's three pools in prod's three zones."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from stack.config.aws import NodePoolsConfig
from stack.testing.harness import PROJECT, stack_settings

from tests.cluster.kwok import Cluster, LoadBalancerStandIn, kwok_cluster, prepare_like_an_existing_cluster
from tests.cluster.nodes import node_manifests

NS = "deepseek-inference"
PROD = stack_settings("prod")
EXISTING_PROD: dict[str, Any] = {
    "clusterSource": "existing",
    "inference": {**PROD[f"{PROJECT}:inference"], "image": "registry.example.com/deepseek/server:1.2.3"},
    "addons": {"monitoring": "existing", "devicePlugin": {"enabled": False}, "dcgmExporter": {"enabled": False}},
}
ZONES = [zone["name"] for zone in PROD[f"{PROJECT}:network"]["zones"]]


@contextmanager
def prod_like_cluster(workdir: Path) -> Iterator[Cluster]:
    """A running test cluster with prod's node pools, the operator's CRDs and the LoadBalancer stand-in."""
    with kwok_cluster(workdir) as cluster, LoadBalancerStandIn(cluster):
        pools = NodePoolsConfig.model_validate(PROD[f"{PROJECT}:nodePools"])
        prepare_like_an_existing_cluster(cluster, node_manifests(pools, ZONES))
        yield cluster
