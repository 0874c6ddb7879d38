"""Entry point the Pulumi CLI runs for `--policy-pack policy`. The rules live in `deepseek_policies.py`."""

from deepseek_policies import POLICIES
from pulumi_policy import EnforcementLevel, PolicyPack

PolicyPack(name="deepseek-inference", enforcement_level=EnforcementLevel.MANDATORY, policies=POLICIES)
