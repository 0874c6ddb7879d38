"""Run the whole stack program offline, under Pulumi mocks, and collect what it registers.

    from stack.testing import run_stack
    run = run_stack("dev")                       # reads Pulumi.dev.yaml like the CLI would
    run.of_type("aws:eks/nodeGroup:NodeGroup")   # registered resources: type, name, inputs
    run.outputs["clusterName"]                   # resolved stack outputs

Used by the tests, the policy-pack tests (through `python -m stack.testing.dump`) and the offline plan.
"""

from stack.testing.harness import (
    PROJECT,
    REPO_ROOT,
    ProgramRun,
    run_program,
    run_stack,
    stack_config,
)
from stack.testing.mocks import RecordedResource, RecordingMocks

__all__ = [
    "PROJECT",
    "REPO_ROOT",
    "ProgramRun",
    "RecordedResource",
    "RecordingMocks",
    "run_program",
    "run_stack",
    "stack_config",
]
