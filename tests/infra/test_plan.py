"""The offline plan for dev and prod: what it writes, and the rendered manifests pass kubernetes-validate --strict,
the CRD schemas and checkov with 0 failed checks. The tools come from .venv-tools (scripts/bootstrap all); a missing
tool fails these tests, it never skips them."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from stack import versions
from stack.plan import REDACTED, Plan, main, run_plan, write_plan
from stack.testing import REPO_ROOT
from stack.testing.harness import stack_settings

TOOLS = REPO_ROOT / ".venv-tools" / "bin"
CRD_CHECKER = REPO_ROOT / "tests" / "infra" / "kubernetes" / "crd_validate.py"
CRD_SCHEMAS = REPO_ROOT / "tests" / "infra" / "kubernetes" / "crd_schemas"
STACKS = ["dev", "prod", "r1-full", "r1-distill-70b"]  # the last two: example stacks (README)
# kubernetes-validate's schemas go up to 1.37; a stack without cluster.version (an existing cluster) is checked
# against this one.
DEFAULT_KUBERNETES_VERSION = versions.DEFAULT_KUBERNETES_VERSION


@dataclass(frozen=True)
class Rendered:
    plan: Plan
    out: Path
    files: list[Path]
    kubernetes_version: str


def tool(name: str) -> str:
    path = TOOLS / name
    assert path.exists(), f"{path} is missing: run `scripts/bootstrap all` (it installs requirements-tools.txt)"
    return str(path)


def run_tool(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False, cwd=REPO_ROOT)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Rendered]:
    result = {}
    for stack in STACKS:
        plan = run_plan(stack)
        out = tmp_path_factory.mktemp(f"plan-{stack}")
        cluster = stack_settings(stack).get("deepseek-inference:cluster") or {}
        version = str(cluster.get("version", DEFAULT_KUBERNETES_VERSION))
        result[stack] = Rendered(plan, out, write_plan(plan, out), f"{version}.0")
    return result


def manifests(rendered: Rendered) -> list[dict[str, Any]]:
    return [yaml.safe_load(path.read_text(encoding="utf-8")) for path in rendered.files]


@pytest.mark.parametrize("stack", STACKS)
def test_summary_lists_resources_by_type_and_component(rendered: dict[str, Rendered], stack: str) -> None:
    summary = json.loads((rendered[stack].out / "summary.json").read_text(encoding="utf-8"))
    assert summary["stack"] == stack
    assert summary["byType"]["kubernetes:apps/v1:Deployment"] == 1
    service = summary["byComponent"]["deepseek:kubernetes:InferenceService inference-deepseek"]
    assert service["kubernetes:autoscaling/v2:HorizontalPodAutoscaler"] == 1
    assert summary["byComponent"]["deepseek:kubernetes:Monitoring monitoring"]["kubernetes:helm.sh/v3:Release"] == 2
    markdown = (rendered[stack].out / "summary.md").read_text(encoding="utf-8")
    assert "## By component" in markdown
    assert "kube-prometheus-stack" in markdown


@pytest.mark.parametrize("stack", STACKS)
def test_helm_releases_are_listed_with_chart_version_and_values(rendered: dict[str, Rendered], stack: str) -> None:
    releases = {release["chart"]: release for release in rendered[stack].plan.helm_releases()}
    assert {"nvidia-device-plugin", "dcgm-exporter", "kube-prometheus-stack", "prometheus-adapter"} <= set(releases)
    for release in releases.values():
        assert release["version"]
        assert release["repository"].startswith("https://")
        assert isinstance(release["values"], dict)


@pytest.mark.parametrize("stack", STACKS)
def test_every_plain_object_is_a_manifest(rendered: dict[str, Rendered], stack: str) -> None:
    kinds = set()
    for manifest in manifests(rendered[stack]):
        assert list(manifest)[:2] == ["apiVersion", "kind"]
        assert manifest["metadata"]["name"]
        kinds.add(manifest["kind"])
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"} <= kinds
    assert "Release" not in kinds
    deployment = next(m for m in manifests(rendered[stack]) if m["kind"] == "Deployment")
    assert isinstance(deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"], int)


@pytest.mark.parametrize("stack", STACKS)
def test_secret_values_are_redacted(rendered: dict[str, Rendered], stack: str) -> None:
    (secret,) = [m for m in manifests(rendered[stack]) if m["kind"] == "Secret"]
    assert secret["stringData"] == {"API_KEYS": REDACTED}


@pytest.mark.parametrize("stack", STACKS)
def test_kubernetes_validate_strict(rendered: dict[str, Rendered], stack: str) -> None:
    plan = rendered[stack]
    result = run_tool(tool("kubernetes-validate"), "--strict", "-k", plan.kubernetes_version, *map(str, plan.files))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ERROR" not in result.stdout
    # It has no schemas for custom resources: it warns and passes them; test_crd_objects_match_their_schemas checks.
    assert "Couldn't find schema for kind ServiceMonitor" in result.stdout + result.stderr


@pytest.mark.parametrize("stack", STACKS)
def test_crd_objects_match_their_schemas(rendered: dict[str, Rendered], stack: str) -> None:
    plan = rendered[stack]
    kinds = {m["kind"] for m in manifests(plan)}
    assert {"ServiceMonitor", "PrometheusRule"} <= kinds
    result = run_tool(tool("python"), str(CRD_CHECKER), str(CRD_SCHEMAS), *map(str, plan.files))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(plan.files)} files, 0 errors" in result.stdout


@pytest.mark.parametrize("stack", STACKS)
def test_checkov_has_no_failed_checks(rendered: dict[str, Rendered], stack: str) -> None:
    directory = rendered[stack].out / "kubernetes"
    report = checkov(directory)
    failed = [f"{c['check_id']} {c['resource']}" for c in report["results"]["failed_checks"]]
    assert failed == []
    assert report["summary"]["passed"] > 50
    assert report["summary"]["parsing_errors"] == 0
    for skipped in report["results"]["skipped_checks"]:
        reason = skipped["check_result"].get("suppress_comment")
        assert reason, f"{skipped['check_id']} is skipped without a reason"


def checkov(directory: Path) -> dict[str, Any]:
    result = run_tool(
        tool("checkov"), "--framework", "kubernetes", "--skip-download", "-o", "json", "-d", str(directory)
    )
    assert result.returncode in (0, 1), result.stderr
    report = json.loads(result.stdout)
    # One framework: one report object (checkov answers a list when it ran several).
    found: dict[str, Any] = report[0] if isinstance(report, list) else report
    return found


def test_the_validators_catch_mistakes(rendered: dict[str, Rendered], tmp_path: Path) -> None:
    """Negative controls: the checks above pass because the manifests are right, not because nothing is checked."""
    deployment = next(m for m in manifests(rendered["dev"]) if m["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"] = {"privileged": True}
    container["readinessProbe"]["httpGet"]["pth"] = "/readyz"
    broken = tmp_path / "deployment.yaml"
    broken.write_text(yaml.safe_dump(deployment), encoding="utf-8")
    version = rendered["dev"].kubernetes_version
    assert run_tool(tool("kubernetes-validate"), "--strict", "-k", version, str(broken)).returncode != 0
    failed = {check["check_id"] for check in checkov(tmp_path)["results"]["failed_checks"]}
    assert "CKV_K8S_16" in failed  # privileged container
    monitor = next(m for m in manifests(rendered["dev"]) if m["kind"] == "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    bad_monitor = tmp_path / "monitor.yaml"
    bad_monitor.write_text(yaml.safe_dump(monitor), encoding="utf-8")
    result = run_tool(tool("python"), str(CRD_CHECKER), str(CRD_SCHEMAS), str(bad_monitor))
    assert result.returncode == 1
    assert "'intervall' was unexpected" in result.stdout


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--stack", "dev", "--out", str(tmp_path)]) == 0
    assert "plan dev:" in capsys.readouterr().out
    assert (tmp_path / "summary.md").exists()
    assert list((tmp_path / "kubernetes").glob("*-deployment-deepseek-inference-deepseek.yaml"))
