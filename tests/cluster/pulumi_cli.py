"""A Pulumi project directory for the real CLI: the repository's Pulumi.yaml and program, a local file backend,
a passphrase secrets provider and a private PULUMI_HOME with the locally built Kubernetes provider installed."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from stack.testing.harness import PROJECT, REPO_ROOT

from tests.cluster.build import engines

# The provider version the installed SDK asks the engine for (infra/requirements.txt); the local build, older
# (TEST_PULUMI_KUBERNETES_PROVIDER in versions.py), goes in its slot.
SDK_PROVIDER_VERSION = importlib.metadata.version("pulumi-kubernetes")


@dataclass
class PulumiProject:
    workdir: Path
    env: dict[str, str]

    def cli(self, *args: str, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["pulumi", *args, "--non-interactive"],
            cwd=self.workdir,
            env=self.env,
            input=input_text,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )

    def init_stack(self, name: str, config: dict[str, Any], secrets: dict[str, str]) -> None:
        done = self.cli("stack", "init", name, "--secrets-provider", "passphrase")
        assert done.returncode == 0, done.stderr
        stack_file = self.workdir / f"Pulumi.{name}.yaml"
        document = yaml.safe_load(stack_file.read_text()) or {}
        document["config"] = {key if ":" in key else f"{PROJECT}:{key}": value for key, value in config.items()}
        stack_file.write_text(yaml.safe_dump(document, sort_keys=False))
        for key, value in secrets.items():
            done = self.cli("config", "set", "--secret", key, "-s", name, input_text=value)
            assert done.returncode == 0, done.stderr

    def set_config(self, name: str, key: str, value: Any) -> None:
        stack_file = self.workdir / f"Pulumi.{name}.yaml"
        document = yaml.safe_load(stack_file.read_text())
        document["config"][f"{PROJECT}:{key}"] = value
        stack_file.write_text(yaml.safe_dump(document, sort_keys=False))

    def run(self, command: str, stack: str) -> dict[str, Any]:
        """tests.cluster.pulumi_stack in its own process (no test's Pulumi mocks can leak into it)."""
        done = subprocess.run(
            [sys.executable, "-m", "tests.cluster.pulumi_stack", command, str(self.workdir), stack],
            cwd=REPO_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=1200,
            check=False,
        )
        lines = done.stdout.strip().splitlines()
        assert done.returncode == 0 and lines, f"driver failed: {done.stderr[-3000:]}"
        return json.loads(lines[-1])  # type: ignore[no-any-return]


def pulumi_project(workdir: Path) -> PulumiProject:
    cli = next(engine for engine in engines() if engine.name == "pulumi").binary("pulumi")
    provider = next(e for e in engines() if e.name == "pulumi-resource-kubernetes").binary("pulumi-resource-kubernetes")
    for path in (cli, provider):
        assert path.exists(), f"{path} is missing: run `scripts/engines` (scripts/test does)"
    (workdir / "Pulumi.yaml").write_text((REPO_ROOT / "Pulumi.yaml").read_text())
    (workdir / "infra").symlink_to(REPO_ROOT / "infra")
    (workdir / "state").mkdir()
    env = {
        **os.environ,
        "PATH": f"{cli.parent}:{os.environ.get('PATH', '')}",
        "PULUMI_HOME": str(workdir / "home"),
        "PULUMI_CONFIG_PASSPHRASE": "test-passphrase",
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        # Nothing is downloaded: the one plugin the program uses here is installed below.
        "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
        "PYTHONPATH": f"{REPO_ROOT / 'infra'}:{REPO_ROOT}",
    }
    project = PulumiProject(workdir, env)
    for args in (
        ("login", f"file://{workdir / 'state'}"),
        ("plugin", "install", "resource", "kubernetes", SDK_PROVIDER_VERSION, "--file", str(provider)),
    ):
        done = project.cli(*args)
        assert done.returncode == 0, f"pulumi {' '.join(args)}: {done.stderr}"
    return project
