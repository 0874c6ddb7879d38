"""`pulumi up` waits as long as a GPU pod's start may really take (issue: await timeouts), and a slow rollout does
not keep the HPA and PDB from being created."""

from __future__ import annotations

import pytest
from stack.config.kubernetes import InferenceConfig
from stack.kubernetes.inference_service import LOAD_BALANCER_AWAIT
from stack.kubernetes.rollout import IMAGE_PULL_SECONDS, RolloutBudget, minutes
from stack.testing import ProgramRun
from stack.testing.harness import stack_settings

DEPLOYMENT = "kubernetes:apps/v1:Deployment"
NS = "deepseek-inference"


def test_budget_adds_node_image_and_model_and_pays_it_per_replica_on_update() -> None:
    budget = RolloutBudget(
        node_provision_seconds=600, startup_seconds=1200, termination_grace_seconds=45, max_replicas=12
    )
    assert budget.pod_start_seconds == 600 + IMAGE_PULL_SECONDS + 1200
    assert budget.create_timeout_seconds > budget.pod_start_seconds
    assert budget.update_timeout_seconds >= 12 * (budget.pod_start_seconds + 45)
    assert minutes(61) == "2m" and minutes(120) == "2m"


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_deployment_timeouts_exceed_the_provider_default_and_follow_the_stack(
    stack: str, request: pytest.FixtureRequest
) -> None:
    run: ProgramRun = request.getfixturevalue(f"{stack}_run")
    deployment = run.one(DEPLOYMENT)
    timeouts = run.options_of(deployment).custom_timeouts
    settings = stack_settings(stack)
    provision = int(settings[f"{NS}:clusterAutoscaler"]["maxNodeProvisionTime"].removesuffix("m")) * 60
    startup = InferenceConfig.model_validate(settings[f"{NS}:inference"]).startup_seconds  # as the stack derives it
    max_replicas = settings[f"{NS}:inference"]["autoscaling"]["maxReplicas"]
    pod_start = provision + IMAGE_PULL_SECONDS + startup
    create = int(timeouts["create"].removesuffix("m")) * 60
    update = int(timeouts["update"].removesuffix("m")) * 60
    assert create >= pod_start > 600, "the provider's 10-minute default would fail a GPU pod's first start"
    assert update >= max_replicas * pod_start
    # Kubernetes must not declare the rollout failed before a pod could have started either.
    assert deployment.inputs["spec"]["progressDeadlineSeconds"] >= pod_start


def test_service_waits_for_its_load_balancer_address_only(dev_run: ProgramRun) -> None:
    service = dev_run.one("kubernetes:core/v1:Service")
    # waitFor replaces the provider's default await (ready endpoints = a loaded model) with this condition.
    assert service.inputs["metadata"]["annotations"]["pulumi.com/waitFor"] == LOAD_BALANCER_AWAIT
    assert LOAD_BALANCER_AWAIT == "jsonpath={.status.loadBalancer.ingress}"


@pytest.mark.parametrize("kind", ["HorizontalPodAutoscaler", "PodDisruptionBudget"])
def test_hpa_and_pdb_do_not_wait_for_the_deployment(dev_run: ProgramRun, kind: str) -> None:
    (resource,) = [r for r in dev_run.resources if r.type.endswith(f":{kind}")]
    depends_on = dev_run.options_of(resource).depends_on
    assert depends_on, "the monitoring releases, at least"
    assert not any(dependency.startswith(DEPLOYMENT) for dependency in depends_on)
