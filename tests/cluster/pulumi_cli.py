"""A Pulumi project directory for the real CLI: the repository's Pulumi.yaml and program, a local file backend,
a passphrase secrets provider and a private PULUMI_HOME with the locally built Kubernetes provider installed.

The CLI runs the program as it does for users: from Pulumi.yaml (`runtime: python`, `main: infra`, virtualenv
`infra/.venv`, which scripts/bootstrap makes from infra/requirements.txt as `pulumi install` would) through the
Python language host, and every `up` and `preview` runs the policy pack (`--policy-pack policy`, its own
`policy/venv`). The language host is tests/cluster/language_host (its main.go says why it is ours)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from stack.testing.harness import PROJECT, REPO_ROOT

from tests.cluster.build import engines, pulumi_distribution

# The provider version the installed SDK asks the engine for (infra/requirements.txt); the local build, older
# (TEST_PULUMI_KUBERNETES_PROVIDER in versions.py), goes in its slot.
SDK_PROVIDER_VERSION = importlib.metadata.version("pulumi-kubernetes")
POLICY_PACK = REPO_ROOT / "policy"


@dataclass
class PulumiProject:
    workdir: Path
    env: dict[str, str]

    def cli(self, *args: str, input_text: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["pulumi", *args, "--non-interactive", "--color", "never"],
            cwd=self.workdir,
            env=self.env,
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout,
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

    def up(self, stack: str) -> dict[str, Any]:
        """`pulumi up --yes --policy-pack policy`, as a user runs it; then what the update changed and the outputs."""
        done = self.cli("up", "--yes", "--policy-pack", str(POLICY_PACK), "-s", stack, timeout=1200)
        if done.returncode != 0:
            return {"ok": False, "error": done.stdout + done.stderr}
        history = self.cli("stack", "history", "--json", "-s", stack)
        assert history.returncode == 0, history.stderr
        changes = json.loads(history.stdout)[0].get("resourceChanges") or {}
        return {"ok": True, "changes": changes, "outputs": self.outputs(stack), "log": done.stdout}

    def preview(self, stack: str, *extra: str) -> dict[str, Any]:
        """`pulumi preview --policy-pack policy`; its text (the policy pack's report is in it, not in --json)."""
        done = self.cli("preview", "--policy-pack", str(POLICY_PACK), "-s", stack, *extra)
        if done.returncode != 0:
            return {"ok": False, "error": done.stdout + done.stderr}
        return {"ok": True, "log": done.stdout}

    def destroy(self, stack: str) -> dict[str, Any]:
        done = self.cli("destroy", "--yes", "-s", stack, timeout=1200)
        return {"ok": done.returncode == 0, "error": done.stdout + done.stderr}

    def outputs(self, stack: str) -> dict[str, Any]:
        done = self.cli("stack", "output", "--json", "--show-secrets", "-s", stack)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)  # type: ignore[no-any-return]


def pulumi_project(workdir: Path) -> PulumiProject:
    built = {engine.name: engine for engine in engines()}
    cli = pulumi_distribution() / "pulumi"
    provider = built["pulumi-resource-kubernetes"].binary("pulumi-resource-kubernetes")
    for path in (cli, provider):
        assert path.exists(), f"{path} is missing: run `scripts/engines` (scripts/test does)"
    (workdir / "Pulumi.yaml").write_text((REPO_ROOT / "Pulumi.yaml").read_text())
    (workdir / "infra").symlink_to(REPO_ROOT / "infra")
    (workdir / "state").mkdir()
    # The program sees only its own virtualenv and directory, as it would on a user's machine.
    inherited = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env = {
        **inherited,
        "PATH": f"{cli.parent}:{os.environ.get('PATH', '')}",
        "PULUMI_HOME": str(workdir / "home"),
        "PULUMI_CONFIG_PASSPHRASE": "test-passphrase",
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        # Nothing is downloaded: the one plugin the program uses here is installed below.
        "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
    }
    project = PulumiProject(workdir, env)
    for args in (
        ("login", f"file://{workdir / 'state'}"),
        ("plugin", "install", "resource", "kubernetes", SDK_PROVIDER_VERSION, "--file", str(provider)),
    ):
        done = project.cli(*args)
        assert done.returncode == 0, f"pulumi {' '.join(args)}: {done.stderr}"
    return project
