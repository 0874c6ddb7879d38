"""The Kubernetes layer on a real control plane: what the offline plan renders for an existing-cluster prod stack,
applied to a real API server (admission: Pod Security, ResourceQuota, LimitRange, PriorityClass), scheduled by the
real scheduler onto nodes that carry the node pools' contract, and driven by the real controllers. The mocks
accept anything; these tests fail where a cluster would refuse.

Only kwok's kubelets are fake (nodes Ready, pods Running) and a stand-in gives the LoadBalancer Service an address.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from stack.nodes import CAPACITY_TYPE_LABEL, GPU_PRESENT_LABEL, NODE_POOL_LABEL, ZONE_LABEL
from stack.plan import run_plan

from tests.cluster.existing_prod import EXISTING_PROD, NS, ZONES, prod_like_cluster
from tests.cluster.kwok import STAND_IN_HOSTNAME, Cluster

pytestmark = pytest.mark.slow

STACK = "prod"
MAX_REPLICAS = EXISTING_PROD["inference"]["autoscaling"]["maxReplicas"]


def until(check: Callable[[], Any], what: str, seconds: float = 60) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def plan_objects() -> list[dict[str, Any]]:
    return run_plan(STACK, overrides=EXISTING_PROD).kubernetes_objects()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, plan_objects: list[dict[str, Any]]) -> Iterator[Cluster]:
    with prod_like_cluster(Path(tmp_path_factory.mktemp("kwok"))) as cluster:
        # Cluster-scoped and namespaces first, as Pulumi orders them by their dependencies.
        first = [o for o in plan_objects if o["kind"] in ("Namespace", "PriorityClass")]
        cluster.apply(first)
        cluster.apply([o for o in plan_objects if o not in first])
        yield cluster


def pods(cluster: Cluster) -> list[dict[str, Any]]:
    return cluster.get("pods", "-n", NS, "-l", "app.kubernetes.io/name=deepseek-inference")["items"]  # type: ignore[no-any-return]


def running(cluster: Cluster) -> list[dict[str, Any]]:
    return [pod for pod in pods(cluster) if pod["status"].get("phase") == "Running"]


def nodes_by_name(cluster: Cluster) -> dict[str, dict[str, str]]:
    return {node["metadata"]["name"]: node["metadata"]["labels"] for node in cluster.get("nodes")["items"]}


def test_every_object_of_the_plan_exists_in_the_cluster(cluster: Cluster, plan_objects: list[dict[str, Any]]) -> None:
    for manifest in plan_objects:
        assert cluster.find(manifest) is not None, f"{manifest['kind']} {manifest['metadata']['name']} is missing"


def within(expected: Any, actual: Any) -> bool:
    """`expected` is contained in `actual` (the API server adds defaults, never changes what was sent)."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(within(v, actual.get(k)) for k, v in expected.items())
    if isinstance(expected, list):
        return isinstance(actual, list) and len(expected) == len(actual) and all(map(within, expected, actual))
    return bool(expected == actual)


@pytest.mark.parametrize(
    "kind", ["PriorityClass", "NetworkPolicy", "ServiceMonitor", "PrometheusRule", "ResourceQuota"]
)
def test_objects_hold_the_content_the_plan_shows(
    cluster: Cluster, plan_objects: list[dict[str, Any]], kind: str
) -> None:
    (manifest,) = [o for o in plan_objects if o["kind"] == kind]
    live = cluster.find(manifest)
    assert live is not None
    for field in ("spec", "value", "preemptionPolicy"):
        if field in manifest:
            assert within(manifest[field], live[field]), f"{kind}.{field} differs from the plan"


def test_the_namespace_enforces_restricted_pod_security(cluster: Cluster) -> None:
    labels = cluster.get("namespace", NS)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    privileged = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "privileged", "namespace": NS},
        "spec": {"containers": [{"name": "c", "image": "busybox:1", "securityContext": {"privileged": True}}]},
    }
    refused = cluster.kubectl("apply", "-f", "-", input_text=json.dumps(privileged), check=False)
    assert refused.returncode != 0 and 'violates PodSecurity "restricted:latest"' in refused.stderr


