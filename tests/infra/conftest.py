"""Shared fixtures for the stack program's tests: config loading and whole-program runs under mocks."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pulumi
import pytest
from stack.config import StackConfig, load_stack_config
from stack.testing import PROJECT, ProgramRun, RecordingMocks, run_stack, stack_config

LoadConfig = Callable[..., StackConfig]


@pytest.fixture
def load_config() -> LoadConfig:
    """`load_config("dev", overrides={...}, secrets={...})`: load_stack_config() over a stack file, as the CLI would."""

    def load(
        stack: str = "dev", overrides: Mapping[str, Any] | None = None, secrets: Mapping[str, str] | None = None
    ) -> StackConfig:
        config, secret_keys = stack_config(stack, overrides, secrets)
        pulumi.runtime.set_all_config(config, secret_keys)
        pulumi.runtime.set_mocks(RecordingMocks(), project=PROJECT, stack=stack, preview=False)
        return load_stack_config()

    return load


@pytest.fixture(scope="session")
def dev_run() -> ProgramRun:
    return run_stack("dev")


@pytest.fixture(scope="session")
def prod_run() -> ProgramRun:
    return run_stack("prod")
