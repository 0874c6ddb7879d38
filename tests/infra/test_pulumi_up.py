"""The real `pulumi up --policy-pack policy` (CLI, engine, Kubernetes provider, built from source; the program started
from Pulumi.yaml by the Python language host) of an existing-cluster stack file onto the real test cluster: it
succeeds with the policy pack passing, creates what the offline plan shows, has no perpetual diff, updates in place
and destroys everything it made; a broken stack file gets the program's one line; a non-compliant one is refused
by the policy pack inside the real preview."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from stack.nodes import CAPACITY_TYPE_LABEL, GPU_PRESENT_LABEL
from stack.plan import Plan
from stack.testing import run_program, stack_config

from tests.cluster.existing_prod import EXISTING_PROD, NS, prod_like_cluster
from tests.cluster.kwok import STAND_IN_HOSTNAME, Cluster
from tests.cluster.pulumi_cli import PulumiProject, pulumi_project

pytestmark = pytest.mark.slow

STACK = "e2e"
# The existing-cluster prod stack file, with an autoscaling range this suite changes in place.
STACK_CONFIG: dict[str, Any] = {
    **EXISTING_PROD,
    "inference": {**EXISTING_PROD["inference"], "autoscaling": {"minReplicas": 2, "maxReplicas": 4}},
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with prod_like_cluster(Path(tmp_path_factory.mktemp("kwok"))) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, cluster: Cluster) -> PulumiProject:
    project = pulumi_project(Path(tmp_path_factory.mktemp("pulumi")))
    project.init_stack(STACK, STACK_CONFIG, cluster_secrets(cluster))
    return project


def cluster_secrets(cluster: Cluster) -> dict[str, str]:
    return {"kubeconfig": cluster.kubeconfig.read_text(), "apiKeys": "e2e-key-1,e2e-key-2"}


@pytest.fixture(scope="module")
def first_up(project: PulumiProject) -> dict[str, Any]:
    return project.up(STACK)


def planned_objects(project: PulumiProject) -> list[dict[str, Any]]:
    """What the offline plan renders for the same stack file (under mocks, in this process)."""
    config, secret_keys = stack_config(
        STACK, secrets={"kubeconfig": "apiVersion: v1\nclusters: [{name: c}]\n", "apiKeys": "k"}, root=project.workdir
    )
    run = run_program(config, stack=STACK, secret_keys=secret_keys)
    return Plan(STACK, run.resources, {}, run.outputs).kubernetes_objects()


def test_pulumi_up_succeeds_and_exports_the_endpoint(first_up: dict[str, Any]) -> None:
    assert first_up["ok"], first_up.get("error")
    assert first_up["outputs"]["inferenceEndpoint"] == STAND_IN_HOSTNAME
    assert set(first_up["changes"]) == {"create"}
    # The policy pack ran inside the update and passed (the CLI lists the packs it ran).
    assert re.search(r"Policies:\s*\n\s*\S+ deepseek-inference@", first_up["log"]), first_up["log"][-2000:]


def test_the_api_keys_reach_the_cluster_and_stay_encrypted_in_the_state(
    first_up: dict[str, Any], project: PulumiProject, cluster: Cluster
) -> None:
    secret = cluster.get("secret", "deepseek-api-keys", "-n", NS)
    assert base64.b64decode(secret["data"]["API_KEYS"]).decode() == cluster_secrets(cluster)["apiKeys"]
    exported = project.cli("stack", "export", "-s", STACK)
    assert exported.returncode == 0, exported.stderr
    assert "deepseek-api-keys" in exported.stdout
    assert "e2e-key-1" not in exported.stdout, "the state holds the API keys in plain text"


def test_the_policy_pack_refuses_a_non_compliant_stack_in_the_real_preview(
    project: PulumiProject, cluster: Cluster
) -> None:
    """A production stack whose LoadBalancer admits the whole internet: the program accepts it (it is valid config),
    and the policy pack's mandatory rule fails the preview, naming the rule and the Service."""
    inference = {
        **STACK_CONFIG["inference"],
        "service": {"loadBalancerSourceRanges": ["0.0.0.0/0"], "internal": False},
    }
    project.init_stack("prod", dict(STACK_CONFIG, inference=inference), cluster_secrets(cluster))
    result = project.preview("prod")
    assert not result["ok"]
    assert "prod-load-balancer-restricted" in result["error"], result["error"][-3000:]
    assert "[mandatory]" in result["error"] and "inference-deepseek-service" in result["error"]