def test_server_pods_are_admitted_and_land_on_gpu_nodes_of_the_preferred_capacity_across_zones(
    cluster: Cluster,
) -> None:
    cluster.kubectl("scale", "deployment/deepseek", "-n", NS, "--replicas=3")
    placed = until(lambda: len(running(cluster)) == 3 and running(cluster), "3 server pods Running")
    labels = nodes_by_name(cluster)
    chosen = [labels[pod["spec"]["nodeName"]] for pod in placed]
    assert all(node[GPU_PRESENT_LABEL] == "true" for node in chosen)
    # prod prefers on-demand capacity, and spreads across zones (maxSkew 1 over 3 zones: one pod per zone).
    assert [node[CAPACITY_TYPE_LABEL] for node in chosen] == ["ON_DEMAND"] * 3
    assert sorted(node[ZONE_LABEL] for node in chosen) == sorted(ZONES)
    assert {node[NODE_POOL_LABEL] for node in chosen} == {"gpu-on-demand"}


def test_the_service_gets_the_load_balancer_address(cluster: Cluster) -> None:
    def address() -> str:
        ingress = cluster.get("service", "deepseek", "-n", NS).get("status", {}).get("loadBalancer", {})
        return str((ingress.get("ingress") or [{}])[0].get("hostname", ""))

    assert until(address, "the stand-in's address") == STAND_IN_HOSTNAME


def test_scaling_past_the_quota_leaves_the_extra_pods_unadmitted(cluster: Cluster) -> None:
    quota_pods = MAX_REPLICAS + 1
    cluster.kubectl("scale", "deployment/deepseek", "-n", NS, f"--replicas={quota_pods + 2}")

    def refused() -> bool:
        events = cluster.get("events", "-n", NS, "--field-selector=reason=FailedCreate")["items"]
        return any("exceeded quota" in event["message"] for event in events)

    until(refused, "the ReplicaSet's FailedCreate event naming the quota")
    assert len(pods(cluster)) == quota_pods, "the quota admits maxReplicas + 1 pods, no more"
    cluster.kubectl("scale", "deployment/deepseek", "-n", NS, "--replicas=3")
    until(lambda: len(pods(cluster)) == 3, "the Deployment back at 3 pods", seconds=90)
    until(lambda: len(running(cluster)) == 3, "3 pods Running again")


def test_a_pod_asking_for_more_gpus_than_the_quota_allows_is_refused(cluster: Cluster) -> None:
    gpus = MAX_REPLICAS + 2
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "greedy", "namespace": NS},
        "spec": {
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "c",
                    "image": "registry.example.com/x:1",
                    "resources": {"limits": {"nvidia.com/gpu": str(gpus)}, "requests": {"nvidia.com/gpu": str(gpus)}},
                    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                }
            ],
        },
    }
    refused = cluster.kubectl("apply", "-f", "-", input_text=json.dumps(pod), check=False)
    assert refused.returncode != 0
    assert "exceeded quota: deepseek-quota" in refused.stderr and "requests.nvidia.com/gpu" in refused.stderr


def test_a_drain_evicts_no_more_than_the_pdb_allows(cluster: Cluster) -> None:
    until(lambda: len(running(cluster)) == 3, "3 pods Running")
    until(
        lambda: cluster.get("pdb", "deepseek", "-n", NS).get("status", {}).get("disruptionsAllowed") == 1,
        "the PDB to allow one disruption",
    )
    # No free GPU node: an evicted pod's replacement stays Pending, so the budget is really spent.
    gpu_nodes = [name for name, labels in nodes_by_name(cluster).items() if labels.get(GPU_PRESENT_LABEL) == "true"]
    cluster.kubectl("cordon", *gpu_nodes)
    first, second = (pod["spec"]["nodeName"] for pod in running(cluster)[:2])
    drain = ("drain", "--ignore-daemonsets", "--delete-emptydir-data", "--disable-eviction=false")
    try:
        cluster.kubectl(*drain, "--timeout=60s", first)
        blocked = cluster.kubectl(*drain, "--timeout=8s", second, check=False)
        assert blocked.returncode != 0
        assert "violate the pod's disruption budget" in blocked.stderr
        assert len(running(cluster)) == 2, "one pod evicted, the other kept by the budget"
    finally:
        cluster.kubectl("uncordon", *gpu_nodes)
    until(lambda: len(running(cluster)) == 3, "the evicted pod replaced once nodes are schedulable")


def test_the_hpa_is_accepted_and_scales_on_the_metric_the_adapter_rules_serve(cluster: Cluster) -> None:
    hpa = cluster.get("hpa", "deepseek", "-n", NS)
    (metric,) = hpa["spec"]["metrics"]
    rules = cluster.get("configmap", "deepseek-inference-adapter-rules", "-n", "monitoring")["data"]["config.yaml"]
    assert metric["type"] == "Pods" and f"as: {metric['pods']['metric']['name']}" in rules
    assert hpa["spec"]["maxReplicas"] == MAX_REPLICAS
