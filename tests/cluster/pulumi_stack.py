"""Runs the stack program with the real Pulumi CLI and engine onto the test cluster, one command per process.

    python -m tests.cluster.pulumi_stack up|preview-no-changes|destroy|outputs WORKDIR STACK

WORKDIR holds Pulumi.yaml (the project's own), Pulumi.<STACK>.yaml (a stack file as users write it) and the file
backend. The program is `infra/__main__.py` itself, run through the Automation API's inline program: the Python
language host (`pulumi-language-python`, its own Go module) is not served by the module proxy here, so the CLI
cannot start the program from the directory; everything after that (engine, providers, awaits, diffs, state) is
the real thing. Prints one JSON line: {"ok": bool, ...}.
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path
from typing import Any

from pulumi import automation
from stack.testing.harness import PROGRAM, PROJECT


def _program() -> None:
    runpy.run_path(str(PROGRAM), run_name="__main__")


def _stack(workdir: Path, name: str) -> automation.Stack:
    return automation.select_stack(
        stack_name=name,
        project_name=PROJECT,
        program=_program,
        opts=automation.LocalWorkspaceOptions(work_dir=str(workdir)),
    )


def run(command: str, workdir: Path, name: str) -> dict[str, Any]:
    stack = _stack(workdir, name)
    output: list[str] = []
    try:
        if command == "up":
            result = stack.up(on_output=output.append, color="never")
            changes = result.summary.resource_changes or {}
            return {"ok": True, "changes": changes, "outputs": {k: v.value for k, v in result.outputs.items()}}
        if command == "preview-no-changes":
            preview = stack.preview(expect_no_changes=True, on_output=output.append, color="never")
            return {"ok": True, "changes": preview.change_summary}
        if command == "destroy":
            stack.destroy(on_output=output.append, color="never")
            return {"ok": True}
        if command == "outputs":
            return {"ok": True, "outputs": {k: v.value for k, v in stack.outputs().items()}}
    except automation.CommandError as error:
        return {"ok": False, "error": str(error), "output": "".join(output)}
    raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1], Path(sys.argv[2]), sys.argv[3]), default=str))
