"""How long `pulumi up` waits for the inference Deployment: derived from what one GPU pod's start really costs.

A pod may need a node from zero (the autoscaler's provisioning budget), a multi-GB image pull, and the model
download and load (the startup probe's budget). A rollout replaces pods one at a time (maxSurge 1, maxUnavailable
0), so an update pays that once per replica, plus the old pod's graceful stop. pulumi-kubernetes would otherwise
give up after 10 minutes and leave the rest of the update (HPA, PDB, alerts) undone.
"""

from __future__ import annotations

from dataclasses import dataclass

# Pulling the ~6 GB CUDA server image onto a fresh node: typically 2-4 minutes from ECR in-region; budgeted at 10.
IMAGE_PULL_SECONDS = 600
# A node on a cluster this stack did not create: no autoscaler setting to read, so the autoscaler's default.
DEFAULT_NODE_PROVISION_SECONDS = 600
# Slack for the API server, the scheduler and the first readiness probes.
_MARGIN_SECONDS = 120


@dataclass(frozen=True)
class RolloutBudget:
    node_provision_seconds: int
    startup_seconds: int
    termination_grace_seconds: int
    max_replicas: int
    image_pull_seconds: int = IMAGE_PULL_SECONDS

    @property
    def pod_start_seconds(self) -> int:
        """From a pod's creation to ready, in the worst case the budgets allow."""
        return self.node_provision_seconds + self.image_pull_seconds + self.startup_seconds

    @property
    def progress_deadline_seconds(self) -> int:
        """The Deployment's progressDeadlineSeconds: no rollout step is declared failed before a pod could start."""
        return self.pod_start_seconds + _MARGIN_SECONDS

    @property
    def create_timeout_seconds(self) -> int:
        """A new Deployment starts one pod (the HPA adds the rest afterwards)."""
        return self.progress_deadline_seconds

    @property
    def update_timeout_seconds(self) -> int:
        """A rollout replaces up to maxReplicas pods one after another."""
        return self.max_replicas * (self.pod_start_seconds + self.termination_grace_seconds) + _MARGIN_SECONDS


def minutes(seconds: int) -> str:
    """A Pulumi custom-timeout string, rounded up to whole minutes."""
    return f"{-(-seconds // 60)}m"