def test_every_planned_object_exists_in_the_cluster(
    first_up: dict[str, Any], project: PulumiProject, cluster: Cluster
) -> None:
    objects = planned_objects(project)
    assert len(objects) >= 15
    for manifest in objects:
        found = cluster.find(manifest)
        assert found is not None, f"{manifest['kind']} {manifest['metadata']['name']} is missing"


def test_pulumi_waited_for_a_ready_server_on_a_preferred_gpu_node(first_up: dict[str, Any], cluster: Cluster) -> None:
    deployment = cluster.get("deployment", "deepseek", "-n", NS)
    assert deployment["status"].get("availableReplicas", 0) >= 1
    nodes = {node["metadata"]["name"]: node["metadata"]["labels"] for node in cluster.get("nodes")["items"]}
    for pod in cluster.get("pods", "-n", NS)["items"]:
        labels = nodes[pod["spec"]["nodeName"]]
        assert labels[GPU_PRESENT_LABEL] == "true" and labels[CAPACITY_TYPE_LABEL] == "ON_DEMAND"


def test_a_second_preview_shows_no_changes(first_up: dict[str, Any], project: PulumiProject) -> None:
    preview = project.preview(STACK, "--expect-no-changes")
    assert preview["ok"], preview.get("error")
    assert re.search(r"^\s+\d+ unchanged$", preview["log"], re.MULTILINE), preview["log"][-2000:]


def test_a_config_change_updates_in_place(first_up: dict[str, Any], project: PulumiProject, cluster: Cluster) -> None:
    inference = dict(STACK_CONFIG["inference"], autoscaling={"minReplicas": 2, "maxReplicas": 5})
    project.set_config(STACK, "inference", inference)
    update = project.up(STACK)
    assert update["ok"], update.get("error")
    assert "replace" not in update["changes"] and update["changes"].get("update", 0) >= 1
    assert cluster.get("hpa", "deepseek", "-n", NS)["spec"]["maxReplicas"] == 5
    quota = cluster.get("resourcequota", "deepseek-quota", "-n", NS)["spec"]["hard"]
    assert quota["pods"] == "6", "maxReplicas + 1"


def test_a_broken_stack_file_prints_the_programs_one_line(project: PulumiProject) -> None:
    broken = dict(STACK_CONFIG, inference={**STACK_CONFIG["inference"], "gpuCount": "two"})
    project.init_stack("broken", broken, {"kubeconfig": "apiVersion: v1\nclusters: [{name: c}]\n", "apiKeys": "k"})
    result = project.up("broken")
    assert not result["ok"]
    assert "config key 'deepseek-inference:inference.gpuCount'" in result["error"]
    assert "Traceback" not in result["error"] and "validation error" not in result["error"]


def test_destroy_leaves_none_of_the_stacks_objects(
    first_up: dict[str, Any], project: PulumiProject, cluster: Cluster
) -> None:
    objects = planned_objects(project)
    destroyed = project.destroy(STACK)
    assert destroyed["ok"], destroyed.get("error")
    for manifest in objects:
        found = cluster.find(manifest)
        # A deleted namespace may still be finishing its own cleanup (it holds nothing of ours by then).
        terminating = found is not None and found.get("status", {}).get("phase") == "Terminating"
        assert found is None or terminating, f"{manifest['kind']} {manifest['metadata']['name']} is still there"
