"""Offline plan: runs the whole stack program for a stack under mocks (no cloud, no Pulumi CLI) and writes

    <out>/summary.md             resources by type and by component, Helm releases with chart, version and values
    <out>/summary.json           the same, for machines
    <out>/kubernetes/*.yaml      every plain Kubernetes object (one file each) as the provider would receive it

Run from the repository root:  PYTHONPATH=infra .venv/bin/python -m stack.plan --stack dev --out out/dev
(or `scripts/plan dev`). Secrets that only the real stack holds (`apiKeys`, `kubeconfig`) get placeholders.
Helm releases are single resources whose charts are never templated here: they appear in the summary only.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pulumi.runtime.mocks import MockMonitor

from stack.testing import RecordedResource, run_stack

HELM_RELEASE = "kubernetes:helm.sh/v3:Release"
# Kubernetes resource types that are not objects in the cluster.
_NOT_OBJECTS = re.compile(r"^kubernetes:(helm\.sh/|yaml/|kustomize/|index:|pulumi:providers)|^pulumi:providers:")
PLACEHOLDER_SECRETS = {
    "apiKeys": "plan-placeholder-key",
    # A syntactically valid kubeconfig for clusterSource 'existing' (the mocks never contact it).
    "kubeconfig": yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "plan", "cluster": {"server": "https://plan.invalid"}}],
            "contexts": [{"name": "plan", "context": {"cluster": "plan", "user": "plan"}}],
            "current-context": "plan",
            "users": [{"name": "plan", "user": {"token": "plan-placeholder"}}],
        }
    ),
}
REDACTED = "<redacted by the offline plan>"


@dataclass(frozen=True)
class Plan:
    stack: str
    resources: list[RecordedResource]
    # "type name" of each resource → "type name" of the component it belongs to (nearest deepseek:* ancestor).
    components: dict[str, str]
    outputs: dict[str, Any]

    def kubernetes_objects(self) -> list[dict[str, Any]]:
        """Every plain Kubernetes object, as a manifest (camelCase, apiVersion and kind first), secrets redacted."""
        return [
            to_manifest(resource)
            for resource in self.resources
            if resource.type.startswith("kubernetes:") and not _NOT_OBJECTS.match(resource.type)
        ]

    def helm_releases(self) -> list[dict[str, Any]]:
        return [
            {
                "resource": resource.name,
                "release": resource.inputs.get("name"),
                "namespace": resource.inputs.get("namespace"),
                "chart": resource.inputs.get("chart"),
                "version": resource.inputs.get("version"),
                "repository": (resource.inputs.get("repositoryOpts") or {}).get("repo"),
                "values": _integral(resource.inputs.get("values") or {}),
            }
            for resource in self.resources
            if resource.type == HELM_RELEASE
        ]

    def summary(self) -> dict[str, Any]:
        by_component: dict[str, Counter[str]] = defaultdict(Counter)
        for resource in self.resources:
            if not resource.type.startswith("deepseek:"):
                by_component[self.components.get(_key(resource), "(stack)")][resource.type] += 1
        return {
            "stack": self.stack,
            "resourceCount": len(self.resources),
            "byType": dict(sorted(Counter(resource.type for resource in self.resources).items())),
            "byComponent": {
                component: dict(sorted(types.items())) for component, types in sorted(by_component.items())
            },
            "helmReleases": self.helm_releases(),
            "outputs": sorted(self.outputs),
        }


def run_plan(stack: str, overrides: dict[str, Any] | None = None) -> Plan:
    """Runs the program for `stack` (Pulumi.<stack>.yaml, with `overrides`) under mocks."""
    with _record_parents() as parents:
        run = run_stack(stack, overrides=overrides, secrets=PLACEHOLDER_SECRETS)
    return Plan(stack=stack, resources=run.resources, components=_components(parents), outputs=run.outputs)


def write_plan(plan: Plan, out: Path) -> list[Path]:
    """Writes summary.md, summary.json and kubernetes/*.yaml under `out` (emptied first). Returns the YAML files."""
    manifests_dir = out / "kubernetes"
    manifests_dir.mkdir(parents=True, exist_ok=True)
    for stale in manifests_dir.glob("*.yaml"):
        stale.unlink()
    written = []
    for index, manifest in enumerate(plan.kubernetes_objects(), 1):
        metadata = manifest.get("metadata") or {}
        slug = "-".join(
            part for part in (manifest["kind"].lower(), metadata.get("namespace"), metadata.get("name")) if part
        )
        path = manifests_dir / f"{index:03d}-{slug}.yaml"
        path.write_text(yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8")
        written.append(path)
    summary = plan.summary()
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out / "summary.md").write_text(_markdown(summary), encoding="utf-8")
    return written


def to_manifest(resource: RecordedResource) -> dict[str, Any]:
    inputs = _integral(resource.inputs)
    manifest = {"apiVersion": inputs.pop("apiVersion"), "kind": inputs.pop("kind"), **inputs}
    if manifest["kind"] == "Secret":
        for field in ("data", "stringData"):
            if field in manifest:
                manifest[field] = {key: REDACTED for key in manifest[field]}
    return manifest


def _integral(value: Any) -> Any:
    """Numbers cross the mock boundary as floats (2 → 2.0); Kubernetes wants integers back."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _integral(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_integral(item) for item in value]
    return value


def _key(resource: RecordedResource) -> str:
    return f"{resource.type} {resource.name}"


@contextmanager
def _record_parents() -> Iterator[dict[str, str]]:
    """The mocks are not told a resource's parent; the mock monitor computes URNs from it. Records urn → parent urn."""
    parents: dict[str, str] = {}
    original: Callable[[MockMonitor, str, str, str], str] = MockMonitor.make_urn

    def make_urn(monitor: MockMonitor, parent: str, type_: str, name: str) -> str:
        urn = original(monitor, parent, type_, name)
        parents[urn] = parent
        return urn

    setattr(MockMonitor, "make_urn", make_urn)  # noqa: B010 (mypy refuses assigning to a method)
    try:
        yield parents
    finally:
        setattr(MockMonitor, "make_urn", original)  # noqa: B010


def _components(parents: dict[str, str]) -> dict[str, str]:
    def type_and_name(urn: str) -> str:
        parts = urn.split("::")
        return f"{parts[2].split('$')[-1]} {parts[3]}"

    components = {}
    for urn in parents:
        ancestor = parents.get(urn, "")
        while ancestor and not type_and_name(ancestor).startswith("deepseek:"):
            ancestor = parents.get(ancestor, "")
        if ancestor:
            components[type_and_name(urn)] = type_and_name(ancestor)
    return components


def _markdown(summary: dict[str, Any]) -> str:
    lines = [f"# Offline plan: stack `{summary['stack']}`", "", f"{summary['resourceCount']} resources.", ""]
    lines += ["## By type", "", "| type | count |", "| --- | --- |"]
    lines += [f"| `{typ}` | {count} |" for typ, count in summary["byType"].items()]
    lines += ["", "## By component", ""]
    for component, types in summary["byComponent"].items():
        lines.append(f"- **{component}**: " + ", ".join(f"`{typ}` x{count}" for typ, count in types.items()))
    lines += ["", "## Helm releases (not templated offline)", ""]
    for release in summary["helmReleases"]:
        lines += [
            f"### {release['release']} ({release['namespace']})",
            "",
            f"chart `{release['chart']}` {release['version']} from {release['repository']}",
            "",
            "```yaml",
            yaml.safe_dump(release["values"], sort_keys=True).rstrip(),
            "```",
            "",
        ]
    lines += ["## Stack outputs", "", *[f"- `{name}`" for name in summary["outputs"]], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack.plan", description=__doc__.splitlines()[0])
    parser.add_argument("--stack", required=True, help="stack name: reads Pulumi.<stack>.yaml from the repo root")
    parser.add_argument("--out", type=Path, help="output folder (default: out/<stack>)")
    args = parser.parse_args(argv)
    out: Path = args.out or Path("out") / args.stack
    plan = run_plan(args.stack)
    written = write_plan(plan, out)
    summary = plan.summary()
    print(
        f"plan {args.stack}: {summary['resourceCount']} resources, {len(written)} Kubernetes objects, "
        f"{len(summary['helmReleases'])} Helm releases -> {out}/summary.md, {out}/kubernetes/"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
