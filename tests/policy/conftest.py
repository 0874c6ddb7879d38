"""Policy-pack tests run in policy/venv (pulumi-policy pins protobuf 5). The stacks' mocked resources come from
the main environment (pulumi-aws needs protobuf 6) through `python -m stack.testing.dump`, generated fresh."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "policy"))

MAIN_PYTHON = REPO_ROOT / ".venv" / "bin" / "python"


@pytest.fixture(scope="session")
def mocked_stacks() -> dict[str, Any]:
    """{"dev": {"resources": [{type, name, inputs}], ...}, "prod": {...}} from the real program under mocks."""
    if not MAIN_PYTHON.exists():
        pytest.fail(f"{MAIN_PYTHON} is missing: run scripts/bootstrap all")
    result = subprocess.run(
        [str(MAIN_PYTHON), "-m", "stack.testing.dump", "dev", "prod"],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "infra")},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"stack.testing.dump failed:\n{result.stderr[-4000:]}")
    stacks: dict[str, Any] = json.loads(result.stdout)
    return stacks
