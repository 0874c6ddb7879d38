"""The test suite's Python language host (tests/cluster/language_host) is built on the SDK the pinned CLI ships,
reports that version to the engine, and stands beside the CLI as Pulumi's releases bundle it. (What it runs, a
program from Pulumi.yaml and the policy pack, is tested through the real CLI in tests/infra/test_pulumi_up.py.)"""

from __future__ import annotations

import subprocess

from stack import versions

from tests.cluster.build import LANGUAGE_HOST, pulumi_distribution


def test_the_host_is_built_on_the_sdk_of_the_pinned_cli() -> None:
    required = [line.split() for line in (LANGUAGE_HOST / "go.mod").read_text().splitlines()]
    sdk = [words for words in required if "github.com/pulumi/pulumi/sdk/v3" in words]
    assert sdk and sdk[0][-1] == versions.TEST_PULUMI_CLI_VERSION


def test_the_host_reports_the_sdk_version_and_sits_beside_the_cli() -> None:
    distribution = pulumi_distribution()
    assert {"pulumi", "pulumi-language-python", "run_program.py"} <= {path.name for path in distribution.iterdir()}
    done = subprocess.run(
        [str(distribution / "pulumi-language-python"), "-version"], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == versions.TEST_PULUMI_CLI_VERSION.lstrip("v")
